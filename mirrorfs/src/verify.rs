//! Tree comparison: the logic behind `mirrorfs verify DIR1 DIR2`.
//!
//! Owns: walking two trees side by side (the primary's backing directory, side
//! `a`, and the secondary's replica, side `b`) and reporting every difference an
//! operator cares about after a resync: entry type, regular-file size and content,
//! permission bits (with setuid/setgid/sticky), owner, symlink target, device
//! numbers, the extended attributes that are replicated data (one definition,
//! [`crate::xattr`]: a host's security labels are not compared, as the resync
//! never sends them), mtime of non-directories (within a tolerance), and
//! hard-link structure. Directory mtimes are not compared: they legitimately
//! differ between the two sides.
//!
//! Never writes: every open is read-only (with `O_NOATIME` where the kernel allows
//! it, so even access times stay untouched), nothing is created, changed or
//! removed. Below the two roots nothing is followed: entries are examined with
//! `lstat` semantics relative to an open directory descriptor, directories and
//! files are opened with `openat(…, O_NOFOLLOW)` and checked to still be the
//! entry that was examined, symlinks are read, never traversed, and extended
//! attributes are read through `O_PATH` descriptors (a device or fifo is never
//! opened). All system calls go through the crate's [`crate::sys`] layer. (The
//! roots themselves are opened as given, so a root may be a symlink to the
//! tree.)
//!
//! Errors on a single entry (permission denied, entry vanished during the walk)
//! become [`DiffKind::Unreadable`] differences; only a root that cannot be opened
//! or listed fails the run with a [`VerifyError`].
//!
//! Cost: one sorted directory listing per level of the current path is held in
//! memory, plus two 1 MiB read buffers; file contents are streamed. Two
//! descriptors per level of depth stay open while the walk is below it.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{sys, xattr};

/// How [`compare`] treats the two trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Largest mtime difference of a non-directory that still counts as equal.
    pub mtime_tolerance: Duration,
    /// Names skipped at each root only (never below it): the metadata area of
    /// mirrorfs, which legitimately differs between the two sides.
    pub skip_root_names: Vec<OsString>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            mtime_tolerance: Duration::from_secs(1),
            skip_root_names: vec![OsString::from(".mirrorfs")],
        }
    }
}

/// What [`compare`] returns: the differences and how much was compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Every difference found, sorted by path (component by component, so a
    /// directory's entries follow it directly); the order is deterministic.
    /// Several differences of one path keep the order in which they are checked.
    pub differences: Vec<Difference>,
    /// Totals of the walk.
    pub summary: Summary,
}

/// Totals of one comparison.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Distinct relative paths examined below the roots (the union of both trees,
    /// without the skipped root names and without the roots themselves).
    pub entries: u64,
    /// Regular-file content bytes compared, counted once per pair of files.
    pub bytes: u64,
}

/// One difference between the two trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Path relative to the roots; empty for the roots themselves.
    pub path: PathBuf,
    /// What differs.
    pub kind: DiffKind,
}

/// Which tree: `A` is the first argument of [`compare`], `B` the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// The first tree (the primary's backing directory).
    A,
    /// The second tree (the secondary's replica).
    B,
}

/// What differs at a path. Where a variant has `a` and `b`, they are the values
/// in the first and the second tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffKind {
    /// The entry exists in one tree only. Reported for the top of a missing
    /// subtree only, not for each entry below it.
    OnlyIn {
        /// The tree that has the entry.
        side: Side,
        /// That tree's root, as given to [`compare`].
        root: PathBuf,
    },
    /// The entries have different types; nothing else of them is compared.
    Type { a: EntryType, b: EntryType },
    /// Regular files of different sizes.
    Size { a: u64, b: u64 },
    /// Regular files whose bytes differ (within the length both have).
    Content {
        /// Offset of the first byte that differs.
        first_differing_offset: u64,
    },
    /// Permission bits, including setuid, setgid and sticky (`S_IMODE`).
    Mode { a: u32, b: u32 },
    /// Owner as `(uid, gid)`.
    Owner { a: (u32, u32), b: (u32, u32) },
    /// Symlinks pointing to different targets.
    SymlinkTarget { a: PathBuf, b: PathBuf },
    /// A non-directory whose hard-link structure differs: its link count, or
    /// the set of other paths in the tree that are the same inode.
    HardLinks { a: LinkGroup, b: LinkGroup },
    /// An extended attribute present on one side only, or with different values.
    Xattr {
        /// The attribute's full name, with its namespace (`user.`, `trusted.`…).
        name: OsString,
        /// The value in the first tree; `None` when absent.
        a: Option<Vec<u8>>,
        /// The value in the second tree; `None` when absent.
        b: Option<Vec<u8>>,
    },
    /// Modification times of a non-directory further apart than the tolerance.
    Mtime { a: Timestamp, b: Timestamp },
    /// Device numbers of character or block device nodes.
    Rdev { a: u64, b: u64 },
    /// The entry, or part of it, could not be read on one side, so it was not
    /// (fully) compared.
    Unreadable {
        /// The tree where reading failed.
        side: Side,
        /// That tree's root, as given to [`compare`].
        root: PathBuf,
        /// The failed operation and the OS error, e.g.
        /// `open: Permission denied (os error 13)`.
        error: String,
    },
}

/// The type of an entry, from `st_mode & S_IFMT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    Regular,
    Directory,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
    /// A type bit pattern Linux does not define.
    Unknown(u32),
}

/// A modification time, as stored by the filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub secs: i64,
    /// Nanoseconds within the second, `0..1_000_000_000`.
    pub nanos: u32,
}

/// The hard-link view of one non-directory entry in one tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkGroup {
    /// The inode's link count (`st_nlink`); links outside the tree count too.
    pub nlink: u64,
    /// The other paths in this tree that are the same inode, sorted.
    pub linked_with: Vec<PathBuf>,
}

/// Why [`compare`] could not run at all. Problems below the roots are
/// [`DiffKind::Unreadable`] differences instead.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A root could not be opened as a directory (missing, not a directory, no
    /// permission).
    #[error("cannot open {}: {source}", path.display())]
    OpenRoot {
        /// The root as given to [`compare`].
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A root was opened but its attributes or its entries could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadRoot {
        /// The root as given to [`compare`].
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Compares the trees at `a` and `b` and returns every difference, sorted by
/// path, with a [`Summary`] of what was compared. Never modifies either tree.
pub fn compare(a: &Path, b: &Path, opts: &VerifyOptions) -> Result<Report, VerifyError> {
    let root_a = Root::open(a, opts)?;
    let root_b = Root::open(b, opts)?;
    let mut walker = Walker::new(a, b, opts);
    walker.compare_roots(&root_a, &root_b);
    walker.walk(Frame {
        path: PathBuf::new(),
        entries: merge(root_a.names, root_b.names).into_iter(),
        dirs: [Some(root_a.dir), Some(root_b.dir)],
    });
    let report = walker.finish();
    tracing::debug!(
        a = %a.display(),
        b = %b.display(),
        entries = report.summary.entries,
        bytes = report.summary.bytes,
        differences = report.differences.len(),
        "verify finished"
    );
    Ok(report)
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.as_os_str().is_empty() {
            write!(f, ".: {}", self.kind)
        } else {
            write!(f, "{}: {}", self.path.display(), self.kind)
        }
    }
}

impl fmt::Display for DiffKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OnlyIn { root, .. } => write!(f, "only in {}", root.display()),
            Self::Type { a, b } => write!(f, "type {a} vs {b}"),
            Self::Size { a, b } => write!(f, "size {a} vs {b}"),
            Self::Content {
                first_differing_offset,
            } => write!(f, "content differs from byte {first_differing_offset}"),
            Self::Mode { a, b } => write!(f, "mode {a:04o} vs {b:04o}"),
            Self::Owner { a, b } => write!(f, "owner {}:{} vs {}:{}", a.0, a.1, b.0, b.1),
            Self::SymlinkTarget { a, b } => write!(
                f,
                "symlink target \"{}\" vs \"{}\"",
                a.as_os_str().as_bytes().escape_ascii(),
                b.as_os_str().as_bytes().escape_ascii()
            ),
            Self::HardLinks { a, b } => write!(f, "hard links: {a} vs {b}"),
            Self::Xattr { name, a, b } => write!(
                f,
                "xattr {} {} vs {}",
                name.as_bytes().escape_ascii(),
                XattrValue(a.as_deref()),
                XattrValue(b.as_deref())
            ),
            Self::Mtime { a, b } => write!(f, "mtime {a} vs {b}"),
            Self::Rdev { a, b } => write!(f, "device {} vs {}", DevNo(*a), DevNo(*b)),
            Self::Unreadable { root, error, .. } => {
                write!(f, "unreadable in {}: {error}", root.display())
            }
        }
    }
}

impl fmt::Display for EntryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Regular => f.write_str("regular file"),
            Self::Directory => f.write_str("directory"),
            Self::Symlink => f.write_str("symlink"),
            Self::CharDevice => f.write_str("character device"),
            Self::BlockDevice => f.write_str("block device"),
            Self::Fifo => f.write_str("fifo"),
            Self::Socket => f.write_str("socket"),
            Self::Unknown(bits) => write!(f, "unknown type {bits:#o}"),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}", self.secs, self.nanos)
    }
}

impl fmt::Display for LinkGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nlink {}", self.nlink)?;
        for (i, path) in self.linked_with.iter().enumerate() {
            let sep = if i == 0 { ", linked with " } else { ", " };
            write!(f, "{sep}{}", path.display())?;
        }
        Ok(())
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::A => "a",
            Self::B => "b",
        })
    }
}

// ---------------------------------------------------------------------------
// Helpers below: display adapters, the walk, and the system-call wrappers.

/// Size of each read when streaming file contents.
const CHUNK: usize = 1 << 20;

/// At most this many bytes of an xattr value are shown in a difference line.
const XATTR_SHOWN: usize = 64;

/// Shows an xattr value escaped and quoted, truncated when long, or `absent`.
struct XattrValue<'a>(Option<&'a [u8]>);

impl fmt::Display for XattrValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("absent"),
            Some(v) if v.len() > XATTR_SHOWN => write!(
                f,
                "\"{}\"… ({} bytes)",
                v[..XATTR_SHOWN].escape_ascii(),
                v.len()
            ),
            Some(v) => write!(f, "\"{}\"", v.escape_ascii()),
        }
    }
}

/// Shows a device number as `major:minor`.
struct DevNo(u64);

impl fmt::Display for DevNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", libc::major(self.0), libc::minor(self.0))
    }
}

impl Side {
    const BOTH: [Self; 2] = [Self::A, Self::B];

    fn index(self) -> usize {
        match self {
            Self::A => 0,
            Self::B => 1,
        }
    }
}

impl EntryType {
    fn from_mode(mode: u32) -> Self {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Self::Regular,
            libc::S_IFDIR => Self::Directory,
            libc::S_IFLNK => Self::Symlink,
            libc::S_IFCHR => Self::CharDevice,
            libc::S_IFBLK => Self::BlockDevice,
            libc::S_IFIFO => Self::Fifo,
            libc::S_IFSOCK => Self::Socket,
            other => Self::Unknown(other),
        }
    }
}

impl Timestamp {
    fn as_nanos(self) -> i128 {
        i128::from(self.secs) * 1_000_000_000 + i128::from(self.nanos)
    }
}

/// The attributes of one entry that the comparison uses.
#[derive(Debug, Clone, Copy)]
struct Meta {
    kind: EntryType,
    /// `S_IMODE`: permission bits with setuid, setgid and sticky.
    perm: u32,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u64,
    dev: u64,
    ino: u64,
    rdev: u64,
    mtime: Timestamp,
}

impl Meta {
    // The widths of these `stat` fields differ between architectures (st_nlink
    // is u32 on aarch64, u64 on x86_64), so some conversions are identities here.
    #[allow(clippy::useless_conversion)]
    fn from_stat(st: &libc::stat) -> Self {
        Self {
            kind: EntryType::from_mode(st.st_mode),
            perm: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: u64::try_from(st.st_size).unwrap_or(0),
            nlink: u64::from(st.st_nlink),
            dev: u64::from(st.st_dev),
            ino: u64::from(st.st_ino),
            rdev: u64::from(st.st_rdev),
            mtime: Timestamp {
                secs: i64::from(st.st_mtime),
                nanos: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
            },
        }
    }

    fn same_inode(&self, other: &Self) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

/// An opened root: its directory stream, attributes and skip-filtered listing.
struct Root {
    dir: Dir,
    meta: Meta,
    names: Vec<CString>,
}

impl Root {
    fn open(path: &Path, opts: &VerifyOptions) -> Result<Self, VerifyError> {
        let open_err = |source| VerifyError::OpenRoot {
            path: path.to_path_buf(),
            source,
        };
        let read_err = |source| VerifyError::ReadRoot {
            path: path.to_path_buf(),
            source,
        };
        let fd = open_dir_path(path).map_err(open_err)?;
        let meta = fstat(fd.as_fd()).map_err(read_err)?;
        let dir = Dir { fd };
        let mut names = dir.names().map_err(read_err)?;
        names.retain(|name| {
            !opts
                .skip_root_names
                .iter()
                .any(|skip| skip.as_bytes() == name.to_bytes())
        });
        Ok(Self { dir, meta, names })
    }
}

/// One directory level of the walk: the directory on each side (absent where
/// the side has no such directory, or it could not be opened) and the merged
/// entries not visited yet. Differences are reported only in frames where both
/// sides are present; a one-sided frame (below an `OnlyIn`, a type change or an
/// unreadable directory) is walked only to record hard links, so that link
/// groups name every path of the tree.
struct Frame {
    path: PathBuf,
    dirs: [Option<Dir>; 2],
    entries: std::vec::IntoIter<Entry>,
}

/// A name in a directory, and on which sides it exists.
struct Entry {
    name: CString,
    present: [bool; 2],
}

/// A non-directory present on both sides with a link count above one on at
/// least one side, to be checked once all link groups are known.
struct LinkCheck {
    path: PathBuf,
    /// `(dev, ino, nlink)` on each side.
    ids: [(u64, u64, u64); 2],
}

struct Walker<'o> {
    roots: [PathBuf; 2],
    opts: &'o VerifyOptions,
    differences: Vec<Difference>,
    summary: Summary,
    /// Per side, the paths of every non-directory with nlink > 1, by
    /// `(dev, ino)`, in walk order (which is sorted path order). Only looked up,
    /// never iterated, so its order cannot leak into the output.
    links: [HashMap<(u64, u64), Vec<PathBuf>>; 2],
    link_checks: Vec<LinkCheck>,
    buf_a: Vec<u8>,
    buf_b: Vec<u8>,
}

impl<'o> Walker<'o> {
    fn new(a: &Path, b: &Path, opts: &'o VerifyOptions) -> Self {
        Self {
            roots: [a.to_path_buf(), b.to_path_buf()],
            opts,
            differences: Vec::new(),
            summary: Summary::default(),
            links: [HashMap::new(), HashMap::new()],
            link_checks: Vec::new(),
            buf_a: vec![0; CHUNK],
            buf_b: vec![0; CHUNK],
        }
    }

    /// The roots are directories on both sides (they were opened with
    /// `O_DIRECTORY`); compare what else applies to a directory.
    fn compare_roots(&mut self, a: &Root, b: &Root) {
        let path = PathBuf::new();
        self.compare_mode_owner(&path, &a.meta, &b.meta);
        self.compare_xattrs(&path, [a.dir.fd(), b.dir.fd()]);
    }

    /// Depth-first, entries in byte order of their names: the order in which
    /// paths compare component by component, so the output is nearly sorted.
    fn walk(&mut self, root: Frame) {
        let mut stack = vec![root];
        while let Some(frame) = stack.last_mut() {
            let Some(entry) = frame.entries.next() else {
                stack.pop();
                continue;
            };
            if let Some(child) = self.visit(frame, &entry) {
                stack.push(child);
            }
        }
    }

    /// Examines one entry of `parent`; returns the frame to descend into when
    /// the entry is a directory on at least one side.
    fn visit(&mut self, parent: &Frame, entry: &Entry) -> Option<Frame> {
        let path = parent.path.join(OsStr::from_bytes(entry.name.to_bytes()));
        self.summary.entries += 1;
        let reporting = parent.dirs.iter().all(Option::is_some);
        if reporting {
            match entry.present {
                [true, false] => self.only_in(&path, Side::A),
                [false, true] => self.only_in(&path, Side::B),
                _ => {}
            }
        }

        let mut metas: [Option<Meta>; 2] = [None, None];
        for side in Side::BOTH {
            let i = side.index();
            let Some(dir) = parent.dirs[i].as_ref().filter(|_| entry.present[i]) else {
                continue;
            };
            match lstat_at(dir.fd(), &entry.name) {
                Ok(meta) => {
                    if meta.kind != EntryType::Directory && meta.nlink > 1 {
                        self.links[i]
                            .entry((meta.dev, meta.ino))
                            .or_default()
                            .push(path.clone());
                    }
                    metas[i] = Some(meta);
                }
                Err(err) if reporting => self.unreadable(&path, side, "lstat", &err),
                Err(_) => {}
            }
        }

        if reporting {
            if let [Some(a), Some(b)] = &metas {
                if a.kind == b.kind {
                    self.compare_entry(parent, &entry.name, &path, a, b);
                } else {
                    self.push(
                        &path,
                        DiffKind::Type {
                            a: a.kind,
                            b: b.kind,
                        },
                    );
                }
            }
        }

        let mut dirs: [Option<Dir>; 2] = [None, None];
        let mut names: [Vec<CString>; 2] = [Vec::new(), Vec::new()];
        for side in Side::BOTH {
            let i = side.index();
            let (Some(meta), Some(parent_dir)) = (&metas[i], &parent.dirs[i]) else {
                continue;
            };
            if meta.kind != EntryType::Directory {
                continue;
            }
            match open_subdir(parent_dir.fd(), &entry.name, meta) {
                Ok((dir, listing)) => {
                    dirs[i] = Some(dir);
                    names[i] = listing;
                }
                Err((op, err)) if reporting => self.unreadable(&path, side, op, &err),
                Err(_) => {}
            }
        }
        if dirs.iter().all(Option::is_none) {
            return None;
        }
        let [names_a, names_b] = names;
        Some(Frame {
            path,
            dirs,
            entries: merge(names_a, names_b).into_iter(),
        })
    }

    /// Compares two entries of the same type, `name` in `parent` on each side.
    fn compare_entry(&mut self, parent: &Frame, name: &CStr, path: &Path, a: &Meta, b: &Meta) {
        // Both sides present: `visit` only calls this in reporting frames.
        let [Some(dir_a), Some(dir_b)] = &parent.dirs else {
            return;
        };
        let fds = [dir_a.fd(), dir_b.fd()];
        if a.kind == EntryType::Regular {
            if a.size != b.size {
                self.push(
                    path,
                    DiffKind::Size {
                        a: a.size,
                        b: b.size,
                    },
                );
            }
            self.compare_content(fds, name, path, a, b);
        }
        self.compare_mode_owner(path, a, b);
        if a.kind == EntryType::Symlink {
            self.compare_symlinks(fds, name, path);
        }
        if matches!(a.kind, EntryType::CharDevice | EntryType::BlockDevice) && a.rdev != b.rdev {
            self.push(
                path,
                DiffKind::Rdev {
                    a: a.rdev,
                    b: b.rdev,
                },
            );
        }
        // Through O_PATH descriptors: symlinks, devices and fifos are named,
        // never opened or followed.
        let mut inodes = [None, None];
        for (side, meta) in Side::BOTH.into_iter().zip([a, b]) {
            match open_at(fds[side.index()], name, libc::O_PATH, meta) {
                Ok(fd) => inodes[side.index()] = Some(fd),
                Err((op, err)) => self.unreadable(path, side, op, &err),
            }
        }
        if let [Some(ia), Some(ib)] = &inodes {
            self.compare_xattrs(path, [ia.as_fd(), ib.as_fd()]);
        }
        if a.kind != EntryType::Directory {
            let apart = a.mtime.as_nanos().abs_diff(b.mtime.as_nanos());
            if apart > self.opts.mtime_tolerance.as_nanos() {
                self.push(
                    path,
                    DiffKind::Mtime {
                        a: a.mtime,
                        b: b.mtime,
                    },
                );
            }
            if a.nlink > 1 || b.nlink > 1 {
                self.link_checks.push(LinkCheck {
                    path: path.to_path_buf(),
                    ids: [(a.dev, a.ino, a.nlink), (b.dev, b.ino, b.nlink)],
                });
            }
        }
    }

    fn compare_mode_owner(&mut self, path: &Path, a: &Meta, b: &Meta) {
        if a.perm != b.perm {
            self.push(
                path,
                DiffKind::Mode {
                    a: a.perm,
                    b: b.perm,
                },
            );
        }
        if (a.uid, a.gid) != (b.uid, b.gid) {
            self.push(
                path,
                DiffKind::Owner {
                    a: (a.uid, a.gid),
                    b: (b.uid, b.gid),
                },
            );
        }
    }

    /// Streams both files and reports the first differing byte within the
    /// length both have (a size difference is reported separately).
    fn compare_content(
        &mut self,
        fds: [BorrowedFd<'_>; 2],
        name: &CStr,
        path: &Path,
        a: &Meta,
        b: &Meta,
    ) {
        let limit = a.size.min(b.size);
        if limit == 0 {
            return;
        }
        let mut files = [None, None];
        for (side, meta) in Side::BOTH.into_iter().zip([a, b]) {
            match open_file(fds[side.index()], name, meta) {
                Ok(file) => files[side.index()] = Some(file),
                Err((op, err)) => self.unreadable(path, side, op, &err),
            }
        }
        let [Some(mut file_a), Some(mut file_b)] = files else {
            return;
        };
        match first_difference(
            &mut file_a,
            &mut file_b,
            limit,
            &mut self.buf_a,
            &mut self.buf_b,
        ) {
            Ok((compared, None)) => self.summary.bytes += compared,
            Ok((compared, Some(offset))) => {
                self.summary.bytes += compared;
                self.push(
                    path,
                    DiffKind::Content {
                        first_differing_offset: offset,
                    },
                );
            }
            Err((side, err)) => self.unreadable(path, side, "read", &err),
        }
    }

    fn compare_symlinks(&mut self, fds: [BorrowedFd<'_>; 2], name: &CStr, path: &Path) {
        let mut targets = [None, None];
        for side in Side::BOTH {
            match readlink_at(fds[side.index()], name) {
                Ok(target) => targets[side.index()] = Some(target),
                Err(err) => self.unreadable(path, side, "readlink", &err),
            }
        }
        if let [Some(ta), Some(tb)] = targets {
            if ta != tb {
                self.push(path, DiffKind::SymlinkTarget { a: ta, b: tb });
            }
        }
    }

    /// Compares the extended attributes that are replicated data
    /// ([`xattr::is_replicated`]), names and values, of the inodes `fds` hold.
    /// Others (a host's security labels) legitimately differ between the sides.
    fn compare_xattrs(&mut self, path: &Path, fds: [BorrowedFd<'_>; 2]) {
        let mut lists: [Option<Vec<Vec<u8>>>; 2] = [None, None];
        for side in Side::BOTH {
            match xattr::names(fds[side.index()]) {
                Ok(names) => lists[side.index()] = Some(names),
                Err(err) => self.unreadable(path, side, "listxattr", &err),
            }
        }
        let [Some(names_a), Some(names_b)] = lists else {
            return;
        };
        let names: BTreeSet<&Vec<u8>> = names_a
            .iter()
            .chain(&names_b)
            .filter(|n| xattr::is_replicated(n))
            .collect();
        for name in names {
            let mut values: [Option<Vec<u8>>; 2] = [None, None];
            let mut readable = true;
            for side in Side::BOTH {
                match xattr::value(fds[side.index()], name) {
                    Ok(value) => values[side.index()] = value,
                    Err(err) => {
                        let op = format!("getxattr {}", name.escape_ascii());
                        self.unreadable(path, side, &op, &err);
                        readable = false;
                    }
                }
            }
            let [a, b] = values;
            if readable && a != b {
                let name = OsString::from_vec(name.clone());
                self.push(path, DiffKind::Xattr { name, a, b });
            }
        }
    }

    /// Resolves the deferred hard-link checks and sorts the differences.
    fn finish(mut self) -> Report {
        for check in std::mem::take(&mut self.link_checks) {
            let [a, b] = Side::BOTH.map(|side| {
                let (dev, ino, nlink) = check.ids[side.index()];
                let linked_with = self.links[side.index()]
                    .get(&(dev, ino))
                    .map(|paths| {
                        paths
                            .iter()
                            .filter(|p| **p != check.path)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                LinkGroup { nlink, linked_with }
            });
            if a != b {
                self.push(&check.path, DiffKind::HardLinks { a, b });
            }
        }
        // Stable: the differences of one path keep the order they were found in.
        self.differences.sort_by(|x, y| x.path.cmp(&y.path));
        Report {
            differences: self.differences,
            summary: self.summary,
        }
    }

    fn push(&mut self, path: &Path, kind: DiffKind) {
        self.differences.push(Difference {
            path: path.to_path_buf(),
            kind,
        });
    }

    fn only_in(&mut self, path: &Path, side: Side) {
        let root = self.roots[side.index()].clone();
        self.push(path, DiffKind::OnlyIn { side, root });
    }

    fn unreadable(&mut self, path: &Path, side: Side, op: &str, err: &io::Error) {
        let root = self.roots[side.index()].clone();
        let error = format!("{op}: {err}");
        self.push(path, DiffKind::Unreadable { side, root, error });
    }
}

/// Merges two sorted listings into one sorted list of names with presence.
fn merge(a: Vec<CString>, b: Vec<CString>) -> Vec<Entry> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let mut a = a.into_iter().peekable();
    let mut b = b.into_iter().peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => return out,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => x.cmp(y),
        };
        let (name, present) = match order {
            Ordering::Less => (a.next(), [true, false]),
            Ordering::Greater => (b.next(), [false, true]),
            Ordering::Equal => {
                b.next();
                (a.next(), [true, true])
            }
        };
        // `peek` above returned Some for the side taken, so `name` is Some.
        if let Some(name) = name {
            out.push(Entry { name, present });
        }
    }
}

/// Compares up to `limit` bytes of two files in `CHUNK`-sized reads. Returns
/// the bytes compared and the first differing offset, if any. A file that ends
/// before `limit` on one side only (it changed during the walk) differs at the
/// point where it ends.
fn first_difference(
    a: &mut File,
    b: &mut File,
    limit: u64,
    buf_a: &mut [u8],
    buf_b: &mut [u8],
) -> Result<(u64, Option<u64>), (Side, io::Error)> {
    let mut offset = 0u64;
    while offset < limit {
        let want =
            usize::try_from(limit - offset).map_or(buf_a.len(), |rest| rest.min(buf_a.len()));
        let got_a = read_full(a, &mut buf_a[..want]).map_err(|e| (Side::A, e))?;
        let got_b = read_full(b, &mut buf_b[..want]).map_err(|e| (Side::B, e))?;
        let common = got_a.min(got_b);
        let (chunk_a, chunk_b) = (&buf_a[..common], &buf_b[..common]);
        if chunk_a != chunk_b {
            let at = chunk_a
                .iter()
                .zip(chunk_b)
                .position(|(x, y)| x != y)
                .unwrap_or(common);
            return Ok((offset + at as u64, Some(offset + at as u64)));
        }
        offset += common as u64;
        if got_a != got_b {
            return Ok((offset, Some(offset)));
        }
        if common < want {
            break; // Both ended early, at the same point.
        }
    }
    Ok((offset, None))
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

// ---------------------------------------------------------------------------
// Reading, through the crate's `sys` layer. Every call is read-only.

/// An open directory: its descriptor anchors the `*at` calls for its entries.
struct Dir {
    fd: OwnedFd,
}

impl Dir {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// All names except `.` and `..`, sorted by bytes.
    fn names(&self) -> io::Result<Vec<CString>> {
        // A name from the kernel never holds a NUL.
        let mut names: Vec<CString> = sys::read_dir_names(self.fd())?
            .into_iter()
            .filter_map(|n| CString::new(n).ok())
            .collect();
        names.sort_unstable();
        Ok(names)
    }
}

fn os(name: &CStr) -> &OsStr {
    OsStr::from_bytes(name.to_bytes())
}

/// `open(…, O_NOATIME)`, retried without `O_NOATIME` when not permitted (it
/// needs the file's owner or CAP_FOWNER).
fn open_noatime(
    open: impl Fn(libc::c_int) -> io::Result<OwnedFd>,
    flags: libc::c_int,
) -> io::Result<OwnedFd> {
    match open(flags | libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(flags),
        r => r,
    }
}

fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    open_noatime(
        |flags| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(flags)
                .open(path)
                .map(OwnedFd::from)
        },
        libc::O_DIRECTORY,
    )
}

/// Opens `name` in `dir` read-only without following a symlink, and checks it
/// is still the entry that was examined. `O_NONBLOCK` keeps an entry swapped for
/// a fifo after the lstat from blocking the walk; it changes nothing for
/// regular files and directories. With `O_PATH` nothing is opened for real
/// (devices and fifos included): the descriptor only names the inode.
fn open_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    expected: &Meta,
) -> Result<OwnedFd, (&'static str, io::Error)> {
    let flags = flags | libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let fd = open_noatime(|flags| sys::openat(dir, os(name), flags, 0), flags)
        .map_err(|err| ("open", err))?;
    let meta = fstat(fd.as_fd()).map_err(|err| ("fstat", err))?;
    if !meta.same_inode(expected) {
        return Err((
            "open",
            io::Error::other("entry was replaced during the walk"),
        ));
    }
    Ok(fd)
}

fn open_file(
    dir: BorrowedFd<'_>,
    name: &CStr,
    expected: &Meta,
) -> Result<File, (&'static str, io::Error)> {
    open_at(dir, name, 0, expected).map(File::from)
}

/// Opens a subdirectory and reads its sorted listing.
fn open_subdir(
    dir: BorrowedFd<'_>,
    name: &CStr,
    expected: &Meta,
) -> Result<(Dir, Vec<CString>), (&'static str, io::Error)> {
    let fd = open_at(dir, name, libc::O_DIRECTORY, expected)?;
    let dir = Dir { fd };
    let names = dir.names().map_err(|err| ("readdir", err))?;
    Ok((dir, names))
}

fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Meta> {
    sys::fstatat(dir, os(name)).map(|st| Meta::from_stat(&st))
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<Meta> {
    sys::fstat(fd).map(|st| Meta::from_stat(&st))
}

/// Reads a symlink's target.
fn readlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<PathBuf> {
    sys::readlinkat(dir, os(name)).map(|t| PathBuf::from(OsString::from_vec(t)))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{lchown, symlink, PermissionsExt};
    use std::time::{SystemTime, UNIX_EPOCH};

    use pretty_assertions::assert_eq;
    use tempfile::TempDir;

    use super::*;

    /// Two empty roots, `a` and `b`.
    struct Pair {
        a: TempDir,
        b: TempDir,
    }

    impl Pair {
        fn new() -> Self {
            Self {
                a: TempDir::new().expect("tempdir a"),
                b: TempDir::new().expect("tempdir b"),
            }
        }

        fn a(&self, rel: &str) -> PathBuf {
            self.a.path().join(rel)
        }

        fn b(&self, rel: &str) -> PathBuf {
            self.b.path().join(rel)
        }

        /// Writes the same file on both sides.
        fn both(&self, rel: &str, data: &[u8]) {
            write(&self.a(rel), data);
            write(&self.b(rel), data);
        }

        /// Compares with the default options but an mtime tolerance of an
        /// hour: the two sides are written one after the other, which can take
        /// more than a second on a busy machine. Mtime tests pass their own.
        fn report(&self) -> Report {
            let opts = VerifyOptions {
                mtime_tolerance: Duration::from_secs(3600),
                ..VerifyOptions::default()
            };
            compare(self.a.path(), self.b.path(), &opts).expect("compare")
        }

        fn differences(&self) -> Vec<Difference> {
            self.report().differences
        }

        fn only_in(&self, rel: &str, side: Side) -> Difference {
            let root = match side {
                Side::A => self.a.path().to_path_buf(),
                Side::B => self.b.path().to_path_buf(),
            };
            diff(rel, DiffKind::OnlyIn { side, root })
        }
    }

    fn diff(rel: &str, kind: DiffKind) -> Difference {
        Difference {
            path: PathBuf::from(rel),
            kind,
        }
    }

    /// Writes a file, creating its parent directories.
    fn write(path: &Path, data: &[u8]) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parent");
        }
        fs::write(path, data).expect("write");
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn set_mtime(path: &Path, secs: u64, nanos: u32) {
        let time = UNIX_EPOCH + Duration::new(secs, nanos);
        File::open(path)
            .expect("open for utimens")
            .set_modified(time)
            .expect("set mtime");
    }

    fn set_xattr(path: &Path, name: &str, value: &[u8]) {
        let path = CString::new(path.as_os_str().as_bytes()).expect("path");
        let name = CString::new(name).expect("name");
        // SAFETY: both strings are NUL-terminated; `value` is readable for its length.
        let ret = unsafe {
            libc::lsetxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(ret, 0, "lsetxattr: {}", io::Error::last_os_error());
    }

    fn mknod(path: &Path, kind: libc::mode_t, major: u32, minor: u32) {
        let c = CString::new(path.as_os_str().as_bytes()).expect("path");
        // SAFETY: `c` is NUL-terminated.
        let ret = unsafe { libc::mknod(c.as_ptr(), kind | 0o644, libc::makedev(major, minor)) };
        assert_eq!(ret, 0, "mknod: {}", io::Error::last_os_error());
    }

    /// A deterministic 3 MiB pattern that does not repeat at chunk boundaries.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// One of everything the comparison looks at.
    fn populate(root: &Path) {
        write(&root.join("big"), &pattern(3 << 20));
        write(&root.join("empty"), b"");
        write(&root.join("d1/f"), b"hello");
        write(&root.join("d1/d2/deep"), b"deep");
        fs::create_dir(root.join("emptydir")).expect("mkdir");
        symlink("d1/f", root.join("link")).expect("symlink");
        // Never followed: one loops, one leaves the tree.
        symlink("..", root.join("up")).expect("symlink");
        symlink("/etc", root.join("etc")).expect("symlink");
        write(&root.join("hard1"), b"linked");
        fs::hard_link(root.join("hard1"), root.join("d1/hard2")).expect("link");
        write(&root.join("suid"), b"#!/bin/sh\n");
        chmod(&root.join("suid"), 0o4755);
        chmod(&root.join("d1"), 0o1777);
        mknod(&root.join("null"), libc::S_IFCHR, 1, 3);
        mknod(&root.join("fifo"), libc::S_IFIFO, 0, 0);
        set_xattr(&root.join("d1/f"), "user.k", b"v");
        set_xattr(&root.join("d1"), "user.dir", b"x");
        set_xattr(&root.join("link"), "trusted.on_link", b"t");
    }

    #[test]
    fn identical_trees_have_no_difference() {
        let p = Pair::new();
        populate(p.a.path());
        populate(p.b.path());
        let report = p.report();
        assert_eq!(report.differences, vec![]);
        // big empty d1 f d2 deep hard2 emptydir link up etc hard1 suid null fifo
        assert_eq!(report.summary.entries, 15);
        assert_eq!(report.summary.bytes, (3 << 20) + 5 + 4 + 6 + 10 + 6);
    }

    #[test]
    fn content_change_in_the_middle_of_a_3_mib_file() {
        let p = Pair::new();
        let data = pattern(3 << 20);
        write(&p.a("d1/f"), &data);
        let mut changed = data.clone();
        let offset = (3 << 20) / 2 + 4099;
        changed[offset] ^= 0xff;
        write(&p.b("d1/f"), &changed);
        assert_eq!(
            p.differences(),
            vec![diff(
                "d1/f",
                DiffKind::Content {
                    first_differing_offset: offset as u64
                }
            )]
        );
    }

    #[test]
    fn size_and_differing_common_prefix() {
        let p = Pair::new();
        write(&p.a("longer"), b"hello");
        write(&p.b("longer"), b"hello world");
        write(&p.a("shorter"), b"abcd");
        write(&p.b("shorter"), b"abX");
        assert_eq!(
            p.differences(),
            vec![
                diff("longer", DiffKind::Size { a: 5, b: 11 }),
                diff("shorter", DiffKind::Size { a: 4, b: 3 }),
                diff(
                    "shorter",
                    DiffKind::Content {
                        first_differing_offset: 2
                    }
                ),
            ]
        );
    }

    #[test]
    fn mode_including_special_bits() {
        let p = Pair::new();
        p.both("plain", b"x");
        p.both("suid", b"x");
        p.both("dir/f", b"x");
        chmod(&p.a("plain"), 0o644);
        chmod(&p.b("plain"), 0o600);
        chmod(&p.a("suid"), 0o4755);
        chmod(&p.b("suid"), 0o755);
        chmod(&p.a("dir"), 0o1777);
        chmod(&p.b("dir"), 0o777);
        assert_eq!(
            p.differences(),
            vec![
                diff(
                    "dir",
                    DiffKind::Mode {
                        a: 0o1777,
                        b: 0o777
                    }
                ),
                diff("plain", DiffKind::Mode { a: 0o644, b: 0o600 }),
                diff(
                    "suid",
                    DiffKind::Mode {
                        a: 0o4755,
                        b: 0o755
                    }
                ),
            ]
        );
    }

    #[test]
    fn owner_of_file_and_symlink() {
        let p = Pair::new();
        p.both("f", b"x");
        symlink("f", p.a("l")).expect("symlink");
        symlink("f", p.b("l")).expect("symlink");
        lchown(p.b("f"), Some(1000), Some(1000)).expect("chown");
        lchown(p.b("l"), Some(0), Some(42)).expect("lchown");
        assert_eq!(
            p.differences(),
            vec![
                diff(
                    "f",
                    DiffKind::Owner {
                        a: (0, 0),
                        b: (1000, 1000)
                    }
                ),
                diff(
                    "l",
                    DiffKind::Owner {
                        a: (0, 0),
                        b: (0, 42)
                    }
                ),
            ]
        );
    }

    #[test]
    fn symlink_target() {
        let p = Pair::new();
        symlink("t1", p.a("l")).expect("symlink");
        symlink("t2", p.b("l")).expect("symlink");
        assert_eq!(
            p.differences(),
            vec![diff(
                "l",
                DiffKind::SymlinkTarget {
                    a: "t1".into(),
                    b: "t2".into()
                }
            )]
        );
    }

    #[test]
    fn only_in_each_side_reports_the_top_of_the_subtree() {
        let p = Pair::new();
        p.both("d/common", b"x");
        write(&p.a("only_a"), b"x");
        write(&p.b("d/only_b/x"), b"x");
        write(&p.b("d/only_b/y/z"), b"x");
        write(&p.a("d.txt"), b"x");
        assert_eq!(
            p.differences(),
            vec![
                p.only_in("d/only_b", Side::B),
                p.only_in("d.txt", Side::A),
                p.only_in("only_a", Side::A),
            ]
        );
    }

    #[test]
    fn hard_links_on_one_side_only() {
        let p = Pair::new();
        p.both("x", b"same");
        fs::hard_link(p.a("x"), p.a("y")).expect("link");
        write(&p.b("y"), b"same");
        let alone = LinkGroup {
            nlink: 1,
            linked_with: vec![],
        };
        assert_eq!(
            p.differences(),
            vec![
                diff(
                    "x",
                    DiffKind::HardLinks {
                        a: LinkGroup {
                            nlink: 2,
                            linked_with: vec!["y".into()]
                        },
                        b: alone.clone(),
                    }
                ),
                diff(
                    "y",
                    DiffKind::HardLinks {
                        a: LinkGroup {
                            nlink: 2,
                            linked_with: vec!["x".into()]
                        },
                        b: alone,
                    }
                ),
            ]
        );
    }

    #[test]
    fn hard_links_grouped_differently_and_into_a_missing_subtree() {
        let p = Pair::new();
        p.both("p", b"1");
        fs::hard_link(p.a("p"), p.a("q")).expect("link");
        write(&p.a("r"), b"1");
        write(&p.b("q"), b"1");
        fs::hard_link(p.b("p"), p.b("r")).expect("link");
        // A link from a subtree present in `a` only still shows in the group.
        p.both("s", b"2");
        fs::create_dir(p.a("only")).expect("mkdir");
        fs::hard_link(p.a("s"), p.a("only/s2")).expect("link");
        let group = |nlink, with: &[&str]| LinkGroup {
            nlink,
            linked_with: with.iter().map(PathBuf::from).collect(),
        };
        assert_eq!(
            p.differences(),
            vec![
                p.only_in("only", Side::A),
                diff(
                    "p",
                    DiffKind::HardLinks {
                        a: group(2, &["q"]),
                        b: group(2, &["r"])
                    }
                ),
                diff(
                    "q",
                    DiffKind::HardLinks {
                        a: group(2, &["p"]),
                        b: group(1, &[])
                    }
                ),
                diff(
                    "r",
                    DiffKind::HardLinks {
                        a: group(1, &[]),
                        b: group(2, &["p"])
                    }
                ),
                diff(
                    "s",
                    DiffKind::HardLinks {
                        a: group(2, &["only/s2"]),
                        b: group(1, &[])
                    }
                ),
            ]
        );
    }

    #[test]
    fn xattr_value_and_presence() {
        let p = Pair::new();
        p.both("f", b"x");
        p.both("g", b"x");
        set_xattr(&p.a("f"), "user.k", b"v1");
        set_xattr(&p.b("f"), "user.k", b"v2");
        set_xattr(&p.a("f"), "user.same", b"s");
        set_xattr(&p.b("f"), "user.same", b"s");
        set_xattr(&p.a("g"), "user.only", b"");
        set_xattr(p.b.path(), "user.root", b"r");
        assert_eq!(
            p.differences(),
            vec![
                diff(
                    "",
                    DiffKind::Xattr {
                        name: "user.root".into(),
                        a: None,
                        b: Some(b"r".to_vec())
                    }
                ),
                diff(
                    "f",
                    DiffKind::Xattr {
                        name: "user.k".into(),
                        a: Some(b"v1".to_vec()),
                        b: Some(b"v2".to_vec())
                    }
                ),
                diff(
                    "g",
                    DiffKind::Xattr {
                        name: "user.only".into(),
                        a: Some(vec![]),
                        b: None
                    }
                ),
            ]
        );
    }

    /// Issue 7, item 11: verify and replication agree on which extended
    /// attributes are data. A host label (`security.selinux`, which the resync
    /// never sends) differing is no difference; a `user.` attribute or a file
    /// capability differing is.
    #[test]
    fn only_replicated_xattrs_are_compared() {
        let p = Pair::new();
        p.both("f", b"x");
        p.both("g", b"x");
        set_xattr(&p.a("f"), "user.k", b"1");
        set_xattr(&p.b("f"), "user.k", b"2");
        // A capability set (v2, cap_net_raw permitted) on one side only.
        let cap = [1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        set_xattr(&p.a("g"), "security.capability", &cap);
        // Root can set any security.* label where no security module claims
        // the name (as on the machines the tests run on); where one does,
        // the host-label half of the test cannot be built.
        let label = |path: &Path, v: &[u8]| {
            let c = CString::new(path.as_os_str().as_bytes()).expect("path");
            // SAFETY: NUL-terminated strings; `v` is readable for its length.
            let ret = unsafe {
                libc::lsetxattr(
                    c.as_ptr(),
                    c"security.selinux".as_ptr(),
                    v.as_ptr().cast(),
                    v.len(),
                    0,
                )
            };
            ret == 0
        };
        let labels = label(&p.a("f"), b"system_u:object_r:a_t:s0")
            && label(&p.b("f"), b"system_u:object_r:b_t:s0")
            && label(&p.b("g"), b"system_u:object_r:b_t:s0");
        if !labels {
            eprintln!("security.selinux is not settable here: host labels not exercised");
        }
        assert_eq!(
            p.differences(),
            vec![
                diff(
                    "f",
                    DiffKind::Xattr {
                        name: "user.k".into(),
                        a: Some(b"1".to_vec()),
                        b: Some(b"2".to_vec())
                    }
                ),
                diff(
                    "g",
                    DiffKind::Xattr {
                        name: "security.capability".into(),
                        a: Some(cap.to_vec()),
                        b: None
                    }
                ),
            ]
        );
    }

    #[test]
    fn mtime_outside_and_inside_tolerance_directories_ignored() {
        const T: u64 = 1_700_000_000;
        let p = Pair::new();
        p.both("outside", b"x");
        p.both("inside", b"x");
        p.both("dir/f", b"x");
        set_mtime(&p.a("outside"), T, 0);
        set_mtime(&p.b("outside"), T + 5, 0);
        set_mtime(&p.a("inside"), T, 0);
        set_mtime(&p.b("inside"), T, 999_999_999);
        set_mtime(&p.a("dir/f"), T, 0);
        set_mtime(&p.b("dir/f"), T, 0);
        set_mtime(&p.a("dir"), T, 0);
        set_mtime(&p.b("dir"), T + 100, 0);
        let default = compare(p.a.path(), p.b.path(), &VerifyOptions::default()).expect("compare");
        assert_eq!(
            default.differences,
            vec![diff(
                "outside",
                DiffKind::Mtime {
                    a: Timestamp {
                        secs: T as i64,
                        nanos: 0
                    },
                    b: Timestamp {
                        secs: T as i64 + 5,
                        nanos: 0
                    }
                }
            )]
        );
        let strict = VerifyOptions {
            mtime_tolerance: Duration::ZERO,
            ..VerifyOptions::default()
        };
        let report = compare(p.a.path(), p.b.path(), &strict).expect("compare");
        let paths: Vec<_> = report.differences.iter().map(|d| d.path.clone()).collect();
        assert_eq!(
            paths,
            vec![PathBuf::from("inside"), PathBuf::from("outside")]
        );
    }

    #[test]
    fn metadata_area_skipped_at_root_only() {
        let p = Pair::new();
        write(&p.a(".mirrorfs/generation"), b"1");
        write(&p.b(".mirrorfs/generation"), b"22");
        write(&p.a(".mirrorfs/only_a"), b"x");
        write(&p.a("sub/.mirrorfs"), b"x");
        fs::create_dir(p.b("sub")).expect("mkdir");
        assert_eq!(p.differences(), vec![p.only_in("sub/.mirrorfs", Side::A)]);
    }

    #[test]
    fn type_change_is_reported_without_descending() {
        let p = Pair::new();
        write(&p.a("t/child"), b"x");
        write(&p.b("t"), b"x");
        write(&p.a("s"), b"x");
        symlink("x", p.b("s")).expect("symlink");
        mknod(&p.a("dev"), libc::S_IFCHR, 1, 3);
        mknod(&p.b("dev"), libc::S_IFBLK, 1, 3);
        assert_eq!(
            p.differences(),
            vec![
                diff(
                    "dev",
                    DiffKind::Type {
                        a: EntryType::CharDevice,
                        b: EntryType::BlockDevice
                    }
                ),
                diff(
                    "s",
                    DiffKind::Type {
                        a: EntryType::Regular,
                        b: EntryType::Symlink
                    }
                ),
                diff(
                    "t",
                    DiffKind::Type {
                        a: EntryType::Directory,
                        b: EntryType::Regular
                    }
                ),
            ]
        );
    }

    #[test]
    fn device_numbers() {
        let p = Pair::new();
        mknod(&p.a("dev"), libc::S_IFCHR, 1, 3);
        mknod(&p.b("dev"), libc::S_IFCHR, 1, 5);
        assert_eq!(
            p.differences(),
            vec![diff(
                "dev",
                DiffKind::Rdev {
                    a: libc::makedev(1, 3),
                    b: libc::makedev(1, 5)
                }
            )]
        );
    }

    #[test]
    fn unreadable_entries_are_differences_not_failures() {
        let p = Pair::new();
        chmod(p.a.path(), 0o755);
        chmod(p.b.path(), 0o755);
        p.both("secret", b"x");
        chmod(&p.a("secret"), 0o600);
        p.both("private/child", b"x");
        chmod(&p.a("private"), 0o700);
        // Only in `b`, below a directory `a` cannot open: not reported.
        write(&p.b("private/only_b"), b"x");
        p.both("readable", b"x");
        // Without root's file capabilities: setfsuid drops them for this
        // thread only, so run the comparison on a thread of its own.
        let differences = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: changes only this thread's filesystem uid.
                    unsafe { libc::setfsuid(65534) };
                    p.differences()
                })
                .join()
                .expect("compare thread")
        });
        let unreadable = |rel, op| {
            diff(
                rel,
                DiffKind::Unreadable {
                    side: Side::A,
                    root: p.a.path().to_path_buf(),
                    error: format!("{op}: Permission denied (os error 13)"),
                },
            )
        };
        assert_eq!(
            differences,
            vec![
                diff("private", DiffKind::Mode { a: 0o700, b: 0o755 }),
                unreadable("private", "open"),
                unreadable("secret", "open"),
                diff("secret", DiffKind::Mode { a: 0o600, b: 0o644 }),
            ]
        );
    }

    #[test]
    fn unreadable_root_is_an_error_naming_it() {
        let p = Pair::new();
        let missing = p.a("missing");
        let err =
            compare(&missing, p.b.path(), &VerifyOptions::default()).expect_err("missing root");
        assert!(matches!(&err, VerifyError::OpenRoot { path, .. } if *path == missing));
        assert_eq!(
            err.to_string(),
            format!(
                "cannot open {}: No such file or directory (os error 2)",
                missing.display()
            )
        );
        p.both("file", b"x");
        let err =
            compare(p.a.path(), &p.b("file"), &VerifyOptions::default()).expect_err("file as root");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot open {}: Not a directory (os error 20)",
                p.b("file").display()
            )
        );
    }

    #[test]
    fn never_writes_not_even_atime() {
        let p = Pair::new();
        populate(p.a.path());
        populate(p.b.path());
        fs::write(p.b("d1/f"), b"HELLO").expect("write");
        let before = atime(&p.a("d1/f"));
        let old = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(p.a("d1/f"))
            .and_then(|f| f.set_times(fs::FileTimes::new().set_accessed(old)))
            .expect("set atime");
        assert_ne!(atime(&p.a("d1/f")), before);
        let before = atime(&p.a("d1/f"));
        assert_eq!(p.report().differences.len(), 1);
        assert_eq!(atime(&p.a("d1/f")), before);
    }

    /// Scale check, ignored by default (it writes 200 000 files):
    /// `cargo test --release -p mirrorfs -- --ignored large_tree`.
    #[test]
    #[ignore]
    fn large_tree_100k_files() {
        let p = Pair::new();
        // One file differs in content and size.
        for d in 0..100 {
            for root in [p.a.path(), p.b.path()] {
                let dir = root.join(format!("dir{d:03}"));
                fs::create_dir(&dir).expect("mkdir");
                for f in 0..1000 {
                    let changed = root == p.b.path() && (d, f) == (50, 500);
                    let data = if changed {
                        "changed".to_string()
                    } else {
                        format!("{d}/{f}")
                    };
                    fs::write(dir.join(format!("f{f:04}")), data).expect("write");
                }
            }
        }
        let started = std::time::Instant::now();
        let report = p.report();
        eprintln!("compared {:?} in {:?}", report.summary, started.elapsed());
        assert_eq!(report.summary.entries, 100 + 100 * 1000);
        assert_eq!(
            report.differences,
            vec![
                diff("dir050/f0500", DiffKind::Size { a: 6, b: 7 }),
                diff(
                    "dir050/f0500",
                    DiffKind::Content {
                        first_differing_offset: 0
                    }
                ),
            ]
        );
    }

    fn atime(path: &Path) -> SystemTime {
        fs::symlink_metadata(path)
            .and_then(|m| m.accessed())
            .expect("atime")
    }

    #[test]
    fn display_golden() {
        let group = |nlink, with: &[&str]| LinkGroup {
            nlink,
            linked_with: with.iter().map(PathBuf::from).collect(),
        };
        let cases = [
            (
                diff(
                    "d1/x",
                    DiffKind::OnlyIn {
                        side: Side::B,
                        root: "/path/b".into(),
                    },
                ),
                "d1/x: only in /path/b",
            ),
            (
                diff(
                    "t",
                    DiffKind::Type {
                        a: EntryType::Directory,
                        b: EntryType::Regular,
                    },
                ),
                "t: type directory vs regular file",
            ),
            (diff("f", DiffKind::Size { a: 5, b: 11 }), "f: size 5 vs 11"),
            (
                diff(
                    "d1/f",
                    DiffKind::Content {
                        first_differing_offset: 4096,
                    },
                ),
                "d1/f: content differs from byte 4096",
            ),
            (
                diff("hard", DiffKind::Mode { a: 0o644, b: 0o600 }),
                "hard: mode 0644 vs 0600",
            ),
            (
                diff(
                    "s",
                    DiffKind::Mode {
                        a: 0o4755,
                        b: 0o755,
                    },
                ),
                "s: mode 4755 vs 0755",
            ),
            (
                diff(
                    "o",
                    DiffKind::Owner {
                        a: (0, 0),
                        b: (1000, 100),
                    },
                ),
                "o: owner 0:0 vs 1000:100",
            ),
            (
                diff(
                    "l",
                    DiffKind::SymlinkTarget {
                        a: "../t1".into(),
                        b: "t \"2\"".into(),
                    },
                ),
                "l: symlink target \"../t1\" vs \"t \\\"2\\\"\"",
            ),
            (
                diff(
                    "x",
                    DiffKind::HardLinks {
                        a: group(3, &["d/y", "z"]),
                        b: group(1, &[]),
                    },
                ),
                "x: hard links: nlink 3, linked with d/y, z vs nlink 1",
            ),
            (
                diff(
                    "f",
                    DiffKind::Xattr {
                        name: "user.k".into(),
                        a: Some(b"v1\n".to_vec()),
                        b: None,
                    },
                ),
                "f: xattr user.k \"v1\\n\" vs absent",
            ),
            (
                diff(
                    "f",
                    DiffKind::Xattr {
                        name: "trusted.big".into(),
                        a: Some(vec![b'a'; 100]),
                        b: Some(vec![0xff]),
                    },
                ),
                &format!(
                    "f: xattr trusted.big \"{}\"… (100 bytes) vs \"\\xff\"",
                    "a".repeat(64)
                ),
            ),
            (
                diff(
                    "m",
                    DiffKind::Mtime {
                        a: Timestamp {
                            secs: 1_700_000_000,
                            nanos: 5,
                        },
                        b: Timestamp {
                            secs: 1_700_000_005,
                            nanos: 0,
                        },
                    },
                ),
                "m: mtime 1700000000.000000005 vs 1700000005.000000000",
            ),
            (
                diff(
                    "dev",
                    DiffKind::Rdev {
                        a: libc::makedev(8, 1),
                        b: libc::makedev(259, 70000),
                    },
                ),
                "dev: device 8:1 vs 259:70000",
            ),
            (
                diff(
                    "secret",
                    DiffKind::Unreadable {
                        side: Side::A,
                        root: "/path/a".into(),
                        error: "open: Permission denied (os error 13)".into(),
                    },
                ),
                "secret: unreadable in /path/a: open: Permission denied (os error 13)",
            ),
            (
                diff("", DiffKind::Mode { a: 0o755, b: 0o700 }),
                ".: mode 0755 vs 0700",
            ),
        ];
        for (difference, expected) in cases {
            assert_eq!(difference.to_string(), expected);
        }
    }
}
