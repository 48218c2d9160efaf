//! [`Overlay`]: the primary's filesystem as an `io::Result` API.
//!
//! Owns the local half of every operation and the decision of what to replicate:
//! each mutation is applied to the backing directory and submitted to
//! [`Replicate`] under one sequencer lock (so the stream's order is the local
//! order), and only returns once the secondary has applied it. Reads, lookups and
//! attributes are served locally and never touch the network. The metadata area
//! (`.mirrorfs` at the backing root) is invisible and unreachable through the
//! mount. Writable opens are replicated as handles, so writes follow the inode
//! across rename and unlink.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirEntryExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

use tracing::warn;

use super::inode::{InodeTable, Key, ROOT_INO};
use super::iomode::{IoModes, ReadMode};
use super::replicate::{Replicate, Ticket, Touched};
use crate::meta::META_DIR;
use crate::proto::path::{check_name, RelPath};
use crate::proto::wire::{HandleId, Op, Target, Timestamp};
use crate::sys;

/// How long a writable open waits for passthrough readers of the file to close.
const WRITER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Open flags kept on the backing descriptor and replicated with the open.
const SYNC_FLAGS: i32 = libc::O_SYNC | libc::O_DSYNC;

/// Who is asking (from the FUSE request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    /// Caller's user id.
    pub uid: u32,
    /// Caller's group id.
    pub gid: u32,
    /// Caller's process id.
    pub pid: u32,
}

/// A looked-up or created inode.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// FUSE inode number.
    pub ino: u64,
    /// Its attributes (st_ino is the backing inode number).
    pub attr: libc::stat,
}

/// The result of opening a file.
#[derive(Debug)]
pub struct Opened {
    /// The handle for later calls.
    pub fh: u64,
    /// For read-only opens that may use kernel passthrough: the backing file.
    pub passthrough: Option<Arc<File>>,
}

/// A change of attributes (`None` leaves an attribute as it is).
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time (`Some(None)` = now).
    pub atime: Option<Option<SystemTime>>,
    /// New modification time (`Some(None)` = now).
    pub mtime: Option<Option<SystemTime>>,
}

/// One directory entry.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// Name.
    pub name: OsString,
    /// Inode number to report (the FUSE number if known, else the backing one).
    pub ino: u64,
    /// `S_IF*` type bits (0 if unknown).
    pub kind: u32,
}

#[derive(Debug)]
struct Handle {
    ino: u64,
    file: Arc<File>,
    writable: bool,
    /// Its open was sent to the secondary...
    replicated: bool,
    /// ... on this connection epoch (another epoch: the secondary does not
    /// know the handle, and ops name the file by its path instead).
    epoch: u64,
    /// Served by kernel passthrough.
    passthrough: bool,
}

#[derive(Debug)]
struct DirHandle {
    file: File,
    entries: Vec<DirEntry>,
}

/// The primary's overlay of one backing directory.
pub struct Overlay {
    inodes: InodeTable,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    dirs: RwLock<HashMap<u64, Arc<DirHandle>>>,
    next_fh: AtomicU64,
    /// Which opens may use kernel passthrough.
    io_modes: IoModes,
    /// The kernel accepted passthrough at init.
    passthrough: AtomicBool,
    /// Held while a mutation is applied locally and submitted, so that the
    /// replication stream carries mutations in the order they were applied.
    sequencer: Mutex<()>,
    repl: Arc<dyn Replicate>,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay")
            .field("inodes", &self.inodes.len())
            .finish_non_exhaustive()
    }
}

fn err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

fn key_of(st: &libc::stat) -> Key {
    (st.st_dev, st.st_ino)
}

fn is_kind(st: &libc::stat, kind: u32) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

fn timestamp(sec: i64, nsec: i64) -> Timestamp {
    Timestamp {
        sec,
        nsec: nsec as u32,
    }
}

impl Overlay {
    /// An overlay of `backing` (an existing directory) replicating through
    /// `repl`, caching descriptors for up to half the open-files limit.
    pub fn new(backing: &Path, repl: Arc<dyn Replicate>) -> io::Result<Self> {
        let mut lim = libc::rlimit {
            rlim_cur: 1024,
            rlim_max: 1024,
        };
        // SAFETY: lim is valid for the call.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        Self::with_fd_budget(backing, repl, (lim.rlim_cur / 2) as usize)
    }

    /// As [`new`](Self::new), caching at most `budget` inode descriptors.
    pub fn with_fd_budget(
        backing: &Path,
        repl: Arc<dyn Replicate>,
        budget: usize,
    ) -> io::Result<Self> {
        let root = File::open(backing)?;
        let root_fd: OwnedFd = root.into();
        let st = sys::fstat(root_fd.as_fd())?;
        if !is_kind(&st, libc::S_IFDIR) {
            return Err(err(libc::ENOTDIR));
        }
        let path_fd = reopen(root_fd.as_fd(), libc::O_PATH | libc::O_DIRECTORY)?;
        Ok(Self {
            inodes: InodeTable::new(path_fd, key_of(&st), budget),
            handles: RwLock::new(HashMap::new()),
            dirs: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            io_modes: IoModes::new(WRITER_WAIT),
            passthrough: AtomicBool::new(false),
            sequencer: Mutex::new(()),
            repl,
        })
    }

    // ---- lookups and attributes: local only -------------------------------

    /// Looks `name` up in `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<Entry> {
        self.check_visible(parent, name)?;
        let pfd = self.inodes.fd(parent)?;
        let fd = sys::openat(pfd.as_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let st = sys::fstat(fd.as_fd())?;
        // Fast path: a name the table already knows for this inode.
        if let Some(ino) = self.inodes.lookup_known(parent, name, key_of(&st)) {
            return Ok(Entry { ino, attr: st });
        }
        // A new name is recorded under the sequencer, so that no rename can
        // move the entry between our openat and the insertion (the name is
        // what replication will send).
        let _guard = self.sequence();
        self.lookup_locked(parent, name)
    }

    /// [`lookup`](Self::lookup) for callers that hold the sequencer.
    fn lookup_locked(&self, parent: u64, name: &OsStr) -> io::Result<Entry> {
        let pfd = self.inodes.fd(parent)?;
        let fd = sys::openat(pfd.as_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let st = sys::fstat(fd.as_fd())?;
        let ino = self.inodes.lookup(parent, name, key_of(&st), fd, |old| {
            sys::fstat(old.as_fd()).is_ok_and(|s| s.st_nlink > 0 || is_kind(&s, libc::S_IFDIR))
        });
        Ok(Entry { ino, attr: st })
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
        self.io_modes.forget(ino);
    }

    /// Inodes the kernel knows, and descriptors cached for them.
    pub fn inode_stats(&self) -> (usize, usize) {
        (self.inodes.len(), self.inodes.cached())
    }

    /// The kernel accepted FUSE passthrough: read-only opens may use it.
    pub fn enable_passthrough(&self, on: bool) {
        self.passthrough.store(on, Ordering::Relaxed);
    }

    /// A passthrough open could not be set up after all (the adapter serves
    /// it through mirrorfs): stop counting it as passthrough.
    pub fn passthrough_refused(&self, fh: u64) {
        let mut handles = self.handles.write().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = handles.get_mut(&fh) {
            if h.passthrough {
                self.io_modes.release(h.ino, false, true);
                *h = Arc::new(Handle {
                    ino: h.ino,
                    file: h.file.clone(),
                    writable: h.writable,
                    replicated: h.replicated,
                    epoch: h.epoch,
                    passthrough: false,
                });
            }
        }
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> io::Result<libc::stat> {
        sys::fstat(self.inodes.fd(ino)?.as_fd())
    }

    /// The target of the symlink `ino`.
    pub fn readlink(&self, ino: u64) -> io::Result<Vec<u8>> {
        sys::readlinkat(self.inodes.fd(ino)?.as_fd(), OsStr::new(""))
    }

    /// Filesystem statistics of the backing filesystem.
    pub fn statfs(&self) -> io::Result<libc::statvfs> {
        let fd = self.inodes.fd(ROOT_INO)?;
        let p = sys::proc_fd_path(fd.as_fd());
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: st is written on success.
        sys::cvt(unsafe { libc::statvfs(p.as_ptr(), st.as_mut_ptr()) })?;
        // SAFETY: statvfs succeeded.
        Ok(unsafe { st.assume_init() })
    }

    /// `getxattr`; with `size` 0 the value's length.
    pub fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> io::Result<Vec<u8>> {
        let fd = self.inodes.fd(ino)?;
        let mut buf = vec![0u8; size as usize];
        let n = sys::getxattr_fd(fd.as_fd(), name, &mut buf)?;
        buf.truncate(n);
        if size == 0 {
            return Ok((n as u32).to_ne_bytes().to_vec());
        }
        Ok(buf)
    }

    /// `listxattr`; with `size` 0 the list's length.
    pub fn listxattr(&self, ino: u64, size: u32) -> io::Result<Vec<u8>> {
        let fd = self.inodes.fd(ino)?;
        let mut buf = vec![0u8; size as usize];
        let n = sys::listxattr_fd(fd.as_fd(), &mut buf)?;
        buf.truncate(n);
        if size == 0 {
            return Ok((n as u32).to_ne_bytes().to_vec());
        }
        Ok(buf)
    }

    // ---- directories --------------------------------------------------------

    /// Opens directory `ino`, taking a snapshot of its entries.
    pub fn opendir(&self, ino: u64) -> io::Result<u64> {
        let fd = self.inodes.fd(ino)?;
        let file = File::from(reopen(fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?);
        let path = Path::new(OsStr::from_bytes(
            sys::proc_fd_path(file.as_fd()).as_bytes(),
        ))
        .to_owned();
        let parent_ino = if ino == ROOT_INO {
            ROOT_INO
        } else {
            self.parent_of(ino).unwrap_or(ROOT_INO)
        };
        let mut entries = vec![
            DirEntry {
                name: ".".into(),
                ino,
                kind: libc::S_IFDIR,
            },
            DirEntry {
                name: "..".into(),
                ino: parent_ino,
                kind: libc::S_IFDIR,
            },
        ];
        let st = sys::fstat(file.as_fd())?;
        for e in std::fs::read_dir(&path)? {
            let e = e?;
            let name = e.file_name();
            if ino == ROOT_INO && name == META_DIR {
                continue;
            }
            let kind = e.file_type().map(file_type_bits).unwrap_or(0);
            let reported = self.inodes.by_key((st.st_dev, e.ino())).unwrap_or(e.ino());
            entries.push(DirEntry {
                name,
                ino: reported,
                kind,
            });
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, Arc::new(DirHandle { file, entries }));
        Ok(fh)
    }

    /// Entries of an open directory from index `offset` on.
    pub fn readdir(&self, fh: u64, offset: u64) -> io::Result<Vec<DirEntry>> {
        let d = self.dir(fh)?;
        Ok(d.entries.iter().skip(offset as usize).cloned().collect())
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: u64) {
        self.dirs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh);
    }

    /// `fsync` of a directory, on both sides.
    pub fn fsyncdir(&self, ino: u64, fh: u64, datasync: bool) -> io::Result<()> {
        let d = self.dir(fh)?;
        let target = Target::Path(self.inodes.path(ino)?);
        self.durable(d.file.as_fd(), target, datasync)
    }

    // ---- namespace mutations ------------------------------------------------

    /// `mknod` (regular files, FIFOs, sockets, devices).
    pub fn mknod(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u64,
    ) -> io::Result<Entry> {
        self.check_creatable(parent, name)?;
        let mode = mode & !umask;
        self.mutate(self.touch_child(parent, name), || {
            let (pfd, owner) = self.parent_and_owner(ctx, parent)?;
            sys::mknodat(pfd.as_fd(), name, mode, rdev)?;
            let (entry, st) = self.finish_create(parent, name, &pfd, owner, mode)?;
            let op = Op::Mknod {
                path: self.child_path(parent, name)?,
                mode: st.st_mode,
                rdev,
                uid: st.st_uid,
                gid: st.st_gid,
            };
            Ok((entry, vec![op]))
        })
    }

    /// `mkdir`.
    pub fn mkdir(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.check_creatable(parent, name)?;
        let mode = mode & !umask & 0o7777;
        self.mutate(self.touch_child(parent, name), || {
            let (pfd, owner) = self.parent_and_owner(ctx, parent)?;
            sys::mkdirat(pfd.as_fd(), name, mode)?;
            let (entry, st) = self.finish_create(parent, name, &pfd, owner, u32::MAX)?;
            let op = Op::Mkdir {
                path: self.child_path(parent, name)?,
                mode: st.st_mode & 0o7777,
                uid: st.st_uid,
                gid: st.st_gid,
            };
            Ok((entry, vec![op]))
        })
    }

    /// `symlink`: `parent/name` → `target`.
    pub fn symlink(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
    ) -> io::Result<Entry> {
        self.check_creatable(parent, name)?;
        if target.is_empty() || target.len() > crate::proto::path::MAX_SYMLINK_TARGET {
            return Err(err(libc::ENAMETOOLONG));
        }
        self.mutate(self.touch_child(parent, name), || {
            let (pfd, (uid, gid)) = self.parent_and_owner(ctx, parent)?;
            sys::symlinkat(target, pfd.as_fd(), name)?;
            sys::fchownat(pfd.as_fd(), name, uid, gid)?;
            let entry = self.lookup_locked(parent, name)?;
            let op = Op::Symlink {
                path: self.child_path(parent, name)?,
                target: target.as_bytes().to_vec(),
                uid: entry.attr.st_uid,
                gid: entry.attr.st_gid,
            };
            Ok((entry, vec![op]))
        })
    }

    /// `link`: a new name `newparent/newname` for `ino`.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> io::Result<Entry> {
        self.check_creatable(newparent, newname)?;
        let mut touched = self.touch_child(newparent, newname);
        touched.paths.extend(self.inodes.path(ino).ok());
        self.mutate(touched, || {
            let existing = self.inodes.path(ino)?;
            let fd = self.inodes.fd(ino)?;
            let pfd = self.inodes.fd(newparent)?;
            let c = sys::cstr(newname)?;
            let empty = c"";
            // SAFETY: valid C strings; AT_EMPTY_PATH links the inode `fd` holds.
            sys::cvt(unsafe {
                libc::linkat(
                    fd.as_raw_fd(),
                    empty.as_ptr(),
                    pfd.as_raw_fd(),
                    c.as_ptr(),
                    libc::AT_EMPTY_PATH,
                )
            })?;
            let entry = self.lookup_locked(newparent, newname)?;
            let op = Op::Link {
                existing,
                new: self.child_path(newparent, newname)?,
            };
            Ok((entry, vec![op]))
        })
    }

    /// `unlink`.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        self.remove(parent, name, 0)
    }

    /// `rmdir`.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        self.remove(parent, name, libc::AT_REMOVEDIR)
    }

    fn remove(&self, parent: u64, name: &OsStr, flags: i32) -> io::Result<()> {
        self.check_visible(parent, name)?;
        self.mutate(self.touch_child(parent, name), || {
            let path = self.child_path(parent, name)?;
            let pfd = self.inodes.fd(parent)?;
            let st = sys::fstatat(pfd.as_fd(), name)?;
            sys::unlinkat(pfd.as_fd(), name, flags)?;
            self.inodes.remove_name(key_of(&st), parent, name);
            let op = if flags & libc::AT_REMOVEDIR != 0 {
                Op::Rmdir { path }
            } else {
                Op::Unlink { path }
            };
            Ok(((), vec![op]))
        })
    }

    /// `renameat2` with `RENAME_NOREPLACE` / `RENAME_EXCHANGE`.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> io::Result<()> {
        self.check_visible(parent, name)?;
        self.check_creatable(newparent, newname)?;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return Err(err(libc::EINVAL));
        }
        let from = self.child_path(parent, name)?;
        let to = self.child_path(newparent, newname)?;
        let touched = Touched {
            paths: vec![from.clone(), to.clone()],
            rename: Some((from.clone(), to.clone())),
            data: None,
        };
        self.mutate(touched, || {
            let pfd = self.inodes.fd(parent)?;
            let npfd = self.inodes.fd(newparent)?;
            let src = sys::fstatat(pfd.as_fd(), name)?;
            let dst = sys::fstatat(npfd.as_fd(), newname).ok();
            sys::renameat2(pfd.as_fd(), name, npfd.as_fd(), newname, flags)?;
            if let Some(dst) = &dst {
                if key_of(dst) != key_of(&src) {
                    if flags & libc::RENAME_EXCHANGE != 0 {
                        self.inodes
                            .rename(key_of(dst), newparent, newname, parent, name);
                    } else {
                        self.inodes.remove_name(key_of(dst), newparent, newname);
                    }
                }
            }
            if dst.as_ref().map(key_of) != Some(key_of(&src)) {
                self.inodes
                    .rename(key_of(&src), parent, name, newparent, newname);
            }
            Ok(((), vec![Op::Rename { from, to, flags }]))
        })
    }

    // ---- opens ----------------------------------------------------------------

    /// Opens `ino` with `flags`. Writable opens are replicated as handles.
    pub fn open(&self, ino: u64, flags: i32) -> io::Result<Opened> {
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let fd = self.inodes.fd(ino)?;
        if !writable {
            let st = sys::fstat(fd.as_fd())?;
            let file = Arc::new(File::from(reopen(
                fd.as_fd(),
                libc::O_RDONLY | (flags & libc::O_NONBLOCK),
            )?));
            let allowed = self.passthrough.load(Ordering::Relaxed) && is_kind(&st, libc::S_IFREG);
            let mode = self.io_modes.open_read(ino, allowed);
            let passthrough = (mode == ReadMode::Passthrough).then(|| file.clone());
            let fh = self.insert_handle(ino, file, false, false, passthrough.is_some());
            return Ok(Opened { fh, passthrough });
        }
        self.io_modes.open_write(ino)?;
        let oflags = libc::O_RDWR | (flags & (SYNC_FLAGS | libc::O_TRUNC | libc::O_NONBLOCK));
        // The path, so that a secondary that cannot open it (its copy is
        // missing or damaged) gets it resynced.
        let touched = self.touch_ino(ino);
        let r = self.mutate(touched, || {
            let file = Arc::new(File::from(reopen(fd.as_fd(), oflags)?));
            let path = self.inodes.path(ino);
            let fh = self.insert_handle(ino, file, true, path.is_ok(), false);
            let ops = match path {
                Ok(path) => vec![Op::Open {
                    path,
                    handle: HandleId(fh),
                    flags: (oflags & (SYNC_FLAGS | libc::O_TRUNC)) as u32,
                }],
                // Opened through a name that no longer exists (e.g. /proc/PID/fd):
                // the secondary cannot reach this inode, so its writes stay local.
                Err(_) => Vec::new(),
            };
            Ok((
                Opened {
                    fh,
                    passthrough: None,
                },
                ops,
            ))
        });
        if r.is_err() && self.handles_of(ino) == 0 {
            // No handle was made: undo the writer count taken above.
            self.io_modes.release(ino, true, false);
        }
        r
    }

    /// Creates and opens `parent/name`.
    pub fn create(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> io::Result<(Entry, Opened)> {
        self.check_creatable(parent, name)?;
        let mode = mode & !umask & 0o7777;
        let keep = flags & (SYNC_FLAGS | libc::O_NONBLOCK);
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        self.mutate(self.touch_child(parent, name), || {
            let (pfd, owner) = self.parent_and_owner(ctx, parent)?;
            let path = self.child_path(parent, name)?;
            let created = sys::openat(
                pfd.as_fd(),
                name,
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_NOFOLLOW | keep,
                mode,
            );
            let (file, is_new) = match created {
                Ok(fd) => (fd, true),
                // It appeared since the kernel's lookup: open it, as open(2) would.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => {
                    let trunc = flags & libc::O_TRUNC;
                    let fd = sys::openat(
                        pfd.as_fd(),
                        name,
                        libc::O_RDWR | libc::O_NOFOLLOW | keep | trunc,
                        0,
                    )?;
                    (fd, false)
                }
                Err(e) => return Err(e),
            };
            // One lookup counted for the one entry the kernel gets.
            let (entry, st) = if is_new {
                self.finish_create(parent, name, &pfd, owner, mode)?
            } else {
                let entry = self.lookup_locked(parent, name)?;
                (entry, entry.attr)
            };
            let file = Arc::new(File::from(file));
            if writable {
                self.io_modes.open_write(entry.ino)?;
            }
            let fh = self.insert_handle(entry.ino, file, writable, writable, false);
            let handle = writable.then_some(HandleId(fh));
            let op = if is_new {
                Op::Create {
                    path,
                    mode: st.st_mode & 0o7777,
                    uid: st.st_uid,
                    gid: st.st_gid,
                    handle,
                    flags: keep as u32 & SYNC_FLAGS as u32,
                }
            } else {
                Op::Open {
                    path,
                    handle: HandleId(fh),
                    flags: ((keep & SYNC_FLAGS) | (flags & libc::O_TRUNC)) as u32,
                }
            };
            let ops = if is_new || writable {
                vec![op]
            } else {
                Vec::new()
            };
            Ok((
                (
                    entry,
                    Opened {
                        fh,
                        passthrough: None,
                    },
                ),
                ops,
            ))
        })
    }

    /// Closes a file handle (and the secondary's copy of a writable one).
    pub fn release(&self, fh: u64) {
        let h = self
            .handles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh);
        let Some(h) = h else { return };
        self.io_modes.release(h.ino, h.writable, h.passthrough);
        if self.remote(&h) {
            // Ordered after every write on the handle; nobody waits for it.
            let _guard = self.sequence();
            drop(self.repl.submit(
                Op::Close {
                    handle: HandleId(fh),
                },
                &Touched::default(),
            ));
        }
    }

    // ---- data -------------------------------------------------------------------

    /// Reads from a handle.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let h = self.handle(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            let n = sys::pread(h.file.as_fd(), &mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Writes through a writable handle; returns once the secondary has it.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> io::Result<u32> {
        let h = self.handle(fh)?;
        if !h.writable {
            return Err(err(libc::EBADF));
        }
        self.mutate(self.touch_data(h.ino, offset, data.len() as u64), || {
            let n = sys::pwrite(h.file.as_fd(), data, offset)?;
            let ops = self
                .handle_target(&h, fh)
                .map(|target| Op::Write {
                    target,
                    offset,
                    data: data[..n].to_vec(),
                })
                .into_iter()
                .collect();
            Ok((n as u32, ops))
        })
    }

    /// `fsync`/`fdatasync` of a file: the local sync and the secondary's overlap,
    /// and it returns only when both are durable.
    pub fn fsync(&self, ino: u64, fh: u64, datasync: bool) -> io::Result<()> {
        let h = self.handle(fh)?;
        let target = self.target(ino, Some(fh))?;
        self.durable(h.file.as_fd(), target, datasync)
    }

    /// `fallocate` through a writable handle.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> io::Result<()> {
        let h = self.handle(fh)?;
        if !h.writable {
            return Err(err(libc::EBADF));
        }
        self.mutate(self.touch_data(h.ino, offset, len), || {
            sys::fallocate(h.file.as_fd(), mode, offset, len)?;
            let ops = self
                .handle_target(&h, fh)
                .map(|target| Op::Fallocate {
                    target,
                    mode: mode as u32,
                    offset,
                    len,
                })
                .into_iter()
                .collect();
            Ok(((), ops))
        })
    }

    /// `copy_file_range` between two handles; the secondary copies the same
    /// range between its identical copies, so no data crosses the network.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_file_range(
        &self,
        ino_in: u64,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> io::Result<u32> {
        let src = self.handle(fh_in)?;
        let dst = self.handle(fh_out)?;
        if !dst.writable {
            return Err(err(libc::EBADF));
        }
        let len = len.min(u64::from(u32::MAX) & !0xfff);
        self.mutate(self.touch_data(dst.ino, offset_out, len), || {
            let n = sys::copy_file_range(
                src.file.as_fd(),
                offset_in,
                dst.file.as_fd(),
                offset_out,
                len,
            )?;
            let ops = match self.handle_target(&dst, fh_out) {
                Some(dst) if n > 0 => vec![Op::CopyRange {
                    src: self.target(ino_in, Some(fh_in))?,
                    src_offset: offset_in,
                    dst,
                    dst_offset: offset_out,
                    len: n as u64,
                }],
                _ => Vec::new(),
            };
            Ok((n as u32, ops))
        })
    }

    /// `lseek` for `SEEK_DATA`/`SEEK_HOLE` on a handle.
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> io::Result<i64> {
        let h = self.handle(fh)?;
        // SAFETY: plain syscall on a descriptor we own.
        let r = unsafe { libc::lseek(h.file.as_raw_fd(), offset, whence) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r)
    }

    // ---- attributes -------------------------------------------------------------

    /// `setattr`: size, mode, owner and times, each replicated.
    pub fn setattr(&self, ino: u64, fh: Option<u64>, attr: SetAttr) -> io::Result<libc::stat> {
        self.mutate(self.touch_ino(ino), || {
            let fd = self.inodes.fd(ino)?;
            let target = || self.target(ino, fh);
            let mut ops = Vec::new();
            if let Some(size) = attr.size {
                match fh
                    .and_then(|fh| self.handle(fh).ok())
                    .filter(|h| h.writable)
                {
                    Some(h) => sys::ftruncate(h.file.as_fd(), size)?,
                    None => sys::ftruncate(
                        reopen(fd.as_fd(), libc::O_WRONLY | libc::O_NONBLOCK)?.as_fd(),
                        size,
                    )?,
                }
                ops.push(Op::Truncate {
                    target: target()?,
                    size,
                });
            }
            if attr.uid.is_some() || attr.gid.is_some() {
                sys::fchownat(
                    fd.as_fd(),
                    OsStr::new(""),
                    attr.uid.unwrap_or(u32::MAX),
                    attr.gid.unwrap_or(u32::MAX),
                )?;
                let st = sys::fstat(fd.as_fd())?;
                let mode = (!is_kind(&st, libc::S_IFLNK)).then_some(st.st_mode & 0o7777);
                ops.push(Op::Chown {
                    target: target()?,
                    uid: attr.uid,
                    gid: attr.gid,
                    mode: if attr.mode.is_none() { mode } else { None },
                });
            }
            if let Some(mode) = attr.mode {
                sys::chmod_fd(fd.as_fd(), mode)?;
                ops.push(Op::Chmod {
                    target: target()?,
                    mode: mode & 0o7777,
                });
            }
            if attr.atime.is_some() || attr.mtime.is_some() {
                let conv = |t: Option<Option<SystemTime>>| -> Option<(i64, i64)> {
                    match t? {
                        None => Some((0, libc::UTIME_NOW)),
                        Some(t) => Some(system_time_parts(t)),
                    }
                };
                sys::utimes_fd(fd.as_fd(), conv(attr.atime), conv(attr.mtime))?;
                // Send the times as applied, so "now" is the same instant on both.
                let st = sys::fstat(fd.as_fd())?;
                ops.push(Op::SetTimes {
                    target: target()?,
                    atime: attr.atime.map(|_| timestamp(st.st_atime, st.st_atime_nsec)),
                    mtime: attr.mtime.map(|_| timestamp(st.st_mtime, st.st_mtime_nsec)),
                });
            }
            let st = sys::fstat(fd.as_fd())?;
            Ok((st, ops))
        })
    }

    /// `setxattr`. Only attributes that are replicated data
    /// ([`crate::xattr::is_replicated`]) go to the secondary; others (a host's
    /// security label) change here only.
    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        if !crate::xattr::is_replicated(name.as_bytes()) {
            return sys::setxattr_fd(self.inodes.fd(ino)?.as_fd(), name, value, flags);
        }
        self.mutate(self.touch_ino(ino), || {
            let fd = self.inodes.fd(ino)?;
            sys::setxattr_fd(fd.as_fd(), name, value, flags)?;
            Ok((
                (),
                vec![Op::SetXattr {
                    target: self.target(ino, None)?,
                    name: name.as_bytes().to_vec(),
                    value: value.to_vec(),
                    flags: flags as u32,
                }],
            ))
        })
    }

    /// `removexattr` (replicated only for replicated attributes, as
    /// [`setxattr`](Self::setxattr)).
    pub fn removexattr(&self, ino: u64, name: &OsStr) -> io::Result<()> {
        if !crate::xattr::is_replicated(name.as_bytes()) {
            return sys::removexattr_fd(self.inodes.fd(ino)?.as_fd(), name);
        }
        self.mutate(self.touch_ino(ino), || {
            let fd = self.inodes.fd(ino)?;
            sys::removexattr_fd(fd.as_fd(), name)?;
            Ok((
                (),
                vec![Op::RemoveXattr {
                    target: self.target(ino, None)?,
                    name: name.as_bytes().to_vec(),
                }],
            ))
        })
    }

    // ---- helpers ----------------------------------------------------------------

    /// Applies a mutation locally and submits its ops in one sequencer section,
    /// then waits (outside the lock) until the secondary has applied them all.
    /// `touched` is announced first, so that it is recorded durably before the
    /// local change when the peer is away.
    fn mutate<T>(
        &self,
        touched: Touched,
        f: impl FnOnce() -> io::Result<(T, Vec<Op>)>,
    ) -> io::Result<T> {
        let guard = self.sequence();
        self.repl.begin(&touched)?;
        let (value, ops) = f()?;
        let tickets: Vec<Ticket> = ops
            .into_iter()
            .map(|op| self.repl.submit(op, &touched))
            .collect();
        drop(guard);
        let mut result = Ok(value);
        for t in tickets {
            if let Err(e) = t.wait() {
                if result.is_ok() {
                    warn!(error = %e, "the secondary did not apply a mutation the primary applied");
                    result = Err(e);
                }
            }
        }
        result
    }

    /// Makes `fd` durable locally while the secondary makes `target` durable.
    fn durable(&self, fd: BorrowedFd<'_>, target: Target, datasync: bool) -> io::Result<()> {
        let ticket = {
            let _guard = self.sequence();
            self.repl.begin(&Touched::default())?;
            self.repl
                .submit(Op::Fsync { target, datasync }, &Touched::default())
        };
        let local = sys::fsync(fd, datasync);
        let remote = ticket.wait();
        local.and(remote.map(drop))
    }

    /// The mutation touches `parent/name`.
    fn touch_child(&self, parent: u64, name: &OsStr) -> Touched {
        Touched::paths(self.child_path(parent, name).ok().into_iter().collect())
    }

    /// The mutation touches the inode `ino` (by its path; none if unlinked).
    fn touch_ino(&self, ino: u64) -> Touched {
        Touched::paths(self.inodes.path(ino).ok().into_iter().collect())
    }

    /// The mutation changes only bytes `[offset, offset + len)` of `ino`.
    fn touch_data(&self, ino: u64, offset: u64, len: u64) -> Touched {
        let mut t = self.touch_ino(ino);
        if t.paths.len() == 1 {
            t.data = Some((offset, len));
        }
        t
    }

    /// The backing root (an O_PATH directory) for the resync.
    pub(crate) fn backing_root(&self) -> io::Result<Arc<OwnedFd>> {
        self.inodes.fd(ROOT_INO)
    }

    /// The sequencer: held while a mutation is applied locally and submitted.
    /// The resync and the epoch rotation take it to see no half-done mutation.
    pub fn sequence(&self) -> MutexGuard<'_, ()> {
        self.sequencer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handle(&self, fh: u64) -> io::Result<Arc<Handle>> {
        self.handles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh)
            .cloned()
            .ok_or_else(|| err(libc::EBADF))
    }

    fn dir(&self, fh: u64) -> io::Result<Arc<DirHandle>> {
        self.dirs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh)
            .cloned()
            .ok_or_else(|| err(libc::EBADF))
    }

    fn insert_handle(
        &self,
        ino: u64,
        file: Arc<File>,
        writable: bool,
        replicated: bool,
        passthrough: bool,
    ) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                fh,
                Arc::new(Handle {
                    ino,
                    file,
                    writable,
                    replicated,
                    epoch: self.repl.epoch(),
                    passthrough,
                }),
            );
        fh
    }

    /// True when the secondary holds handle `h` (opened on this connection).
    fn remote(&self, h: &Handle) -> bool {
        h.replicated && h.epoch == self.repl.epoch()
    }

    /// How the secondary names the file of handle `fh` for a data op: the
    /// handle if it knows it, else the file's path; `None` when neither exists
    /// (unlinked while open, and opened before a reconnect).
    fn handle_target(&self, h: &Handle, fh: u64) -> Option<Target> {
        if self.remote(h) {
            Some(Target::Handle(HandleId(fh)))
        } else if h.writable {
            self.inodes.path(h.ino).ok().map(Target::Path)
        } else {
            None
        }
    }

    /// Open handles on `ino`.
    fn handles_of(&self, ino: u64) -> usize {
        self.handles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|h| h.ino == ino)
            .count()
    }

    /// How the secondary names `ino`: the given writable handle if it holds one,
    /// else its path, else (unlinked) any replicated writable handle on it.
    fn target(&self, ino: u64, fh: Option<u64>) -> io::Result<Target> {
        if let Some(fh) = fh {
            if self.handle(fh).is_ok_and(|h| self.remote(&h)) {
                return Ok(Target::Handle(HandleId(fh)));
            }
        }
        match self.inodes.path(ino) {
            Ok(p) => Ok(Target::Path(p)),
            Err(e) => self
                .handles
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(_, h)| h.ino == ino && self.remote(h))
                .map(|(fh, _)| Target::Handle(HandleId(*fh)))
                .ok_or(e),
        }
    }

    fn child_path(&self, parent: u64, name: &OsStr) -> io::Result<RelPath> {
        self.inodes
            .path(parent)?
            .join(name)
            .map_err(|_| err(libc::ENAMETOOLONG))
    }

    fn parent_of(&self, ino: u64) -> Option<u64> {
        self.inodes.parent(ino)
    }

    /// The parent's descriptor and the owner a new entry gets: the caller, with
    /// the parent's group if the parent is setgid.
    fn parent_and_owner(&self, ctx: Ctx, parent: u64) -> io::Result<(Arc<OwnedFd>, (u32, u32))> {
        let pfd = self.inodes.fd(parent)?;
        let st = sys::fstat(pfd.as_fd())?;
        let gid = if st.st_mode & libc::S_ISGID != 0 {
            st.st_gid
        } else {
            ctx.gid
        };
        Ok((pfd, (ctx.uid, gid)))
    }

    /// Gives a new entry its owner, restores the mode bits chown clears, and
    /// looks it up.
    fn finish_create(
        &self,
        parent: u64,
        name: &OsStr,
        pfd: &OwnedFd,
        (uid, gid): (u32, u32),
        mode: u32,
    ) -> io::Result<(Entry, libc::stat)> {
        sys::fchownat(pfd.as_fd(), name, uid, gid)?;
        let entry = self.lookup_locked(parent, name)?;
        if mode != u32::MAX && entry.attr.st_mode & 0o7777 != mode & 0o7777 {
            let fd = self.inodes.fd(entry.ino)?;
            sys::chmod_fd(fd.as_fd(), mode)?;
            let st = sys::fstat(fd.as_fd())?;
            return Ok((
                Entry {
                    ino: entry.ino,
                    attr: st,
                },
                st,
            ));
        }
        Ok((entry, entry.attr))
    }

    fn check_visible(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        check_name(name).map_err(|_| {
            if name.len() > crate::proto::path::MAX_NAME {
                err(libc::ENAMETOOLONG)
            } else {
                err(libc::EINVAL)
            }
        })?;
        if parent == ROOT_INO && name == META_DIR {
            return Err(err(libc::ENOENT));
        }
        Ok(())
    }

    fn check_creatable(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        self.check_visible(parent, name).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOENT) {
                // The metadata area's name is reserved at the root.
                err(libc::EPERM)
            } else {
                e
            }
        })
    }
}

/// Opens the inode an O_PATH descriptor holds, with `flags`.
fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let p = sys::proc_fd_path(fd);
    // SAFETY: valid C string; the result is owned below.
    let raw = sys::cvt(unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn file_type_bits(t: std::fs::FileType) -> u32 {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        libc::S_IFDIR
    } else if t.is_file() {
        libc::S_IFREG
    } else if t.is_symlink() {
        libc::S_IFLNK
    } else if t.is_fifo() {
        libc::S_IFIFO
    } else if t.is_socket() {
        libc::S_IFSOCK
    } else if t.is_char_device() {
        libc::S_IFCHR
    } else if t.is_block_device() {
        libc::S_IFBLK
    } else {
        0
    }
}

fn system_time_parts(t: SystemTime) -> (i64, i64) {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
        Err(e) => {
            let d = e.duration();
            let (s, n) = (d.as_secs() as i64, i64::from(d.subsec_nanos()));
            if n == 0 {
                (-s, 0)
            } else {
                (-s - 1, 1_000_000_000 - n)
            }
        }
    }
}

#[cfg(test)]
#[path = "ops_test.rs"]
mod tests;
