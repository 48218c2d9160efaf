//! The metadata area: `ROOT/.mirrorfs/`, beside the replicated tree and never
//! part of it (the mount hides it, the secondary refuses ops naming it).
//!
//! Owns the durable files a replicated directory keeps, in whichever role it
//! is: `generation` (the generation history, current first, written
//! atomically), `inconsistent` (present while a resync into this tree has
//! begun and not finished: the tree mixes old and new data), `dirty` (the append-only log of paths that may differ from the
//! peer, synced before a mutation it covers is acknowledged) and `activity` /
//! `activity.prev` (the directories with mutations in the current and the
//! previous epoch: after a crash of this node, the files in them are compared
//! with the peer's, so a write that was in flight is never missed). Must not
//! touch anything outside `ROOT/.mirrorfs`.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::proto::generation::{GenerationId, History};
use crate::proto::path::RelPath;

/// Name of the metadata directory at the root of a replicated tree.
pub const META_DIR: &str = ".mirrorfs";

/// The metadata area of one replicated directory.
#[derive(Debug)]
pub struct Meta {
    dir: PathBuf,
}

impl Meta {
    /// Opens (creating, mode 0700) `root/.mirrorfs`.
    pub fn open(root: &Path) -> io::Result<Self> {
        let dir = root.join(META_DIR);
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        if !fs::symlink_metadata(&dir)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} exists but is not a directory", dir.display()),
            ));
        }
        Ok(Self { dir })
    }

    /// The metadata directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The replicated directory this metadata belongs to.
    pub fn root(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    /// The generation history (empty if this tree was never part of a mirror).
    pub fn load_history(&self) -> io::Result<History> {
        read_history(&self.dir)
    }

    /// Replaces the generation history atomically and durably.
    pub fn save_history(&self, h: &History) -> io::Result<()> {
        let mut text = String::from("# mirrorfs generation history, current first\n");
        for id in h.ids() {
            text.push_str(&format!("{id}\n"));
        }
        self.replace("generation", text.as_bytes())
    }

    /// Marks this tree inconsistent, durably: a resync into it begins.
    pub fn mark_inconsistent(&self, marker: &Inconsistent) -> io::Result<()> {
        self.replace(INCONSISTENT, marker.encode().as_bytes())
    }

    /// Removes the inconsistent mark, durably (a resync into this tree is
    /// complete, or the operator accepted the tree as it is).
    pub fn clear_inconsistent(&self) -> io::Result<()> {
        match fs::remove_file(self.dir.join(INCONSISTENT)) {
            Ok(()) => File::open(&self.dir)?.sync_all(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The inconsistent mark, if this tree has one.
    pub fn inconsistent(&self) -> io::Result<Option<Inconsistent>> {
        read_inconsistent(&self.dir)
    }

    /// Opens the dirty log, loading the paths it holds.
    pub fn dirty_log(&self) -> io::Result<DirtyLog> {
        DirtyLog::open(&self.dir.join("dirty"))
    }

    /// Opens the activity log (both epochs).
    pub fn activity_log(&self) -> io::Result<ActivityLog> {
        let prev = match fs::symlink_metadata(self.dir.join("activity.prev")) {
            Ok(_) => DirtyLog::open(&self.dir.join("activity.prev"))?.set,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(e),
        };
        Ok(ActivityLog {
            dir: self.dir.clone(),
            cur: DirtyLog::open(&self.dir.join("activity"))?,
            prev,
        })
    }

    /// Directories this node may have changed without its peer knowing: the
    /// activity of both epochs and the parents of the dirty paths.
    pub fn suspects(&self) -> io::Result<BTreeSet<RelPath>> {
        let mut out = self.activity_log()?.suspects();
        for p in self.dirty_log()?.paths() {
            out.insert(p.split().map_or(RelPath::root(), |(parent, _)| parent));
        }
        Ok(out)
    }

    /// Writes `name` atomically: temporary file, fsync, rename, fsync of the dir.
    fn replace(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join(name))?;
        File::open(&self.dir)?.sync_all()
    }
}

/// The file that marks a tree inconsistent.
const INCONSISTENT: &str = "inconsistent";

/// What the inconsistent mark records: a resync into this tree began (the
/// secondary writes it before it acknowledges the primary's `BeginResync`)
/// and has not finished (the resync's `SetGeneration` removes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inconsistent {
    /// When the resync began, seconds since the Unix epoch (0: unknown).
    pub since_unix: u64,
    /// The node name of the primary it came from.
    pub from: String,
    /// The primary's generation the resync was bringing over.
    pub generation: Option<GenerationId>,
}

impl Inconsistent {
    fn encode(&self) -> String {
        let mut text = format!(
            "# mirrorfs: a resync into this directory began and has not finished: its data is a mix of old and new\nsince {}\nfrom {}\n",
            self.since_unix, self.from
        );
        if let Some(g) = self.generation {
            text.push_str(&format!("generation {g}\n"));
        }
        text
    }

    /// Reads the mark's fields; whatever is missing or damaged is unknown
    /// (the mark's presence is what counts).
    fn parse(text: &str) -> Self {
        let mut m = Self {
            since_unix: 0,
            from: "unknown".into(),
            generation: None,
        };
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            match line.split_once(' ') {
                Some(("since", v)) => m.since_unix = v.trim().parse().unwrap_or(0),
                Some(("from", v)) => m.from = v.trim().to_owned(),
                Some(("generation", v)) => {
                    m.generation = u64::from_str_radix(v.trim(), 16).ok().map(GenerationId)
                }
                _ => {}
            }
        }
        m
    }
}

/// What a tree's metadata says, as [`inspect`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootMeta {
    /// `ROOT/.mirrorfs` exists (the tree was served or mounted).
    pub meta_dir: bool,
    /// The generation history (empty: never part of a mirror).
    pub history: History,
    /// The inconsistent mark, if any.
    pub inconsistent: Option<Inconsistent>,
}

/// Reads `root`'s metadata without creating, truncating or rewriting
/// anything (safe while a serve or mount runs on it). Fails if `root` is not
/// a readable directory.
pub fn inspect(root: &Path) -> io::Result<RootMeta> {
    fs::read_dir(root)?;
    let dir = root.join(META_DIR);
    match fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(RootMeta {
            meta_dir: true,
            history: read_history(&dir)?,
            inconsistent: read_inconsistent(&dir)?,
        }),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} exists but is not a directory: move it away",
                dir.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(RootMeta {
            meta_dir: false,
            history: History::default(),
            inconsistent: None,
        }),
        Err(e) => Err(e),
    }
}

/// Reads the generation history in the metadata directory `dir`.
fn read_history(dir: &Path) -> io::Result<History> {
    let path = dir.join("generation");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(History::default()),
        Err(e) => return Err(e),
    };
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let id = u64::from_str_radix(line, 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}:{}: {line:?} is not a generation id (16 hex digits); the file is damaged: restore it, or run `mirrorfs verify` and start over with a --full resync",
                    path.display(),
                    n + 1
                ),
            )
        })?;
        ids.push(GenerationId(id));
    }
    Ok(History::from_ids(ids))
}

/// Reads the inconsistent mark in the metadata directory `dir`.
fn read_inconsistent(dir: &Path) -> io::Result<Option<Inconsistent>> {
    match fs::read(dir.join(INCONSISTENT)) {
        Ok(b) => Ok(Some(Inconsistent::parse(&String::from_utf8_lossy(&b)))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The durable set of paths that may differ between this side and its peer.
///
/// A path is dirty as a whole (created, renamed, chmod... anything), or only
/// in some blocks ([`DIRTY_BLOCK`] bytes each) when data writes are all that
/// changed it: then the resync sends just those blocks, with no checksum pass
/// over the file. Records are a big-endian `u16` length and the path bytes
/// (whole), or the length with its top bit set, the path and a `u64` block
/// number (one block), or the length with its next bit set and the path (a
/// tree: the path and everything below it are compared in full, as after a
/// directory was swapped with another); each is appended and synced once per
/// path (or block) per generation. A torn record at the tail (a crash while
/// appending) is ignored and cut off on open.
#[derive(Debug)]
pub struct DirtyLog {
    file: File,
    /// Every dirty path, whole or partial.
    set: BTreeSet<RelPath>,
    /// The paths dirty only in these blocks.
    partial: std::collections::BTreeMap<RelPath, BTreeSet<u64>>,
    /// The paths whose whole subtree is to be compared.
    trees: BTreeSet<RelPath>,
}

/// Granularity of the dirty blocks of a file.
pub const DIRTY_BLOCK: u64 = 1 << 20;

/// Marks the top bit of a record length: a block record.
const BLOCK_RECORD: u16 = 0x8000;
/// Marks the next bit of a record length: a tree record.
const TREE_RECORD: u16 = 0x4000;

impl DirtyLog {
    fn open(path: &Path) -> io::Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        let mut log = Self {
            file,
            set: BTreeSet::new(),
            partial: std::collections::BTreeMap::new(),
            trees: BTreeSet::new(),
        };
        let mut pos = 0;
        while pos + 2 <= buf.len() {
            let head = u16::from_be_bytes([buf[pos], buf[pos + 1]]);
            let len = (head & !(BLOCK_RECORD | TREE_RECORD)) as usize;
            let extra = if head & BLOCK_RECORD != 0 { 8 } else { 0 };
            if pos + 2 + len + extra > buf.len() {
                break;
            }
            match RelPath::new(buf[pos + 2..pos + 2 + len].to_vec()) {
                Ok(p) if head & TREE_RECORD != 0 => {
                    log.trees.insert(p.clone());
                    log.set_whole(p);
                }
                Ok(p) if extra == 0 => log.set_whole(p),
                Ok(p) => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[pos + 2 + len..pos + 2 + len + 8]);
                    log.set_block(p, u64::from_be_bytes(b));
                }
                Err(e) => {
                    warn!(error = %e, log = %path.display(), "skipping an invalid dirty record")
                }
            }
            pos += 2 + len + extra;
        }
        if pos != buf.len() {
            warn!(log = %path.display(), "cutting a torn record off the dirty log");
            log.file.set_len(pos as u64)?;
            log.file.sync_all()?;
        }
        Ok(log)
    }

    fn set_whole(&mut self, p: RelPath) {
        self.partial.remove(&p);
        self.set.insert(p);
    }

    /// True when `p` is dirty as a whole.
    fn whole(&self, p: &RelPath) -> bool {
        self.set.contains(p) && !self.partial.contains_key(p)
    }

    fn set_block(&mut self, p: RelPath, block: u64) {
        if self.whole(&p) {
            return;
        }
        self.partial.entry(p.clone()).or_default().insert(block);
        self.set.insert(p);
    }

    /// Records that the bytes `[offset, offset + len)` of `p` changed (the
    /// blocks not yet recorded); returns once durable.
    pub fn mark_range(&mut self, p: &RelPath, offset: u64, len: u64) -> io::Result<()> {
        if self.whole(p) || len == 0 {
            return Ok(());
        }
        let first = offset / DIRTY_BLOCK;
        let last = (offset + len - 1) / DIRTY_BLOCK;
        let known = self.partial.get(p);
        let new: Vec<u64> = (first..=last)
            .filter(|b| !known.is_some_and(|k| k.contains(b)))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for b in &new {
            record(&mut buf, BLOCK_RECORD, p, &b.to_be_bytes());
        }
        self.append(&buf)?;
        for b in new {
            self.set_block(p.clone(), b);
        }
        Ok(())
    }

    /// The dirty blocks of `p` when only data blocks changed; `None` when the
    /// whole path is dirty (or it is not dirty).
    pub fn blocks(&self, p: &RelPath) -> Option<&BTreeSet<u64>> {
        self.partial.get(p)
    }

    /// Records the paths not yet recorded; returns once they are durable.
    pub fn mark<'a>(&mut self, paths: impl IntoIterator<Item = &'a RelPath>) -> io::Result<()> {
        let new: Vec<RelPath> = paths
            .into_iter()
            .filter(|p| !self.whole(p))
            .cloned()
            .collect();
        self.append_paths(0, &new)?;
        for p in new {
            self.set_whole(p);
        }
        Ok(())
    }

    /// True when `p` is recorded.
    pub fn contains(&self, p: &RelPath) -> bool {
        self.set.contains(p)
    }

    /// The recorded paths, parents before children.
    pub fn paths(&self) -> &BTreeSet<RelPath> {
        &self.set
    }

    /// Number of recorded paths.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Forgets everything (both sides hold the same data again).
    pub fn clear(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_all()?;
        self.set.clear();
        self.partial.clear();
        self.trees.clear();
        Ok(())
    }

    /// Records `paths` as trees (each whole, and everything below it, is to
    /// be compared), those not yet recorded; returns once durable.
    pub fn mark_trees<'a>(
        &mut self,
        paths: impl IntoIterator<Item = &'a RelPath>,
    ) -> io::Result<()> {
        let new: Vec<RelPath> = paths
            .into_iter()
            .filter(|p| !self.trees.contains(*p))
            .cloned()
            .collect();
        self.append_paths(TREE_RECORD, &new)?;
        for p in new {
            self.trees.insert(p.clone());
            self.set_whole(p);
        }
        Ok(())
    }

    /// The paths whose whole subtree is to be compared.
    pub fn trees(&self) -> &BTreeSet<RelPath> {
        &self.trees
    }

    /// Appends one record of kind `head` per path (none: nothing written).
    fn append_paths(&mut self, head: u16, paths: &[RelPath]) -> io::Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for p in paths {
            record(&mut buf, head, p, &[]);
        }
        self.append(&buf)
    }

    /// Appends encoded records; returns once durable.
    fn append(&mut self, records: &[u8]) -> io::Result<()> {
        self.file.write_all(records)?;
        self.file.sync_data()
    }
}

/// Encodes one dirty-log record: the path's length with the kind bits
/// `head`, the path, then `extra` (a block record's block number).
fn record(buf: &mut Vec<u8>, head: u16, p: &RelPath, extra: &[u8]) {
    buf.extend_from_slice(&(p.as_bytes().len() as u16 | head).to_be_bytes());
    buf.extend_from_slice(p.as_bytes());
    buf.extend_from_slice(extra);
}

/// Directories with recent mutations, in two epochs (see the module doc).
#[derive(Debug)]
pub struct ActivityLog {
    dir: PathBuf,
    cur: DirtyLog,
    prev: BTreeSet<RelPath>,
}

impl ActivityLog {
    /// Records directories not yet recorded in this epoch; returns once durable.
    pub fn record<'a>(&mut self, dirs: impl IntoIterator<Item = &'a RelPath>) -> io::Result<()> {
        self.cur.mark(dirs)
    }

    /// True when `dir` is recorded in the current epoch.
    pub fn contains(&self, dir: &RelPath) -> bool {
        self.cur.contains(dir)
    }

    /// Starts a new epoch. Call only once every mutation recorded in the
    /// previous epoch is durable on this node (after `syncfs`): its records
    /// are dropped.
    pub fn rotate(&mut self) -> io::Result<()> {
        fs::rename(self.dir.join("activity"), self.dir.join("activity.prev"))?;
        let fresh = DirtyLog::open(&self.dir.join("activity"))?;
        File::open(&self.dir)?.sync_all()?;
        let old = std::mem::replace(&mut self.cur, fresh);
        self.prev = old.set;
        Ok(())
    }

    /// Both epochs' directories.
    pub fn suspects(&self) -> BTreeSet<RelPath> {
        self.prev.union(&self.cur.set).cloned().collect()
    }

    /// Forgets both epochs (the peer holds the same data and all is durable).
    pub fn clear(&mut self) -> io::Result<()> {
        self.cur.clear()?;
        self.prev.clear();
        match fs::remove_file(self.dir.join("activity.prev")) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Flushes the filesystem holding `path` (`syncfs`).
pub fn syncfs(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: plain syscall on a descriptor we own.
    crate::sys::cvt(unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn history_round_trips_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(dir.path()).unwrap();
        assert_eq!(m.load_history().unwrap(), History::default());
        let mut h = History::default();
        h.advance(GenerationId(1));
        h.advance(GenerationId(0xabc));
        m.save_history(&h).unwrap();
        assert_eq!(m.load_history().unwrap(), h);
        fs::write(m.dir().join("generation"), "zz\n").unwrap();
        let e = m.load_history().unwrap_err().to_string();
        assert!(
            e.contains("generation:1") && e.contains("not a generation id"),
            "{e}"
        );
    }

    #[test]
    fn dirty_log_survives_reopen_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(dir.path()).unwrap();
        let mut log = m.dirty_log().unwrap();
        log.mark([&p("a/b"), &p("c")]).unwrap();
        log.mark([&p("c")]).unwrap();
        drop(log);
        let len = fs::metadata(m.dir().join("dirty")).unwrap().len();
        assert_eq!(len, 2 + 3 + 2 + 1, "each path recorded once");
        // A crash in the middle of an append leaves a torn record.
        let mut f = OpenOptions::new()
            .append(true)
            .open(m.dir().join("dirty"))
            .unwrap();
        f.write_all(&[0, 9, b'x']).unwrap();
        let mut log = m.dirty_log().unwrap();
        assert_eq!(
            log.paths().iter().cloned().collect::<Vec<_>>(),
            vec![p("a/b"), p("c")]
        );
        assert_eq!(fs::metadata(m.dir().join("dirty")).unwrap().len(), len);
        log.clear().unwrap();
        assert!(m.dirty_log().unwrap().is_empty());
    }

    #[test]
    fn dirty_blocks_until_the_whole_path_is_dirty() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(dir.path()).unwrap();
        let mut log = m.dirty_log().unwrap();
        let big = p("big");
        log.mark_range(&big, 10, 5).unwrap();
        log.mark_range(&big, 3 * DIRTY_BLOCK - 1, 2).unwrap();
        log.mark_range(&big, 20, 5).unwrap();
        let want: BTreeSet<u64> = [0, 2, 3].into();
        assert_eq!(log.blocks(&big), Some(&want));
        drop(log);
        let mut log = m.dirty_log().unwrap();
        assert_eq!(log.blocks(&big), Some(&want), "blocks survive a reopen");
        assert!(log.contains(&big));
        log.mark([&big]).unwrap();
        assert_eq!(log.blocks(&big), None);
        log.mark_range(&big, 0, 1).unwrap();
        drop(log);
        let log = m.dirty_log().unwrap();
        assert_eq!(log.blocks(&big), None, "whole stays whole");
        assert_eq!(log.len(), 1);
    }

    #[test]
    fn trees_survive_reopen_are_whole_and_are_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(dir.path()).unwrap();
        let mut log = m.dirty_log().unwrap();
        log.mark_range(&p("d"), 0, 1).unwrap();
        log.mark_trees([&p("d"), &p("e")]).unwrap();
        log.mark_trees([&p("e")]).unwrap();
        drop(log);
        let mut log = m.dirty_log().unwrap();
        assert_eq!(log.trees(), &[p("d"), p("e")].into());
        assert_eq!(log.blocks(&p("d")), None, "a tree is dirty as a whole");
        assert!(log.contains(&p("e")));
        log.clear().unwrap();
        assert!(m.dirty_log().unwrap().trees().is_empty());
    }

    #[test]
    fn inconsistent_mark_is_durable_read_back_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(dir.path()).unwrap();
        assert_eq!(m.inconsistent().unwrap(), None);
        let mark = Inconsistent {
            since_unix: 1_700_000_000,
            from: "node1".into(),
            generation: Some(GenerationId(0xabc)),
        };
        m.mark_inconsistent(&mark).unwrap();
        assert_eq!(m.inconsistent().unwrap(), Some(mark.clone()));
        assert!(!m.dir().join("inconsistent.tmp").exists());
        assert_eq!(inspect(dir.path()).unwrap().inconsistent, Some(mark));
        m.clear_inconsistent().unwrap();
        assert_eq!(m.inconsistent().unwrap(), None);
        m.clear_inconsistent().unwrap();
        // A damaged mark still marks the tree.
        fs::write(m.dir().join("inconsistent"), "garbage").unwrap();
        let damaged = m.inconsistent().unwrap().unwrap();
        assert_eq!((damaged.since_unix, damaged.generation), (0, None));
    }

    #[test]
    fn inspect_reads_without_creating_anything() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = inspect(dir.path()).unwrap();
        assert!(!fresh.meta_dir);
        assert_eq!(fresh.history, History::default());
        assert!(
            !dir.path().join(META_DIR).exists(),
            "inspect created .mirrorfs"
        );
        let m = Meta::open(dir.path()).unwrap();
        let mut h = History::default();
        h.advance(GenerationId(7));
        m.save_history(&h).unwrap();
        // A torn dirty log is left as it is (its owner cuts it, not a reader).
        fs::write(m.dir().join("dirty"), [0, 9, b'x']).unwrap();
        let seen = inspect(dir.path()).unwrap();
        assert!(seen.meta_dir);
        assert_eq!(seen.history, h);
        assert_eq!(seen.inconsistent, None);
        assert_eq!(fs::read(m.dir().join("dirty")).unwrap(), [0, 9, b'x']);
        assert!(inspect(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn activity_keeps_two_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(dir.path()).unwrap();
        let mut a = m.activity_log().unwrap();
        a.record([&p("a")]).unwrap();
        a.rotate().unwrap();
        a.record([&p("b")]).unwrap();
        assert_eq!(
            m.activity_log().unwrap().suspects(),
            [p("a"), p("b")].into()
        );
        a.rotate().unwrap();
        assert_eq!(m.activity_log().unwrap().suspects(), [p("b")].into());
        a.clear().unwrap();
        assert!(m.suspects().unwrap().is_empty());
    }
}
