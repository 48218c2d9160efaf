//! The fuser adapter: turns FUSE requests into [`Overlay`] calls and replies.
//!
//! Owns nothing but the translation (request fields in, `io::Error` → `Errno` in
//! one place, attributes out) and the kernel passthrough bookkeeping: one
//! `BackingId` per inode shared by its read-only opens, released with the last
//! of them. No replication decision is made here.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackingId, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::{debug, info};

use super::ops::{Ctx, Entry, Opened, Overlay, Pending, SetAttr};

/// How long the kernel may cache names and attributes. Every change to the
/// backing tree goes through this mount, whose replies carry the new
/// attributes, and the kernel invalidates what a write or a directory change
/// makes stale, so long caching is safe and keeps tree walks off mirrorfs.
const TTL: Duration = Duration::from_secs(60);

/// Flags of every read-only open. `FOPEN_NOFLUSH`: the kernel sends no FLUSH
/// when such a file is closed (fs/fuse/file.c `fuse_flush` returns at once
/// for it). A read-only handle has nothing to flush: [`MirrorFs::flush`]
/// does nothing for any handle (every write was replicated before it
/// returned), and no POSIX lock is served here (no `FUSE_POSIX_LOCKS`), so
/// no lock owner needs the FLUSH to drop its locks. One synchronous round
/// trip less per `close(2)` of a file served read-only (Apache: one per GET).
const READ_ONLY_OPEN: FopenFlags = FopenFlags::FOPEN_NOFLUSH;

/// Flags of an open that may write, or of a create (whatever its access
/// mode), by its `O_*` flags.
/// Write-only: `FOPEN_NOFLUSH` as for [`READ_ONLY_OPEN`], since such a file
/// cannot be mapped (`mmap` needs read access), so its `close(2)` leaves no
/// dirty page of its own to write back, and every `write(2)` through it
/// reached this daemon before it returned (no writeback cache): one
/// synchronous round trip less per close of a created or rewritten file
/// (`cp`, `tar`, logs, uploads). Read-write: the kernel's FLUSH path also
/// writes back the pages dirtied through the file's shared mappings before
/// `close(2)` returns, so it stays.
fn writable_open(flags: i32) -> FopenFlags {
    if flags & libc::O_ACCMODE == libc::O_RDWR {
        FopenFlags::empty()
    } else {
        FopenFlags::FOPEN_NOFLUSH
    }
}

/// Flags of every directory open: the kernel caches a directory's listing
/// (`FOPEN_CACHE_DIR`) and keeps it across opens (`FOPEN_KEEP_CACHE`), so a
/// directory listed again costs OPENDIR and RELEASEDIR only. Right because
/// every change of a directory goes through this mount: the kernel drops the
/// cached listing when the directory's version or mtime changes
/// (fs/fuse/readdir.c `fuse_readdir_cached`), which each create, unlink or
/// rename through the mount does (`fuse_dir_changed`).
const DIR_OPEN: FopenFlags = FopenFlags::FOPEN_CACHE_DIR.union(FopenFlags::FOPEN_KEEP_CACHE);

/// Largest write the kernel sends in one request.
pub const MAX_WRITE: u32 = 1 << 20;

/// The FUSE filesystem of `mirrorfs mount`.
pub struct MirrorFs {
    ops: Arc<Overlay>,
    /// Opens of files come as OPEN requests (else the kernel opens files
    /// alone: see [`MirrorFs::open`]).
    open_requests: bool,
    passthrough: AtomicBool,
    /// Live backing ids by inode, shared by that inode's passthrough opens.
    backing_by_ino: Mutex<HashMap<u64, Weak<BackingId>>>,
    /// The backing id each passthrough handle holds (dropped at release).
    backing_by_fh: Mutex<HashMap<u64, Arc<BackingId>>>,
}

impl std::fmt::Debug for MirrorFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorFs")
            .field("passthrough", &self.passthrough)
            .finish_non_exhaustive()
    }
}

impl MirrorFs {
    /// Wraps an overlay. With `open_requests`, every open of a file is an
    /// OPEN request and passthrough is used when `passthrough` is set and
    /// the kernel offers it; without, the kernel opens files alone (and
    /// no passthrough is possible: it is set up in an OPEN's reply).
    pub fn new(ops: Arc<Overlay>, open_requests: bool, passthrough: bool) -> Self {
        ops.set_kernel_opens(!open_requests);
        Self {
            ops,
            open_requests,
            passthrough: AtomicBool::new(passthrough && open_requests),
            backing_by_ino: Mutex::new(HashMap::new()),
            backing_by_fh: Mutex::new(HashMap::new()),
        }
    }
}

fn errno(e: io::Error) -> Errno {
    // The one place where OS errors become FUSE errors: the real errno is kept.
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// FUSE attributes of `st` under the FUSE inode number `ino`.
fn attr(ino: u64, st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: kind(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn zeroed_stat() -> libc::stat {
    // SAFETY: libc::stat is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

fn entry_now(reply: ReplyEntry, r: io::Result<Entry>) {
    match r {
        Ok(e) => reply.entry(&TTL, &attr(e.ino, &e.attr), Generation(0)),
        Err(e) => reply.error(errno(e)),
    }
}

// A mutation's reply goes with its answer: sent at once, or (held for a
// controller's decision) later from another thread: the FUSE thread that
// took the request is free again either way.

fn reply_entry(reply: ReplyEntry, p: Pending<Entry>) {
    p.reply(move |r| entry_now(reply, r));
}

fn reply_empty(reply: ReplyEmpty, p: Pending<()>) {
    p.reply(move |r| match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    });
}

fn reply_xattr(reply: ReplyXattr, size: u32, r: io::Result<Vec<u8>>) {
    match r {
        Ok(v) if size == 0 => {
            let mut n = [0u8; 4];
            n.copy_from_slice(&v[..4]);
            reply.size(u32::from_ne_bytes(n));
        }
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(e)),
    }
}

fn time_or_now(t: Option<TimeOrNow>) -> Option<Option<SystemTime>> {
    t.map(|t| match t {
        TimeOrNow::Now => None,
        TimeOrNow::SpecificTime(t) => Some(t),
    })
}

impl MirrorFs {
    fn backing_for(
        &self,
        ino: u64,
        opened: &Opened,
        reply: &ReplyOpen,
    ) -> io::Result<Arc<BackingId>> {
        let file = opened
            .passthrough
            .as_ref()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut by_ino = self
            .backing_by_ino
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(id) = by_ino.get(&ino).and_then(Weak::upgrade) {
            return Ok(id);
        }
        let id = Arc::new(reply.open_backing(file.as_ref())?);
        by_ino.insert(ino, Arc::downgrade(&id));
        Ok(id)
    }
}

impl Filesystem for MirrorFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        // Never FUSE_WRITEBACK_CACHE, whatever `--ack` says: the kernel
        // would answer writes before this daemon sees them (each-op then
        // acknowledges what the secondary lacks; on-sync's stream would
        // receive data reordered behind renames), and it turns passthrough
        // off on the connection. What fuser requests besides is
        // ASYNC_READ, BIG_WRITES and MAX_PAGES.
        // Listings come with every entry's attributes (always, not the
        // kernel's adaptive choice): a tree walk then needs no LOOKUP per
        // entry. Right for the same reason as the long TTL: every change
        // goes through this mount.
        if config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS)
            .is_err()
        {
            info!("the kernel offers no READDIRPLUS: listings come without attributes");
        }
        if !self.open_requests {
            info!("files are opened by the kernel alone: no OPEN, RELEASE or FLUSH requests");
        }
        if self.passthrough.load(Ordering::Relaxed) {
            let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(2).is_ok();
            if !ok {
                info!(
                    "the kernel offers no FUSE passthrough: read-only opens are served by mirrorfs"
                );
            }
            self.passthrough.store(ok, Ordering::Relaxed);
            self.ops.enable_passthrough(ok);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.ops.lookup(parent.0, name) {
            // A negative entry (node id 0) lets the kernel cache "no such
            // name": it is dropped when the name is created through the mount,
            // the only way the backing tree changes.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let mut none = attr(0, &zeroed_stat());
                none.ino = INodeNo(0);
                reply.entry(&TTL, &none, Generation(0));
            }
            r => entry_now(reply, r),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.ops.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.ops.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(st) => reply.attr(&TTL, &attr(ino.0, &st)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time_or_now(atime),
            mtime: time_or_now(mtime),
        };
        let ino = ino.0;
        self.ops
            .setattr(ino, fh.map(|f| f.0), set)
            .reply(move |r| match r {
                Ok(st) => reply.attr(&TTL, &attr(ino, &st)),
                Err(e) => reply.error(errno(e)),
            });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.ops.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(
            reply,
            self.ops
                .mknod(ctx(req), parent.0, name, mode, umask, u64::from(rdev)),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(reply, self.ops.mkdir(ctx(req), parent.0, name, mode, umask));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.ops.unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.ops.rmdir(parent.0, name));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        reply_entry(
            reply,
            self.ops
                .symlink(ctx(req), parent.0, link_name, target.as_os_str()),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.ops
                .rename(parent.0, name, newparent.0, newname, flags.bits()),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply_entry(reply, self.ops.link(ino.0, newparent.0, newname));
    }

    /// Without `open_requests` the first OPEN is answered ENOSYS: the kernel
    /// then opens every file of this connection alone, with no OPEN and no
    /// RELEASE (fs/fuse/file.c `fuse_file_open`: `fc->no_open`), keeps its
    /// page cache across opens (`FOPEN_KEEP_CACHE`, right for the same
    /// reason as the long TTL) and sends reads and writes with handle 0,
    /// which [`Overlay`] serves through the inode's shared descriptors.
    /// An `O_TRUNC` open then truncates with a SETATTR (no
    /// `FUSE_ATOMIC_O_TRUNC` is asked for), an `O_SYNC` write is followed
    /// by an FSYNC (`generic_write_sync`), and a create still comes as
    /// CREATE but is answered with handle 0 (no RELEASE follows it either:
    /// its descriptor becomes the inode's shared writer). An open costs no
    /// request (Apache: two fewer per GET); a writable open can no longer
    /// fail for the secondary's sake: its first write does.
    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if !self.open_requests {
            return reply.error(Errno::from_i32(libc::ENOSYS));
        }
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            let fopen = writable_open(flags.0);
            return self.ops.open(ino.0, flags.0).reply(move |r| match r {
                Ok(o) => reply.opened(FileHandle(o.fh), fopen),
                Err(e) => reply.error(errno(e)),
            });
        }
        let opened = match self.ops.open_read(ino.0, flags.0) {
            Ok(o) => o,
            Err(e) => return reply.error(errno(e)),
        };
        if opened.passthrough.is_some() && self.passthrough.load(Ordering::Relaxed) {
            match self.backing_for(ino.0, &opened, &reply) {
                Ok(id) => {
                    reply.opened_passthrough(FileHandle(opened.fh), READ_ONLY_OPEN, &id);
                    self.backing_by_fh
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(opened.fh, id);
                    return;
                }
                Err(e) => {
                    debug!(error = %e, ino = ino.0, "passthrough refused; serving reads");
                    self.ops.passthrough_refused(opened.fh);
                }
            }
        }
        let flags = if opened.keep_cache {
            READ_ONLY_OPEN | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            READ_ONLY_OPEN
        };
        reply.opened(FileHandle(opened.fh), flags);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.ops.read(ino.0, fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.ops
            .write(ino.0, fh.0, offset, data)
            .reply(move |r| match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(e)),
            });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Every write reached this daemon before it returned (no writeback
        // cache) and was replicated: nothing is pending here, and no POSIX
        // lock is served. ENOSYS: the kernel sends no FLUSH on this
        // connection again (fs/fuse/file.c `fuse_flush`: `fc->no_flush`),
        // but still writes back the pages a shared mapping dirtied before
        // `close(2)` returns: that happens before it looks at `no_flush`.
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.backing_by_fh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        self.ops.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.ops.fsync(ino.0, fh.0, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.ops.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), DIR_OPEN),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.ops.readdir(fh.0, offset) {
            Ok(entries) => {
                for (i, e) in entries.iter().enumerate() {
                    let next = offset + i as u64 + 1;
                    if reply.add(INodeNo(e.ino), next, kind(e.kind), &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        // "." and "..": the kernel neither links nor counts them.
        let mut dot = attr(0, &zeroed_stat());
        dot.kind = FileType::Directory;
        let r = self.ops.readdirplus(ino.0, fh.0, offset, |i, e, entry| {
            let next = i + 1;
            match entry {
                Some(en) => reply.add(
                    INodeNo(en.ino),
                    next,
                    &e.name,
                    &TTL,
                    &attr(en.ino, &en.attr),
                    Generation(0),
                ),
                None => {
                    dot.ino = INodeNo(e.ino);
                    reply.add(INodeNo(e.ino), next, &e.name, &TTL, &dot, Generation(0))
                }
            }
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.ops.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.ops.fsyncdir(ino.0, fh.0, datasync));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.ops.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.ops.setxattr(ino.0, name, value, flags));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, size, self.ops.getxattr(ino.0, name, size));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, size, self.ops.listxattr(ino.0, size));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.ops.removexattr(ino.0, name));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.ops
            .create(ctx(req), parent.0, name, mode, umask, flags)
            .reply(move |r| match r {
                Ok((e, o)) => reply.created(
                    &TTL,
                    &attr(e.ino, &e.attr),
                    Generation(0),
                    FileHandle(o.fh),
                    writable_open(flags),
                ),
                Err(e) => reply.error(errno(e)),
            });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.ops.fallocate(ino.0, fh.0, offset, length, mode));
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.ops.lseek(ino.0, fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.ops
            .copy_file_range(
                (ino_in.0, fh_in.0, offset_in),
                (ino_out.0, fh_out.0, offset_out),
                len,
            )
            .reply(move |r| match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(e)),
            });
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // No ioctl is supported (e.g. isatty's TCGETS asks): "not a terminal".
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    fn destroy(&mut self) {
        info!("the kernel ended the FUSE session (unmounted)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_read_write_open_keeps_the_flush_on_close() {
        // A write-only file cannot be mapped: its close has nothing to write
        // back, so the kernel is told not to send FLUSH (one round trip).
        for flags in [
            libc::O_WRONLY,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            libc::O_WRONLY | libc::O_APPEND | libc::O_DSYNC,
            libc::O_RDONLY | libc::O_CREAT,
        ] {
            assert_eq!(
                writable_open(flags),
                FopenFlags::FOPEN_NOFLUSH,
                "{flags:#o}"
            );
        }
        // A read-write one may have dirtied a shared mapping: its FLUSH
        // writes those pages back before close returns.
        for flags in [libc::O_RDWR, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL] {
            assert_eq!(writable_open(flags), FopenFlags::empty(), "{flags:#o}");
        }
    }
}
