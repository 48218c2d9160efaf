//! [`Applier`]: reproduces one replicated operation on the replica tree.
//!
//! Owns the root directory descriptor and the handles the primary opened for
//! writing. Must not follow a symlink or `..` out of the root: parents are
//! resolved with [`sys::openat2`] and [`sys::RESOLVE_STRICT`], final names with
//! `*at` calls and `AT_SYMLINK_NOFOLLOW`/`O_NOFOLLOW`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::proto::path::RelPath;
use crate::proto::wire::{HandleId, Op, Target, Timestamp};
use crate::sys;

/// Flags a replicated open may carry to the secondary.
const OPEN_FLAGS_KEPT: i32 = libc::O_SYNC | libc::O_DSYNC;

/// What applying an op left to do.
#[derive(Debug)]
pub enum Applied {
    /// Done.
    Done,
    /// A durability op: `fsync`/`fdatasync` this descriptor, then report.
    Sync {
        /// The file or directory to make durable.
        fd: OwnedFd,
        /// `fdatasync` rather than `fsync`.
        datasync: bool,
    },
}

/// Applies operations beneath one replica root.
#[derive(Debug)]
pub struct Applier {
    root: OwnedFd,
    handles: HashMap<HandleId, File>,
}

impl Applier {
    /// Opens the replica root (which must be an existing directory).
    pub fn open(root: &Path) -> io::Result<Self> {
        let root = File::open(root)?;
        if !root.metadata()?.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        Ok(Self {
            root: root.into(),
            handles: HashMap::new(),
        })
    }

    /// Replicated handles currently open.
    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }

    /// Closes every replicated handle (the primary that opened them is gone).
    pub fn close_all_handles(&mut self) {
        self.handles.clear();
    }

    /// Applies `op`; an error is the errno to report to the primary.
    pub fn apply(&mut self, op: &Op) -> io::Result<Applied> {
        match op {
            Op::Create {
                path,
                mode,
                uid,
                gid,
                handle,
                flags,
            } => {
                let (dir, name) = self.parent(path)?;
                let oflags = libc::O_CREAT
                    | libc::O_EXCL
                    | libc::O_RDWR
                    | libc::O_NOFOLLOW
                    | (*flags as i32 & OPEN_FLAGS_KEPT);
                let fd = sys::openat(dir.as_fd(), name, oflags, mode & 0o7777)?;
                set_owner_and_mode(fd.as_fd(), *uid, *gid, *mode)?;
                if let Some(h) = handle {
                    self.handles.insert(*h, File::from(fd));
                }
            }
            Op::Mknod {
                path,
                mode,
                rdev,
                uid,
                gid,
            } => {
                let (dir, name) = self.parent(path)?;
                let kind = mode & libc::S_IFMT;
                if ![
                    libc::S_IFIFO,
                    libc::S_IFSOCK,
                    libc::S_IFCHR,
                    libc::S_IFBLK,
                    libc::S_IFREG,
                ]
                .contains(&kind)
                {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                }
                sys::mknodat(dir.as_fd(), name, kind | (mode & 0o7777), *rdev)?;
                let fd = sys::openat(dir.as_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
                set_owner_and_mode(fd.as_fd(), *uid, *gid, *mode)?;
            }
            Op::Mkdir {
                path,
                mode,
                uid,
                gid,
            } => {
                let (dir, name) = self.parent(path)?;
                sys::mkdirat(dir.as_fd(), name, mode & 0o7777)?;
                let fd = sys::openat(
                    dir.as_fd(),
                    name,
                    libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY,
                    0,
                )?;
                set_owner_and_mode(fd.as_fd(), *uid, *gid, *mode)?;
            }
            Op::Symlink {
                path,
                target,
                uid,
                gid,
            } => {
                let (dir, name) = self.parent(path)?;
                // The target is stored, never resolved here.
                sys::symlinkat(OsStr::from_bytes(target), dir.as_fd(), name)?;
                sys::fchownat(dir.as_fd(), name, *uid, *gid)?;
            }
            Op::Link { existing, new } => {
                let (odir, oname) = self.parent(existing)?;
                let (ndir, nname) = self.parent(new)?;
                sys::linkat(odir.as_fd(), oname, ndir.as_fd(), nname)?;
            }
            Op::Unlink { path } => {
                let (dir, name) = self.parent(path)?;
                sys::unlinkat(dir.as_fd(), name, 0)?;
            }
            Op::Rmdir { path } => {
                let (dir, name) = self.parent(path)?;
                sys::unlinkat(dir.as_fd(), name, libc::AT_REMOVEDIR)?;
            }
            Op::Rename { from, to, flags } => {
                let allowed = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE;
                if flags & !allowed != 0 {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                }
                let (odir, oname) = self.parent(from)?;
                let (ndir, nname) = self.parent(to)?;
                sys::renameat2(odir.as_fd(), oname, ndir.as_fd(), nname, *flags)?;
            }
            Op::Open {
                path,
                handle,
                flags,
            } => {
                let mut oflags = libc::O_RDWR | (*flags as i32 & OPEN_FLAGS_KEPT);
                if *flags as i32 & libc::O_TRUNC != 0 {
                    oflags |= libc::O_TRUNC;
                }
                let fd = self.resolve(path, oflags | libc::O_NOFOLLOW)?;
                if !sys::fstat(fd.as_fd()).is_ok_and(|st| is_kind(&st, libc::S_IFREG)) {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                }
                self.handles.insert(*handle, File::from(fd));
            }
            Op::Close { handle } => {
                self.handles
                    .remove(handle)
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
            }
            Op::Write {
                target,
                offset,
                data,
            } => {
                let fd = self.writable(target)?;
                sys::pwrite_all(fd.fd(), data, *offset)?;
            }
            Op::Truncate { target, size } => {
                let fd = self.writable(target)?;
                sys::ftruncate(fd.fd(), *size)?;
            }
            Op::Chmod { target, mode } => {
                let fd = self.object(target)?;
                sys::chmod_fd(fd.fd(), *mode)?;
            }
            Op::Chown {
                target,
                uid,
                gid,
                mode,
            } => {
                let fd = self.object(target)?;
                sys::fchownat(
                    fd.fd(),
                    OsStr::new(""),
                    uid.unwrap_or(u32::MAX),
                    gid.unwrap_or(u32::MAX),
                )?;
                if let Some(mode) = mode {
                    sys::chmod_fd(fd.fd(), *mode)?;
                }
            }
            Op::SetTimes {
                target,
                atime,
                mtime,
            } => {
                let fd = self.object(target)?;
                let t = |t: &Option<Timestamp>| t.map(|t| (t.sec, i64::from(t.nsec)));
                sys::utimes_fd(fd.fd(), t(atime), t(mtime))?;
            }
            Op::SetXattr {
                target,
                name,
                value,
                flags,
            } => {
                let fd = self.object(target)?;
                sys::setxattr_fd(fd.fd(), OsStr::from_bytes(name), value, *flags as i32)?;
            }
            Op::RemoveXattr { target, name } => {
                let fd = self.object(target)?;
                sys::removexattr_fd(fd.fd(), OsStr::from_bytes(name))?;
            }
            Op::Fallocate {
                target,
                mode,
                offset,
                len,
            } => {
                let fd = self.writable(target)?;
                sys::fallocate(fd.fd(), *mode as i32, *offset, *len)?;
            }
            Op::CopyRange {
                src,
                src_offset,
                dst,
                dst_offset,
                len,
            } => {
                let s = self.readable(src)?;
                let d = self.writable(dst)?;
                let mut done = 0u64;
                while done < *len {
                    let n = sys::copy_file_range(
                        s.fd(),
                        src_offset + done,
                        d.fd(),
                        dst_offset + done,
                        len - done,
                    )?;
                    if n == 0 {
                        // The replica's source is shorter than the primary's was:
                        // the trees differ, which must not pass silently.
                        return Err(io::Error::from_raw_os_error(libc::EIO));
                    }
                    done += n as u64;
                }
            }
            Op::Fsync { target, datasync } => {
                let fd = match target {
                    Target::Handle(h) => self.handle(*h)?.try_clone()?.into(),
                    Target::Path(p) => {
                        self.resolve(p, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOFOLLOW)?
                    }
                };
                return Ok(Applied::Sync {
                    fd,
                    datasync: *datasync,
                });
            }
        }
        Ok(Applied::Done)
    }

    /// Opens `path` beneath the root with `flags`, never leaving the root and
    /// never following a symlink.
    fn resolve(&self, path: &RelPath, flags: i32) -> io::Result<OwnedFd> {
        sys::openat2(
            self.root.as_fd(),
            path.as_os_str(),
            flags,
            0,
            sys::RESOLVE_STRICT,
        )
    }

    /// The parent directory of `path` and its last name.
    fn parent<'p>(&self, path: &'p RelPath) -> io::Result<(OwnedFd, &'p OsStr)> {
        let (parent, name) = path
            .split()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let dir = self.resolve(&parent, libc::O_PATH | libc::O_DIRECTORY)?;
        Ok((dir, name))
    }

    fn handle(&self, h: HandleId) -> io::Result<&File> {
        self.handles
            .get(&h)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    /// The inode a target names, without following a final symlink (an O_PATH
    /// descriptor for paths).
    fn object(&self, t: &Target) -> io::Result<Fd<'_>> {
        match t {
            Target::Handle(h) => Ok(Fd::Borrowed(self.handle(*h)?.as_fd())),
            Target::Path(p) => Ok(Fd::Owned(self.resolve(p, libc::O_PATH | libc::O_NOFOLLOW)?)),
        }
    }

    fn writable(&self, t: &Target) -> io::Result<Fd<'_>> {
        match t {
            Target::Handle(h) => Ok(Fd::Borrowed(self.handle(*h)?.as_fd())),
            Target::Path(p) => Ok(Fd::Owned(
                self.resolve(p, libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK)?,
            )),
        }
    }

    fn readable(&self, t: &Target) -> io::Result<Fd<'_>> {
        match t {
            Target::Handle(h) => Ok(Fd::Borrowed(self.handle(*h)?.as_fd())),
            Target::Path(p) => Ok(Fd::Owned(
                self.resolve(p, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK)?,
            )),
        }
    }
}

/// A descriptor that is either a replicated handle or freshly resolved.
enum Fd<'a> {
    Borrowed(BorrowedFd<'a>),
    Owned(OwnedFd),
}

impl Fd<'_> {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Borrowed(b) => *b,
            Self::Owned(o) => o.as_fd(),
        }
    }
}

fn is_kind(st: &libc::stat, kind: u32) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

/// Sets exactly the primary's owner and mode (chown first: it clears setuid and
/// setgid, which the chmod then restores).
fn set_owner_and_mode(fd: BorrowedFd<'_>, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    sys::fchownat(fd, OsStr::new(""), uid, gid)?;
    sys::chmod_fd(fd, mode)
}

#[cfg(test)]
#[path = "apply_test.rs"]
mod tests;
