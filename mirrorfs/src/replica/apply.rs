//! [`Applier`]: reproduces one replicated operation on the replica tree.
//!
//! Owns the root directory descriptor and the handles the primary opened for
//! writing. Must not follow a symlink or `..` out of the root: parents are
//! resolved with [`sys::openat2`] and [`sys::RESOLVE_STRICT`], final names with
//! `*at` calls and `AT_SYMLINK_NOFOLLOW`/`O_NOFOLLOW`. Must not open anything
//! but a regular file for data (write, truncate, fallocate, copy range,
//! checksums, read-ahead, open of a handle; fsync also a directory): a device
//! node the primary replicated is metadata here, never a way to this node's
//! disks (see `open_regular`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tracing::{error, warn};
use xxhash_rust::xxh3::xxh3_64;

use crate::meta::{Inconsistent, Meta, META_DIR};
use crate::proto::generation::{GenerationId, History};
use crate::proto::path::RelPath;
use crate::proto::wire::{
    encode_checksums, encode_listing_page, listing_entry_len, FileFacts, HandleId, Op, Target,
    Timestamp, MAX_SUSPECTS,
};
use crate::{sys, xattr};

/// Flags a replicated open may carry to the secondary.
const OPEN_FLAGS_KEPT: i32 = libc::O_SYNC | libc::O_DSYNC;

/// What applying an op left to do.
#[derive(Debug)]
pub enum Applied {
    /// Done.
    Done,
    /// A durability op: sync this descriptor (`how`), then report.
    Sync {
        /// The file or directory to make durable, or one on the file
        /// system to flush.
        fd: OwnedFd,
        /// Which sync.
        how: SyncHow,
    },
    /// Done, with an answer for the primary (a listing, checksums).
    Reply(Vec<u8>),
}

/// How a durability op makes its descriptor durable (off the apply thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncHow {
    /// `fsync` of the file or directory.
    Fsync,
    /// `fdatasync` of the file.
    Fdatasync,
    /// `syncfs` of the replica's whole file system: an [`Op::Barrier`],
    /// which makes every op applied before it durable at once. Chosen over
    /// an fsync of every file and directory changed since the last barrier:
    /// one flush of the journal instead of one per changed file (a churn of
    /// small files would pay for each), no bookkeeping on the apply path,
    /// and measured no dearer for a 4 KiB write on an ext4 shared with the
    /// primary under load (p50 130 µs against 156 µs for fdatasync of the
    /// one file; 2026-12, the test VM). What it also flushes is data of
    /// others on that file system (the replica should have its own).
    Syncfs,
}

impl SyncHow {
    /// Runs the sync on `fd` (blocking: on the blocking pool).
    pub fn run(self, fd: BorrowedFd<'_>) -> io::Result<()> {
        match self {
            Self::Fsync => sys::fsync(fd, false),
            Self::Fdatasync => sys::fsync(fd, true),
            Self::Syncfs => sys::syncfs(fd),
        }
    }
}

/// Applies operations beneath one replica root.
#[derive(Debug)]
pub struct Applier {
    root: OwnedFd,
    handles: HashMap<HandleId, File>,
    meta: Meta,
    /// Work done so far (see [`Applier::work`]).
    work: Arc<AtomicU64>,
    /// The primary's node name, recorded in the inconsistent mark.
    primary: String,
}

/// Bytes one `copy_file_range` call of a replicated copy covers at most.
const COPY_PIECE: u64 = 16 << 20;

/// Writes by path (the resync's) at least this big are written back at once:
/// the pieces a resync sends while the application writes are 32 KiB.
const WRITEBACK_AT: usize = 32 << 10;

/// Read-ahead hints for the files the stream will soon checksum. The
/// secondary applies ops one at a time, so without hints the cold reads of a
/// `--full` resync (several files asked for at once) would happen one after
/// another. A hint changes nothing on disk and may be dropped.
#[derive(Debug, Clone)]
pub struct Prefetch {
    root: Arc<OwnedFd>,
    busy: Arc<AtomicUsize>,
}

impl Prefetch {
    /// Hints running at once at most (the rest are dropped).
    const MAX_BUSY: usize = 32;

    /// The work of hinting what `op` is about to read, to run on a blocking
    /// thread; `None` when `op` reads nothing ahead or enough hints run.
    pub fn job(&self, op: &Op) -> Option<impl FnOnce() + Send + 'static> {
        let Op::Checksums {
            path,
            block,
            first,
            count,
        } = op
        else {
            return None;
        };
        if touches_meta(op) || self.busy.fetch_add(1, Ordering::Relaxed) >= Self::MAX_BUSY {
            self.busy.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let (me, path) = (self.clone(), path.clone());
        // Checked like every product of wire values (the decoder bounds them
        // already): an overflow hints nothing rather than a wrapped range.
        let range = first
            .checked_mul(u64::from(*block))
            .zip(u64::from(*count).checked_mul(u64::from(*block)));
        Some(move || {
            if let Some((offset, len)) = range {
                if let Ok(fd) = open_regular(me.root.as_fd(), &path, libc::O_RDONLY) {
                    // Only a hint: whatever fails, the checksum reads anyway.
                    let _ = sys::fadvise_willneed(fd.as_fd(), offset, len.max(1));
                }
            }
            me.busy.fetch_sub(1, Ordering::Relaxed);
        })
    }
}

impl Applier {
    /// Read-ahead hints beneath the same root.
    pub fn prefetch(&self) -> io::Result<Prefetch> {
        Ok(Prefetch {
            root: Arc::new(self.root.try_clone()?),
            busy: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Opens the replica root (which must be an existing directory).
    pub fn open(root: &Path) -> io::Result<Self> {
        let dir = File::open(root)?;
        if !dir.metadata()?.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        Ok(Self {
            root: dir.into(),
            handles: HashMap::new(),
            meta: Meta::open(root)?,
            work: Arc::new(AtomicU64::new(0)),
            primary: "unknown".into(),
        })
    }

    /// The node name of the primary whose ops this applies (authenticated
    /// by its certificate), for the inconsistent mark.
    pub fn set_primary(&mut self, name: &str) {
        name.clone_into(&mut self.primary);
    }

    /// A counter of the work done, which only grows: one per op applied, per
    /// entry removed, per block checksummed (MiB-sized) and per piece copied
    /// (at most [`COPY_PIECE`]). It moves while a long op makes progress,
    /// and stands still while the disk hangs: `serve` reports it to the
    /// primary, which tells working from stalled by it.
    pub fn work(&self) -> Arc<AtomicU64> {
        self.work.clone()
    }

    /// This replica's generation history.
    pub fn history(&self) -> io::Result<History> {
        self.meta.load_history()
    }

    /// Directories this tree may hold unreplicated changes in (see
    /// [`Meta::suspects`]), at most [`MAX_SUSPECTS`] (else the root alone).
    pub fn suspects(&self) -> io::Result<Vec<RelPath>> {
        let s = self.meta.suspects()?;
        if s.len() > MAX_SUSPECTS {
            return Ok(vec![RelPath::root()]);
        }
        Ok(s.into_iter().collect())
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
    ///
    /// A change this tree refuses (its disk is full, ...) is one the
    /// primary made and this tree lacks, while it may still hold the
    /// primary's generation: the tree is marked inconsistent first (until a
    /// resync's `SetGeneration` clears it), so that it is never promoted or
    /// mounted as if it held the primary's data.
    pub fn apply(&mut self, op: &Op) -> io::Result<Applied> {
        let r = self.apply_op(op);
        self.work.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &r {
            if refusal_diverges(op) {
                self.mark_behind(op, e);
            }
        }
        r
    }

    /// Marks this tree inconsistent after it refused `op` (unless marked).
    fn mark_behind(&self, op: &Op, refused: &io::Error) {
        let marked = match self.meta.inconsistent() {
            Ok(m) => m.is_some(),
            Err(_) => false,
        };
        if marked {
            return;
        }
        let since_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mark = Inconsistent {
            since_unix,
            from: self.primary.clone(),
            generation: None,
        };
        match self.meta.mark_inconsistent(&mark) {
            Ok(()) => warn!(
                op = op.name(),
                error = %refused,
                "refused a change of the primary: this tree is marked inconsistent until a resync completes"
            ),
            // Nothing else can record it; the primary marks the path dirty
            // and resyncs it, but a promotion before then would not know.
            Err(e) => error!(
                op = op.name(),
                refused = %refused,
                error = %e,
                "refused a change of the primary and cannot mark this tree inconsistent; do not promote it before the next resync completes"
            ),
        }
    }

    fn apply_op(&mut self, op: &Op) -> io::Result<Applied> {
        // The metadata area is never a replication target.
        if touches_meta(op) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
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
                let fd = open_regular(self.root.as_fd(), path, oflags)?;
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
                if matches!(target, Target::Path(_)) && data.len() >= WRITEBACK_AT {
                    // A resync block: start writing it back now, so that the
                    // application's next fsync here (a journal commit that
                    // must flush every file's pending new blocks) does not
                    // find the resync's backlog in its way. Only a hint.
                    let _ = sys::start_writeback(fd.fd(), *offset, data.len() as u64);
                }
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
                refuse_unreplicated(name)?;
                let fd = self.object(target)?;
                sys::setxattr_fd(fd.fd(), OsStr::from_bytes(name), value, *flags as i32)?;
            }
            Op::RemoveXattr { target, name } => {
                refuse_unreplicated(name)?;
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
                    // In pieces, so that a long copy shows as progress.
                    let n = sys::copy_file_range(
                        s.fd(),
                        checked_add(*src_offset, done)?,
                        d.fd(),
                        checked_add(*dst_offset, done)?,
                        (len - done).min(COPY_PIECE),
                    )?;
                    self.work.fetch_add(1, Ordering::Relaxed);
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
                    // A regular file or a directory, nothing else (opening a
                    // device or a FIFO could act on this node).
                    Target::Path(p) => {
                        let o = self.resolve(p, libc::O_PATH | libc::O_NOFOLLOW)?;
                        let st = sys::fstat(o.as_fd())?;
                        if is_kind(&st, libc::S_IFDIR) {
                            sys::reopen(o.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?
                        } else {
                            check_regular(&st)?;
                            sys::reopen(o.as_fd(), libc::O_RDONLY | libc::O_NONBLOCK)?
                        }
                    }
                };
                return Ok(Applied::Sync {
                    fd,
                    how: if *datasync {
                        SyncHow::Fdatasync
                    } else {
                        SyncHow::Fsync
                    },
                });
            }
            Op::Barrier => {
                // Applied in stream order: everything before it is applied;
                // the flush of the file system makes it durable.
                return Ok(Applied::Sync {
                    fd: self.root.try_clone()?,
                    how: SyncHow::Syncfs,
                });
            }
            Op::Remove { path } => {
                let (dir, name) = match self.parent(path) {
                    Ok(x) => x,
                    // No parent (or not a directory): nothing is there to remove.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                        return Ok(Applied::Done)
                    }
                    Err(e) => return Err(e),
                };
                remove_tree(dir.as_fd(), name, &self.work)?;
            }
            Op::EnsureDir {
                path,
                mode,
                uid,
                gid,
            } => {
                let fd = if path.is_root() {
                    self.resolve(path, libc::O_PATH | libc::O_DIRECTORY)?
                } else {
                    let (dir, name) = self.parent(path)?;
                    match sys::fstatat(dir.as_fd(), name) {
                        Ok(st) if is_kind(&st, libc::S_IFDIR) => {}
                        Ok(_) => {
                            remove_tree(dir.as_fd(), name, &self.work)?;
                            sys::mkdirat(dir.as_fd(), name, 0o700)?;
                        }
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                            sys::mkdirat(dir.as_fd(), name, 0o700)?;
                        }
                        Err(e) => return Err(e),
                    }
                    sys::openat(
                        dir.as_fd(),
                        name,
                        libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY,
                        0,
                    )?
                };
                set_owner_and_mode(fd.as_fd(), *uid, *gid, *mode)?;
            }
            Op::EnsureFile {
                path,
                mode,
                uid,
                gid,
                single,
            } => {
                let (dir, name) = self.parent(path)?;
                let kept = match sys::fstatat(dir.as_fd(), name) {
                    // Shared with other names here but not on the primary:
                    // those names keep the old inode; this one gets a new,
                    // empty one (the comparison then sends its content).
                    Ok(st) if is_kind(&st, libc::S_IFREG) && !(*single && st.st_nlink > 1) => {
                        if has_owner_and_mode(&st, *uid, *gid, *mode) {
                            // Every file of a `--full` resync comes here.
                            return Ok(Applied::Reply(vec![1]));
                        }
                        true
                    }
                    Ok(_) => {
                        remove_tree(dir.as_fd(), name, &self.work)?;
                        drop(sys::openat(
                            dir.as_fd(),
                            name,
                            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                            0o600,
                        )?);
                        false
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                        drop(sys::openat(
                            dir.as_fd(),
                            name,
                            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                            0o600,
                        )?);
                        false
                    }
                    Err(e) => return Err(e),
                };
                let fd = sys::openat(dir.as_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
                set_owner_and_mode(fd.as_fd(), *uid, *gid, *mode)?;
                // Tells the primary whether the file it knows only some
                // changed blocks of is really there: a new, empty one needs
                // all of them.
                return Ok(Applied::Reply(vec![u8::from(kept)]));
            }
            Op::EnsureSymlink {
                path,
                target,
                uid,
                gid,
            } => {
                let (dir, name) = self.parent(path)?;
                let same = sys::fstatat(dir.as_fd(), name)
                    .is_ok_and(|st| is_kind(&st, libc::S_IFLNK))
                    && sys::readlinkat(dir.as_fd(), name).is_ok_and(|t| t == *target);
                if !same {
                    remove_tree(dir.as_fd(), name, &self.work)?;
                    sys::symlinkat(OsStr::from_bytes(target), dir.as_fd(), name)?;
                }
                sys::fchownat(dir.as_fd(), name, *uid, *gid)?;
            }
            Op::EnsureNode {
                path,
                mode,
                rdev,
                uid,
                gid,
            } => {
                let (dir, name) = self.parent(path)?;
                let kind = mode & libc::S_IFMT;
                if ![libc::S_IFIFO, libc::S_IFSOCK, libc::S_IFCHR, libc::S_IFBLK].contains(&kind) {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                }
                let same = sys::fstatat(dir.as_fd(), name)
                    .is_ok_and(|st| st.st_mode & libc::S_IFMT == kind && st.st_rdev == *rdev);
                if !same {
                    remove_tree(dir.as_fd(), name, &self.work)?;
                    sys::mknodat(dir.as_fd(), name, kind | (mode & 0o7777), *rdev)?;
                }
                let fd = sys::openat(dir.as_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
                set_owner_and_mode(fd.as_fd(), *uid, *gid, *mode)?;
            }
            Op::ReplaceXattrs { path, attrs } => {
                for (name, _) in attrs {
                    refuse_unreplicated(name)?;
                }
                let fd = self.resolve(path, libc::O_PATH | libc::O_NOFOLLOW)?;
                for name in xattr::names(fd.as_fd())? {
                    if xattr::is_replicated(&name) && !attrs.iter().any(|(n, _)| *n == name) {
                        sys::removexattr_fd(fd.as_fd(), OsStr::from_bytes(&name))?;
                    }
                }
                for (name, value) in attrs {
                    sys::setxattr_fd(fd.as_fd(), OsStr::from_bytes(name), value, 0)?;
                }
            }
            Op::List {
                path,
                after,
                budget,
            } => {
                let fd =
                    self.resolve(path, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)?;
                let mut entries = list_dir(fd.as_fd())?;
                if path.is_root() {
                    entries.retain(|(n, _)| n != META_DIR.as_bytes());
                }
                // Sorted by name: the page starts after the previous one's
                // last name, and takes what fits in the budget (at least one).
                let start = after
                    .as_ref()
                    .map_or(0, |a| entries.partition_point(|(n, _)| n <= a));
                let mut end = start;
                let mut bytes = 0;
                while let Some((name, _)) = entries.get(end) {
                    let len = listing_entry_len(name);
                    if end > start && bytes + len > *budget as usize {
                        break;
                    }
                    bytes += len;
                    end += 1;
                }
                let more = end < entries.len();
                return Ok(Applied::Reply(encode_listing_page(
                    &entries[start..end],
                    more,
                )));
            }
            Op::Checksums {
                path,
                block,
                first,
                count,
            } => {
                let fd = open_regular(self.root.as_fd(), path, libc::O_RDONLY)?;
                let st = sys::fstat(fd.as_fd())?;
                let facts = FileFacts {
                    size: st.st_size as u64,
                    mtime: Timestamp {
                        sec: st.st_mtime,
                        nsec: st.st_mtime_nsec as u32,
                    },
                    xattrs: xattr::digest(&xattr::read(fd.as_fd())?),
                };
                // No bigger than the file: most files are far smaller than a
                // block, and zeroing a block each time costs more than hashing.
                let mut buf = vec![0u8; u64::from(*block).min(st.st_size as u64) as usize];
                let mut sums = Vec::with_capacity(*count as usize);
                for i in *first..checked_add(*first, u64::from(*count))? {
                    let at = i
                        .checked_mul(u64::from(*block))
                        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
                    let n = sys::pread_full(fd.as_fd(), &mut buf, at)?;
                    if n == 0 {
                        break;
                    }
                    sums.push(xxh3_64(&buf[..n]));
                    self.work.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(Applied::Reply(encode_checksums(&facts, &sums)));
            }
            Op::SetGeneration { ids } => {
                let h = History::from_ids(ids.iter().map(|i| GenerationId(*i)).collect());
                self.meta.save_history(&h)?;
                // This tree now holds the primary's data: what it once changed
                // on its own has been compared and replaced.
                self.meta.dirty_log()?.clear()?;
                self.meta.activity_log()?.clear()?;
                // Last: the tree is consistent only once the history says
                // whose data it holds.
                self.meta.clear_inconsistent()?;
            }
            Op::BeginResync { generation } => {
                let since_unix = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.meta.mark_inconsistent(&Inconsistent {
                    since_unix,
                    from: self.primary.clone(),
                    generation: Some(GenerationId(*generation)),
                })?;
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

    /// A regular file to write (handles are regular files by construction).
    fn writable(&self, t: &Target) -> io::Result<Fd<'_>> {
        match t {
            Target::Handle(h) => Ok(Fd::Borrowed(self.handle(*h)?.as_fd())),
            Target::Path(p) => Ok(Fd::Owned(open_regular(
                self.root.as_fd(),
                p,
                libc::O_WRONLY,
            )?)),
        }
    }

    /// A regular file to read.
    fn readable(&self, t: &Target) -> io::Result<Fd<'_>> {
        match t {
            Target::Handle(h) => Ok(Fd::Borrowed(self.handle(*h)?.as_fd())),
            Target::Path(p) => Ok(Fd::Owned(open_regular(
                self.root.as_fd(),
                p,
                libc::O_RDONLY,
            )?)),
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

/// True when an op names the metadata area at the root.
fn touches_meta(op: &Op) -> bool {
    let meta = |p: &RelPath| p.as_bytes().split(|b| *b == b'/').next() == Some(META_DIR.as_bytes());
    let in_meta = |t: &Target| matches!(t, Target::Path(p) if meta(p));
    match op {
        Op::Create { path, .. }
        | Op::Mknod { path, .. }
        | Op::Mkdir { path, .. }
        | Op::Symlink { path, .. }
        | Op::Unlink { path }
        | Op::Rmdir { path }
        | Op::Open { path, .. }
        | Op::Remove { path }
        | Op::EnsureDir { path, .. }
        | Op::EnsureFile { path, .. }
        | Op::EnsureSymlink { path, .. }
        | Op::EnsureNode { path, .. }
        | Op::ReplaceXattrs { path, .. }
        | Op::List { path, .. }
        | Op::Checksums { path, .. } => meta(path),
        Op::Link {
            existing: a,
            new: b,
        }
        | Op::Rename { from: a, to: b, .. } => meta(a) || meta(b),
        Op::Write { target, .. }
        | Op::Truncate { target, .. }
        | Op::Chmod { target, .. }
        | Op::Chown { target, .. }
        | Op::SetTimes { target, .. }
        | Op::SetXattr { target, .. }
        | Op::RemoveXattr { target, .. }
        | Op::Fallocate { target, .. }
        | Op::Fsync { target, .. } => in_meta(target),
        Op::CopyRange { src, dst, .. } => in_meta(src) || in_meta(dst),
        Op::Close { .. } | Op::SetGeneration { .. } | Op::BeginResync { .. } | Op::Barrier => false,
    }
}

/// Whether this tree, having refused `op`, may lack a change the primary
/// made (every op but the reads and the connection's own bookkeeping).
pub fn refusal_diverges(op: &Op) -> bool {
    !matches!(
        op,
        Op::List { .. }
            | Op::Checksums { .. }
            | Op::Close { .. }
            | Op::SetGeneration { .. }
            | Op::BeginResync { .. }
            | Op::Barrier
    )
}

/// Entries of the directory `fd` (an O_RDONLY directory) as (name, S_IFMT),
/// sorted by name.
pub fn list_dir(fd: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, u32)>> {
    let mut out = Vec::new();
    for (name, d_type) in sys::read_dir(fd)? {
        // The directory entry's type (`DT_*` is `S_IFMT >> 12`), or a stat
        // where the file system does not tell.
        let kind = match d_type {
            libc::DT_UNKNOWN => sys::fstatat(fd, OsStr::from_bytes(&name))?.st_mode & libc::S_IFMT,
            t => u32::from(t) << 12,
        };
        out.push((name, kind));
    }
    out.sort();
    Ok(out)
}

/// Removes `name` in `dir` and everything below it, never following a
/// symlink; absent is fine. Iterative, with one directory descriptor open at
/// a time whatever the depth (trees may be thousands of levels deep): it
/// climbs back through `..`, checking that it reaches the very directory it
/// came down from (`ESTALE` if the tree moved meanwhile). Advances `work`
/// per entry removed, so that a long removal shows as progress.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr, work: &AtomicU64) -> io::Result<()> {
    /// One directory on the way down: who it is, its name in its parent,
    /// and its entries not removed yet.
    struct Level {
        ident: (u64, u64),
        name: Vec<u8>,
        left: Vec<(Vec<u8>, u32)>,
    }
    let open_dir = |parent: BorrowedFd<'_>, n: &OsStr| {
        sys::openat(
            parent,
            n,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
    };
    let ident = |fd: &OwnedFd| sys::fstat(fd.as_fd()).map(|st| (st.st_dev, st.st_ino));
    let gone = |e: &io::Error| e.raw_os_error() == Some(libc::ENOENT);
    match sys::fstatat(dir, name) {
        Ok(st) if is_kind(&st, libc::S_IFDIR) => {}
        Ok(_) => {
            sys::unlinkat(dir, name, 0)?;
            work.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        Err(e) if gone(&e) => return Ok(()),
        Err(e) => return Err(e),
    }
    let mut cur = open_dir(dir, name)?;
    let mut stack = vec![Level {
        ident: ident(&cur)?,
        name: name.as_bytes().to_vec(),
        left: list_dir(cur.as_fd())?,
    }];
    loop {
        let top = stack
            .last_mut()
            .expect("the stack is empty only at the end");
        if let Some((child, kind)) = top.left.pop() {
            let c = OsStr::from_bytes(&child);
            if kind == libc::S_IFDIR {
                match open_dir(cur.as_fd(), c) {
                    Ok(sub) => {
                        stack.push(Level {
                            ident: ident(&sub)?,
                            name: child,
                            left: list_dir(sub.as_fd())?,
                        });
                        cur = sub;
                        continue;
                    }
                    Err(e) if gone(&e) => continue,
                    // Not a directory any more: removed as a file below.
                    Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {}
                    Err(e) => return Err(e),
                }
            }
            match sys::unlinkat(cur.as_fd(), c, 0) {
                Ok(()) => {
                    work.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if gone(&e) => {}
                // Listed as a file, a directory now: go down into it.
                Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
                    top.left.push((child, libc::S_IFDIR));
                }
                Err(e) => return Err(e),
            }
        } else {
            let done = stack.pop().expect("the top exists");
            let Some(parent_level) = stack.last() else {
                sys::unlinkat(dir, name, libc::AT_REMOVEDIR)?;
                work.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            };
            let parent = open_dir(cur.as_fd(), OsStr::new(".."))?;
            if ident(&parent)? != parent_level.ident {
                return Err(io::Error::from_raw_os_error(libc::ESTALE));
            }
            sys::unlinkat(
                parent.as_fd(),
                OsStr::from_bytes(&done.name),
                libc::AT_REMOVEDIR,
            )?;
            work.fetch_add(1, Ordering::Relaxed);
            cur = parent;
        }
    }
}

/// Opens `path` beneath `root` for a data op, only if it is a regular file,
/// and without side effects: resolved as an `O_PATH` descriptor (which opens
/// nothing: a device's driver or a FIFO never sees it), checked, then that
/// very inode opened with `flags` (plus `O_NONBLOCK`: a lease held on the
/// file must not hold the stream up). Anything else is refused: a symlink
/// with `ELOOP` (as `O_NOFOLLOW` would), any other kind (device, FIFO,
/// socket, directory) with `EINVAL`. Device nodes and setuid bits are still
/// replicated as metadata; they are never read or written through.
fn open_regular(root: BorrowedFd<'_>, path: &RelPath, flags: i32) -> io::Result<OwnedFd> {
    let o = sys::openat2(
        root,
        path.as_os_str(),
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
        sys::RESOLVE_STRICT,
    )?;
    check_regular(&sys::fstat(o.as_fd())?)?;
    sys::reopen(o.as_fd(), flags | libc::O_NONBLOCK)
}

/// `Ok` for a regular file; `ELOOP` for a symlink, `EINVAL` for anything else.
fn check_regular(st: &libc::stat) -> io::Result<()> {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Ok(()),
        libc::S_IFLNK => Err(io::Error::from_raw_os_error(libc::ELOOP)),
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

/// `a + b` for offsets from the wire: `EINVAL` on overflow, never a wrap.
fn checked_add(a: u64, b: u64) -> io::Result<u64> {
    a.checked_add(b)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The peer may only set and remove the extended attributes that are part of
/// the replicated data ([`xattr::is_replicated`]): anything else (a host's
/// security label) is this node's own, and refused with `EPERM`.
fn refuse_unreplicated(name: &[u8]) -> io::Result<()> {
    if xattr::is_replicated(name) {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::EPERM))
    }
}

/// True when `st` has exactly this owner and these permission bits.
fn has_owner_and_mode(st: &libc::stat, uid: u32, gid: u32, mode: u32) -> bool {
    (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (uid, gid, mode & 0o7777)
}

fn is_kind(st: &libc::stat, kind: u32) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

/// Sets exactly the primary's owner and mode (chown first: it clears setuid and
/// setgid, which the chmod then restores). An inode that has them already is
/// left alone: a chown or chmod to the same values still writes the inode
/// (its change time), which a resync comparing an unchanged tree would do
/// to every entry.
fn set_owner_and_mode(fd: BorrowedFd<'_>, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    if has_owner_and_mode(&sys::fstat(fd)?, uid, gid, mode) {
        return Ok(());
    }
    sys::fchownat(fd, OsStr::new(""), uid, gid)?;
    sys::chmod_fd(fd, mode)
}

#[cfg(test)]
#[path = "apply_test.rs"]
mod tests;
