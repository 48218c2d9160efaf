//! [`Overlay`]: the primary's filesystem as an `io::Result` API.
//!
//! Owns the local half of every operation and the decision of what to replicate:
//! each mutation is applied to the backing directory and submitted to
//! [`Replicate`] under one sequencer lock (so the stream's order is the local
//! order), and only returns once the secondary has applied it (`--ack=on-sync`:
//! once queued for it; a sync op, an fsync or a write through an `O_SYNC` open,
//! once everything before it is durable there: its ops end with a barrier).
//! Reads, lookups and
//! attributes are served locally and never touch the network. The metadata area
//! (`.mirrorfs` at the backing root) is invisible and unreachable through the
//! mount. Writable opens the kernel asks for (`--open-requests`) are
//! replicated as handles, so writes follow the inode across rename and
//! unlink; without OPEN requests (the default) a file's writes go through
//! its inode's shared writer and name the file by its path.

use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

use super::ahead::{Ahead, THREADS as AHEAD_THREADS};
use super::inode::{InodeTable, Key, ROOT_INO};
use super::iomode::{IoModes, OpenKind, ReadMode};
use super::replicate::{Begun, OpId, Replicate, Ticket, Touched};
use crate::meta::META_DIR;
use crate::proto::path::{check_name, RelPath};
use crate::proto::wire::{HandleId, Op, Target, Timestamp, MAX_DATA};
use crate::sys;

/// How long a writable open waits for passthrough readers of the file to close.
const WRITER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Regular files up to this size are read through the kernel's page cache of
/// the mount (kept across opens), not through passthrough: a passthrough read
/// marks the atime stale (fs/fuse/passthrough.c `fuse_file_accessed`), so
/// every `stat` after it costs a GETATTR round trip, while a page-cache hit
/// costs nothing. For small files that round trip is most of the cost of
/// serving them (Apache: stat, open, sendfile, close per GET); larger files
/// keep passthrough, which caches their data once (the backing file's pages)
/// instead of twice.
pub const PAGE_CACHED_MAX: i64 = 64 * 1024;

/// Open flags kept on the backing descriptor and replicated with the open.
const SYNC_FLAGS: i32 = libc::O_SYNC | libc::O_DSYNC;

/// At most this many inodes keep a shared writer (see
/// [`Overlay::writer`]); beyond, the oldest is closed and its next write
/// opens it again.
pub const SHARED_WRITERS_MAX: usize = 256;
/// The most bytes one `Op::Write` carries: a larger write is sent as
/// several, each applied by the secondary as soon as it has arrived, so that
/// its disk writes while the rest of the data is still on the wire.
const WRITE_OP_MAX: usize = 256 << 10;

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
    /// A read-only open served through mirrorfs: the kernel may keep the
    /// file's page cache across opens (`FOPEN_KEEP_CACHE`). Right because
    /// every change of the file's data goes through this mount, whose kernel
    /// side updates or drops those pages itself (write-through writes,
    /// truncation, fallocate, copy_file_range).
    pub keep_cache: bool,
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
    /// `O_SYNC`/`O_DSYNC` of the open, replicated with it.
    sync_flags: i32,
    /// The connection on which the secondary holds this handle (0: none; on
    /// another connection it does not know it: the handle is opened there
    /// again before an op uses it).
    remote_epoch: AtomicU64,
    /// Served by kernel passthrough.
    passthrough: bool,
    /// An inode's shared writer (see [`Overlay::writer`]): never held by
    /// the secondary; its ops name the file by its path.
    shared: bool,
}

impl Handle {
    /// How it counts among the inode's opens.
    fn open_kind(&self) -> OpenKind {
        match (self.writable, self.passthrough) {
            (true, _) => OpenKind::Writer,
            (false, true) => OpenKind::Passthrough,
            (false, false) => OpenKind::Cached,
        }
    }
}

/// How the secondary may know an inode: by its path, or (first) through one
/// of these handles if it holds it on the op's connection. Computed under
/// the sequencer before the change.
#[derive(Debug)]
struct Named {
    path: Option<RelPath>,
    handles: Vec<(u64, Arc<Handle>)>,
}

impl Named {
    /// The target of an op sent on connection `epoch` (`None`: not sent, or
    /// nothing there reaches the inode any more: unlinked, no handle).
    fn target(&self, epoch: Option<u64>) -> Option<Target> {
        let e = epoch?;
        self.handles
            .iter()
            .find(|(_, h)| h.remote_epoch.load(Ordering::Relaxed) == e)
            .map(|(fh, _)| Target::Handle(HandleId(*fh)))
            .or_else(|| self.path.clone().map(Target::Path))
    }
}

/// The answer of a mutation: its local result at once, and its
/// acknowledgement now or later (after the secondary applied it, or once a
/// controller decided: a held op's answer is parked, not waited for).
#[must_use = "a mutation must be answered"]
pub struct Pending<T> {
    state: io::Result<(T, Ticket)>,
    /// Run if the answer is an error (what the local change left behind).
    on_error: Option<Box<dyn FnOnce() + Send>>,
    /// The local half failed after the op was submitted (a local fsync).
    local_error: Option<io::Error>,
}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Pending<T> {
    /// Refused before anything was applied.
    fn failed(e: io::Error) -> Self {
        Self {
            state: Err(e),
            on_error: None,
            local_error: None,
        }
    }

    /// Answered at once (nothing to replicate).
    fn ready(r: io::Result<T>) -> Self {
        match r {
            Ok(v) => Self {
                state: Ok((v, Ticket::answered(OpId(0), Ok(())))),
                on_error: None,
                local_error: None,
            },
            Err(e) => Self::failed(e),
        }
    }

    /// Has `f` answered with the result: at once, or later from another
    /// thread when the answer waits for a decision.
    pub fn reply(self, f: impl FnOnce(io::Result<T>) + Send + 'static) {
        let (value, ticket) = match self.state {
            Ok(x) => x,
            Err(e) => return f(Err(e)),
        };
        let (on_error, local) = (self.on_error, self.local_error);
        ticket.finish(Box::new(move |r| {
            let r = match (local, r) {
                (Some(e), _) | (None, Err(e)) => Err(e),
                (None, Ok(())) => Ok(value),
            };
            if r.is_err() {
                if let Some(cleanup) = on_error {
                    cleanup();
                }
            }
            f(r);
        }));
    }

    /// Blocks until the answer comes (for callers that are not FUSE
    /// handlers: tests, tools).
    pub fn wait(self) -> io::Result<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.reply(move |r| {
            let _ = tx.send(r);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(io::Error::from_raw_os_error(libc::EIO)))
    }
}

/// A writable open found passthrough readers on an existing file while the
/// sequencer was held: it waits for them outside and tries again.
#[derive(Debug)]
struct Busy(u64);

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "inode {} has passthrough readers", self.0)
    }
}

impl std::error::Error for Busy {}

fn busy(ino: u64) -> io::Error {
    io::Error::new(io::ErrorKind::WouldBlock, Busy(ino))
}

fn busy_ino(e: &io::Error) -> Option<u64> {
    e.get_ref()?.downcast_ref::<Busy>().map(|b| b.0)
}

#[derive(Debug)]
struct DirHandle {
    /// The directory's inode.
    ino: u64,
    file: Arc<File>,
    /// Read at the first listing.
    entries: std::sync::OnceLock<Vec<DirEntry>>,
    /// The entries before this index were handed to [`Ahead`] already.
    looked_ahead: AtomicUsize,
}

/// The shared writers of inodes: which handle each has, oldest first.
#[derive(Default)]
struct SharedWriters {
    by_ino: HashMap<u64, u64>,
    order: VecDeque<u64>,
}

impl SharedWriters {
    fn remove(&mut self, ino: u64) -> Option<u64> {
        let fh = self.by_ino.remove(&ino)?;
        self.order.retain(|&i| i != ino);
        Some(fh)
    }
}

/// The primary's overlay of one backing directory.
pub struct Overlay {
    inodes: Arc<InodeTable>,
    handles: Arc<RwLock<HashMap<u64, Arc<Handle>>>>,
    /// Inodes written through opens the kernel made alone (handle 0).
    shared: Mutex<SharedWriters>,
    /// The kernel opens files alone (no OPEN requests): a create's handle
    /// is the inode's shared writer, and the kernel is given handle 0.
    kernel_opens: AtomicBool,
    dirs: RwLock<HashMap<u64, Arc<DirHandle>>>,
    next_fh: AtomicU64,
    /// Which opens may use kernel passthrough.
    io_modes: Arc<IoModes>,
    /// The kernel accepted passthrough at init.
    passthrough: AtomicBool,
    /// Held while a mutation is applied locally and submitted, so that the
    /// replication stream carries mutations in the order they were applied.
    sequencer: Mutex<()>,
    repl: Arc<dyn Replicate>,
    /// Looks up the names a listing reaches next.
    ahead: Ahead,
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
        let path_fd = sys::reopen(root_fd.as_fd(), libc::O_PATH | libc::O_DIRECTORY)?;
        Ok(Self {
            inodes: Arc::new(InodeTable::new(path_fd, key_of(&st), budget)),
            handles: Arc::new(RwLock::new(HashMap::new())),
            shared: Mutex::new(SharedWriters::default()),
            kernel_opens: AtomicBool::new(false),
            dirs: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            io_modes: Arc::new(IoModes::new(WRITER_WAIT)),
            passthrough: AtomicBool::new(false),
            sequencer: Mutex::new(()),
            repl,
            ahead: Ahead::start(),
        })
    }

    // ---- lookups and attributes: local only -------------------------------

    /// Looks `name` up in `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<Entry> {
        self.check_visible(parent, name)?;
        let pfd = self.inodes.fd(parent)?;
        let st = sys::fstatat(pfd.as_fd(), name)?;
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
    /// No descriptor is opened: the table opens one from the parent's when
    /// an operation first needs it (a tree walk needs none).
    fn lookup_locked(&self, parent: u64, name: &OsStr) -> io::Result<Entry> {
        let pfd = self.inodes.fd(parent)?;
        let st = sys::fstatat(pfd.as_fd(), name)?;
        let ino = self.inodes.lookup(parent, name, key_of(&st), None, |old| {
            sys::fstat(old.as_fd()).is_ok_and(|old| still_the_same(&old, &st))
        });
        Ok(Entry { ino, attr: st })
    }

    /// The kernel dropped `n` lookups of `ino`. Once it knows the inode no
    /// more, no open of it is left: its shared writer is closed.
    pub fn forget(&self, ino: u64, n: u64) {
        if self.inodes.forget(ino, n) {
            let fh = self.shared_writers().remove(ino);
            if let Some(fh) = fh {
                let _guard = self.sequence();
                self.close_locked(fh);
            }
        }
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

    /// The kernel opens files alone (the FUSE adapter answers OPEN with
    /// ENOSYS): it sends no RELEASE, so a create hands it handle 0 and
    /// keeps its descriptor as the inode's shared writer (see
    /// [`writer`](Self::writer)).
    pub fn set_kernel_opens(&self, on: bool) {
        self.kernel_opens.store(on, Ordering::Relaxed);
    }

    /// A passthrough open could not be set up after all (the adapter serves
    /// it through mirrorfs): stop counting it as passthrough.
    pub fn passthrough_refused(&self, fh: u64) {
        let mut handles = self.handles.write().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = handles.get_mut(&fh) {
            if h.passthrough {
                self.io_modes.passthrough_refused(h.ino);
                *h = Arc::new(Handle {
                    ino: h.ino,
                    file: h.file.clone(),
                    writable: h.writable,
                    sync_flags: h.sync_flags,
                    remote_epoch: AtomicU64::new(h.remote_epoch.load(Ordering::Relaxed)),
                    passthrough: false,
                    shared: h.shared,
                });
            }
        }
    }

    /// Attributes of `ino`; through the open handle `fh` when the kernel
    /// names one (`fstat(2)` of an open file: it still works once the file
    /// is unlinked).
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> io::Result<libc::stat> {
        if let Some(h) = fh.and_then(|fh| self.handle(fh).ok()) {
            if h.ino == ino {
                return sys::fstat(h.file.as_fd());
            }
        }
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

    /// Opens directory `ino`. Its entries are read at the first listing
    /// (a snapshot the later ones continue): the kernel answers most
    /// listings of a directory it has seen from its own cache (see
    /// [`fuse`](super::fuse)) and asks for none.
    pub fn opendir(&self, ino: u64) -> io::Result<u64> {
        let fd = self.inodes.fd(ino)?;
        let file = File::from(sys::openat(
            fd.as_fd(),
            OsStr::new("."),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.write().unwrap_or_else(|e| e.into_inner()).insert(
            fh,
            Arc::new(DirHandle {
                ino,
                file: Arc::new(file),
                entries: std::sync::OnceLock::new(),
                looked_ahead: AtomicUsize::new(0),
            }),
        );
        Ok(fh)
    }

    /// The entries of `d` (read now if this is its first listing).
    fn entries<'a>(&self, d: &'a DirHandle) -> io::Result<&'a [DirEntry]> {
        if let Some(e) = d.entries.get() {
            return Ok(e);
        }
        let ino = d.ino;
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
        let st = sys::fstat(d.file.as_fd())?;
        for (name, d_type, d_ino) in sys::read_dir_inos(d.file.as_fd())? {
            let name = OsString::from_vec(name);
            if ino == ROOT_INO && name == META_DIR {
                continue;
            }
            let reported = self.inodes.by_key((st.st_dev, d_ino)).unwrap_or(d_ino);
            entries.push(DirEntry {
                name,
                ino: reported,
                kind: d_type_bits(d_type),
            });
        }
        // Two listings of one handle at once: the first snapshot stands.
        Ok(d.entries.get_or_init(|| entries))
    }

    /// Entries of an open directory from index `offset` on.
    pub fn readdir(&self, fh: u64, offset: u64) -> io::Result<Vec<DirEntry>> {
        let d = self.dir(fh)?;
        Ok(self
            .entries(&d)?
            .iter()
            .skip(offset as usize)
            .cloned()
            .collect())
    }

    /// `READDIRPLUS`: the entries of the open directory `fh` (of inode
    /// `ino`) from index `offset` on, each looked up as [`lookup`] does
    /// (counted: the kernel will forget it), handed to `add` with its index
    /// until `add` answers that its buffer is full; that entry's lookup is
    /// given back, as is the lookup of one `add` did not take. `.` and `..`
    /// come without an entry (the kernel links and counts neither). Names
    /// removed since `opendir` are left out.
    ///
    /// [`lookup`]: Self::lookup
    pub fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, &DirEntry, Option<&Entry>) -> bool,
    ) -> io::Result<()> {
        let d = self.dir(fh)?;
        // Where the kernel's buffer filled: its next request starts there.
        let mut next = None;
        for (i, e) in self.entries(&d)?.iter().enumerate().skip(offset as usize) {
            let entry = if e.name == "." || e.name == ".." {
                None
            } else {
                match self.lookup(ino, &e.name) {
                    Ok(entry) => Some(entry),
                    Err(err) => {
                        tracing::debug!(error = %err, name = ?e.name, "readdirplus: entry gone");
                        continue;
                    }
                }
            };
            if add(i as u64, e, entry.as_ref()) {
                if let Some(entry) = entry {
                    self.forget(entry.ino, 1);
                }
                next = Some(i);
                break;
            }
        }
        if let Some(next) = next {
            self.look_ahead(&d, offset as usize, next);
        }
        Ok(())
    }

    /// Has [`Ahead`] look up, in the backing directory, the entries of `d`
    /// the kernel's next two requests will want (as many each as the one
    /// that answered `from..next`), so that their inodes are read while the
    /// kernel digests this answer. Nothing is recorded: the requests look
    /// the entries up again, from memory then.
    fn look_ahead(&self, d: &Arc<DirHandle>, from: usize, next: usize) {
        let Some(len) = d.entries.get().map(Vec::len) else {
            return;
        };
        let start = next.max(d.looked_ahead.load(Ordering::Relaxed));
        let end = (next + 2 * next.saturating_sub(from).max(1)).min(len);
        if start >= end {
            return;
        }
        // One part per thread: the disk serves their reads at once.
        let part = (end - start).div_ceil(AHEAD_THREADS);
        for a in (start..end).step_by(part) {
            let b = (a + part).min(end);
            let d2 = Arc::clone(d);
            let queued = self.ahead.offer(move || {
                let Some(entries) = d2.entries.get() else {
                    return;
                };
                for e in &entries[a..b] {
                    // `.` and `..` are not looked up (`..` of the root is
                    // outside the backing directory).
                    if e.name != "." && e.name != ".." {
                        let _ = sys::fstatat(d2.file.as_fd(), &e.name);
                    }
                }
            });
            if !queued {
                return;
            }
            d.looked_ahead.store(b, Ordering::Relaxed);
        }
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: u64) {
        self.dirs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh);
    }

    /// `fsync` of a directory, on both sides.
    pub fn fsyncdir(&self, ino: u64, fh: u64, datasync: bool) -> Pending<()> {
        let d = match self.dir(fh) {
            Ok(d) => d,
            Err(e) => return Pending::failed(e),
        };
        self.durable(d.file.clone(), datasync, || {
            Ok(Named {
                path: self.inodes.path(ino).ok(),
                handles: Vec::new(),
            })
        })
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
    ) -> Pending<Entry> {
        if let Err(e) = self.check_creatable(parent, name) {
            return Pending::failed(e);
        }
        let mode = mode & !umask;
        let pending = self.mutate(
            || self.child(parent, name),
            |path, _| {
                let (pfd, owner) = self.parent_and_owner(ctx, parent)?;
                sys::mknodat(pfd.as_fd(), name, mode, rdev)?;
                let (entry, st) = self.finish_create(parent, name, &pfd, owner, mode)?;
                let op = Op::Mknod {
                    path,
                    mode: st.st_mode,
                    rdev,
                    uid: st.st_uid,
                    gid: st.st_gid,
                };
                Ok((entry, vec![op]))
            },
        );
        // The kernel never gets an entry whose mutation failed.
        self.forget_entry_on_error(pending, |e: &Entry| e.ino)
    }

    /// `mkdir`.
    pub fn mkdir(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> Pending<Entry> {
        if let Err(e) = self.check_creatable(parent, name) {
            return Pending::failed(e);
        }
        let mode = mode & !umask & 0o7777;
        let pending = self.mutate(
            || self.child(parent, name),
            |path, _| {
                let (pfd, owner) = self.parent_and_owner(ctx, parent)?;
                sys::mkdirat(pfd.as_fd(), name, mode)?;
                // The mode asked for, whatever the process's umask (a
                // setgid inherited from the parent is kept).
                let (entry, st) = self.finish_create(parent, name, &pfd, owner, mode)?;
                let op = Op::Mkdir {
                    path,
                    mode: st.st_mode & 0o7777,
                    uid: st.st_uid,
                    gid: st.st_gid,
                };
                Ok((entry, vec![op]))
            },
        );
        // The kernel never gets an entry whose mutation failed.
        self.forget_entry_on_error(pending, |e: &Entry| e.ino)
    }

    /// `symlink`: `parent/name` → `target`.
    pub fn symlink(&self, ctx: Ctx, parent: u64, name: &OsStr, target: &OsStr) -> Pending<Entry> {
        if let Err(e) = self.check_creatable(parent, name) {
            return Pending::failed(e);
        }
        if target.is_empty() || target.len() > crate::proto::path::MAX_SYMLINK_TARGET {
            return Pending::failed(err(libc::ENAMETOOLONG));
        }
        let pending = self.mutate(
            || self.child(parent, name),
            |path, _| {
                let (pfd, (uid, gid)) = self.parent_and_owner(ctx, parent)?;
                sys::symlinkat(target, pfd.as_fd(), name)?;
                sys::fchownat(pfd.as_fd(), name, uid, gid)?;
                let entry = self.lookup_locked(parent, name)?;
                let op = Op::Symlink {
                    path,
                    target: target.as_bytes().to_vec(),
                    uid: entry.attr.st_uid,
                    gid: entry.attr.st_gid,
                };
                Ok((entry, vec![op]))
            },
        );
        // The kernel never gets an entry whose mutation failed.
        self.forget_entry_on_error(pending, |e: &Entry| e.ino)
    }

    /// `link`: a new name `newparent/newname` for `ino`.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Pending<Entry> {
        if let Err(e) = self.check_creatable(newparent, newname) {
            return Pending::failed(e);
        }
        let pending = self.mutate(
            || {
                let existing = self.inodes.path(ino)?;
                let new = self.child_path(newparent, newname)?;
                Ok((
                    Touched::paths(vec![new.clone(), existing.clone()]),
                    (existing, new),
                ))
            },
            |(existing, new), _| {
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
                Ok((entry, vec![Op::Link { existing, new }]))
            },
        );
        // The kernel never gets an entry whose mutation failed.
        self.forget_entry_on_error(pending, |e: &Entry| e.ino)
    }

    /// `unlink`.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Pending<()> {
        self.remove(parent, name, 0)
    }

    /// `rmdir`.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Pending<()> {
        self.remove(parent, name, libc::AT_REMOVEDIR)
    }

    fn remove(&self, parent: u64, name: &OsStr, flags: i32) -> Pending<()> {
        if let Err(e) = self.check_visible(parent, name) {
            return Pending::failed(e);
        }
        self.mutate(
            || self.child(parent, name),
            |path, _| {
                let pfd = self.inodes.fd(parent)?;
                let st = sys::fstatat(pfd.as_fd(), name)?;
                self.keep_fd(&st);
                sys::unlinkat(pfd.as_fd(), name, flags)?;
                self.inodes.remove_name(key_of(&st), parent, name);
                let op = if flags & libc::AT_REMOVEDIR != 0 {
                    Op::Rmdir { path }
                } else {
                    Op::Unlink { path }
                };
                Ok(((), vec![op]))
            },
        )
    }

    /// `renameat2` with `RENAME_NOREPLACE` / `RENAME_EXCHANGE`.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Pending<()> {
        if let Err(e) = self
            .check_visible(parent, name)
            .and_then(|()| self.check_creatable(newparent, newname))
        {
            return Pending::failed(e);
        }
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return Pending::failed(err(libc::EINVAL));
        }
        self.mutate(
            || {
                // Under the sequencer: no concurrent rename of a parent can
                // make these names stale before they are sent.
                let from = self.child_path(parent, name)?;
                let to = self.child_path(newparent, newname)?;
                let touched = Touched {
                    paths: vec![from.clone(), to.clone()],
                    rename: Some((from.clone(), to.clone())),
                    ..Touched::default()
                };
                Ok((touched, (from, to)))
            },
            |(from, to), _| {
                let pfd = self.inodes.fd(parent)?;
                let npfd = self.inodes.fd(newparent)?;
                let src = sys::fstatat(pfd.as_fd(), name)?;
                let dst = sys::fstatat(npfd.as_fd(), newname).ok();
                if let Some(dst) = &dst {
                    self.keep_fd(dst);
                }
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
            },
        )
    }

    // ---- opens ----------------------------------------------------------------

    /// Opens `ino` read-only (local only; kernel passthrough where allowed).
    pub fn open_read(&self, ino: u64, flags: i32) -> io::Result<Opened> {
        let fd = self.inodes.fd(ino)?;
        let st = sys::fstat(fd.as_fd())?;
        let regular = is_kind(&st, libc::S_IFREG);
        // A regular file's read-only opens share one cached descriptor
        // (O_NONBLOCK means nothing to a regular file); a FIFO or a device
        // gets its own, with the caller's O_NONBLOCK.
        let file = if regular {
            self.shared_reader(ino, &fd)?
        } else {
            Arc::new(File::from(sys::reopen(
                fd.as_fd(),
                libc::O_RDONLY | (flags & libc::O_NONBLOCK),
            )?))
        };
        let allowed =
            self.passthrough.load(Ordering::Relaxed) && regular && st.st_size > PAGE_CACHED_MAX;
        let mode = self.io_modes.open_read(ino, allowed);
        let passthrough = (mode == ReadMode::Passthrough).then(|| file.clone());
        let keep_cache = regular && passthrough.is_none();
        let fh = self.insert_handle(ino, file, false, 0, passthrough.is_some(), false);
        Ok(Opened {
            fh,
            passthrough,
            keep_cache,
        })
    }

    /// Opens `ino` with `flags`: read-only opens at once, writable ones are
    /// replicated as handles.
    pub fn open(&self, ino: u64, flags: i32) -> Pending<Opened> {
        if flags & libc::O_ACCMODE == libc::O_RDONLY {
            return Pending::ready(self.open_read(ino, flags));
        }
        let fd = match self.inodes.fd(ino) {
            Ok(fd) => fd,
            Err(e) => return Pending::failed(e),
        };
        // Before the sequencer: this may wait for passthrough readers.
        if let Err(e) = self.io_modes.open_write(ino) {
            return Pending::failed(e);
        }
        let oflags = libc::O_RDWR | (flags & (SYNC_FLAGS | libc::O_TRUNC | libc::O_NONBLOCK));
        let keep = oflags & SYNC_FLAGS;
        let pending = self.mutate(
            // The path, so that a secondary that cannot open it (its copy is
            // missing or damaged) gets it resynced. None: opened through a
            // name that no longer exists (e.g. /proc/PID/fd): the secondary
            // cannot reach this inode, so its writes stay local.
            || {
                let path = self.inodes.path(ino).ok();
                Ok((Touched::paths(path.iter().cloned().collect()), path))
            },
            |path, begun| {
                let file = Arc::new(File::from(sys::reopen(fd.as_fd(), oflags)?));
                let remote = begun.epoch.filter(|_| path.is_some());
                let fh = self.insert_handle(ino, file, true, keep, false, false);
                let ops = match (path, remote) {
                    (Some(path), Some(e)) => {
                        self.mark_remote(fh, e);
                        vec![Op::Open {
                            path,
                            handle: HandleId(fh),
                            flags: (oflags & (SYNC_FLAGS | libc::O_TRUNC)) as u32,
                        }]
                    }
                    _ => Vec::new(),
                };
                Ok((
                    Opened {
                        fh,
                        passthrough: None,
                        keep_cache: false,
                    },
                    ops,
                ))
            },
        );
        self.cleanup_failed_open(pending, Some(ino), |o: &Opened| o.fh)
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
    ) -> Pending<(Entry, Opened)> {
        if let Err(e) = self.check_creatable(parent, name) {
            return Pending::failed(e);
        }
        let mode = mode & !umask & 0o7777;
        let kernel_opens = self.kernel_opens.load(Ordering::Relaxed);
        // A shared writer serves every open of the inode: never O_SYNC (the
        // kernel follows an O_SYNC open's write with an FSYNC).
        let keep = if kernel_opens {
            0
        } else {
            flags & (SYNC_FLAGS | libc::O_NONBLOCK)
        };
        let writable = kernel_opens || flags & libc::O_ACCMODE != libc::O_RDONLY;
        // The handle made (the kernel's, or the shared writer).
        let made = AtomicU64::new(0);
        // An existing file (created since the kernel's lookup) may have
        // passthrough readers a writer must wait for: never while holding
        // the sequencer; wait outside and try again.
        for _ in 0..3 {
            let pending = self.mutate(
                || self.child(parent, name),
                |path, begun| {
                    self.create_locked(
                        ctx,
                        parent,
                        name,
                        (mode, keep, flags),
                        writable,
                        path,
                        begun,
                        &made,
                    )
                },
            );
            if let Some(ino) = pending.state.as_ref().err().and_then(busy_ino) {
                if let Err(e) = self.io_modes.wait_writable(ino) {
                    return Pending::failed(e);
                }
                continue;
            }
            let made = made.load(Ordering::Relaxed);
            let pending = self.cleanup_failed_open(pending, None, move |_| made);
            return self.forget_entry_on_error(pending, |(e, _): &(Entry, Opened)| e.ino);
        }
        Pending::failed(err(libc::ETXTBSY))
    }

    #[allow(clippy::too_many_arguments)]
    fn create_locked(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &OsStr,
        (mode, keep, flags): (u32, i32, i32),
        writable: bool,
        path: RelPath,
        begun: &Begun,
        made: &AtomicU64,
    ) -> io::Result<((Entry, Opened), Vec<Op>)> {
        let kernel_opens = self.kernel_opens.load(Ordering::Relaxed);
        // Opens are counted for passthrough's sake only.
        let count_writer = writable && !kernel_opens;
        let (pfd, owner) = self.parent_and_owner(ctx, parent)?;
        let created = sys::openat(
            pfd.as_fd(),
            name,
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_NOFOLLOW | keep,
            mode,
        );
        let (file, entry, st, is_new) = match created {
            Ok(fd) => {
                // One lookup counted for the one entry the kernel gets.
                let (entry, st) = self.finish_create(parent, name, &pfd, owner, mode)?;
                if count_writer {
                    // A new inode: no passthrough reader can hold it.
                    self.io_modes.open_write(entry.ino)?;
                }
                (fd, entry, st, true)
            }
            // It appeared since the kernel's lookup: open it, as open(2) would.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => {
                let entry = self.lookup_locked(parent, name)?;
                if count_writer && !self.io_modes.try_open_write(entry.ino) {
                    self.inodes.forget(entry.ino, 1);
                    return Err(busy(entry.ino));
                }
                let trunc = flags & libc::O_TRUNC;
                let fd = match sys::openat(
                    pfd.as_fd(),
                    name,
                    libc::O_RDWR | libc::O_NOFOLLOW | keep | trunc,
                    0,
                ) {
                    Ok(fd) => fd,
                    Err(e) => {
                        if count_writer {
                            self.io_modes.release(entry.ino, OpenKind::Writer);
                        }
                        return Err(e);
                    }
                };
                (fd, entry, entry.attr, false)
            }
            Err(e) => return Err(e),
        };
        let file = Arc::new(File::from(file));
        // A shared writer is never held by the secondary (see `writer`).
        let remote = begun.epoch.filter(|_| writable && !kernel_opens);
        let fh = self.insert_handle(
            entry.ino,
            file,
            writable,
            keep & SYNC_FLAGS,
            false,
            kernel_opens,
        );
        made.store(fh, Ordering::Relaxed);
        if let Some(e) = remote {
            self.mark_remote(fh, e);
        }
        if kernel_opens {
            self.set_shared(&mut self.shared_writers(), entry.ino, fh);
        }
        let handle = remote.map(|_| HandleId(fh));
        let ops = if is_new {
            vec![Op::Create {
                path,
                mode: st.st_mode & 0o7777,
                uid: st.st_uid,
                gid: st.st_gid,
                handle,
                flags: keep as u32 & SYNC_FLAGS as u32,
            }]
        } else if writable && remote.is_some() {
            vec![Op::Open {
                path,
                handle: HandleId(fh),
                flags: ((keep & SYNC_FLAGS) | (flags & libc::O_TRUNC)) as u32,
            }]
        } else if kernel_opens && begun.epoch.is_some() && flags & libc::O_TRUNC != 0 {
            // The kernel thinks it created the file: it sends no SETATTR
            // for the O_TRUNC done here.
            vec![Op::Truncate {
                target: Target::Path(path),
                size: 0,
            }]
        } else {
            Vec::new()
        };
        Ok((
            (
                entry,
                Opened {
                    fh: if kernel_opens { 0 } else { fh },
                    passthrough: None,
                    keep_cache: false,
                },
            ),
            ops,
        ))
    }

    /// An entry made or linked by a mutation whose answer is an error never
    /// reaches the kernel, which will never forget it: the lookup counted
    /// for it is given back (with whatever else `p` cleans up).
    fn forget_entry_on_error<T: Send + 'static>(
        &self,
        mut p: Pending<T>,
        ino_of: impl Fn(&T) -> u64,
    ) -> Pending<T> {
        let Ok((value, _)) = &p.state else {
            return p;
        };
        let ino = ino_of(value);
        let inodes = self.inodes.clone();
        let before = p.on_error.take();
        p.on_error = Some(Box::new(move || {
            if let Some(cleanup) = before {
                cleanup();
            }
            inodes.forget(ino, 1);
        }));
        p
    }

    /// An open whose replication failed gives no handle to the kernel: its
    /// handle, writer count and the secondary's copy are released.
    fn cleanup_failed_open<T: Send + 'static>(
        &self,
        mut p: Pending<T>,
        writer_of: Option<u64>,
        fh_of: impl Fn(&T) -> u64,
    ) -> Pending<T> {
        let Ok((value, _)) = &p.state else {
            if let Some(ino) = writer_of {
                // No handle was made: undo the writer count taken first.
                self.io_modes.release(ino, OpenKind::Writer);
            }
            return p;
        };
        let fh = fh_of(value);
        let (handles, io_modes, repl) = (
            self.handles.clone(),
            self.io_modes.clone(),
            self.repl.clone(),
        );
        p.on_error = Some(Box::new(move || {
            let h = handles
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&fh);
            if let Some(h) = h {
                io_modes.release(h.ino, h.open_kind());
                let e = h.remote_epoch.load(Ordering::Relaxed);
                if e != 0 {
                    repl.close(HandleId(fh), e);
                }
            }
        }));
        p
    }

    /// Closes a file handle (and the secondary's copy of a writable one).
    pub fn release(&self, fh: u64) {
        let Some(h) = self.take_handle(fh) else {
            return;
        };
        self.io_modes.release(h.ino, h.open_kind());
        let e = h.remote_epoch.load(Ordering::Relaxed);
        if e != 0 {
            // Ordered after every write on the handle.
            let _guard = self.sequence();
            self.repl.close(HandleId(fh), e);
        }
    }

    /// Closes the handle `fh` here and, if it holds it, on the secondary.
    /// Called under the sequencer: ordered after every op that used it.
    fn close_locked(&self, fh: u64) {
        let Some(h) = self.take_handle(fh) else {
            return;
        };
        let e = h.remote_epoch.load(Ordering::Relaxed);
        if e != 0 {
            self.repl.close(HandleId(fh), e);
        }
    }

    /// Removes the handle `fh` from the table.
    fn take_handle(&self, fh: u64) -> Option<Arc<Handle>> {
        self.handles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh)
    }

    // ---- data -------------------------------------------------------------------

    /// Reads from the handle `fh` of `ino` (0: an open the kernel made alone).
    pub fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let file = self.readable(ino, fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            let n = sys::pread(file.as_fd(), &mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Writes through the writable handle `fh` of `ino` (0: an open the
    /// kernel made alone); answered once the secondary has it.
    pub fn write(&self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> Pending<u32> {
        self.mutate(
            || {
                let (fh, h) = self.writer(ino, fh)?;
                let (mut touched, path) = self.touch_data(&h, offset, data.len() as u64)?;
                // A write through an O_SYNC/O_DSYNC open is a sync op.
                touched.sync = h.sync_flags != 0;
                Ok((touched, (fh, h, path)))
            },
            |(fh, h, path), begun| {
                let n = sys::pwrite(h.file.as_fd(), data, offset)?;
                let mut ops = Vec::new();
                if let Some(target) = self.data_target(&h, fh, path, begun, &mut ops) {
                    // In pieces, so that the secondary writes the first while
                    // the rest is still on the wire.
                    let mut at = 0;
                    while at < n {
                        let end = n.min(at + WRITE_OP_MAX);
                        ops.push(Op::Write {
                            target: target.clone(),
                            offset: offset + at as u64,
                            data: data[at..end].to_vec(),
                        });
                        at = end;
                    }
                }
                if begun.barrier {
                    ops.push(Op::Barrier);
                }
                Ok((n as u32, ops))
            },
        )
    }

    /// `fsync`/`fdatasync` of a file: the local sync and the secondary's overlap,
    /// and it is answered only when both are durable.
    pub fn fsync(&self, ino: u64, fh: u64, datasync: bool) -> Pending<()> {
        let file = match self.readable(ino, fh) {
            Ok(f) => f,
            Err(e) => return Pending::failed(e),
        };
        // Handle 0: the secondary knows the file by its path.
        self.durable(file, datasync, || self.named(ino, (fh != 0).then_some(fh)))
    }

    /// `fallocate` through a writable handle.
    pub fn fallocate(&self, ino: u64, fh: u64, offset: u64, len: u64, mode: i32) -> Pending<()> {
        self.mutate(
            || {
                let (fh, h) = self.writer(ino, fh)?;
                let (touched, path) = self.touch_data(&h, offset, len)?;
                Ok((touched, (fh, h, path)))
            },
            |(fh, h, path), begun| {
                sys::fallocate(h.file.as_fd(), mode, offset, len)?;
                let mut ops = Vec::new();
                if let Some(target) = self.data_target(&h, fh, path, begun, &mut ops) {
                    ops.push(Op::Fallocate {
                        target,
                        mode: mode as u32,
                        offset,
                        len,
                    });
                }
                Ok(((), ops))
            },
        )
    }

    /// `copy_file_range` between two handles (each given with its inode:
    /// handle 0 is an open the kernel made alone). The secondary copies
    /// the same range between its copies (no data crosses the network)
    /// when its copy of the source is known to equal ours; otherwise (a
    /// resync still has to bring it over) the copied bytes are sent.
    pub fn copy_file_range(
        &self,
        (ino_in, fh_in, offset_in): (u64, u64, u64),
        (ino_out, fh_out, offset_out): (u64, u64, u64),
        len: u64,
    ) -> Pending<u32> {
        let src = match self.readable(ino_in, fh_in) {
            Ok(f) => f,
            Err(e) => return Pending::failed(e),
        };
        let len = len.min(u64::from(u32::MAX) & !0xfff);
        self.mutate(
            || {
                let (fh_out, dst) = self.writer(ino_out, fh_out)?;
                let (mut touched, dst_path) = self.touch_data(&dst, offset_out, len)?;
                let src_named = self.named(ino_in, (fh_in != 0).then_some(fh_in))?;
                touched.reads.extend(src_named.path.iter().cloned());
                Ok((touched, (fh_out, dst, dst_path, src_named)))
            },
            |(fh_out, dst, dst_path, src_named), begun| {
                let n = sys::copy_file_range(
                    src.as_fd(),
                    offset_in,
                    dst.file.as_fd(),
                    offset_out,
                    len,
                )?;
                let mut ops = Vec::new();
                if n == 0 {
                    return Ok((0, ops));
                }
                let Some(target) = self.data_target(&dst, fh_out, dst_path, begun, &mut ops) else {
                    return Ok((n as u32, ops));
                };
                let src_target = begun
                    .source_clean
                    .then(|| src_named.target(begun.epoch))
                    .flatten();
                match src_target {
                    Some(src) => ops.push(Op::CopyRange {
                        src,
                        src_offset: offset_in,
                        dst: target,
                        dst_offset: offset_out,
                        len: n as u64,
                    }),
                    None => {
                        // The bytes as they landed here, in pieces the wire takes.
                        let mut done = 0u64;
                        while done < n as u64 {
                            let piece = (n as u64 - done).min(MAX_DATA as u64) as usize;
                            let mut buf = vec![0u8; piece];
                            let got =
                                sys::pread_full(dst.file.as_fd(), &mut buf, offset_out + done)?;
                            buf.truncate(got);
                            if got == 0 {
                                break;
                            }
                            ops.push(Op::Write {
                                target: target.clone(),
                                offset: offset_out + done,
                                data: buf,
                            });
                            done += got as u64;
                        }
                    }
                }
                Ok((n as u32, ops))
            },
        )
    }

    /// `lseek` for `SEEK_DATA`/`SEEK_HOLE` on the handle `fh` of `ino` (0:
    /// an open the kernel made alone).
    pub fn lseek(&self, ino: u64, fh: u64, offset: i64, whence: i32) -> io::Result<i64> {
        let file = self.readable(ino, fh)?;
        // SAFETY: plain syscall on a descriptor we own (positioned reads
        // elsewhere never use its offset).
        let r = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r)
    }

    // ---- attributes -------------------------------------------------------------

    /// `setattr`: size, mode, owner and times, each replicated.
    pub fn setattr(&self, ino: u64, fh: Option<u64>, attr: SetAttr) -> Pending<libc::stat> {
        self.mutate(
            || {
                let named = self.named(ino, fh)?;
                Ok((Touched::paths(named.path.iter().cloned().collect()), named))
            },
            |named, begun| {
                let fd = self.inodes.fd(ino)?;
                let target = named.target(begun.epoch);
                let mut ops = Vec::new();
                let mut push = |op: Op| {
                    if target.is_some() {
                        ops.push(op);
                    }
                };
                let t = || target.clone().unwrap_or(Target::Handle(HandleId(0)));
                if let Some(size) = attr.size {
                    match fh
                        .and_then(|fh| self.handle(fh).ok())
                        .filter(|h| h.writable)
                    {
                        Some(h) => sys::ftruncate(h.file.as_fd(), size)?,
                        None => sys::ftruncate(
                            sys::reopen(fd.as_fd(), libc::O_WRONLY | libc::O_NONBLOCK)?.as_fd(),
                            size,
                        )?,
                    }
                    push(Op::Truncate { target: t(), size });
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
                    push(Op::Chown {
                        target: t(),
                        uid: attr.uid,
                        gid: attr.gid,
                        mode: if attr.mode.is_none() { mode } else { None },
                    });
                }
                if let Some(mode) = attr.mode {
                    sys::chmod_fd(fd.as_fd(), mode)?;
                    push(Op::Chmod {
                        target: t(),
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
                    push(Op::SetTimes {
                        target: t(),
                        atime: attr.atime.map(|_| timestamp(st.st_atime, st.st_atime_nsec)),
                        mtime: attr.mtime.map(|_| timestamp(st.st_mtime, st.st_mtime_nsec)),
                    });
                }
                let st = sys::fstat(fd.as_fd())?;
                Ok((st, ops))
            },
        )
    }

    /// `setxattr`. Only attributes that are replicated data
    /// ([`crate::xattr::is_replicated`]) go to the secondary; others (a host's
    /// security label) change here only.
    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Pending<()> {
        if !crate::xattr::is_replicated(name.as_bytes()) {
            return Pending::ready(
                self.inodes
                    .fd(ino)
                    .and_then(|fd| sys::setxattr_fd(fd.as_fd(), name, value, flags)),
            );
        }
        self.mutate(
            || {
                let named = self.named(ino, None)?;
                Ok((Touched::paths(named.path.iter().cloned().collect()), named))
            },
            |named, begun| {
                let fd = self.inodes.fd(ino)?;
                sys::setxattr_fd(fd.as_fd(), name, value, flags)?;
                let ops = named
                    .target(begun.epoch)
                    .map(|target| Op::SetXattr {
                        target,
                        name: name.as_bytes().to_vec(),
                        value: value.to_vec(),
                        flags: flags as u32,
                    })
                    .into_iter()
                    .collect();
                Ok(((), ops))
            },
        )
    }

    /// `removexattr` (replicated only for replicated attributes, as
    /// [`setxattr`](Self::setxattr)).
    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Pending<()> {
        if !crate::xattr::is_replicated(name.as_bytes()) {
            return Pending::ready(
                self.inodes
                    .fd(ino)
                    .and_then(|fd| sys::removexattr_fd(fd.as_fd(), name)),
            );
        }
        self.mutate(
            || {
                let named = self.named(ino, None)?;
                Ok((Touched::paths(named.path.iter().cloned().collect()), named))
            },
            |named, begun| {
                let fd = self.inodes.fd(ino)?;
                sys::removexattr_fd(fd.as_fd(), name)?;
                let ops = named
                    .target(begun.epoch)
                    .map(|target| Op::RemoveXattr {
                        target,
                        name: name.as_bytes().to_vec(),
                    })
                    .into_iter()
                    .collect();
                Ok(((), ops))
            },
        )
    }

    // ---- helpers ----------------------------------------------------------------

    /// One mutation: under the sequencer, `prepare` computes what it touches
    /// (every replicated path is computed here, before anything changes, so
    /// that a failure leaves nothing applied and a concurrent rename cannot
    /// make it stale), the mirror admits it (recording it first where
    /// needed), `apply` makes the local change and builds the ops from what
    /// `prepare` computed, and they are submitted in the same section. The
    /// answer comes through the returned [`Pending`], outside the lock.
    fn mutate<C, T: Send + 'static>(
        &self,
        prepare: impl FnOnce() -> io::Result<(Touched, C)>,
        apply: impl FnOnce(C, &Begun) -> io::Result<(T, Vec<Op>)>,
    ) -> Pending<T> {
        let entered = std::time::Instant::now();
        let guard = self.sequence();
        let (touched, ctx) = match prepare() {
            Ok(x) => x,
            Err(e) => return Pending::failed(e),
        };
        let begun = match self.repl.begin(touched) {
            Ok(b) => b,
            Err(e) => return Pending::failed(e),
        };
        let (value, ops) = match apply(ctx, &begun) {
            Ok(x) => x,
            Err(e) => {
                self.repl.abandon(begun);
                return Pending::failed(e);
            }
        };
        let mut ticket = self.repl.submit(begun, ops);
        drop(guard);
        ticket.started_at(entered);
        Pending {
            state: Ok((value, ticket)),
            on_error: None,
            local_error: None,
        }
    }

    /// Makes `file` durable locally while the secondary makes its copy
    /// durable (`named`: how it names it, computed under the sequencer).
    fn durable(
        &self,
        file: Arc<File>,
        datasync: bool,
        named: impl FnOnce() -> io::Result<Named>,
    ) -> Pending<()> {
        let mut p = self.mutate(
            || {
                let named = named()?;
                let sync = Touched {
                    sync: true,
                    synced: named.path.clone(),
                    ..Touched::default()
                };
                Ok((sync, named))
            },
            |named, begun| {
                // With --ack=on-sync the barrier makes this file durable
                // there with everything before it.
                if begun.barrier {
                    return Ok(((), vec![Op::Barrier]));
                }
                let ops = named
                    .target(begun.epoch)
                    .map(|target| Op::Fsync { target, datasync })
                    .into_iter()
                    .collect();
                Ok(((), ops))
            },
        );
        // The local sync overlaps the secondary's.
        let local = sys::fsync(file.as_fd(), datasync);
        if let (Err(e), Ok(_)) = (local, &p.state) {
            p.local_error = Some(e);
        }
        p
    }

    /// The mutation touches `parent/name` (computed now: under the sequencer).
    fn child(&self, parent: u64, name: &OsStr) -> io::Result<(Touched, RelPath)> {
        let path = self.child_path(parent, name)?;
        Ok((Touched::paths(vec![path.clone()]), path))
    }

    /// The mutation changes only bytes `[offset, offset + len)` of the file
    /// of `h` (computed under the sequencer; no path: unlinked).
    fn touch_data(
        &self,
        h: &Handle,
        offset: u64,
        len: u64,
    ) -> io::Result<(Touched, Option<RelPath>)> {
        let path = self.inodes.path(h.ino).ok();
        let touched = Touched {
            paths: path.iter().cloned().collect(),
            data: path.as_ref().map(|_| (offset, len)),
            ..Touched::default()
        };
        Ok((touched, path))
    }

    /// How the secondary may know `ino` (through the handle `fh` if given):
    /// computed under the sequencer, before the change.
    fn named(&self, ino: u64, fh: Option<u64>) -> io::Result<Named> {
        let mut handles: Vec<(u64, Arc<Handle>)> = Vec::new();
        if let Some(h) = fh.and_then(|fh| self.handle(fh).ok().map(|h| (fh, h))) {
            handles.push(h);
        }
        let path = self.inodes.path(ino).ok();
        if path.is_none() {
            // Unlinked: only a handle the secondary holds still reaches it.
            handles.extend(
                self.handles
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .filter(|(_, h)| h.ino == ino && h.writable)
                    .map(|(fh, h)| (*fh, h.clone())),
            );
        }
        Ok(Named { path, handles })
    }

    /// How the secondary names the file of the writable handle `h` for a
    /// data op on connection `begun.epoch`: the handle if it holds it there;
    /// else the handle opened there now (an `Open` pushed first, with the
    /// handle's sync flags, so that writes keep `O_SYNC` and follow the
    /// inode); `None` when the file has no name and the secondary no handle
    /// (unlinked while open, and opened before a reconnect): local only.
    /// A shared writer's file: always its path.
    fn data_target(
        &self,
        h: &Handle,
        fh: u64,
        path: Option<RelPath>,
        begun: &Begun,
        ops: &mut Vec<Op>,
    ) -> Option<Target> {
        let epoch = begun.epoch?;
        if h.shared {
            // Every op names the file by its path, computed under the
            // sequencer: nothing on the secondary can go stale (an open
            // it refused, or lost with a restart, while a resync brings
            // the file over). A file unlinked while open has no path left,
            // and nothing visible of it to replicate: local only.
            return path.map(Target::Path);
        }
        if h.remote_epoch.load(Ordering::Relaxed) == epoch {
            return Some(Target::Handle(HandleId(fh)));
        }
        let path = path?;
        ops.push(Op::Open {
            path,
            handle: HandleId(fh),
            flags: h.sync_flags as u32,
        });
        h.remote_epoch.store(epoch, Ordering::Relaxed);
        Some(Target::Handle(HandleId(fh)))
    }

    /// Before a name of the inode `st` is removed: if the kernel knows the
    /// inode, its descriptor is cached while a name still leads to it (the
    /// table opens descriptors lazily, and keeps those of inodes with no
    /// name left), so that it stays reachable if it was its last name
    /// (unlinked while open).
    fn keep_fd(&self, st: &libc::stat) {
        if let Some(ino) = self.inodes.by_key(key_of(st)) {
            let _ = self.inodes.fd(ino);
        }
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

    fn writable(&self, fh: u64) -> io::Result<Arc<Handle>> {
        self.handle(fh).and_then(|h| {
            if h.writable {
                Ok(h)
            } else {
                Err(err(libc::EBADF))
            }
        })
    }

    /// What reads the file `ino` for the handle `fh`: its descriptor, or
    /// for 0 (an open the kernel made without asking, see
    /// [`writer`](Self::writer)) the inode's cached read-only one.
    fn readable(&self, ino: u64, fh: u64) -> io::Result<Arc<File>> {
        if fh != 0 {
            return Ok(self.handle(fh)?.file.clone());
        }
        let fd = self.inodes.fd(ino)?;
        self.shared_reader(ino, &fd)
    }

    /// The read-only descriptor every read-only open of the regular file
    /// `ino` (whose O_PATH descriptor is `fd`) shares, cached in the table.
    fn shared_reader(&self, ino: u64, fd: &OwnedFd) -> io::Result<Arc<File>> {
        self.inodes.reader(ino, || {
            Ok(File::from(sys::reopen(fd.as_fd(), libc::O_RDONLY)?))
        })
    }

    /// The writable handle a data op on `ino` through the kernel's handle
    /// `fh` uses: that handle, or for 0 the inode's shared writer. With
    /// no OPEN requests (see [`crate::fs::fuse`]) the kernel opens files
    /// alone and sends their writes with handle 0: one read-write
    /// descriptor per inode serves all its opens. It is opened by the
    /// first write (or is the descriptor of the create that made the
    /// file), closed when the kernel forgets the inode, or as the oldest
    /// when more than [`SHARED_WRITERS_MAX`] are open; the ops made
    /// through it name the file by its path, so the secondary holds
    /// nothing of it (see [`data_target`](Self::data_target)). Called under
    /// the sequencer, like every close of one.
    fn writer(&self, ino: u64, fh: u64) -> io::Result<(u64, Arc<Handle>)> {
        if fh != 0 {
            return Ok((fh, self.writable(fh)?));
        }
        let mut w = self.shared_writers();
        if let Some(h) = w
            .by_ino
            .get(&ino)
            .and_then(|&fh| Some((fh, self.handle(fh).ok()?)))
        {
            return Ok(h);
        }
        let fd = self.inodes.fd(ino)?;
        let file = Arc::new(File::from(sys::reopen(fd.as_fd(), libc::O_RDWR)?));
        // Not counted among the inode's opens (io_modes): it is no open
        // of the kernel's, and no passthrough is used without OPENs.
        let fh = self.insert_handle(ino, file, true, 0, false, true);
        self.set_shared(&mut w, ino, fh);
        drop(w);
        Ok((fh, self.handle(fh)?))
    }

    /// Makes `fh` the shared writer of `ino`, closing the one it had (if
    /// still open) and the oldest beyond the bound. Under the sequencer.
    fn set_shared(&self, w: &mut SharedWriters, ino: u64, fh: u64) {
        if let Some(old) = w.remove(ino) {
            self.close_locked(old);
        }
        w.by_ino.insert(ino, fh);
        w.order.push_back(ino);
        while w.by_ino.len() > SHARED_WRITERS_MAX {
            let Some(old) = w.order.pop_front() else {
                break;
            };
            if let Some(old_fh) = w.by_ino.remove(&old) {
                self.close_locked(old_fh);
            }
        }
    }

    fn shared_writers(&self) -> MutexGuard<'_, SharedWriters> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dir(&self, fh: u64) -> io::Result<Arc<DirHandle>> {
        self.dirs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh)
            .cloned()
            .ok_or_else(|| err(libc::EBADF))
    }

    /// A new handle of `ino` (`shared`: the inode's shared writer, see
    /// [`Overlay::writer`]).
    fn insert_handle(
        &self,
        ino: u64,
        file: Arc<File>,
        writable: bool,
        sync_flags: i32,
        passthrough: bool,
        shared: bool,
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
                    sync_flags,
                    remote_epoch: AtomicU64::new(0),
                    passthrough,
                    shared,
                }),
            );
        fh
    }

    /// The secondary holds handle `fh` on connection `epoch`.
    fn mark_remote(&self, fh: u64, epoch: u64) {
        if let Ok(h) = self.handle(fh) {
            h.remote_epoch.store(epoch, Ordering::Relaxed);
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

    /// Gives a new entry its owner, sets the mode asked for (whatever the
    /// process's umask; chown also clears setuid/setgid) — bits of `mode`
    /// the entry did not get, except a setgid it may only inherit — and
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
        let have = entry.attr.st_mode & 0o7777;
        // A directory keeps the setgid it inherited; it is not asked for.
        let want = if is_kind(&entry.attr, libc::S_IFDIR) {
            (mode & 0o1777) | (have & libc::S_ISGID)
        } else {
            mode & 0o7777
        };
        if have != want && !is_kind(&entry.attr, libc::S_IFLNK) {
            let fd = self.inodes.fd(entry.ino)?;
            sys::chmod_fd(fd.as_fd(), want)?;
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

/// True when an inode the table knows by `(dev, ino)` (`old`, stat'ed
/// through its cached descriptor) is still the one a lookup found (`new`):
/// it still has links and the same type. Otherwise the backing file system
/// freed its number and reused it (a removed directory, a file unlinked and
/// closed): the new file must get a new FUSE inode, or the kernel, which
/// may still know the old one, sees a file become a directory (a "bad"
/// inode: EIO on every later call) or the old file's attributes change.
fn still_the_same(old: &libc::stat, new: &libc::stat) -> bool {
    old.st_nlink > 0 && old.st_mode & libc::S_IFMT == new.st_mode & libc::S_IFMT
}

/// `S_IF*` bits of a `d_type` (0 for `DT_UNKNOWN`).
fn d_type_bits(t: u8) -> u32 {
    match t {
        libc::DT_DIR => libc::S_IFDIR,
        libc::DT_REG => libc::S_IFREG,
        libc::DT_LNK => libc::S_IFLNK,
        libc::DT_FIFO => libc::S_IFIFO,
        libc::DT_SOCK => libc::S_IFSOCK,
        libc::DT_CHR => libc::S_IFCHR,
        libc::DT_BLK => libc::S_IFBLK,
        _ => 0,
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
