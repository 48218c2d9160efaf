//! Thin `io::Result` wrappers over the system calls the tests drive through the
//! mount and std does not expose: renameat2 flags, xattrs, mknod, fallocate,
//! copy_file_range and shared mmap. Each returns the real OS error.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn check_len(ret: isize) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// `renameat2(from, to, flags)` with `flags` one of `libc::RENAME_*`.
pub fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let (from, to) = (c_path(from)?, c_path(to)?);
    // SAFETY: both are valid NUL-terminated strings that outlive the call.
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    })
}

/// `lsetxattr(path, name, value, 0)`: on the link itself, never its target.
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let (p, n) = (c_path(path)?, c_path(Path::new(name))?);
    // SAFETY: valid C strings, and a pointer/length pair from a live slice.
    check(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

pub fn remove_xattr(path: &Path, name: &str) -> io::Result<()> {
    let (p, n) = (c_path(path)?, c_path(Path::new(name))?);
    // SAFETY: valid C strings that outlive the call.
    check(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) })
}

/// The value of xattr `name` of `path` (not following a final symlink).
pub fn xattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (p, n) = (c_path(path)?, c_path(Path::new(name))?);
    loop {
        // SAFETY: a size query: a null buffer of length 0 is allowed.
        let size =
            check_len(unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), ptr::null_mut(), 0) })?;
        let mut buf = vec![0u8; size];
        // SAFETY: the buffer is live and `buf.len()` bytes long.
        let ret =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        match check_len(ret) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf);
            }
            // The value grew between the two calls: ask again.
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The names of all xattrs of `path` (not following a final symlink), sorted.
pub fn xattr_names(path: &Path) -> io::Result<Vec<String>> {
    let p = c_path(path)?;
    loop {
        // SAFETY: a size query: a null buffer of length 0 is allowed.
        let size = check_len(unsafe { libc::llistxattr(p.as_ptr(), ptr::null_mut(), 0) })?;
        let mut buf = vec![0u8; size];
        // SAFETY: the buffer is live and `buf.len()` bytes long.
        let ret = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        match check_len(ret) {
            Ok(len) => {
                buf.truncate(len);
                let mut names: Vec<String> = buf
                    .split(|&b| b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect();
                names.sort();
                return Ok(names);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `mknod(path, S_IFIFO | mode, 0)`: a named pipe.
pub fn mkfifo(path: &Path, mode: libc::mode_t) -> io::Result<()> {
    let p = c_path(path)?;
    // SAFETY: a valid C string that outlives the call.
    check(unsafe { libc::mknod(p.as_ptr(), libc::S_IFIFO | mode, 0) })
}

/// `fallocate(fd, mode, offset, len)`.
pub fn fallocate(file: &File, mode: libc::c_int, offset: i64, len: i64) -> io::Result<()> {
    // SAFETY: the fd is open for the duration of the call.
    check(unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) })
}

/// `copy_file_range` of `len` bytes from `from` at `from_off` to `to` at
/// `to_off`, repeated until all is copied; returns the bytes copied.
pub fn copy_file_range(
    from: &File,
    mut from_off: i64,
    to: &File,
    mut to_off: i64,
    len: usize,
) -> io::Result<usize> {
    let mut done = 0;
    while done < len {
        // SAFETY: the fds are open and the offsets are live locals.
        let n = check_len(unsafe {
            libc::copy_file_range(
                from.as_raw_fd(),
                &mut from_off,
                to.as_raw_fd(),
                &mut to_off,
                len - done,
                0,
            )
        })?;
        if n == 0 {
            break; // end of the source file
        }
        done += n;
    }
    Ok(done)
}

/// Writes `data` at `offset` of `file` through a shared writable mapping of its
/// first `map_len` bytes, then `msync(MS_SYNC)` and unmaps.
pub fn mmap_write(file: &File, map_len: usize, offset: usize, data: &[u8]) -> io::Result<()> {
    assert!(offset + data.len() <= map_len, "write outside the mapping");
    // SAFETY: a fresh shared mapping of an open fd; we check for MAP_FAILED.
    let addr = unsafe {
        libc::mmap(
            ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: [offset, offset + len) lies inside the mapping (asserted above), and
    // nothing else in this process aliases it.
    unsafe { ptr::copy_nonoverlapping(data.as_ptr(), addr.cast::<u8>().add(offset), data.len()) };
    // SAFETY: `addr`/`map_len` are exactly the mapping made above.
    let synced = check(unsafe { libc::msync(addr, map_len, libc::MS_SYNC) });
    // SAFETY: as above; the mapping is not used after this.
    let unmapped = check(unsafe { libc::munmap(addr, map_len) });
    synced.and(unmapped)
}

/// `utimensat(path, {atime, mtime})` in whole seconds, following symlinks.
pub fn set_times(path: &Path, atime: i64, mtime: i64) -> io::Result<()> {
    let p = c_path(path)?;
    let ts = |sec| libc::timespec {
        tv_sec: sec,
        tv_nsec: 0,
    };
    let times = [ts(atime), ts(mtime)];
    // SAFETY: a valid C string and a live two-element timespec array.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) })
}
