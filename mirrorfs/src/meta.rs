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
//! with the peer's, so a write that was in flight is never missed). The logs
//! share one versioned record format ([`DirtyLog`]); older versions are
//! rewritten in it when opened. `lock` is held (`flock`) by the one mirrorfs
//! process working on the directory ([`Meta::lock`]). Must not touch
//! anything outside `ROOT/.mirrorfs`.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::proto::generation::{GenerationId, History};
use crate::proto::path::{RelPath, MAX_PATH};

/// Name of the metadata directory at the root of a replicated tree.
pub const META_DIR: &str = ".mirrorfs";

/// The lock file in the metadata directory ([`Meta::lock`]).
const LOCK: &str = "lock";

/// A replicated directory held by this process ([`Meta::lock`]); released
/// when dropped, or when the process ends however it ends (the kernel drops
/// a dead process's `flock`).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Why a replicated directory could not be held.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "{root} is in use by {holder} (lock {lock}): two mirrorfs processes on one \
         directory would both write it and its metadata; stop the other one first \
         (a mount: unmount its mountpoint), or use another directory"
    )]
    InUse {
        /// The replicated directory.
        root: PathBuf,
        /// Who holds it, as the holder wrote it ("mirrorfs mount, pid 1234").
        holder: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {lock}: {source}")]
    Io {
        /// The lock file.
        lock: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

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

    /// Holds this directory for this process, as `who` ("mount", "serve",
    /// "discard"): one mirrorfs process at a time works on a replicated
    /// directory, whatever its role. Fails at once if another holds it,
    /// naming it. The holder's name and pid are written in the lock file
    /// for that message.
    pub fn lock(&self, who: &str) -> Result<DirLock, LockError> {
        let lock = self.dir.join(LOCK);
        let io_err = |source| LockError::Io {
            lock: lock.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::InUse {
                    root: self.root().to_path_buf(),
                    holder: if holder.is_empty() {
                        "another mirrorfs process".into()
                    } else {
                        holder.into()
                    },
                    lock,
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        let me = format!("mirrorfs {who}, pid {}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.write_all(me.as_bytes()))
            .map_err(io_err)?;
        Ok(DirLock { _file: file })
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
/// secondary writes it before it acknowledges the primary's `BeginResync`),
/// or the tree refused one of the primary's changes (written before the
/// refusal is answered), and no resync has finished since (the resync's
/// `SetGeneration` removes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inconsistent {
    /// When the resync began, seconds since the Unix epoch (0: unknown).
    pub since_unix: u64,
    /// The node name of the primary it came from.
    pub from: String,
    /// The primary's generation the resync was bringing over (none: the
    /// tree refused a change outside a resync).
    pub generation: Option<GenerationId>,
}

impl Inconsistent {
    fn encode(&self) -> String {
        let mut text = format!(
            "# mirrorfs: a resync into this directory began, or it refused a change of the primary, and no resync has finished since: its data is a mix of old and new\nsince {}\nfrom {}\n",
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
/// over the file. A path may also be dirty as a tree (the path and everything
/// below it are compared in full, as after a directory was swapped with
/// another). Each is appended and synced once per path (or block) per
/// generation.
///
/// On disk (version [`LOG_VERSION`]): a header ([`LOG_MAGIC`], then the
/// version as a big-endian `u32`), then records, each a kind byte
/// ([`WHOLE`], [`BLOCK`] or [`TREE`]), the path's length as a big-endian `u32`
/// (up to [`MAX_PATH`]), the path, and for a block record the block number as
/// a big-endian `u64`. A torn record at the tail (a crash while appending:
/// a prefix of the records, or zeros where the file grew) is ignored and cut
/// off on open; any other damage fails the open with an error that says what
/// to do. A version 1 log (no header: a `u16` length whose top bits give the
/// kind, which could hold paths of up to 16 KiB only) is rewritten in the
/// current format, atomically and durably, when opened.
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

/// First bytes of a log file (`0xFF` can start no version 1 record).
const LOG_MAGIC: [u8; 8] = *b"\xFFmfs-log";
/// The on-disk format version of the dirty and activity logs.
const LOG_VERSION: u32 = 2;
/// Bytes of the header (the magic and the version): the length of an empty
/// log file.
pub const LOG_HEADER_LEN: usize = LOG_MAGIC.len() + 4;
/// Record kind: the path is dirty as a whole.
const WHOLE: u8 = 1;
/// Record kind: one block of the path is dirty.
const BLOCK: u8 = 2;
/// Record kind: the path and everything below it are dirty.
const TREE: u8 = 3;
/// Bytes of a record before the path: the kind and the length.
const RECORD_HEAD: usize = 5;

/// Version 1 (headerless) record length bits: a block record.
const V1_BLOCK_RECORD: u16 = 0x8000;
/// Version 1 record length bits: a tree record.
const V1_TREE_RECORD: u16 = 0x4000;

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Record {
    Whole(RelPath),
    Block(RelPath, u64),
    Tree(RelPath),
}

impl Record {
    /// Appends the record in the current format.
    fn encode(&self, buf: &mut Vec<u8>) {
        let (kind, p) = match self {
            Self::Whole(p) => (WHOLE, p),
            Self::Block(p, _) => (BLOCK, p),
            Self::Tree(p) => (TREE, p),
        };
        buf.push(kind);
        // A RelPath is at most MAX_PATH bytes: the length fits a u32.
        buf.extend_from_slice(&(p.as_bytes().len() as u32).to_be_bytes());
        buf.extend_from_slice(p.as_bytes());
        if let Self::Block(_, b) = self {
            buf.extend_from_slice(&b.to_be_bytes());
        }
    }
}

/// What the bytes of a log file hold.
struct Parsed {
    /// The whole records, in order.
    records: Vec<Record>,
    /// Where the last whole record ends (the rest is a torn tail).
    end: usize,
}

/// Parses the records of a current-format log from `pos` (just after the
/// header). A record cut short at the end, or zeros to the end, is a torn
/// tail; a record of unknown kind or an impossible length is damage.
fn parse_records(buf: &[u8], mut pos: usize, log: &Path) -> io::Result<Parsed> {
    let mut records = Vec::new();
    while pos < buf.len() {
        let kind = buf[pos];
        if kind == 0 && buf[pos..].iter().all(|b| *b == 0) {
            // The file grew but the bytes never came: a torn append.
            break;
        }
        if !matches!(kind, WHOLE | BLOCK | TREE) {
            return Err(damaged(log, pos, &format!("unknown record kind {kind}")));
        }
        let Some(len) = buf.get(pos + 1..pos + RECORD_HEAD) else {
            break;
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > MAX_PATH {
            return Err(damaged(
                log,
                pos,
                &format!("a path of {len} bytes, longer than {MAX_PATH}"),
            ));
        }
        let extra = if kind == BLOCK { 8 } else { 0 };
        let start = pos + RECORD_HEAD;
        let Some(body) = buf.get(start..start + len + extra) else {
            break;
        };
        pos = start + len + extra;
        let p = match RelPath::new(body[..len].to_vec()) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, log = %log.display(), "skipping an invalid dirty record");
                continue;
            }
        };
        records.push(match kind {
            WHOLE => Record::Whole(p),
            TREE => Record::Tree(p),
            _ => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&body[len..]);
                Record::Block(p, u64::from_be_bytes(b))
            }
        });
    }
    Ok(Parsed { records, end: pos })
}

/// Parses a version 1 (headerless) log: records of a `u16` length whose top
/// bit marks a block record (a `u64` block number follows the path) and
/// whose next bit marks a tree record. A record cut short ends it.
fn parse_v1(buf: &[u8], log: &Path) -> Parsed {
    let mut records = Vec::new();
    let mut pos = 0;
    while pos + 2 <= buf.len() {
        let head = u16::from_be_bytes([buf[pos], buf[pos + 1]]);
        let len = (head & !(V1_BLOCK_RECORD | V1_TREE_RECORD)) as usize;
        let block = head & V1_BLOCK_RECORD != 0;
        let extra = if block { 8 } else { 0 };
        if pos + 2 + len + extra > buf.len() {
            break;
        }
        match RelPath::new(buf[pos + 2..pos + 2 + len].to_vec()) {
            Ok(p) if head & V1_TREE_RECORD != 0 => records.push(Record::Tree(p)),
            Ok(p) if !block => records.push(Record::Whole(p)),
            Ok(p) => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[pos + 2 + len..pos + 2 + len + 8]);
                records.push(Record::Block(p, u64::from_be_bytes(b)));
            }
            Err(e) => {
                warn!(error = %e, log = %log.display(), "skipping an invalid dirty record")
            }
        }
        pos += 2 + len + extra;
    }
    Parsed { records, end: pos }
}

/// The error for a log that is damaged beyond a torn tail.
fn damaged(log: &Path, pos: usize, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{}: damaged at byte {pos} ({what}): the paths it records can no longer be trusted; move the file away and resync with `mirrorfs mount --full` (compares every file)",
            log.display()
        ),
    )
}

/// The header of a current-format log.
fn header() -> [u8; LOG_HEADER_LEN] {
    let mut h = [0u8; LOG_HEADER_LEN];
    h[..LOG_MAGIC.len()].copy_from_slice(&LOG_MAGIC);
    h[LOG_MAGIC.len()..].copy_from_slice(&LOG_VERSION.to_be_bytes());
    h
}

/// Opens `path` for reading and appending, creating it (mode 0600).
fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// fsyncs the directory holding `path` (a name created, renamed or removed).
fn sync_parent(path: &Path) -> io::Result<()> {
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

impl DirtyLog {
    fn open(path: &Path) -> io::Result<Self> {
        let mut file = open_append(path)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        let head = header();
        let records = if buf.len() < LOG_HEADER_LEN && head.starts_with(&buf) {
            // New, or its header was torn: nothing was ever recorded in it.
            file.set_len(0)?;
            file.write_all(&head)?;
            file.sync_all()?;
            sync_parent(path)?;
            Vec::new()
        } else if buf.starts_with(&LOG_MAGIC) {
            match buf.get(LOG_MAGIC.len()..LOG_HEADER_LEN) {
                Some(v) if v == LOG_VERSION.to_be_bytes() => {}
                Some(v) => {
                    let version = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: log format version {version}, this mirrorfs reads version {LOG_VERSION} (and migrates version 1): run the mirrorfs that wrote it, or move the file away and resync with `mirrorfs mount --full`",
                            path.display()
                        ),
                    ));
                }
                None => return Err(damaged(path, 0, "a torn header")),
            }
            let parsed = parse_records(&buf, LOG_HEADER_LEN, path)?;
            if parsed.end < buf.len() {
                warn!(log = %path.display(), "cutting a torn record off the dirty log");
                file.set_len(parsed.end as u64)?;
                file.sync_all()?;
            }
            parsed.records
        } else {
            // Version 1: its torn tail (if any) is left behind with it.
            let old = parse_v1(&buf, path);
            file = migrate(path, &old.records)?;
            info!(
                log = %path.display(),
                records = old.records.len(),
                torn_bytes = buf.len() - old.end,
                "rewrote a version 1 log in format version {LOG_VERSION}"
            );
            old.records
        };
        let mut log = Self {
            file,
            set: BTreeSet::new(),
            partial: std::collections::BTreeMap::new(),
            trees: BTreeSet::new(),
        };
        for r in records {
            log.apply(r);
        }
        Ok(log)
    }

    /// Applies one record to the sets.
    fn apply(&mut self, r: Record) {
        match r {
            Record::Whole(p) => self.set_whole(p),
            Record::Block(p, b) => self.set_block(p, b),
            Record::Tree(p) => {
                self.trees.insert(p.clone());
                self.set_whole(p);
            }
        }
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
        let records: Vec<Record> = new.iter().map(|b| Record::Block(p.clone(), *b)).collect();
        self.append(&records)?;
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
        let records: Vec<Record> = new.into_iter().map(Record::Whole).collect();
        self.append(&records)?;
        for r in records {
            self.apply(r);
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
        // The header stays.
        self.file.set_len(LOG_HEADER_LEN as u64)?;
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
        let records: Vec<Record> = new.into_iter().map(Record::Tree).collect();
        self.append(&records)?;
        for r in records {
            self.apply(r);
        }
        Ok(())
    }

    /// The paths whose whole subtree is to be compared.
    pub fn trees(&self) -> &BTreeSet<RelPath> {
        &self.trees
    }

    /// Appends `records` (none: nothing written); returns once durable.
    fn append(&mut self, records: &[Record]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for r in records {
            r.encode(&mut buf);
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()
    }
}

/// Writes `records` as a current-format log at `path`, atomically and
/// durably (temporary file, fsync, rename, fsync of the directory), and
/// returns it open for appending.
fn migrate(path: &Path, records: &[Record]) -> io::Result<File> {
    let mut buf = header().to_vec();
    for r in records {
        r.encode(&mut buf);
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".migrate");
    let tmp = path.with_file_name(tmp_name);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&buf)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    sync_parent(path)?;
    open_append(path)
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
    fn a_directory_is_held_by_one_process_at_a_time_and_the_refusal_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(dir.path()).unwrap();
        let held = m.lock("mount").unwrap();
        // A second holder (another open of the lock file, as another
        // process would make) is refused at once, and told who holds it.
        let e = Meta::open(dir.path()).unwrap().lock("serve").unwrap_err();
        let me = format!("mirrorfs mount, pid {}", std::process::id());
        match &e {
            LockError::InUse { root, holder, .. } => {
                assert_eq!((root.as_path(), holder.as_str()), (dir.path(), me.as_str()));
            }
            other => panic!("not InUse: {other:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains(&me) && msg.contains("stop the other one first"),
            "{msg}"
        );
        // Released on drop (as on the holder's exit): the next one gets it
        // and says so in the file.
        drop(held);
        let _again = m.lock("serve").unwrap();
        let text = fs::read_to_string(m.dir().join(LOCK)).unwrap();
        assert_eq!(
            text,
            format!("mirrorfs serve, pid {}\n", std::process::id())
        );
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
        let file = m.dir().join("dirty");
        let mut log = m.dirty_log().unwrap();
        log.mark([&p("a/b"), &p("c")]).unwrap();
        log.mark([&p("c")]).unwrap();
        log.mark_range(&p("d"), 0, 1).unwrap();
        drop(log);
        let len = fs::metadata(&file).unwrap().len();
        assert_eq!(
            len as usize,
            LOG_HEADER_LEN + (5 + 3) + (5 + 1) + (5 + 1 + 8),
            "each path recorded once"
        );
        let want = |log: &DirtyLog| {
            assert_eq!(
                log.paths().iter().cloned().collect::<Vec<_>>(),
                vec![p("a/b"), p("c"), p("d")]
            );
            assert_eq!(log.blocks(&p("d")), Some(&[0].into()));
            assert!(log.trees().is_empty());
        };
        // A crash in the middle of an append leaves a prefix of its records
        // (each cut of a block record and a tree record), or zeros where the
        // file grew.
        let mut appended = Vec::new();
        Record::Block(p("e/f"), 7).encode(&mut appended);
        Record::Tree(p("g")).encode(&mut appended);
        let tails = (1..appended.len())
            .map(|cut| appended[..cut].to_vec())
            .chain([vec![0; 3], vec![0; 40]]);
        for tail in tails {
            let mut f = OpenOptions::new().append(true).open(&file).unwrap();
            f.write_all(&tail).unwrap();
            drop(f);
            let log = m.dirty_log().unwrap();
            let block_whole = tail.len() >= 5 + 3 + 8 && tail[0] == BLOCK;
            if block_whole {
                // The first record came whole: it counts; cut it off again.
                assert!(log.contains(&p("e/f")), "{tail:?}");
                drop(log);
                OpenOptions::new()
                    .write(true)
                    .open(&file)
                    .unwrap()
                    .set_len(len)
                    .unwrap();
                continue;
            }
            want(&log);
            assert_eq!(fs::metadata(&file).unwrap().len(), len, "{tail:?} cut off");
        }
        let mut log = m.dirty_log().unwrap();
        want(&log);
        log.clear().unwrap();
        assert!(m.dirty_log().unwrap().is_empty());
        assert_eq!(fs::read(&file).unwrap(), header(), "the header stays");
    }

    #[test]
    fn a_30000_byte_path_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(dir.path()).unwrap();
        let deep = RelPath::new(crate::proto::path::deep_path_bytes(30_000)).unwrap();
        let (parent, _) = deep.split().unwrap();
        let longest = RelPath::new(crate::proto::path::deep_path_bytes(MAX_PATH)).unwrap();
        let mut log = m.dirty_log().unwrap();
        log.mark_range(&deep, DIRTY_BLOCK * 5, 1).unwrap();
        log.mark_trees([&parent]).unwrap();
        log.mark([&longest, &p("short")]).unwrap();
        drop(log);
        let log = m.dirty_log().unwrap();
        // Compared by length on failure: the paths themselves are 30 KiB.
        let lens = |s: &BTreeSet<RelPath>| s.iter().map(|p| p.as_bytes().len()).collect::<Vec<_>>();
        let want: BTreeSet<RelPath> = [deep.clone(), parent.clone(), longest, p("short")].into();
        assert!(log.paths() == &want, "path lengths {:?}", lens(log.paths()));
        assert_eq!(log.blocks(&deep), Some(&[5].into()));
        let want: BTreeSet<RelPath> = [parent.clone()].into();
        assert!(log.trees() == &want, "tree lengths {:?}", lens(log.trees()));
        let mut a = m.activity_log().unwrap();
        a.record([&parent]).unwrap();
        a.rotate().unwrap();
        let got = m.activity_log().unwrap().suspects();
        assert!(got == want, "suspect lengths {:?}", lens(&got));
    }

    /// A version 1 record: `u16` length with the kind bits, the path, `extra`.
    fn v1(buf: &mut Vec<u8>, bits: u16, path: &str, extra: &[u8]) {
        buf.extend_from_slice(&(path.len() as u16 | bits).to_be_bytes());
        buf.extend_from_slice(path.as_bytes());
        buf.extend_from_slice(extra);
    }

    #[test]
    fn a_version_1_log_is_migrated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(dir.path()).unwrap();
        let file = m.dir().join("dirty");
        let mut old = Vec::new();
        v1(&mut old, 0, "a/b", &[]);
        v1(&mut old, V1_BLOCK_RECORD, "big", &3u64.to_be_bytes());
        v1(&mut old, V1_BLOCK_RECORD, "big", &9u64.to_be_bytes());
        v1(&mut old, V1_TREE_RECORD, "t", &[]);
        v1(&mut old, V1_BLOCK_RECORD, "t", &1u64.to_be_bytes());
        v1(&mut old, 0, "", &[]);
        // A torn version 1 record at the tail.
        old.extend_from_slice(&[0, 9, b'x']);
        fs::write(&file, &old).unwrap();
        let mut activity = Vec::new();
        v1(&mut activity, 0, "d1", &[]);
        fs::write(m.dir().join("activity"), &activity).unwrap();
        let mut prev = Vec::new();
        v1(&mut prev, 0, "d0", &[]);
        fs::write(m.dir().join("activity.prev"), &prev).unwrap();

        let check = |log: &DirtyLog| {
            assert_eq!(
                log.paths(),
                &[RelPath::root(), p("a/b"), p("big"), p("t")].into()
            );
            assert_eq!(log.blocks(&p("big")), Some(&[3, 9].into()));
            assert_eq!(log.blocks(&p("t")), None, "a tree is whole");
            assert_eq!(log.trees(), &[p("t")].into());
        };
        let mut log = m.dirty_log().unwrap();
        check(&log);
        let bytes = fs::read(&file).unwrap();
        assert!(bytes.starts_with(&header()), "rewritten with a header");
        assert!(!m.dir().join("dirty.migrate").exists());
        // Appends go on in the new format; a reopen reads both.
        log.mark([&p("new")]).unwrap();
        drop(log);
        let log = m.dirty_log().unwrap();
        assert!(log.contains(&p("new")));
        let log2 = m.dirty_log().unwrap();
        assert_eq!(log2.paths(), log.paths(), "migrated once");
        assert_eq!(
            m.activity_log().unwrap().suspects(),
            [p("d0"), p("d1")].into()
        );
        for name in ["activity", "activity.prev"] {
            assert!(fs::read(m.dir().join(name)).unwrap().starts_with(&header()));
        }
    }

    #[test]
    fn damage_and_newer_versions_are_errors_naming_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(dir.path()).unwrap();
        let file = m.dir().join("dirty");
        let mut good = header().to_vec();
        Record::Whole(p("a")).encode(&mut good);
        let mut unknown_kind = good.clone();
        unknown_kind.extend_from_slice(&[9, 0, 0, 0, 1, b'x']);
        Record::Whole(p("b")).encode(&mut unknown_kind);
        let mut too_long = good.clone();
        too_long.push(WHOLE);
        too_long.extend_from_slice(&(MAX_PATH as u32 + 1).to_be_bytes());
        let mut newer = good.clone();
        newer[LOG_MAGIC.len()..LOG_HEADER_LEN].copy_from_slice(&3u32.to_be_bytes());
        for (bytes, what) in [
            (unknown_kind, "unknown record kind 9"),
            (too_long, "longer than"),
            (newer, "version 3"),
        ] {
            fs::write(&file, &bytes).unwrap();
            let e = m.dirty_log().unwrap_err().to_string();
            assert!(
                e.contains(&file.display().to_string()) && e.contains(what) && e.contains("--full"),
                "{e}"
            );
            assert_eq!(fs::read(&file).unwrap(), bytes, "left as it was");
        }
        // A torn header: nothing was recorded yet.
        fs::write(&file, &header()[..5]).unwrap();
        assert!(m.dirty_log().unwrap().is_empty());
        assert_eq!(fs::read(&file).unwrap(), header());
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
