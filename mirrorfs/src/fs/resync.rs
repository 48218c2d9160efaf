//! The resync worker: brings the secondary up to date path by path while the
//! application keeps running.
//!
//! Owns the walk over the mirror's pending paths. For each path it reads the
//! local state and submits the ops that make the secondary's copy equal
//! (`Ensure*`, `Remove`, the blocks whose xxh3 checksums differ, size, times,
//! extended attributes), each read-and-submit step under the overlay's
//! sequencer lock: live mutations are replicated in the same stream, so the
//! secondary sees every change in the order the primary made it. When nothing
//! is pending, the secondary adopts the primary's generation history and the
//! mirror is back in sync. Must not mark a path done that the secondary has
//! not confirmed.

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
use crate::mirror::Mirror;
use crate::net::client::Link;
use crate::proto::path::RelPath;
use crate::proto::stream::Completion;
use crate::proto::wire::{decode_listing, Op, Target, Timestamp, MAX_CHECKSUM_BLOCKS};
use crate::replica::apply::{list_dir, list_xattrs, replicated_xattr};
use crate::sys;

/// Resync block size: the unit compared by checksum and resent when it differs.
pub const BLOCK: u32 = 1 << 20;
/// Block writes a file's resync keeps in flight while the application is idle.
const WINDOW: usize = 16;
/// ... and while it is active: every resync block in the stream delays the
/// application's ops behind it, so only one is allowed ahead of them.
const WINDOW_APP_ACTIVE: usize = 1;
/// How recently an application op counts as "active".
const ACTIVE: Duration = Duration::from_millis(100);

/// Why one path's resync stopped.
#[derive(Debug)]
enum Stop {
    /// The connection is gone or the secondary failed an op: retry later.
    Failed(String),
    /// The local entry changed under us (replaced): start the path again.
    Changed,
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Self::Failed(e.to_string())
    }
}

/// Runs the resync worker until the mirror shuts down.
pub fn run(overlay: Arc<Overlay>, mirror: Arc<Mirror>) {
    let limit = Duration::from_secs(60);
    loop {
        let Some((path, full, link)) = mirror.next_resync_path() else {
            return;
        };
        let w = Worker {
            overlay: &overlay,
            mirror: &mirror,
            link: &link,
            limit,
            full,
        };
        match w.sync_path(&path) {
            Ok(bytes) => {
                mirror.resync_progress(bytes);
                debug!(path = %path, bytes, "resynced");
            }
            Err(Stop::Changed) => mirror.retry_pending(path, None),
            Err(Stop::Failed(why)) => {
                warn!(path = %path, %why, "resync of a path failed; retrying");
                mirror.retry_pending(path, Some(why));
                // Back off: the connection is probably going, or the secondary
                // cannot apply this (e.g. its disk is full).
                link.wait_lost(Duration::from_secs(1));
                continue;
            }
        }
        if mirror.resync_idle() {
            if let Err(why) = w.finish() {
                warn!(why = ?why, "could not conclude the resync; retrying");
            }
        }
    }
}

struct Worker<'a> {
    overlay: &'a Overlay,
    mirror: &'a Mirror,
    link: &'a Arc<Link>,
    limit: Duration,
    full: bool,
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
            Ok(Err(errno)) => Err(Stop::Failed(refused_by_secondary(errno))),
            Err(_) => Err(Stop::Failed("no answer from the secondary".into())),
        }
    }

    /// Submits under the sequencer and waits.
    fn call(&self, op: Op) -> Result<Vec<u8>, Stop> {
        let rx = {
            let _g = self.overlay.sequence();
            self.link.submit(op)
        };
        self.wait(rx)
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

    /// Makes the secondary's `path` equal to ours; returns data bytes sent.
    fn sync_path(&self, path: &RelPath) -> Result<u64, Stop> {
        if path.as_bytes().split(|b| *b == b'/').next() == Some(META_DIR.as_bytes()) {
            return Ok(0);
        }
        // Decide and submit the entry's kind under the sequencer, so no live
        // op slips between what we read and what we send.
        let (rx, kind) = {
            let _g = self.overlay.sequence();
            match self.lstat(path)? {
                Local::Missing => {
                    if path.is_root() {
                        return Err(Stop::Failed("the backing root is gone".into()));
                    }
                    (self.link.submit(Op::Remove { path: path.clone() }), 0)
                }
                Local::Present { dir, st } => {
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
                    (self.link.submit(op), kind)
                }
            }
        };
        self.wait(rx)?;
        let bytes = match kind {
            libc::S_IFDIR => {
                self.sync_listing(path)?;
                0
            }
            libc::S_IFREG => match (self.full, self.mirror.dirty_blocks(path)) {
                // Only some blocks were written while apart: send just those.
                (false, Some(blocks)) => self.sync_blocks(path, &blocks)?,
                _ => self.sync_content(path)?,
            },
            _ => 0,
        };
        if kind != 0 && kind != libc::S_IFLNK {
            self.sync_xattrs(path)?;
        }
        Ok(bytes)
    }

    /// Removes what the secondary has and we do not; queues what we have and
    /// it does not (or all children, in a full resync).
    fn sync_listing(&self, path: &RelPath) -> Result<(), Stop> {
        let (local, rx) = {
            let _g = self.overlay.sequence();
            let Local::Present { dir, st } = self.lstat(path)? else {
                return Err(Stop::Changed);
            };
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                return Err(Stop::Changed);
            }
            let name = path.split().map(|(_, n)| n.to_owned());
            let d = match name {
                Some(n) => sys::openat(
                    dir.as_fd(),
                    &n,
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
            if path.is_root() {
                local.retain(|(n, _)| n != META_DIR.as_bytes());
            }
            (local, self.link.submit(Op::List { path: path.clone() }))
        };
        let remote = decode_listing(&self.wait(rx)?)
            .map_err(|e| Stop::Failed(format!("bad listing from the secondary: {e}")))?;
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
        for name in remote.keys().filter(|n| !local.contains_key(*n)) {
            let p = child(name)?;
            // Re-check under the sequencer: a live create may have made it.
            let rx = {
                let _g = self.overlay.sequence();
                match self.lstat(&p)? {
                    Local::Missing => Some(self.link.submit(Op::Remove { path: p.clone() })),
                    Local::Present { .. } => {
                        queue.push(p);
                        None
                    }
                }
            };
            if let Some(rx) = rx {
                self.wait(rx)?;
            }
        }
        self.mirror.add_pending(queue);
        Ok(())
    }

    /// Sends the given dirty blocks (no checksum pass), then size and times.
    fn sync_blocks(&self, path: &RelPath, blocks: &[u64]) -> Result<u64, Stop> {
        let file = self.open_content(path)?;
        let ident = sys::fstat(file.as_fd())?;
        let mut sent = 0u64;
        let mut buf = vec![0u8; DIRTY_BLOCK as usize];
        let mut window: VecDeque<Receiver<Completion>> = VecDeque::new();
        let started = std::time::Instant::now();
        for block in blocks {
            let offset = block * DIRTY_BLOCK;
            let rx = {
                let _g = self.overlay.sequence();
                if !self.same_inode(path, &ident)? {
                    return Err(Stop::Changed);
                }
                let n = sys::pread_full(file.as_fd(), &mut buf, offset)?;
                if n == 0 {
                    // Beyond the end now: the final truncate settles it.
                    continue;
                }
                sent += n as u64;
                self.link.submit(Op::Write {
                    target: Target::Path(path.clone()),
                    offset,
                    data: buf[..n].to_vec(),
                })
            };
            window.push_back(rx);
            self.throttle(&mut window)?;
            self.pace(sent, started);
        }
        for rx in window {
            self.wait(rx)?;
        }
        self.sync_size_and_times(path, &file, &ident)?;
        Ok(sent)
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

    /// Keeps at most the allowed number of block writes in flight.
    fn throttle(&self, window: &mut VecDeque<Receiver<Completion>>) -> Result<(), Stop> {
        let limit = if self.mirror.app_active(ACTIVE) {
            WINDOW_APP_ACTIVE
        } else {
            WINDOW
        };
        while window.len() >= limit {
            self.wait(window.pop_front().expect("non-empty window"))?;
        }
        Ok(())
    }

    /// Sends the blocks whose checksums differ, then size and times.
    fn sync_content(&self, path: &RelPath) -> Result<u64, Stop> {
        let file = self.open_content(path)?;
        let ident = sys::fstat(file.as_fd())?;
        let mut sent = 0u64;
        let mut first = 0u64;
        let mut buf = vec![0u8; BLOCK as usize];
        let mut window: VecDeque<Receiver<Completion>> = VecDeque::new();
        let started = std::time::Instant::now();
        loop {
            let size = sys::fstat(file.as_fd())?.st_size as u64;
            let blocks = size.div_ceil(u64::from(BLOCK));
            if first >= blocks {
                break;
            }
            let count = (blocks - first).min(u64::from(MAX_CHECKSUM_BLOCKS)) as u32;
            let reply = self.call(Op::Checksums {
                path: path.clone(),
                block: BLOCK,
                first,
                count,
            })?;
            let theirs: Vec<u64> = reply
                .get(8..)
                .unwrap_or_default()
                .chunks_exact(8)
                .map(|c| u64::from_be_bytes(c.try_into().expect("8-byte chunk")))
                .collect();
            for i in 0..u64::from(count) {
                let block = first + i;
                let offset = block * u64::from(BLOCK);
                let rx = {
                    let _g = self.overlay.sequence();
                    if !self.same_inode(path, &ident)? {
                        return Err(Stop::Changed);
                    }
                    let n = sys::pread_full(file.as_fd(), &mut buf, offset)?;
                    if n == 0 {
                        break;
                    }
                    let same = theirs.get(i as usize) == Some(&xxh3_64(&buf[..n]));
                    if same {
                        None
                    } else {
                        sent += n as u64;
                        Some(self.link.submit(Op::Write {
                            target: Target::Path(path.clone()),
                            offset,
                            data: buf[..n].to_vec(),
                        }))
                    }
                };
                if let Some(rx) = rx {
                    window.push_back(rx);
                    self.throttle(&mut window)?;
                    self.pace(sent, started);
                }
            }
            first += u64::from(count);
        }
        for rx in window {
            self.wait(rx)?;
        }
        self.sync_size_and_times(path, &file, &ident)?;
        Ok(sent)
    }

    /// Size and times last, under the sequencer, from the file as it is now.
    fn sync_size_and_times(
        &self,
        path: &RelPath,
        file: &OwnedFd,
        ident: &libc::stat,
    ) -> Result<(), Stop> {
        let rxs = {
            let _g = self.overlay.sequence();
            if !self.same_inode(path, ident)? {
                return Err(Stop::Changed);
            }
            let st = sys::fstat(file.as_fd())?;
            let t = |s: i64, n: i64| Timestamp {
                sec: s,
                nsec: n as u32,
            };
            [
                self.link.submit(Op::Truncate {
                    target: Target::Path(path.clone()),
                    size: st.st_size as u64,
                }),
                self.link.submit(Op::SetTimes {
                    target: Target::Path(path.clone()),
                    atime: Some(t(st.st_atime, st.st_atime_nsec)),
                    mtime: Some(t(st.st_mtime, st.st_mtime_nsec)),
                }),
            ]
        };
        for rx in rxs {
            self.wait(rx)?;
        }
        Ok(())
    }

    fn sync_xattrs(&self, path: &RelPath) -> Result<(), Stop> {
        let rx = {
            let _g = self.overlay.sequence();
            let root = self.overlay.backing_root()?;
            let fd = sys::openat2(
                root.as_fd(),
                path.as_os_str(),
                libc::O_PATH | libc::O_NOFOLLOW,
                0,
                sys::RESOLVE_STRICT,
            )
            .map_err(|_| Stop::Changed)?;
            let mut attrs = Vec::new();
            for name in list_xattrs(fd.as_fd())? {
                if !replicated_xattr(&name) {
                    continue;
                }
                let n = OsStr::from_bytes(&name);
                let len = sys::getxattr_fd(fd.as_fd(), n, &mut [])?;
                let mut v = vec![0u8; len];
                let len = sys::getxattr_fd(fd.as_fd(), n, &mut v)?;
                v.truncate(len);
                attrs.push((name, v));
            }
            self.link.submit(Op::ReplaceXattrs {
                path: path.clone(),
                attrs,
            })
        };
        self.wait(rx).map(drop)
    }

    /// Sleeps as long as needed to keep under the configured rate cap.
    fn pace(&self, sent: u64, started: std::time::Instant) {
        if let Some(rate) = self.mirror.resync_rate_limit().filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
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

    /// Nothing pending: the secondary adopts our history, and we are in sync.
    fn finish(&self) -> Result<(), Stop> {
        let rx = {
            let _g = self.overlay.sequence();
            if !self.mirror.resync_idle() {
                return Ok(());
            }
            self.link.submit(Op::SetGeneration {
                ids: self.mirror.history_ids(),
            })
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
