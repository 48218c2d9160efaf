//! The resync workers: bring the secondary up to date path by path while the
//! application keeps running.
//!
//! Owns the walk over the mirror's pending paths. [`WORKERS`] threads visit
//! paths at once (the mirror never hands out a path together with an ancestor
//! or descendant, and only one while the application is writing), and each
//! submits a path's independent ops together, so the walk is bound by the
//! disks rather than by round trips. For each path a worker reads the
//! local state and submits the ops that make the secondary's copy equal
//! (`Ensure*`, `Remove`, the blocks whose xxh3 checksums differ, size, times,
//! extended attributes), each read-and-submit step under the overlay's
//! sequencer lock: live mutations are replicated in the same stream, so the
//! secondary sees every change in the order the primary made it. A file with
//! several names is sent once and linked under the others; an object renamed
//! while apart is first moved on the secondary (then compared); a file whose
//! checksums, size, mtime and attributes already match costs one round trip.
//! While the application writes, blocks go in small pieces, and pieces and
//! paths take turns across the workers with pauses that follow the
//! application's tail latency ([`crate::proto::pace`]). When nothing is
//! pending, the secondary adopts the primary's generation history and the
//! mirror is back in sync. Must not mark a path done that the secondary has
//! not confirmed.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use tracing::{debug, info, warn};
use xxhash_rust::xxh3::xxh3_64;

use super::ops::Overlay;
use crate::meta::{DIRTY_BLOCK, META_DIR};
use crate::mirror::{Mirror, ResyncWork, RESYNC_YIELD};
use crate::net::client::Link;
use crate::proto::path::RelPath;
use crate::proto::stream::Completion;
use crate::proto::wire::{
    decode_checksums, decode_listing_page, FileFacts, Op, Target, Timestamp, MAX_CHECKSUM_BYTES,
};
use crate::replica::apply::list_dir;
use crate::{sys, xattr};

/// Resync block size: the unit compared by checksum and resent when it differs.
pub const BLOCK: u32 = 1 << 20;
/// How long concluding a resync waits, holding the sequencer, for the ops
/// in flight to be answered.
const QUIET_WAIT: Duration = Duration::from_secs(2);
/// Paths visited at once while the application is idle. Each waits on the
/// disks of both nodes (a cold file's reads) and a round trip, so the walk of
/// many small files goes as fast as the requests in flight let the disks
/// overlap their reads: a `--full` resync of 100 000 unchanged files of
/// 16 KiB and a 1 GiB one took 27–30 s with 8 workers, 22–24 s with 16 and
/// 19–22 s with 32 (two vCPUs, one disk for both nodes).
pub const WORKERS: usize = 32;
/// Block writes a file's resync keeps in flight while the application is idle.
const WINDOW: usize = 16;
/// ... and while it is active: every resync block in the stream delays the
/// application's ops behind it, so only one is allowed ahead of them.
const WINDOW_APP_ACTIVE: usize = 1;
/// The size of the writes sent while the application is active: an op of
/// the application that arrives behind one waits for it to be applied (with
/// 128 KiB pieces, the p99 of sync writes during a resync of a large file
/// was 1.6 times the in-sync p99 here; with 32 KiB ones, 1.1 times).
const PIECE: usize = 32 << 10;
/// Bytes of entries one page of a directory listing carries.
const LIST_BUDGET: u32 = 1 << 20;
/// Blocks one checksum request asks for while the application is active.
const CHECKSUM_BATCH_APP_ACTIVE: u64 = 2;
/// A file changed as a whole and no bigger than this is sent without a
/// checksum round trip first.
const SMALL_FILE: u64 = 128 << 10;

/// The longest pause between two resync turns (a piece, or a path's first
/// ops) that keeps the resync at `floor` bytes a second of a large file's
/// data (small files: `floor / PIECE` a second) under an application that
/// writes without a break.
pub fn longest_pause(floor: u64) -> Duration {
    crate::proto::pace::longest_pause(floor, PIECE as u64)
}

/// Why one path's resync stopped.
#[derive(Debug)]
enum Stop {
    /// The connection is gone or the secondary failed an op: retry later.
    Failed(String),
    /// The local entry changed under us (replaced): start the path again.
    Changed,
    /// The connection is gone: the next one starts a new walk.
    Lost(String),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Self::Failed(e.to_string())
    }
}

/// Runs the resync workers until the mirror shuts down.
pub fn run(overlay: Arc<Overlay>, mirror: Arc<Mirror>) {
    std::thread::scope(|scope| {
        for i in 1..WORKERS {
            let (overlay, mirror) = (&overlay, &mirror);
            let spawned = std::thread::Builder::new()
                .name(format!("mirrorfs-resync-{i}"))
                .spawn_scoped(scope, move || work(overlay, mirror));
            if let Err(e) = spawned {
                // Fewer workers only make the resync slower.
                warn!(error = %e, "cannot start another resync worker");
            }
        }
        work(&overlay, &mirror);
    });
}

/// One worker: visits paths until the mirror shuts down.
fn work(overlay: &Overlay, mirror: &Mirror) {
    let limit = Duration::from_secs(60);
    let buf = RefCell::new(vec![0u8; (BLOCK as usize).max(DIRTY_BLOCK as usize)]);
    loop {
        let job = match mirror.next_resync_work() {
            None => return,
            Some(ResyncWork::Finish(link)) => {
                let w = Worker {
                    overlay,
                    mirror,
                    link: &link,
                    limit,
                    full: false,
                    buf: &buf,
                };
                if let Err(why) = w.finish() {
                    warn!(why = ?why, "could not conclude the resync; retrying");
                }
                mirror.finish_done();
                continue;
            }
            Some(ResyncWork::Path(job)) => job,
        };
        let w = Worker {
            overlay,
            mirror,
            link: &job.link,
            limit,
            full: job.full,
            buf: &buf,
        };
        // A path's first ops take a turn like a piece of a file.
        mirror.resync_turn();
        match w.sync_path(&job.path) {
            Ok(()) => {
                mirror.resync_done(&job);
                debug!(path = %job.path, "resynced");
            }
            Err(Stop::Changed) => mirror.resync_retry(&job, None),
            Err(Stop::Lost(why)) => {
                // The path stays in the dirty log; the supervisor notices the
                // loss and the next connection walks again.
                debug!(path = %job.path, %why, "resync of a path interrupted");
                mirror.resync_retry(&job, None);
            }
            Err(Stop::Failed(why)) => {
                // The secondary cannot apply this (its disk is full, ...):
                // the mirror pauses this path, the others go on.
                warn!(path = %job.path, %why, "resync of a path failed; retrying");
                mirror.resync_retry(&job, Some(why));
            }
        }
    }
}

/// The data writes of one file's resync: what is in flight, and how much
/// was sent since when (for the rate cap).
struct Outgoing<'f> {
    file: &'f OwnedFd,
    /// The inode the file is; the path must still name it when we send.
    ident: libc::stat,
    window: VecDeque<Receiver<Completion>>,
    sent: u64,
    started: std::time::Instant,
}

impl<'f> Outgoing<'f> {
    fn new(file: &'f OwnedFd) -> Result<Self, Stop> {
        Ok(Self {
            file,
            ident: sys::fstat(file.as_fd())?,
            window: VecDeque::new(),
            sent: 0,
            started: std::time::Instant::now(),
        })
    }

    /// Waits for every write in flight.
    fn drain(&mut self, w: &Worker<'_>) -> Result<(), Stop> {
        while let Some(rx) = self.window.pop_front() {
            w.wait(rx)?;
        }
        Ok(())
    }
}

struct Worker<'a> {
    overlay: &'a Overlay,
    mirror: &'a Mirror,
    link: &'a Arc<Link>,
    limit: Duration,
    full: bool,
    /// The worker's block buffer, reused from path to path.
    buf: &'a RefCell<Vec<u8>>,
}

/// Local facts about one path.
enum Local {
    Missing,
    Present { dir: OwnedFd, st: libc::stat },
}

impl Worker<'_> {
    fn wait(&self, rx: Receiver<Completion>) -> Result<Vec<u8>, Stop> {
        match rx.recv_timeout(self.limit) {
            Ok(Ok(data)) => Ok(data),
            Ok(Err(_)) if self.link.lost().is_some() => Err(Stop::Lost(format!(
                "the connection to the secondary is lost: {}",
                self.link.lost().unwrap_or_default()
            ))),
            Ok(Err(errno)) => Err(Stop::Failed(refused_by_secondary(errno))),
            Err(_) => Err(Stop::Failed("no answer from the secondary".into())),
        }
    }

    fn lstat(&self, path: &RelPath) -> io::Result<Local> {
        let root = self.overlay.backing_root()?;
        let Some((parent, name)) = path.split() else {
            let st = sys::fstat(root.as_fd())?;
            let dir = sys::openat2(
                root.as_fd(),
                OsStr::new("."),
                libc::O_PATH | libc::O_DIRECTORY,
                0,
                sys::RESOLVE_STRICT,
            )?;
            return Ok(Local::Present { dir, st });
        };
        let dir = match sys::openat2(
            root.as_fd(),
            parent.as_os_str(),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            sys::RESOLVE_STRICT,
        ) {
            Ok(d) => d,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Ok(Local::Missing)
            }
            Err(e) => return Err(e),
        };
        match sys::fstatat(dir.as_fd(), name) {
            Ok(st) => Ok(Local::Present { dir, st }),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Local::Missing),
            Err(e) => Err(e),
        }
    }

    /// Makes the secondary's `path` equal to ours.
    fn sync_path(&self, path: &RelPath) -> Result<(), Stop> {
        if path.as_bytes().split(|b| *b == b'/').next() == Some(META_DIR.as_bytes()) {
            return Ok(());
        }
        // Read the entry and submit what does not need an answer first, all
        // under the sequencer, so no live op slips between what we read and
        // what we send. Ops of one path are submitted together: the stream
        // applies them in order, and one failing fails the path.
        let mut rxs = Vec::new();
        let mut listing = None;
        let mut first_sums = None;
        // Which blocks to send, decided with the rest: the dirty ones when
        // only data was written while apart, else those whose checksums differ.
        let mut dirty_blocks = None;
        let mut sent_whole = false;
        let mut ensure_rx = None;
        let kind = {
            let _g = self.overlay.sequence();
            let local = self.lstat(path)?;
            let linked = match &local {
                Local::Present { st, .. } => self.linked_name(path, st)?,
                Local::Missing => None,
            };
            // Renamed while apart: move the object on the secondary instead
            // of sending it again (the comparison that follows fixes what
            // differs), and drop the old name there.
            if matches!(local, Local::Missing) && self.moved_away(path)? {
                // An old name (or below one): the visit of its new name
                // moves it, then removes what is left.
                return Ok(());
            }
            for o in self.mirror.old_names(path) {
                let old_name_gone = matches!(self.lstat(&o)?, Local::Missing);
                if matches!(local, Local::Present { .. }) {
                    // May fail (nothing there, a kind or a non-empty directory
                    // in the way, moved already): the comparison that follows
                    // sends what it must.
                    drop(self.link.submit(Op::Rename {
                        from: o.clone(),
                        to: path.clone(),
                        flags: 0,
                    }));
                }
                if old_name_gone {
                    rxs.push(self.link.submit(Op::Remove { path: o }));
                } else {
                    // Made again here (a rotated log): the secondary's copy
                    // may just have moved away, so visit it again.
                    self.mirror.add_pending([o]);
                }
            }
            match (local, linked) {
                (Local::Missing, _) => {
                    if path.is_root() {
                        return Err(Stop::Failed("the backing root is gone".into()));
                    }
                    rxs.push(self.link.submit(Op::Remove { path: path.clone() }));
                    0
                }
                (Local::Present { .. }, Some(first)) => {
                    // Another name of this file was visited: link to it (its
                    // visit carries the content, times and attributes).
                    rxs.push(self.link.submit(Op::Remove { path: path.clone() }));
                    rxs.push(self.link.submit(Op::Link {
                        existing: first,
                        new: path.clone(),
                    }));
                    0
                }
                (Local::Present { dir, st }, None) => {
                    let name = path.split().map(|(_, n)| n.to_owned());
                    let kind = st.st_mode & libc::S_IFMT;
                    let (uid, gid, mode) = (st.st_uid, st.st_gid, st.st_mode & 0o7777);
                    let op = match kind {
                        libc::S_IFDIR => Op::EnsureDir {
                            path: path.clone(),
                            mode,
                            uid,
                            gid,
                        },
                        libc::S_IFREG => Op::EnsureFile {
                            path: path.clone(),
                            mode,
                            uid,
                            gid,
                            single: st.st_nlink == 1,
                        },
                        libc::S_IFLNK => Op::EnsureSymlink {
                            path: path.clone(),
                            target: sys::readlinkat(
                                dir.as_fd(),
                                name.as_deref().unwrap_or(OsStr::new("")),
                            )?,
                            uid,
                            gid,
                        },
                        _ => Op::EnsureNode {
                            path: path.clone(),
                            mode: st.st_mode,
                            rdev: st.st_rdev,
                            uid,
                            gid,
                        },
                    };
                    if kind == libc::S_IFREG {
                        ensure_rx = Some(self.link.submit(op));
                    } else {
                        rxs.push(self.link.submit(op));
                    }
                    match kind {
                        libc::S_IFDIR => {
                            rxs.push(self.link.submit(self.xattrs_op(path)?));
                            let local = self.list_local(&dir, name.as_deref())?;
                            let rx = self.link.submit(Op::List {
                                path: path.clone(),
                                after: None,
                                budget: LIST_BUDGET,
                            });
                            listing = Some((local, rx));
                        }
                        libc::S_IFREG => {
                            if !self.full {
                                dirty_blocks = self.mirror.dirty_blocks(path);
                            }
                            let blocks = (st.st_size as u64).div_ceil(u64::from(BLOCK));
                            if !self.full
                                && dirty_blocks.is_none()
                                && st.st_size as u64 <= SMALL_FILE
                            {
                                // A small file changed as a whole: sending it
                                // costs less than a checksum round trip first.
                                let file = sys::openat(
                                    dir.as_fd(),
                                    name.as_deref().unwrap_or(OsStr::new("")),
                                    libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                                    0,
                                )
                                .map_err(|_| Stop::Changed)?;
                                let now = sys::fstat(file.as_fd())?;
                                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
                                    return Err(Stop::Changed);
                                }
                                rxs.extend(self.submit_whole(path, &file, &now)?);
                                sent_whole = true;
                            } else if dirty_blocks.is_none() {
                                // Even for an empty file: the reply tells
                                // whether size, times and attributes need
                                // sending.
                                let count = blocks.min(self.checksum_batch()) as u32;
                                let rx = self.link.submit(Op::Checksums {
                                    path: path.clone(),
                                    block: BLOCK,
                                    first: 0,
                                    count,
                                });
                                first_sums = Some((rx, count));
                            }
                        }
                        libc::S_IFLNK => {}
                        _ => rxs.push(self.link.submit(self.xattrs_op(path)?)),
                    }
                    kind
                }
            }
        };
        // The file's kind first: the ops after it depend on it.
        let kept = match ensure_rx {
            Some(rx) => self.wait(rx)?.first() == Some(&1),
            None => false,
        };
        for rx in rxs {
            self.wait(rx)?;
        }
        if let Some((local, rx)) = listing {
            self.sync_listing(path, local, rx)?;
        }
        if kind == libc::S_IFREG && !sent_whole {
            match dirty_blocks {
                Some(blocks) if kept => self.sync_blocks(path, &blocks)?,
                // Not there any more (removed behind our back, or made anew
                // above): the dirty blocks are not all it lacks.
                _ => self.sync_content(path, first_sums)?,
            }
        }
        Ok(())
    }

    /// For a regular file with several names: another name of it this
    /// resync visited, which still names it. The caller holds the sequencer.
    fn linked_name(&self, path: &RelPath, st: &libc::stat) -> Result<Option<RelPath>, Stop> {
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink < 2 {
            return Ok(None);
        }
        let key = (st.st_dev, st.st_ino);
        let Some(first) = self.mirror.resync_first_name(key, path) else {
            return Ok(None);
        };
        if self.same_inode(&first, st)? {
            return Ok(Some(first));
        }
        self.mirror.resync_rename_first(key, path);
        Ok(None)
    }

    /// True when `path` is, or is below, the old name of something renamed
    /// while apart that is gone here: the visit of the new name moves it on
    /// the secondary (and removes what is left), so nothing may remove it
    /// first. The caller holds the sequencer.
    fn moved_away(&self, path: &RelPath) -> Result<bool, Stop> {
        for o in self.mirror.old_names_above(path) {
            if matches!(self.lstat(&o)?, Local::Missing) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Our entries of the directory `name` in `dir` (the root: `None`).
    fn list_local(&self, dir: &OwnedFd, name: Option<&OsStr>) -> Result<Vec<(Vec<u8>, u32)>, Stop> {
        let d = match name {
            Some(n) => sys::openat(
                dir.as_fd(),
                n,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?,
            None => sys::openat(
                dir.as_fd(),
                OsStr::new("."),
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )?,
        };
        let mut local = list_dir(d.as_fd())?;
        if name.is_none() {
            local.retain(|(n, _)| n != META_DIR.as_bytes());
        }
        Ok(local)
    }

    /// Given our listing and the secondary's answer to `List` (read and
    /// submitted together), removes what the secondary has and we do not;
    /// queues what we have and it does not (or all children, in a full resync).
    fn sync_listing(
        &self,
        path: &RelPath,
        local: Vec<(Vec<u8>, u32)>,
        rx: Receiver<Completion>,
    ) -> Result<(), Stop> {
        // Page after page (a directory may hold more entries than a frame):
        // each asks for the names after the last one received.
        let mut remote = Vec::new();
        let mut rx = rx;
        loop {
            let (page, more) = decode_listing_page(&self.wait(rx)?)
                .map_err(|e| Stop::Failed(format!("bad listing from the secondary: {e}")))?;
            let last = page.last().map(|(name, _)| name.clone());
            remote.extend(page);
            match (more, last) {
                (false, _) => break,
                (true, Some(after)) => {
                    rx = self.link.submit(Op::List {
                        path: path.clone(),
                        after: Some(after),
                        budget: LIST_BUDGET,
                    });
                }
                (true, None) => {
                    return Err(Stop::Failed(
                        "bad listing from the secondary: an empty page says more follow".into(),
                    ))
                }
            }
        }
        let local: BTreeMap<Vec<u8>, u32> = local.into_iter().collect();
        let remote: BTreeMap<Vec<u8>, u32> = remote.into_iter().collect();
        let child = |n: &[u8]| {
            path.join(OsStr::from_bytes(n))
                .map_err(|e| Stop::Failed(format!("child path: {e}")))
        };
        let mut queue = Vec::new();
        for (name, kind) in &local {
            if self.full || remote.get(name) != Some(kind) {
                queue.push(child(name)?);
            }
        }
        let mut removals = Vec::new();
        {
            // Re-check under the sequencer: a live create may have made it.
            let _g = self.overlay.sequence();
            for name in remote.keys().filter(|n| !local.contains_key(*n)) {
                let p = child(name)?;
                match self.lstat(&p)? {
                    Local::Missing if self.moved_away(&p)? => {}
                    Local::Missing => removals.push(self.link.submit(Op::Remove { path: p })),
                    Local::Present { .. } => queue.push(p),
                }
            }
        }
        for rx in removals {
            self.wait(rx)?;
        }
        self.mirror.add_pending(queue);
        Ok(())
    }

    /// Sends the given dirty blocks (no checksum pass), then size and times.
    fn sync_blocks(&self, path: &RelPath, blocks: &[u64]) -> Result<(), Stop> {
        let file = self.open_content(path)?;
        let mut out = Outgoing::new(&file)?;
        let mut buf = self.buf.borrow_mut();
        let buf = &mut buf[..DIRTY_BLOCK as usize];
        for block in blocks {
            let offset = block * DIRTY_BLOCK;
            // Read once outside the sequencer, so that the read under it (the
            // one sent) comes from the page cache and does not hold the
            // application's mutations up while the disk seeks.
            if sys::pread_full(file.as_fd(), buf, offset)? == 0 {
                // Beyond the end now: the final truncate settles it.
                continue;
            }
            self.send(path, &mut out, buf, offset)?;
        }
        self.sync_tail(path, &mut out)
    }

    fn open_content(&self, path: &RelPath) -> Result<OwnedFd, Stop> {
        let root = self.overlay.backing_root()?;
        sys::openat2(
            root.as_fd(),
            path.as_os_str(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            0,
            sys::RESOLVE_STRICT,
        )
        .map_err(|_| Stop::Changed)
    }

    /// Sends our bytes of `out`'s file at `offset` (`buf.len()` of them, fewer
    /// at its end), read under the sequencer so that no live write to them
    /// can be overtaken by older bytes. While the application is active,
    /// in pieces of [`PIECE`] with one in flight, each taking its turn
    /// ([`Mirror::resync_turn`]): each piece in the stream delays the
    /// application's ops behind it.
    fn send(
        &self,
        path: &RelPath,
        out: &mut Outgoing<'_>,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<(), Stop> {
        let mut done = 0;
        while done < buf.len() {
            let active = self.mirror.app_active(RESYNC_YIELD);
            let piece = if active { PIECE } else { buf.len() };
            let end = (done + piece).min(buf.len());
            let at = offset + done as u64;
            self.mirror.resync_turn();
            let rx = {
                let _g = self.overlay.sequence();
                if !self.same_inode(path, &out.ident)? {
                    return Err(Stop::Changed);
                }
                let n = sys::pread_full(out.file.as_fd(), &mut buf[done..end], at)?;
                if n == 0 {
                    return Ok(());
                }
                out.sent += n as u64;
                self.mirror.resync_sent(n as u64);
                self.link.submit(Op::Write {
                    target: Target::Path(path.clone()),
                    offset: at,
                    data: buf[done..done + n].to_vec(),
                })
            };
            out.window.push_back(rx);
            let limit = if active { WINDOW_APP_ACTIVE } else { WINDOW };
            while out.window.len() >= limit {
                self.wait(out.window.pop_front().expect("non-empty window"))?;
            }
            self.pace(out);
            done = end;
        }
        Ok(())
    }

    /// Sends the blocks whose checksums differ, then size, times and
    /// extended attributes. `first_sums`: the first checksum request, already
    /// submitted with the entry's kind, and its block count.
    fn sync_content(
        &self,
        path: &RelPath,
        mut first_sums: Option<(Receiver<Completion>, u32)>,
    ) -> Result<(), Stop> {
        let file = self.open_content(path)?;
        let mut out = Outgoing::new(&file)?;
        let mut first = 0u64;
        let mut buf = self.buf.borrow_mut();
        let buf = &mut buf[..BLOCK as usize];
        let mut theirs_first = None;
        // The next batch's checksums are asked for before this batch is
        // compared, so that the secondary reads while we compare.
        let ask = |first: u64| -> Result<Option<(Receiver<Completion>, u32)>, Stop> {
            let size = sys::fstat(file.as_fd())?.st_size as u64;
            let blocks = size.div_ceil(u64::from(BLOCK));
            if first >= blocks {
                return Ok(None);
            }
            let count = (blocks - first).min(self.checksum_batch()) as u32;
            let rx = {
                let _g = self.overlay.sequence();
                self.link.submit(Op::Checksums {
                    path: path.clone(),
                    block: BLOCK,
                    first,
                    count,
                })
            };
            Ok(Some((rx, count)))
        };
        if first_sums.is_none() {
            first_sums = ask(0)?;
        }
        loop {
            let Some((rx, count)) = first_sums.take() else {
                break;
            };
            let reply = self.wait(rx)?;
            first_sums = ask(first + u64::from(count))?;
            let (facts, theirs) = decode_checksums(&reply)
                .map_err(|e| Stop::Failed(format!("bad checksums from the secondary: {e}")))?;
            theirs_first.get_or_insert(facts);
            for i in 0..u64::from(count) {
                let offset = (first + i) * u64::from(BLOCK);
                // Compared outside the sequencer: a live write after the
                // secondary's checksum reaches it through the stream anyway,
                // so equal bytes now mean equal bytes then (as when compared
                // under it: the checksum is older than the read either way).
                let n = sys::pread_full(file.as_fd(), buf, offset)?;
                if n == 0 {
                    break;
                }
                if theirs.get(i as usize) == Some(&xxh3_64(&buf[..n])) {
                    continue;
                }
                self.send(path, &mut out, &mut buf[..n], offset)?;
            }
            first += u64::from(count);
        }
        if out.sent == 0
            && theirs_first.is_some_and(|t| Self::same_facts(&file, &t).unwrap_or(false))
        {
            // Equal bytes, size, time and attributes: nothing more to send
            // (a live change since the checksums reaches both sides alike).
            return Ok(());
        }
        self.sync_tail(path, &mut out)
    }

    /// True when our file's size, modification time and replicated extended
    /// attributes are what the secondary reported.
    fn same_facts(file: &OwnedFd, theirs: &FileFacts) -> io::Result<bool> {
        let st = sys::fstat(file.as_fd())?;
        Ok(st.st_size as u64 == theirs.size
            && st.st_mtime == theirs.mtime.sec
            && st.st_mtime_nsec as u32 == theirs.mtime.nsec
            && xattr::digest(&xattr::read(file.as_fd())?) == theirs.xattrs)
    }

    /// Blocks one checksum request asks for: few while the application is
    /// active (the secondary reads them all before the next op in the
    /// stream), as many as one request may cover otherwise
    /// ([`MAX_CHECKSUM_BYTES`]: no single op keeps the secondary busy long).
    fn checksum_batch(&self) -> u64 {
        if self.mirror.app_active(RESYNC_YIELD) {
            CHECKSUM_BATCH_APP_ACTIVE
        } else {
            MAX_CHECKSUM_BYTES / u64::from(BLOCK)
        }
    }

    /// Submits all of a small file (`st`: its state now): content, size,
    /// times, extended attributes. The caller holds the sequencer.
    fn submit_whole(
        &self,
        path: &RelPath,
        file: &OwnedFd,
        st: &libc::stat,
    ) -> Result<Vec<Receiver<Completion>>, Stop> {
        let mut data = vec![0u8; st.st_size as usize];
        let n = sys::pread_full(file.as_fd(), &mut data, 0)?;
        data.truncate(n);
        self.mirror.resync_sent(n as u64);
        let mut rxs = Vec::with_capacity(4);
        if n > 0 {
            rxs.push(self.link.submit(Op::Write {
                target: Target::Path(path.clone()),
                offset: 0,
                data,
            }));
        }
        rxs.extend(self.tail_ops(path, st)?);
        Ok(rxs)
    }

    /// Size, times and extended attributes last, together, under the
    /// sequencer, from the file as it is now; then waits for them and for
    /// the data writes still in flight (all in one round trip).
    fn sync_tail(&self, path: &RelPath, out: &mut Outgoing<'_>) -> Result<(), Stop> {
        let rxs = {
            let _g = self.overlay.sequence();
            if !self.same_inode(path, &out.ident)? {
                return Err(Stop::Changed);
            }
            let st = sys::fstat(out.file.as_fd())?;
            self.tail_ops(path, &st)?
        };
        out.drain(self)?;
        for rx in rxs {
            self.wait(rx)?;
        }
        Ok(())
    }

    /// Submits the size, times and extended attributes of `path`, whose
    /// state is `st`. The caller holds the sequencer.
    fn tail_ops(&self, path: &RelPath, st: &libc::stat) -> Result<[Receiver<Completion>; 3], Stop> {
        let t = |s: i64, n: i64| Timestamp {
            sec: s,
            nsec: n as u32,
        };
        let xattrs = self.xattrs_op(path)?;
        Ok([
            self.link.submit(Op::Truncate {
                target: Target::Path(path.clone()),
                size: st.st_size as u64,
            }),
            self.link.submit(Op::SetTimes {
                target: Target::Path(path.clone()),
                atime: Some(t(st.st_atime, st.st_atime_nsec)),
                mtime: Some(t(st.st_mtime, st.st_mtime_nsec)),
            }),
            self.link.submit(xattrs),
        ])
    }

    /// The op that makes the secondary's extended attributes of `path` equal
    /// to ours. The caller holds the sequencer.
    fn xattrs_op(&self, path: &RelPath) -> Result<Op, Stop> {
        let root = self.overlay.backing_root()?;
        let fd = sys::openat2(
            root.as_fd(),
            path.as_os_str(),
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
            sys::RESOLVE_STRICT,
        )
        .map_err(|_| Stop::Changed)?;
        let attrs = xattr::read(fd.as_fd())?;
        Ok(Op::ReplaceXattrs {
            path: path.clone(),
            attrs,
        })
    }

    /// Sleeps as long as needed to keep `out`'s file under the configured
    /// rate cap.
    fn pace(&self, out: &Outgoing<'_>) {
        if let Some(rate) = self.mirror.resync_rate_limit().filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(out.sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(out.started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }

    /// True while `path` still names the inode `ident` describes.
    fn same_inode(&self, path: &RelPath, ident: &libc::stat) -> io::Result<bool> {
        Ok(match self.lstat(path)? {
            Local::Present { st, .. } => st.st_dev == ident.st_dev && st.st_ino == ident.st_ino,
            Local::Missing => false,
        })
    }

    /// Nothing pending: the secondary adopts our history, and we are in
    /// sync. Under the sequencer (nothing new is submitted meanwhile), and
    /// only once no op is in flight: one the secondary refuses before the
    /// SetGeneration in the stream would leave it holding our generation
    /// without our data. In-flight ops are answered within a round trip (or
    /// the connection is lost): waited for, briefly.
    fn finish(&self) -> Result<(), Stop> {
        let rx = {
            let _g = self.overlay.sequence();
            let deadline = std::time::Instant::now() + QUIET_WAIT;
            loop {
                if let Some(ids) = self.mirror.generation_to_send(self.link) {
                    break self.link.submit(Op::SetGeneration { ids });
                }
                if !self.mirror.ops_in_flight(self.link) || std::time::Instant::now() >= deadline {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        self.wait(rx)?;
        if self.mirror.resync_complete(self.link)? {
            info!("the secondary holds the same data as the primary");
        }
        Ok(())
    }
}

/// Why the secondary did not apply a resync op, as `mirrorfs status` shows
/// it (after "resync of PATH: "): the error, and where the operator can act
/// on it, the fix. The resync retries the path by itself either way.
fn refused_by_secondary(errno: i32) -> String {
    let err = io::Error::from_raw_os_error(errno);
    match errno {
        libc::ENOSPC | libc::EDQUOT => format!(
            "the secondary answered {err}: make room on the secondary's replica file system \
             (or raise its quota)"
        ),
        _ => format!("the secondary answered {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_on_the_secondary_names_the_fix() {
        let msg = refused_by_secondary(libc::ENOSPC);
        assert!(msg.contains("No space left on device"), "{msg}");
        assert!(msg.contains("make room on the secondary"), "{msg}");
        let msg = refused_by_secondary(libc::EACCES);
        assert_eq!(
            msg,
            "the secondary answered Permission denied (os error 13)"
        );
    }
}
