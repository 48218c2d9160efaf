//! Thin, safe wrappers over the Linux calls mirrorfs makes on both sides.
//!
//! Owns the conversion of raw return values into `io::Result` (the real OS error
//! is kept, never collapsed), C-string handling of names, and `openat2` with the
//! `RESOLVE_*` flags that keep every path beneath a root. Nothing here decides
//! what to call; `fs` and `replica` do.

use std::ffi::{CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// `-1` → the thread's `errno` as `io::Error`.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// A name or path as a C string (`EINVAL` on an interior NUL).
pub fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The errno of an `io::Error`, `EIO` when it carries none.
pub fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Resolution that never leaves the directory `dirfd` and never follows a
/// symlink or a magic link on the way.
pub const RESOLVE_STRICT: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_SYMLINKS;

/// Longest path one `openat2` call takes (`PATH_MAX` less the NUL).
const PIECE_MAX: usize = libc::PATH_MAX as usize - 1;

/// `openat2(dirfd, path, flags, mode, resolve)`, for paths of any length.
///
/// A path longer than the kernel takes in one call (a replicated path may be,
/// see [`crate::proto::path::MAX_PATH`]) is resolved in pieces cut at `/`
/// boundaries, each shorter than `PATH_MAX`: every piece but the last is
/// opened `O_PATH | O_DIRECTORY` with the same `resolve` flags beneath the
/// directory the previous piece opened, the last with the caller's `flags`.
/// Each piece is thus resolved beneath a directory that is itself beneath
/// `dirfd`, so with `RESOLVE_BENEATH` (and [`RESOLVE_STRICT`]'s refusal of
/// symlinks) nothing outside `dirfd` is reached, whatever the path holds. Long
/// paths are only split under `RESOLVE_BENEATH` (without it, or for an
/// absolute path, the kernel's `ENAMETOOLONG` stands).
pub fn openat2(
    dirfd: BorrowedFd<'_>,
    path: &OsStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let mut rest = path.as_bytes();
    if rest.len() <= PIECE_MAX || resolve & libc::RESOLVE_BENEATH == 0 || rest[0] == b'/' {
        return openat2_once(dirfd, path, flags, mode, resolve);
    }
    let mut dir: Option<OwnedFd> = None;
    while rest.len() > PIECE_MAX {
        // The last `/` that leaves a piece of at most PIECE_MAX bytes (names
        // are at most 255 bytes, so a valid path always has one).
        let cut = rest[..=PIECE_MAX]
            .iter()
            .rposition(|b| *b == b'/')
            .filter(|i| *i > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
        let at = dir.as_ref().map_or(dirfd, |d| d.as_fd());
        let next = openat2_once(
            at,
            OsStr::from_bytes(&rest[..cut]),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            resolve,
        )?;
        dir = Some(next);
        rest = &rest[cut + 1..];
    }
    let at = dir.as_ref().map_or(dirfd, |d| d.as_fd());
    openat2_once(at, OsStr::from_bytes(rest), flags, mode, resolve)
}

/// One `openat2` system call (retried on `EAGAIN`).
fn openat2_once(
    dirfd: BorrowedFd<'_>,
    path: &OsStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: open_how is plain old data; zeroed is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        u64::from(mode)
    } else {
        0
    };
    how.resolve = resolve;
    loop {
        // SAFETY: valid C string and open_how for the duration of the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel returned a new descriptor that we now own.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let e = io::Error::last_os_error();
        // EAGAIN: a concurrent rename raced RESOLVE_BENEATH's check; retry.
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
}

/// `openat(dirfd, name, flags | O_CLOEXEC, mode)` for a single name.
pub fn openat(dirfd: BorrowedFd<'_>, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: valid C string; the returned fd is owned below.
    let fd = cvt(unsafe {
        libc::openat(
            dirfd.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: fresh descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW)`; an empty name stats `dirfd` itself.
pub fn fstatat(dirfd: BorrowedFd<'_>, name: &OsStr) -> io::Result<libc::stat> {
    let c = cstr(name)?;
    let mut st = MaybeUninit::<libc::stat>::uninit();
    let flags = if name.is_empty() {
        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    // SAFETY: st is written by the kernel on success.
    cvt(unsafe { libc::fstatat(dirfd.as_raw_fd(), c.as_ptr(), st.as_mut_ptr(), flags) })?;
    // SAFETY: fstatat succeeded, so st is initialised.
    Ok(unsafe { st.assume_init() })
}

/// `fstat` of a descriptor (O_PATH descriptors included).
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    fstatat(fd, OsStr::new(""))
}

/// The entries of the directory `fd` (opened `O_RDONLY`) except `.` and `..`,
/// as (name, `d_type`), in the order the file system gives them. Read through
/// `fd` itself, from its start, so that no name is resolved again (`d_type`
/// may be `DT_UNKNOWN` on file systems that do not fill it).
pub fn read_dir(fd: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, u8)>> {
    Ok(read_dir_inos(fd)?
        .into_iter()
        .map(|(name, kind, _)| (name, kind))
        .collect())
}

/// As [`read_dir`], with each entry's inode number (`d_ino`):
/// (name, `d_type`, `d_ino`).
pub fn read_dir_inos(fd: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, u8, u64)>> {
    /// Closes the stream (and the duplicate descriptor it owns).
    struct Stream(std::ptr::NonNull<libc::DIR>);
    impl Drop for Stream {
        fn drop(&mut self) {
            // SAFETY: the stream came from fdopendir and is closed once.
            unsafe { libc::closedir(self.0.as_ptr()) };
        }
    }
    // The stream gets its own descriptor (sharing `fd`'s position, which the
    // rewind resets), so that `fd` stays the caller's.
    // SAFETY: plain fcntl on a valid descriptor.
    let dup = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `dup` is ours; on success the stream owns it.
    let Some(stream) = std::ptr::NonNull::new(unsafe { libc::fdopendir(dup) }) else {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `dup` is still ours to close.
        drop(unsafe { OwnedFd::from_raw_fd(dup) });
        return Err(e);
    };
    let stream = Stream(stream);
    // SAFETY: valid stream.
    unsafe { libc::rewinddir(stream.0.as_ptr()) };
    let mut out = Vec::new();
    loop {
        // readdir reports errors only through errno: clear it first.
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: valid stream until `stream` drops.
        let entry = unsafe { libc::readdir(stream.0.as_ptr()) };
        if entry.is_null() {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(0) => Ok(out),
                _ => Err(e),
            };
        }
        // SAFETY: a non-null entry is valid until the next readdir, and its
        // name is NUL-terminated.
        let (name, kind, ino) = unsafe {
            (
                std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()).to_bytes(),
                (*entry).d_type,
                (*entry).d_ino,
            )
        };
        if name != b"." && name != b".." {
            out.push((name.to_vec(), kind, ino));
        }
    }
}

/// The names in the directory `fd` (see [`read_dir`]).
pub fn read_dir_names(fd: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    Ok(read_dir(fd)?.into_iter().map(|(n, _)| n).collect())
}

/// `mkdirat`.
pub fn mkdirat(dirfd: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::mkdirat(dirfd.as_raw_fd(), c.as_ptr(), mode) }).map(drop)
}

/// `mknodat`.
pub fn mknodat(dirfd: BorrowedFd<'_>, name: &OsStr, mode: u32, rdev: u64) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::mknodat(dirfd.as_raw_fd(), c.as_ptr(), mode, rdev) }).map(drop)
}

/// `symlinkat(target, dirfd, name)`.
pub fn symlinkat(target: &OsStr, dirfd: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let t = cstr(target)?;
    let c = cstr(name)?;
    // SAFETY: valid C strings.
    cvt(unsafe { libc::symlinkat(t.as_ptr(), dirfd.as_raw_fd(), c.as_ptr()) }).map(drop)
}

/// `linkat(olddir, oldname, newdir, newname, 0)` (never follows symlinks).
pub fn linkat(
    olddir: BorrowedFd<'_>,
    oldname: &OsStr,
    newdir: BorrowedFd<'_>,
    newname: &OsStr,
) -> io::Result<()> {
    let o = cstr(oldname)?;
    let n = cstr(newname)?;
    // SAFETY: valid C strings.
    cvt(unsafe {
        libc::linkat(
            olddir.as_raw_fd(),
            o.as_ptr(),
            newdir.as_raw_fd(),
            n.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// `unlinkat(dirfd, name, flags)` (`AT_REMOVEDIR` for directories).
pub fn unlinkat(dirfd: BorrowedFd<'_>, name: &OsStr, flags: i32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::unlinkat(dirfd.as_raw_fd(), c.as_ptr(), flags) }).map(drop)
}

/// `renameat2`.
pub fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &OsStr,
    newdir: BorrowedFd<'_>,
    newname: &OsStr,
    flags: u32,
) -> io::Result<()> {
    let o = cstr(oldname)?;
    let n = cstr(newname)?;
    // SAFETY: valid C strings.
    cvt(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            o.as_ptr(),
            newdir.as_raw_fd(),
            n.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// `fchownat(dirfd, name, uid, gid, AT_SYMLINK_NOFOLLOW)`; an empty name acts on
/// `dirfd` itself (O_PATH descriptors included). `u32::MAX` leaves an id as is.
pub fn fchownat(dirfd: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    let c = cstr(name)?;
    let flags = if name.is_empty() {
        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    // SAFETY: valid C string.
    cvt(unsafe { libc::fchownat(dirfd.as_raw_fd(), c.as_ptr(), uid, gid, flags) }).map(drop)
}

/// The `/proc/self/fd/N` path of a descriptor: lets calls that have no
/// descriptor form (chmod, utimensat, xattrs) act on exactly the inode an
/// `O_PATH` descriptor holds, without resolving any name again.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    // A decimal number never contains NUL.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}

/// Opens again, with `flags`, exactly the inode `fd` holds (an `O_PATH`
/// descriptor included) through its `/proc/self/fd/N` path: no name is
/// resolved again, so what was checked on `fd` is what gets opened.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let p = proc_fd_path(fd);
    // The proc entry is itself a (magic) link: O_NOFOLLOW would refuse it.
    let flags = (flags & !libc::O_NOFOLLOW) | libc::O_CLOEXEC;
    // SAFETY: valid C string; the returned fd is owned below.
    let fd = cvt(unsafe { libc::open(p.as_ptr(), flags) })?;
    // SAFETY: fresh descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The mount flags (`ST_NODEV`, `ST_NOSUID`, ...) of the file system that
/// holds `fd`.
pub fn mount_flags(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: st is written by the kernel on success.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded, so st is initialised.
    Ok(unsafe { st.assume_init() }.f_flag)
}

/// chmod of the inode held by `fd` (any kind of descriptor).
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let p = proc_fd_path(fd);
    // SAFETY: valid C string.
    cvt(unsafe { libc::chmod(p.as_ptr(), mode & 0o7777) }).map(drop)
}

/// utimensat of the inode held by `fd`; `None` leaves a time (`UTIME_OMIT`).
pub fn utimes_fd(
    fd: BorrowedFd<'_>,
    atime: Option<(i64, i64)>,
    mtime: Option<(i64, i64)>,
) -> io::Result<()> {
    let ts = |t: Option<(i64, i64)>| match t {
        Some((s, n)) => libc::timespec {
            tv_sec: s,
            tv_nsec: n,
        },
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    };
    let times = [ts(atime), ts(mtime)];
    let p = proc_fd_path(fd);
    // SAFETY: valid C string and a two-element timespec array.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) }).map(drop)
}

/// setxattr on the inode held by `fd`.
pub fn setxattr_fd(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    let p = proc_fd_path(fd);
    let n = cstr(name)?;
    // SAFETY: valid C strings and buffer.
    cvt(unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

/// removexattr on the inode held by `fd`.
pub fn removexattr_fd(fd: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let p = proc_fd_path(fd);
    let n = cstr(name)?;
    // SAFETY: valid C strings.
    cvt(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) }).map(drop)
}

/// getxattr on the inode held by `fd`; with an empty `buf`, the value's size.
pub fn getxattr_fd(fd: BorrowedFd<'_>, name: &OsStr, buf: &mut [u8]) -> io::Result<usize> {
    let n = cstr(name)?;
    // A descriptor opened for I/O answers directly; an `O_PATH` one (`EBADF`)
    // through its proc path.
    // SAFETY: valid C string; buf is writable for its length.
    match cvt_size(unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    }) {
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => {}
        r => return r,
    }
    let p = proc_fd_path(fd);
    // SAFETY: valid C strings; buf is writable for its length.
    cvt_size(unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// listxattr on the inode held by `fd`; with an empty `buf`, the list's size.
pub fn listxattr_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // As in getxattr_fd.
    // SAFETY: buf is writable for its length.
    match cvt_size(unsafe { libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    {
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => {}
        r => return r,
    }
    let p = proc_fd_path(fd);
    // SAFETY: valid C string; buf is writable for its length.
    cvt_size(unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// A file offset or size as `off_t`: `EINVAL` for one beyond the largest
/// (a value from the wire is never wrapped into a negative offset).
pub fn off(v: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `pwrite` of the whole buffer.
pub fn pwrite_all(fd: BorrowedFd<'_>, mut data: &[u8], mut offset: u64) -> io::Result<()> {
    // The end must be a valid offset too, not only the start.
    off(offset
        .checked_add(data.len() as u64)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?)?;
    while !data.is_empty() {
        let n = pwrite(fd, data, offset)?;
        if n == 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        data = &data[n..];
        offset += n as u64;
    }
    Ok(())
}

/// `pwrite` once, returning the count written.
pub fn pwrite(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> io::Result<usize> {
    let offset = off(offset)?;
    // SAFETY: data is a valid buffer for its length.
    cvt_size(unsafe { libc::pwrite(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), offset) })
}

/// `pread` into `buf`, returning the count read.
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let offset = off(offset)?;
    // SAFETY: buf is writable for its length.
    cvt_size(unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), offset) })
}

/// Reads as much of `buf` as the file holds from `offset` (short only at the
/// end of the file).
pub fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = pread(fd, &mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// `ftruncate`.
pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    let size = off(size)?;
    // SAFETY: plain syscall on a valid descriptor.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size) }).map(drop)
}

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: start writing the range back
/// now (waits only if the device queue is full).
pub fn start_writeback(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let (offset, len) = (off(offset)?, off(len)?);
    // SAFETY: plain syscall on a valid descriptor.
    cvt(unsafe { libc::sync_file_range(fd.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) })
        .map(drop)
}

/// `posix_fadvise(POSIX_FADV_WILLNEED)`: start reading the range into the
/// page cache without waiting for it.
pub fn fadvise_willneed(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let (offset, len) = (off(offset)?, off(len)?);
    // SAFETY: plain syscall on a valid descriptor.
    let r = unsafe { libc::posix_fadvise(fd.as_raw_fd(), offset, len, libc::POSIX_FADV_WILLNEED) };
    // posix_fadvise returns the error number instead of setting errno.
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// `fallocate`.
pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let (offset, len) = (off(offset)?, off(len)?);
    // SAFETY: plain syscall on a valid descriptor.
    cvt(unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset, len) }).map(drop)
}

/// One `copy_file_range` call; returns the bytes copied (0 at end of file).
pub fn copy_file_range(
    src: BorrowedFd<'_>,
    src_offset: u64,
    dst: BorrowedFd<'_>,
    dst_offset: u64,
    len: u64,
) -> io::Result<usize> {
    let mut so = off(src_offset)?;
    let mut dof = off(dst_offset)?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    // SAFETY: offsets are valid pointers for the call.
    cvt_size(unsafe {
        libc::copy_file_range(src.as_raw_fd(), &mut so, dst.as_raw_fd(), &mut dof, len, 0)
    } as libc::ssize_t)
}

/// `fsync` or `fdatasync`.
pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    // SAFETY: plain syscall on a valid descriptor.
    cvt(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

/// `syncfs`: flushes the whole file system holding `fd`.
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a valid descriptor.
    cvt(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(drop)
}

/// `readlinkat(dirfd, name)`; an empty name reads the symlink `dirfd` holds.
pub fn readlinkat(dirfd: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: buf is writable for its length.
    let n = cvt_size(unsafe {
        libc::readlinkat(
            dirfd.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// Sets the process umask (both sides set 0: modes arrive already masked).
/// Process-wide: only the binary calls it, before it starts a serve or mount.
pub fn set_umask(mask: u32) {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) };
}

/// The process umask, from /proc/self/status (umask(2) would change it to
/// read it); `None` if the kernel does not say.
pub fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// Warns when the process umask is not 0: a serve or mount applies modes as
/// they arrive (already masked by the application's umask), and a mask here
/// would take bits off them again.
pub fn warn_umask() {
    if let Some(mask) = umask().filter(|m| *m != 0) {
        tracing::warn!(
            umask = format!("{mask:03o}"),
            "the process umask is not 0: created files lose mode bits; set it to 0 before starting (the mirrorfs binary does)"
        );
    }
}

/// Raises the open-files soft limit to the hard limit (the inode table holds
/// one O_PATH descriptor per known inode).
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: lim is written on success.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, lim.as_mut_ptr()) })?;
    // SAFETY: getrlimit succeeded.
    let mut lim = unsafe { lim.assume_init() };
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: valid rlimit.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::proto::path::{deep_path_bytes, RelPath};

    fn os(b: &[u8]) -> &OsStr {
        OsStr::from_bytes(b)
    }

    /// Makes every directory of `path` beneath `root`, name by name (path
    /// calls cannot reach that deep).
    fn mkdirs(root: BorrowedFd<'_>, path: &[u8]) {
        let mut dir = openat(root, OsStr::new("."), libc::O_PATH | libc::O_DIRECTORY, 0).unwrap();
        for name in path.split(|b| *b == b'/') {
            match mkdirat(dir.as_fd(), os(name), 0o755) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => panic!("mkdirat: {e}"),
            }
            dir = openat(dir.as_fd(), os(name), libc::O_PATH | libc::O_DIRECTORY, 0).unwrap();
        }
    }

    fn tempdir() -> (tempfile::TempDir, OwnedFd) {
        let t = tempfile::tempdir().unwrap();
        let fd = std::fs::File::open(t.path()).unwrap().into();
        (t, fd)
    }

    fn errno(r: io::Result<OwnedFd>) -> i32 {
        errno_of(&r.expect_err("must fail"))
    }

    #[test]
    fn a_10000_byte_path_resolves_beneath_the_root() {
        let (_t, root) = tempdir();
        let dir = deep_path_bytes(10_000);
        RelPath::new(dir.clone()).expect("a valid replicated path");
        mkdirs(root.as_fd(), &dir);
        let file = [&dir[..], b"/f"].concat();
        // The kernel alone refuses it.
        assert_eq!(
            errno(openat2_once(
                root.as_fd(),
                os(&file),
                libc::O_RDONLY,
                0,
                RESOLVE_STRICT
            )),
            libc::ENAMETOOLONG
        );
        let fd = openat2(
            root.as_fd(),
            os(&file),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
            RESOLVE_STRICT,
        )
        .unwrap();
        pwrite_all(fd.as_fd(), b"deep", 0).unwrap();
        let fd = openat2(
            root.as_fd(),
            os(&file),
            libc::O_RDONLY | libc::O_NOFOLLOW,
            0,
            RESOLVE_STRICT,
        )
        .unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(pread(fd.as_fd(), &mut buf, 0).unwrap(), 4);
        assert_eq!(&buf[..4], b"deep");
        // The same inode as reached name by name.
        let parent = openat2(
            root.as_fd(),
            os(&dir),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            RESOLVE_STRICT,
        )
        .unwrap();
        let by_name = fstatat(parent.as_fd(), OsStr::new("f")).unwrap();
        let st = fstat(fd.as_fd()).unwrap();
        assert_eq!((st.st_dev, st.st_ino), (by_name.st_dev, by_name.st_ino));
    }

    #[test]
    fn a_piece_may_end_exactly_at_path_max() {
        let (_t, root) = tempdir();
        // 16 names of 255 bytes make a first piece of exactly PIECE_MAX bytes.
        let name = [b'a'; 255];
        let mut dir = vec![name.to_vec(); 16].join(&b'/');
        assert_eq!(dir.len(), PIECE_MAX);
        dir.extend_from_slice(b"/b/c");
        mkdirs(root.as_fd(), &dir);
        let fd = openat2(
            root.as_fd(),
            os(&dir),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            RESOLVE_STRICT,
        )
        .unwrap();
        assert_eq!(
            fstat(fd.as_fd()).unwrap().st_mode & libc::S_IFMT,
            libc::S_IFDIR
        );
    }

    #[test]
    fn a_symlink_anywhere_in_a_long_path_is_refused() {
        let (_t, root) = tempdir();
        let dir = deep_path_bytes(10_000);
        mkdirs(root.as_fd(), &dir);
        let slashes: Vec<usize> = (0..dir.len()).filter(|i| dir[*i] == b'/').collect();
        // The components ending at: the second name (first piece), the last
        // name of the first piece (a piece boundary), and a name of the last
        // piece.
        let boundary = *slashes.iter().rfind(|i| **i <= PIECE_MAX).unwrap();
        for end in [slashes[1], boundary, slashes[slashes.len() - 2]] {
            // Move the directory aside and put a symlink to it in its place:
            // following it would reach the same tree.
            let (parent, name) = match dir[..end].iter().rposition(|b| *b == b'/') {
                Some(i) => (&dir[..i], &dir[i + 1..end]),
                None => (&b""[..], &dir[..end]),
            };
            let pfd = openat2(
                root.as_fd(),
                os(if parent.is_empty() { b"." } else { parent }),
                libc::O_PATH | libc::O_DIRECTORY,
                0,
                RESOLVE_STRICT,
            )
            .unwrap();
            let aside = [name, b".real"].concat();
            renameat2(pfd.as_fd(), os(name), pfd.as_fd(), os(&aside), 0).unwrap();
            symlinkat(os(&aside), pfd.as_fd(), os(name)).unwrap();
            let open = |resolve| {
                openat2(
                    root.as_fd(),
                    os(&dir),
                    libc::O_PATH | libc::O_DIRECTORY,
                    0,
                    resolve,
                )
            };
            assert_eq!(errno(open(RESOLVE_STRICT)), libc::ELOOP, "symlink at {end}");
            // Without RESOLVE_NO_SYMLINKS the (relative) link is followed,
            // still beneath the root.
            open(libc::RESOLVE_BENEATH).expect("followed beneath the root");
            unlinkat(pfd.as_fd(), os(name), 0).unwrap();
            renameat2(pfd.as_fd(), os(&aside), pfd.as_fd(), os(name), 0).unwrap();
            open(RESOLVE_STRICT).expect("restored");
        }
    }

    #[test]
    fn no_piece_climbs_out_of_the_directory_it_starts_from() {
        let (t, root) = tempdir();
        let dir = deep_path_bytes(5_000);
        mkdirs(root.as_fd(), &dir);
        std::fs::write(t.path().join("outside"), b"x").unwrap();
        // `..` never comes from a RelPath; a raw path that climbs back to the
        // root (legal for one `openat2` beneath the root) still never leaves
        // the directory its own piece starts from.
        let depth = dir.split(|b| *b == b'/').count();
        let climb = [&dir[..], &b"/..".repeat(depth)[..], b"/outside"].concat();
        assert_eq!(
            errno(openat2(
                root.as_fd(),
                os(&climb),
                libc::O_RDONLY,
                0,
                RESOLVE_STRICT
            )),
            libc::EXDEV
        );
        let escape = [&dir[..], &b"/..".repeat(depth + 1)[..], b"/etc"].concat();
        assert_eq!(
            errno(openat2(
                root.as_fd(),
                os(&escape),
                libc::O_RDONLY,
                0,
                RESOLVE_STRICT
            )),
            libc::EXDEV
        );
        assert!(RelPath::new(climb).is_err(), "RelPath refuses '..'");
        // Without RESOLVE_BENEATH, no splitting: the kernel's answer stands.
        assert_eq!(
            errno(openat2(root.as_fd(), os(&dir), libc::O_PATH, 0, 0)),
            libc::ENAMETOOLONG
        );
    }
}
