//! The mirrorfs wire format: frames exchanged on the replication stream.
//!
//! Owns the types both ends share ([`Frame`], [`Op`], [`Hello`]) and their codec.
//! A frame is a big-endian `u32` body length followed by the body (a one-byte tag,
//! then fields). [`Frame::decode`] checks the length against [`MAX_FRAME`] before
//! it allocates anything, reports [`Decoded::Incomplete`] apart from a malformed
//! frame, and validates every path with [`RelPath::new`], so a hostile peer cannot
//! name anything outside the root. No I/O.

use super::path::{PathError, RelPath};

/// Protocol version carried by [`Hello`]; both sides must speak the same one.
/// (3: paths up to [`MAX_PATH`](super::path::MAX_PATH), 32 KiB; BeginResync;
/// progress reports; suspects in pages after the hello; paged listings.
/// 4: Barrier, for `--ack=on-sync`.)
pub const PROTOCOL_VERSION: u32 = 4;
/// Largest data payload of one write (the FUSE `max_write` is 1 MiB).
pub const MAX_DATA: usize = 4 << 20;
/// Largest extended attribute value (Linux `XATTR_SIZE_MAX`).
pub const MAX_XATTR_VALUE: usize = 64 << 10;
/// Largest frame body; anything longer is refused before reading it. Holds
/// the largest op: a write of [`MAX_DATA`] bytes by a path of
/// [`MAX_PATH`](super::path::MAX_PATH) bytes (a rename's two paths, or a
/// path and an xattr value, are smaller).
pub const MAX_FRAME: usize = MAX_DATA + (64 << 10);
/// From this size on, [`Frame::encode_op_split`] hands a write's data back
/// instead of copying it.
pub const SPLIT_AT: usize = 64 << 10;
/// Bytes of a write frame's body besides its path and data: tag, sequence
/// number, opcode, target kind, path length, offset and data length.
const WRITE_OVERHEAD: usize = 1 + 8 + 1 + 1 + 2 + 8 + 4;
const _: () = assert!(WRITE_OVERHEAD + super::path::MAX_PATH + MAX_DATA <= MAX_FRAME);
// Paths travel with a 16-bit length.
const _: () = assert!(super::path::MAX_PATH <= u16::MAX as usize);
/// Largest free-text field (node names, refusal reasons).
const MAX_TEXT: usize = 4096;
/// Largest file offset or size (`off_t` is signed 64-bit): offsets, sizes and
/// the ends of ranges (`offset + len`, `block × index`) beyond it are refused
/// by the decoder, never wrapped.
pub const MAX_OFFSET: u64 = i64::MAX as u64;

/// Sequence number of an operation on the stream; the first is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

/// Identifies a writable open on both sides; chosen by the primary, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HandleId(pub u64);

/// What an operation acts on: a path, or an open handle (so that writes follow
/// the inode across rename and unlink).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A path beneath the root.
    Path(RelPath),
    /// A handle opened earlier by [`Op::Open`] or [`Op::Create`].
    Handle(HandleId),
}

/// A point in time for [`Op::SetTimes`] (always explicit: the primary resolves
/// "now" to the value it applied, so both sides hold the same time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds, `< 1_000_000_000`.
    pub nsec: u32,
}

/// One mutating operation, as the primary applied it locally.
///
/// Ownership and modes are the final values on the primary: the secondary sets
/// exactly those, whatever its own umask or defaults would give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create a regular file; with `handle`, also open it for writing.
    Create {
        /// The new file.
        path: RelPath,
        /// Permission bits (incl. setuid/setgid/sticky).
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// The writable handle to open on it, if the application opened it.
        handle: Option<HandleId>,
        /// Open flags that matter on the secondary (`O_SYNC`, `O_DSYNC`).
        flags: u32,
    },
    /// Create a device node, FIFO or socket.
    Mknod {
        /// The new node.
        path: RelPath,
        /// File type and permission bits.
        mode: u32,
        /// Device number for block and character devices.
        rdev: u64,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// Create a directory.
    Mkdir {
        /// The new directory.
        path: RelPath,
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// Create a symbolic link (the target is stored as is, never followed).
    Symlink {
        /// The new link.
        path: RelPath,
        /// The link's content.
        target: Vec<u8>,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// Create a hard link `new` to `existing`.
    Link {
        /// An existing non-directory.
        existing: RelPath,
        /// The new name.
        new: RelPath,
    },
    /// Remove a non-directory.
    Unlink {
        /// The name to remove.
        path: RelPath,
    },
    /// Remove an empty directory.
    Rmdir {
        /// The directory to remove.
        path: RelPath,
    },
    /// `renameat2(from, to, flags)` (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`).
    Rename {
        /// The old name.
        from: RelPath,
        /// The new name.
        to: RelPath,
        /// renameat2 flags.
        flags: u32,
    },
    /// Open an existing file for writing under `handle`.
    Open {
        /// The file.
        path: RelPath,
        /// The handle the primary gave this open.
        handle: HandleId,
        /// Open flags that matter on the secondary (`O_SYNC`, `O_DSYNC`, `O_TRUNC`).
        flags: u32,
    },
    /// Close a handle opened by `Open` or `Create`.
    Close {
        /// The handle.
        handle: HandleId,
    },
    /// `pwrite(data, offset)`.
    Write {
        /// The file written.
        target: Target,
        /// Byte offset.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Set the size.
    Truncate {
        /// The file.
        target: Target,
        /// The new size.
        size: u64,
    },
    /// Set the permission bits.
    Chmod {
        /// The file.
        target: Target,
        /// Permission bits (incl. setuid/setgid/sticky).
        mode: u32,
    },
    /// Change owner and/or group (`None` leaves it).
    Chown {
        /// The file (symlinks themselves, never followed).
        target: Target,
        /// New owner.
        uid: Option<u32>,
        /// New group.
        gid: Option<u32>,
        /// The mode to restore afterwards: chown clears setuid/setgid, and the
        /// primary sends what it ended with.
        mode: Option<u32>,
    },
    /// Set access and/or modification time (`None` leaves it).
    SetTimes {
        /// The file (symlinks themselves, never followed).
        target: Target,
        /// New access time.
        atime: Option<Timestamp>,
        /// New modification time.
        mtime: Option<Timestamp>,
    },
    /// `setxattr(name, value, flags)`.
    SetXattr {
        /// The file.
        target: Target,
        /// Attribute name (with its namespace, e.g. `user.color`).
        name: Vec<u8>,
        /// Attribute value.
        value: Vec<u8>,
        /// `XATTR_CREATE` / `XATTR_REPLACE`.
        flags: u32,
    },
    /// `removexattr(name)`.
    RemoveXattr {
        /// The file.
        target: Target,
        /// Attribute name.
        name: Vec<u8>,
    },
    /// `fallocate(mode, offset, len)`.
    Fallocate {
        /// The file.
        target: Target,
        /// fallocate mode flags.
        mode: u32,
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
    },
    /// `copy_file_range` between two files the secondary holds identically.
    CopyRange {
        /// Source file.
        src: Target,
        /// Source offset.
        src_offset: u64,
        /// Destination file.
        dst: Target,
        /// Destination offset.
        dst_offset: u64,
        /// Bytes to copy (the count the primary actually copied).
        len: u64,
    },
    /// Make a file or directory durable; answered by [`Frame::Synced`], not by
    /// the cumulative [`Frame::Ack`].
    Fsync {
        /// The file or directory.
        target: Target,
        /// `fdatasync` rather than `fsync`.
        datasync: bool,
    },
    /// Resync: remove whatever is at `path`, recursively (absent is fine).
    Remove {
        /// The entry.
        path: RelPath,
    },
    /// Resync: make `path` a directory with this owner and mode (replacing a
    /// non-directory there).
    EnsureDir {
        /// The directory.
        path: RelPath,
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// Resync: make `path` a regular file with this owner and mode (replacing
    /// anything else there; the content is left for block comparison).
    /// Answered with one byte: 1 if the file there was kept, 0 if it was made
    /// (empty).
    EnsureFile {
        /// The file.
        path: RelPath,
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// The primary's file has this one name: a file there that shares
        /// its inode with other names is replaced by a new one (its content
        /// belongs to those names; writing it would change them too).
        single: bool,
    },
    /// Resync: make `path` this symlink.
    EnsureSymlink {
        /// The link.
        path: RelPath,
        /// Its content.
        target: Vec<u8>,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// Resync: make `path` this device node, FIFO or socket.
    EnsureNode {
        /// The node.
        path: RelPath,
        /// File type and permission bits.
        mode: u32,
        /// Device number.
        rdev: u64,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// Resync: the complete set of extended attributes `path` must have.
    ReplaceXattrs {
        /// The entry.
        path: RelPath,
        /// (name, value) pairs.
        attrs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// Resync: list a directory, one page at a time (a directory may hold
    /// more entries than one frame carries); answered with [`Frame::Data`]
    /// holding [`encode_listing_page`] bytes: the entries after `after` in
    /// byte order of their names, as many as fit in `budget` bytes (at least
    /// one), and whether more follow.
    List {
        /// The directory.
        path: RelPath,
        /// Continue after this name (the last one of the previous page);
        /// `None` for the first page.
        after: Option<Vec<u8>>,
        /// Most bytes of the page's entries ([`MIN_LIST_BUDGET`] to
        /// [`MAX_LIST_BUDGET`]; each entry takes 3 bytes plus its name).
        budget: u32,
    },
    /// Resync: xxh3 checksums of `count` blocks of `block` bytes from block
    /// `first`; answered with [`Frame::Data`] holding the file size and the sums.
    /// One request covers at most [`MAX_CHECKSUM_BYTES`] (`count × block`),
    /// so that no single op keeps the secondary's disk busy for long.
    Checksums {
        /// The file.
        path: RelPath,
        /// Block size in bytes (4 KiB to 16 MiB).
        block: u32,
        /// First block (`first × block` must be a valid file offset).
        first: u64,
        /// How many blocks (`count × block` at most [`MAX_CHECKSUM_BYTES`]).
        count: u32,
    },
    /// End of a resync: the secondary now holds generation history `ids`
    /// (and its inconsistent mark goes).
    SetGeneration {
        /// The history, current first.
        ids: Vec<u64>,
    },
    /// Makes every op before it durable (`--ack=on-sync`: a sync op of the
    /// application): answered by [`Frame::Synced`] once the secondary has
    /// applied everything before it and flushed its file system.
    Barrier,
    /// Start of a resync: until the [`Op::SetGeneration`] that ends it, the
    /// secondary's tree is a mix of old and new data. The secondary marks it
    /// inconsistent, durably, before it acknowledges this op.
    BeginResync {
        /// The primary's current generation (what the resync brings over).
        generation: u64,
    },
}

/// Most bytes one [`Op::Checksums`] may cover (`count × block`): 64 MiB,
/// a fraction of a second of reading and hashing.
pub const MAX_CHECKSUM_BYTES: u64 = 64 << 20;
/// Most extended attributes one [`Op::ReplaceXattrs`] may carry.
const MAX_XATTRS: usize = 1024;

/// What an [`Op::Checksums`] reply tells of the secondary's file besides the
/// block checksums: enough for the primary to skip resending size, times and
/// extended attributes that are already equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileFacts {
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: Timestamp,
    /// Digest of the replicated extended attributes (names and values).
    pub xattrs: u64,
}

/// Bytes of [`FileFacts`] at the start of a checksums reply.
const FACTS_LEN: usize = 8 + 8 + 4 + 8;

/// Encodes an [`Op::Checksums`] reply: the facts, then one xxh3 per block.
pub fn encode_checksums(facts: &FileFacts, sums: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FACTS_LEN + 8 * sums.len());
    out.extend_from_slice(&facts.size.to_be_bytes());
    out.extend_from_slice(&facts.mtime.sec.to_be_bytes());
    out.extend_from_slice(&facts.mtime.nsec.to_be_bytes());
    out.extend_from_slice(&facts.xattrs.to_be_bytes());
    for s in sums {
        out.extend_from_slice(&s.to_be_bytes());
    }
    out
}

/// Decodes [`encode_checksums`] bytes.
pub fn decode_checksums(b: &[u8]) -> Result<(FileFacts, Vec<u64>), WireError> {
    let be8 = |c: &[u8]| u64::from_be_bytes(c.try_into().expect("8-byte slice"));
    if b.len() < FACTS_LEN || !(b.len() - FACTS_LEN).is_multiple_of(8) {
        return Err(WireError::Malformed("checksums reply of a wrong length"));
    }
    let nsec = u32::from_be_bytes(b[16..20].try_into().expect("4-byte slice"));
    if nsec >= 1_000_000_000 {
        return Err(WireError::Malformed(
            "checksums reply with nanoseconds out of range",
        ));
    }
    let facts = FileFacts {
        size: be8(&b[0..8]),
        mtime: Timestamp {
            sec: be8(&b[8..16]) as i64,
            nsec,
        },
        xattrs: be8(&b[20..28]),
    };
    let sums = b[FACTS_LEN..].chunks_exact(8).map(be8).collect();
    Ok((facts, sums))
}

/// Directory entries as (name, `S_IFMT` type), as a listing carries them.
pub type Entries = Vec<(Vec<u8>, u32)>;

/// Smallest [`Op::List`] budget: room for one entry of the longest name.
pub const MIN_LIST_BUDGET: u32 = 4096;
/// Largest [`Op::List`] budget: one page fits in a frame.
pub const MAX_LIST_BUDGET: u32 = MAX_DATA as u32;

/// Bytes one entry takes in a listing.
pub fn listing_entry_len(name: &[u8]) -> usize {
    3 + name.len()
}

/// Encodes directory entries for a listing: per entry a type byte
/// (`S_IFMT >> 12`) and a 16-bit-length name.
pub fn encode_listing(entries: &[(Vec<u8>, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind) in entries {
        out.push((kind >> 12) as u8);
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name);
    }
    out
}

/// Encodes one page of a listing for the [`Frame::Data`] reply of
/// [`Op::List`]: a byte saying whether more entries follow (1) or not (0),
/// then [`encode_listing`] bytes.
pub fn encode_listing_page(entries: &[(Vec<u8>, u32)], more: bool) -> Vec<u8> {
    let mut out = vec![u8::from(more)];
    out.extend_from_slice(&encode_listing(entries));
    out
}

/// Decodes [`encode_listing_page`] bytes: the entries and whether more follow.
pub fn decode_listing_page(b: &[u8]) -> Result<(Entries, bool), WireError> {
    let more = match b.first() {
        Some(0) => false,
        Some(1) => true,
        _ => return Err(WireError::Malformed("listing page without its more-flag")),
    };
    Ok((decode_listing(&b[1..])?, more))
}

/// Decodes [`encode_listing`] bytes into (name, `S_IFMT` type) pairs.
pub fn decode_listing(mut b: &[u8]) -> Result<Vec<(Vec<u8>, u32)>, WireError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 3 {
            return Err(WireError::Malformed("listing ends inside an entry"));
        }
        let kind = u32::from(b[0]) << 12;
        let len = u16::from_be_bytes([b[1], b[2]]) as usize;
        let name = b
            .get(3..3 + len)
            .ok_or(WireError::Malformed("listing ends inside a name"))?;
        if name.is_empty()
            || name == b"."
            || name == b".."
            || name.len() > super::path::MAX_NAME
            || name.iter().any(|c| *c == 0 || *c == b'/')
        {
            return Err(WireError::Malformed("listing holds an invalid name"));
        }
        out.push((name.to_vec(), kind));
        b = &b[3 + len..];
    }
    Ok(out)
}

/// The class of an op: the latency histograms (`crate::latency`) and the
/// resync's pace ([`crate::proto::pace`]) keep each apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A write of data.
    Data,
    /// An fsync or fdatasync (for the pace, also a write the application
    /// asked to be synchronous).
    Sync,
    /// Everything else: namespace and attribute changes, opens, closes.
    Meta,
}

impl Class {
    /// The class of `op`.
    pub fn of(op: &Op) -> Self {
        match op {
            Op::Write { .. } => Self::Data,
            _ if op.is_durability() => Self::Sync,
            _ => Self::Meta,
        }
    }
}

impl Op {
    /// True for operations answered only once durable ([`Frame::Synced`]).
    pub fn is_durability(&self) -> bool {
        matches!(self, Self::Fsync { .. } | Self::Barrier)
    }

    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create",
            Self::Mknod { .. } => "mknod",
            Self::Mkdir { .. } => "mkdir",
            Self::Symlink { .. } => "symlink",
            Self::Link { .. } => "link",
            Self::Unlink { .. } => "unlink",
            Self::Rmdir { .. } => "rmdir",
            Self::Rename { .. } => "rename",
            Self::Open { .. } => "open",
            Self::Close { .. } => "close",
            Self::Write { .. } => "write",
            Self::Truncate { .. } => "truncate",
            Self::Chmod { .. } => "chmod",
            Self::Chown { .. } => "chown",
            Self::SetTimes { .. } => "settimes",
            Self::SetXattr { .. } => "setxattr",
            Self::RemoveXattr { .. } => "removexattr",
            Self::Fallocate { .. } => "fallocate",
            Self::CopyRange { .. } => "copy_file_range",
            Self::Fsync { .. } => "fsync",
            Self::Remove { .. } => "remove",
            Self::EnsureDir { .. } => "ensure-dir",
            Self::EnsureFile { .. } => "ensure-file",
            Self::EnsureSymlink { .. } => "ensure-symlink",
            Self::EnsureNode { .. } => "ensure-node",
            Self::ReplaceXattrs { .. } => "replace-xattrs",
            Self::List { .. } => "list",
            Self::Checksums { .. } => "checksums",
            Self::SetGeneration { .. } => "set-generation",
            Self::BeginResync { .. } => "begin-resync",
            Self::Barrier => "barrier",
        }
    }

    /// Bytes of payload carried (for flow accounting and logs).
    pub fn payload_len(&self) -> usize {
        match self {
            Self::Write { data, .. } => data.len(),
            Self::SetXattr { value, .. } => value.len(),
            _ => 0,
        }
    }
}

/// The first frame each side sends: who it is and which protocol it speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// The sender's node name (the CN of its certificate).
    pub node: String,
    /// The node name the sender expects the other side to be.
    pub peer: String,
    /// The sender's generation history, current first (empty: never synced).
    pub history: Vec<u64>,
    /// The sender's peer timeout in milliseconds (`--peer-timeout`): after
    /// that long without a frame while ops are in flight, the primary shows
    /// the secondary as stalled. The secondary, while it works on ops, sends
    /// [`Frame::Progress`] several times within the primary's value.
    pub peer_timeout_ms: u32,
}

/// Most suspect directories the secondary reports ([`Frame::Suspects`]);
/// beyond, it reports the root alone ("compare everything"), and so does the
/// primary make of more.
pub const MAX_SUSPECTS: usize = 1_000_000;
/// Bytes of paths one [`Frame::Suspects`] carries at most (well within
/// [`MAX_FRAME`]).
const SUSPECTS_PAGE: usize = 1 << 20;

/// Everything that travels on the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens the conversation (both directions).
    Hello(Hello),
    /// The sender refuses the conversation; the connection closes after it.
    Refused {
        /// Operator-readable reason (names both sides' values).
        reason: String,
    },
    /// One operation, primary → secondary.
    Op {
        /// Its position in the stream.
        seq: Seq,
        /// The operation.
        op: Op,
    },
    /// Secondary → primary: every non-durability op up to `upto` is applied
    /// (those that failed were reported by [`Frame::Failed`] before this).
    Ack {
        /// Highest applied sequence number.
        upto: Seq,
    },
    /// Secondary → primary: the op `seq` failed with `errno`.
    Failed {
        /// The op.
        seq: Seq,
        /// The OS error the secondary got.
        errno: i32,
    },
    /// Secondary → primary: the answer of op `seq` (a listing, checksums),
    /// sent before the ack that covers it.
    Data {
        /// The op.
        seq: Seq,
        /// The answer.
        payload: Vec<u8>,
    },
    /// Secondary → primary: the durability op `seq` finished (`errno` 0 = durable).
    Synced {
        /// The op.
        seq: Seq,
        /// 0, or the OS error of the fsync.
        errno: i32,
    },
    /// Secondary → primary, right after its [`Frame::Hello`], in one or more
    /// pages: the directories whose files this side may have changed without
    /// the other knowing (writes in flight when it crashed as primary); the
    /// resync compares their files. The root alone means "compare
    /// everything" (more than [`MAX_SUSPECTS`] of them).
    Suspects {
        /// This page's directories (at most about 1 MiB of paths).
        paths: Vec<RelPath>,
        /// The last page: the list is complete.
        last: bool,
    },
    /// Secondary → primary: still working on the ops received and not yet
    /// answered (a long `Remove`, a checksum pass), and some work was done
    /// since the last report. Sent periodically, a fraction of the primary's
    /// peer timeout apart; never when the secondary makes no progress (a
    /// hung disk), so that the primary can tell stalled from working.
    Progress {
        /// The secondary's work counter (ops applied, entries removed, MiB
        /// read or copied): it only grows; its value is for logs.
        work: u64,
    },
}

/// What [`Frame::decode`] found at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame, and how many bytes it took.
    Frame(Frame, usize),
    /// Not enough bytes yet; read more.
    Incomplete,
}

/// A frame that must not be accepted; the connection is closed after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The declared length exceeds [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME} bytes")]
    Oversized(usize),
    /// An unknown frame tag.
    #[error("unknown frame type {0}")]
    UnknownFrame(u8),
    /// An unknown operation code.
    #[error("unknown operation code {0}")]
    UnknownOp(u8),
    /// The body ends early, has bytes left over, or a field is out of range.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// A path that must never be applied.
    #[error("rejected path: {0}")]
    Path(#[from] PathError),
}

mod tag {
    pub(super) const HELLO: u8 = 1;
    pub(super) const REFUSED: u8 = 2;
    pub(super) const OP: u8 = 3;
    pub(super) const ACK: u8 = 4;
    pub(super) const FAILED: u8 = 5;
    pub(super) const SYNCED: u8 = 6;
    pub(super) const DATA: u8 = 7;
    pub(super) const PROGRESS: u8 = 8;
    pub(super) const SUSPECTS: u8 = 9;
}

mod opcode {
    pub(super) const CREATE: u8 = 1;
    pub(super) const MKNOD: u8 = 2;
    pub(super) const MKDIR: u8 = 3;
    pub(super) const SYMLINK: u8 = 4;
    pub(super) const LINK: u8 = 5;
    pub(super) const UNLINK: u8 = 6;
    pub(super) const RMDIR: u8 = 7;
    pub(super) const RENAME: u8 = 8;
    pub(super) const OPEN: u8 = 9;
    pub(super) const CLOSE: u8 = 10;
    pub(super) const WRITE: u8 = 11;
    pub(super) const TRUNCATE: u8 = 12;
    pub(super) const CHMOD: u8 = 13;
    pub(super) const CHOWN: u8 = 14;
    pub(super) const SETTIMES: u8 = 15;
    pub(super) const SETXATTR: u8 = 16;
    pub(super) const REMOVEXATTR: u8 = 17;
    pub(super) const FALLOCATE: u8 = 18;
    pub(super) const COPYRANGE: u8 = 19;
    pub(super) const FSYNC: u8 = 20;
    pub(super) const REMOVE: u8 = 21;
    pub(super) const ENSURE_DIR: u8 = 22;
    pub(super) const ENSURE_FILE: u8 = 23;
    pub(super) const ENSURE_SYMLINK: u8 = 24;
    pub(super) const ENSURE_NODE: u8 = 25;
    pub(super) const REPLACE_XATTRS: u8 = 26;
    pub(super) const LIST: u8 = 27;
    pub(super) const CHECKSUMS: u8 = 28;
    pub(super) const SET_GENERATION: u8 = 29;
    pub(super) const BEGIN_RESYNC: u8 = 30;
    pub(super) const BARRIER: u8 = 31;
}

impl Frame {
    /// The [`Frame::Suspects`] pages that report `suspects` (at least one,
    /// the last marked), each within [`MAX_FRAME`].
    pub fn suspect_pages(suspects: &[RelPath]) -> Vec<Self> {
        let mut pages = Vec::new();
        let mut page = Vec::new();
        let mut bytes = 0;
        for p in suspects {
            if bytes + p.as_bytes().len() + 2 > SUSPECTS_PAGE && !page.is_empty() {
                pages.push(Self::Suspects {
                    paths: std::mem::take(&mut page),
                    last: false,
                });
                bytes = 0;
            }
            bytes += p.as_bytes().len() + 2;
            page.push(p.clone());
        }
        pages.push(Self::Suspects {
            paths: page,
            last: true,
        });
        pages
    }

    /// Appends the encoded frame (length prefix included) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        let mut w = Writer(out);
        match self {
            Self::Hello(h) => {
                w.u8(tag::HELLO);
                w.u32(h.version);
                w.text(&h.node);
                w.text(&h.peer);
                w.u32(h.history.len() as u32);
                for id in &h.history {
                    w.u64(*id);
                }
                w.u32(h.peer_timeout_ms);
            }
            Self::Refused { reason } => {
                w.u8(tag::REFUSED);
                w.text(reason);
            }
            Self::Op { seq, op } => {
                w.u8(tag::OP);
                w.u64(seq.0);
                encode_op(&mut w, op);
            }
            Self::Ack { upto } => {
                w.u8(tag::ACK);
                w.u64(upto.0);
            }
            Self::Failed { seq, errno } => {
                w.u8(tag::FAILED);
                w.u64(seq.0);
                w.u32(*errno as u32);
            }
            Self::Data { seq, payload } => {
                w.u8(tag::DATA);
                w.u64(seq.0);
                w.u32(payload.len() as u32);
                w.0.extend_from_slice(payload);
            }
            Self::Synced { seq, errno } => {
                w.u8(tag::SYNCED);
                w.u64(seq.0);
                w.u32(*errno as u32);
            }
            Self::Progress { work } => {
                w.u8(tag::PROGRESS);
                w.u64(*work);
            }
            Self::Suspects { paths, last } => {
                w.u8(tag::SUSPECTS);
                w.u32(paths.len() as u32);
                for p in paths {
                    w.path(p);
                }
                w.u8(u8::from(*last));
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// `Frame::Op { seq, op }` appended to `out` as [`Frame::encode`] does,
    /// except for a write of [`SPLIT_AT`] bytes or more: its data is not
    /// copied into `out` but returned, to follow `out` on the wire as it is
    /// (the frame's length prefix counts it).
    pub fn encode_op_split(seq: Seq, op: Op, out: &mut Vec<u8>) -> Option<Vec<u8>> {
        match op {
            Op::Write {
                target,
                offset,
                data,
            } if data.len() >= SPLIT_AT => {
                let start = out.len();
                out.extend_from_slice(&[0; 4]);
                let mut w = Writer(out);
                w.u8(tag::OP);
                w.u64(seq.0);
                write_head(&mut w, &target, offset, data.len());
                let len = (out.len() - start - 4 + data.len()) as u32;
                out[start..start + 4].copy_from_slice(&len.to_be_bytes());
                Some(data)
            }
            op => {
                Self::Op { seq, op }.encode(out);
                None
            }
        }
    }

    /// Decodes the frame at the front of `buf`, if it is all there.
    pub fn decode(buf: &[u8]) -> Result<Decoded, WireError> {
        let Some(head) = buf.get(..4) else {
            return Ok(Decoded::Incomplete);
        };
        // Length first: an oversized frame is refused before anything is buffered.
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > MAX_FRAME {
            return Err(WireError::Oversized(len));
        }
        let Some(body) = buf.get(4..4 + len) else {
            return Ok(Decoded::Incomplete);
        };
        let mut r = Reader(body);
        let frame = match r.u8()? {
            tag::HELLO => Self::Hello(Hello {
                version: r.u32()?,
                node: r.text()?,
                peer: r.text()?,
                history: r.ids()?,
                peer_timeout_ms: r.u32()?,
            }),
            tag::SUSPECTS => {
                // Each path takes at least 3 bytes: the count is checked
                // against the body before anything is allocated for it.
                let n = r.u32()? as usize;
                if n > r.0.len() / 3 {
                    return Err(WireError::Malformed("suspect count beyond the frame"));
                }
                let paths = (0..n).map(|_| r.path()).collect::<Result<_, _>>()?;
                Self::Suspects {
                    paths,
                    last: r.flag()?,
                }
            }
            tag::REFUSED => Self::Refused { reason: r.text()? },
            tag::OP => {
                let seq = Seq(r.u64()?);
                Self::Op {
                    seq,
                    op: decode_op(&mut r)?,
                }
            }
            tag::ACK => Self::Ack {
                upto: Seq(r.u64()?),
            },
            tag::FAILED => Self::Failed {
                seq: Seq(r.u64()?),
                errno: r.u32()? as i32,
            },
            tag::DATA => {
                let seq = Seq(r.u64()?);
                let len = r.u32()? as usize;
                Self::Data {
                    seq,
                    payload: r.take(len)?.to_vec(),
                }
            }
            tag::SYNCED => Self::Synced {
                seq: Seq(r.u64()?),
                errno: r.u32()? as i32,
            },
            tag::PROGRESS => Self::Progress { work: r.u64()? },
            t => return Err(WireError::UnknownFrame(t)),
        };
        if !r.0.is_empty() {
            return Err(WireError::Malformed("trailing bytes after the frame"));
        }
        Ok(Decoded::Frame(frame, 4 + len))
    }
}

/// A write's fields before its data (the data follows, `len` bytes).
fn write_head(w: &mut Writer<'_>, target: &Target, offset: u64, len: usize) {
    w.u8(opcode::WRITE);
    w.target(target);
    w.u64(offset);
    w.u32(len as u32);
}

fn encode_op(w: &mut Writer<'_>, op: &Op) {
    match op {
        Op::Create {
            path,
            mode,
            uid,
            gid,
            handle,
            flags,
        } => {
            w.u8(opcode::CREATE);
            w.path(path);
            w.u32(*mode);
            w.u32(*uid);
            w.u32(*gid);
            w.opt_u64(handle.map(|h| h.0));
            w.u32(*flags);
        }
        Op::Mknod {
            path,
            mode,
            rdev,
            uid,
            gid,
        } => {
            w.u8(opcode::MKNOD);
            w.path(path);
            w.u32(*mode);
            w.u64(*rdev);
            w.u32(*uid);
            w.u32(*gid);
        }
        Op::Mkdir {
            path,
            mode,
            uid,
            gid,
        } => {
            w.u8(opcode::MKDIR);
            w.path(path);
            w.u32(*mode);
            w.u32(*uid);
            w.u32(*gid);
        }
        Op::Symlink {
            path,
            target,
            uid,
            gid,
        } => {
            w.u8(opcode::SYMLINK);
            w.path(path);
            w.bytes16(target);
            w.u32(*uid);
            w.u32(*gid);
        }
        Op::Link { existing, new } => {
            w.u8(opcode::LINK);
            w.path(existing);
            w.path(new);
        }
        Op::Unlink { path } => {
            w.u8(opcode::UNLINK);
            w.path(path);
        }
        Op::Rmdir { path } => {
            w.u8(opcode::RMDIR);
            w.path(path);
        }
        Op::Rename { from, to, flags } => {
            w.u8(opcode::RENAME);
            w.path(from);
            w.path(to);
            w.u32(*flags);
        }
        Op::Open {
            path,
            handle,
            flags,
        } => {
            w.u8(opcode::OPEN);
            w.path(path);
            w.u64(handle.0);
            w.u32(*flags);
        }
        Op::Close { handle } => {
            w.u8(opcode::CLOSE);
            w.u64(handle.0);
        }
        Op::Write {
            target,
            offset,
            data,
        } => {
            write_head(w, target, *offset, data.len());
            w.0.extend_from_slice(data);
        }
        Op::Truncate { target, size } => {
            w.u8(opcode::TRUNCATE);
            w.target(target);
            w.u64(*size);
        }
        Op::Chmod { target, mode } => {
            w.u8(opcode::CHMOD);
            w.target(target);
            w.u32(*mode);
        }
        Op::Chown {
            target,
            uid,
            gid,
            mode,
        } => {
            w.u8(opcode::CHOWN);
            w.target(target);
            w.opt_u32(*uid);
            w.opt_u32(*gid);
            w.opt_u32(*mode);
        }
        Op::SetTimes {
            target,
            atime,
            mtime,
        } => {
            w.u8(opcode::SETTIMES);
            w.target(target);
            w.opt_time(*atime);
            w.opt_time(*mtime);
        }
        Op::SetXattr {
            target,
            name,
            value,
            flags,
        } => {
            w.u8(opcode::SETXATTR);
            w.target(target);
            w.bytes16(name);
            w.u32(value.len() as u32);
            w.0.extend_from_slice(value);
            w.u32(*flags);
        }
        Op::RemoveXattr { target, name } => {
            w.u8(opcode::REMOVEXATTR);
            w.target(target);
            w.bytes16(name);
        }
        Op::Fallocate {
            target,
            mode,
            offset,
            len,
        } => {
            w.u8(opcode::FALLOCATE);
            w.target(target);
            w.u32(*mode);
            w.u64(*offset);
            w.u64(*len);
        }
        Op::CopyRange {
            src,
            src_offset,
            dst,
            dst_offset,
            len,
        } => {
            w.u8(opcode::COPYRANGE);
            w.target(src);
            w.u64(*src_offset);
            w.target(dst);
            w.u64(*dst_offset);
            w.u64(*len);
        }
        Op::Fsync { target, datasync } => {
            w.u8(opcode::FSYNC);
            w.target(target);
            w.u8(u8::from(*datasync));
        }
        Op::Remove { path } => {
            w.u8(opcode::REMOVE);
            w.path(path);
        }
        Op::EnsureDir {
            path,
            mode,
            uid,
            gid,
        } => {
            w.u8(opcode::ENSURE_DIR);
            w.path(path);
            w.u32(*mode);
            w.u32(*uid);
            w.u32(*gid);
        }
        Op::EnsureFile {
            path,
            mode,
            uid,
            gid,
            single,
        } => {
            w.u8(opcode::ENSURE_FILE);
            w.path(path);
            w.u32(*mode);
            w.u32(*uid);
            w.u32(*gid);
            w.u8(u8::from(*single));
        }
        Op::EnsureSymlink {
            path,
            target,
            uid,
            gid,
        } => {
            w.u8(opcode::ENSURE_SYMLINK);
            w.path(path);
            w.bytes16(target);
            w.u32(*uid);
            w.u32(*gid);
        }
        Op::EnsureNode {
            path,
            mode,
            rdev,
            uid,
            gid,
        } => {
            w.u8(opcode::ENSURE_NODE);
            w.path(path);
            w.u32(*mode);
            w.u64(*rdev);
            w.u32(*uid);
            w.u32(*gid);
        }
        Op::ReplaceXattrs { path, attrs } => {
            w.u8(opcode::REPLACE_XATTRS);
            w.path(path);
            w.u32(attrs.len() as u32);
            for (name, value) in attrs {
                w.bytes16(name);
                w.u32(value.len() as u32);
                w.0.extend_from_slice(value);
            }
        }
        Op::List {
            path,
            after,
            budget,
        } => {
            w.u8(opcode::LIST);
            w.path(path);
            match after {
                Some(name) => {
                    w.u8(1);
                    w.bytes16(name);
                }
                None => w.u8(0),
            }
            w.u32(*budget);
        }
        Op::Checksums {
            path,
            block,
            first,
            count,
        } => {
            w.u8(opcode::CHECKSUMS);
            w.path(path);
            w.u32(*block);
            w.u64(*first);
            w.u32(*count);
        }
        Op::SetGeneration { ids } => {
            w.u8(opcode::SET_GENERATION);
            w.u32(ids.len() as u32);
            for id in ids {
                w.u64(*id);
            }
        }
        Op::BeginResync { generation } => {
            w.u8(opcode::BEGIN_RESYNC);
            w.u64(*generation);
        }
        Op::Barrier => w.u8(opcode::BARRIER),
    }
}

fn decode_op(r: &mut Reader<'_>) -> Result<Op, WireError> {
    Ok(match r.u8()? {
        opcode::CREATE => Op::Create {
            path: r.named_path()?,
            mode: r.u32()?,
            uid: r.u32()?,
            gid: r.u32()?,
            handle: r.opt_u64()?.map(HandleId),
            flags: r.u32()?,
        },
        opcode::MKNOD => Op::Mknod {
            path: r.named_path()?,
            mode: r.u32()?,
            rdev: r.u64()?,
            uid: r.u32()?,
            gid: r.u32()?,
        },
        opcode::MKDIR => Op::Mkdir {
            path: r.named_path()?,
            mode: r.u32()?,
            uid: r.u32()?,
            gid: r.u32()?,
        },
        opcode::SYMLINK => {
            let path = r.named_path()?;
            let target = r.bytes16(super::path::MAX_SYMLINK_TARGET)?.to_vec();
            if target.is_empty() || target.contains(&0) {
                return Err(WireError::Malformed("symlink target empty or with NUL"));
            }
            Op::Symlink {
                path,
                target,
                uid: r.u32()?,
                gid: r.u32()?,
            }
        }
        opcode::LINK => Op::Link {
            existing: r.named_path()?,
            new: r.named_path()?,
        },
        opcode::UNLINK => Op::Unlink {
            path: r.named_path()?,
        },
        opcode::RMDIR => Op::Rmdir {
            path: r.named_path()?,
        },
        opcode::RENAME => Op::Rename {
            from: r.named_path()?,
            to: r.named_path()?,
            flags: r.u32()?,
        },
        opcode::OPEN => Op::Open {
            path: r.named_path()?,
            handle: HandleId(r.u64()?),
            flags: r.u32()?,
        },
        opcode::CLOSE => Op::Close {
            handle: HandleId(r.u64()?),
        },
        opcode::WRITE => {
            let target = r.target()?;
            let offset = r.u64()?;
            let len = r.u32()? as usize;
            if len > MAX_DATA {
                return Err(WireError::Malformed("write larger than the data limit"));
            }
            range_end(offset, len as u64)?;
            Op::Write {
                target,
                offset,
                data: r.take(len)?.to_vec(),
            }
        }
        opcode::TRUNCATE => {
            let target = r.target()?;
            let size = r.u64()?;
            range_end(size, 0)?;
            Op::Truncate { target, size }
        }
        opcode::CHMOD => Op::Chmod {
            target: r.target()?,
            mode: r.u32()?,
        },
        opcode::CHOWN => Op::Chown {
            target: r.target()?,
            uid: r.opt_u32()?,
            gid: r.opt_u32()?,
            mode: r.opt_u32()?,
        },
        opcode::SETTIMES => Op::SetTimes {
            target: r.target()?,
            atime: r.opt_time()?,
            mtime: r.opt_time()?,
        },
        opcode::SETXATTR => {
            let target = r.target()?;
            let name = r.xattr_name()?;
            let len = r.u32()? as usize;
            if len > MAX_XATTR_VALUE {
                return Err(WireError::Malformed("xattr value larger than 64 KiB"));
            }
            Op::SetXattr {
                target,
                name,
                value: r.take(len)?.to_vec(),
                flags: r.u32()?,
            }
        }
        opcode::REMOVEXATTR => Op::RemoveXattr {
            target: r.target()?,
            name: r.xattr_name()?,
        },
        opcode::FALLOCATE => {
            let (target, mode, offset, len) = (r.target()?, r.u32()?, r.u64()?, r.u64()?);
            range_end(offset, len)?;
            Op::Fallocate {
                target,
                mode,
                offset,
                len,
            }
        }
        opcode::COPYRANGE => {
            let (src, src_offset) = (r.target()?, r.u64()?);
            let (dst, dst_offset, len) = (r.target()?, r.u64()?, r.u64()?);
            range_end(src_offset, len)?;
            range_end(dst_offset, len)?;
            Op::CopyRange {
                src,
                src_offset,
                dst,
                dst_offset,
                len,
            }
        }
        opcode::FSYNC => Op::Fsync {
            target: r.target()?,
            datasync: match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(WireError::Malformed("datasync flag is not 0 or 1")),
            },
        },
        opcode::REMOVE => Op::Remove {
            path: r.named_path()?,
        },
        opcode::ENSURE_DIR => Op::EnsureDir {
            path: r.path()?,
            mode: r.u32()?,
            uid: r.u32()?,
            gid: r.u32()?,
        },
        opcode::ENSURE_FILE => Op::EnsureFile {
            path: r.named_path()?,
            mode: r.u32()?,
            uid: r.u32()?,
            gid: r.u32()?,
            single: match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(WireError::Malformed("ensure-file flag not 0 or 1")),
            },
        },
        opcode::ENSURE_SYMLINK => {
            let path = r.named_path()?;
            let target = r.bytes16(super::path::MAX_SYMLINK_TARGET)?.to_vec();
            if target.is_empty() || target.contains(&0) {
                return Err(WireError::Malformed("symlink target empty or with NUL"));
            }
            Op::EnsureSymlink {
                path,
                target,
                uid: r.u32()?,
                gid: r.u32()?,
            }
        }
        opcode::ENSURE_NODE => Op::EnsureNode {
            path: r.named_path()?,
            mode: r.u32()?,
            rdev: r.u64()?,
            uid: r.u32()?,
            gid: r.u32()?,
        },
        opcode::REPLACE_XATTRS => {
            let path = r.path()?;
            let n = r.u32()? as usize;
            if n > MAX_XATTRS {
                return Err(WireError::Malformed("too many extended attributes"));
            }
            let mut attrs = Vec::new();
            for _ in 0..n {
                let name = r.xattr_name()?;
                let len = r.u32()? as usize;
                if len > MAX_XATTR_VALUE {
                    return Err(WireError::Malformed("xattr value larger than 64 KiB"));
                }
                attrs.push((name, r.take(len)?.to_vec()));
            }
            Op::ReplaceXattrs { path, attrs }
        }
        opcode::LIST => {
            let path = r.path()?;
            let after = if r.flag()? {
                let name = r.bytes16(super::path::MAX_NAME)?;
                if name.is_empty()
                    || name == b"."
                    || name == b".."
                    || name.iter().any(|c| *c == 0 || *c == b'/')
                {
                    return Err(WireError::Malformed("list continues after an invalid name"));
                }
                Some(name.to_vec())
            } else {
                None
            };
            let budget = r.u32()?;
            if !(MIN_LIST_BUDGET..=MAX_LIST_BUDGET).contains(&budget) {
                return Err(WireError::Malformed("list budget out of range"));
            }
            Op::List {
                path,
                after,
                budget,
            }
        }
        opcode::CHECKSUMS => {
            let path = r.named_path()?;
            let block = r.u32()?;
            let first = r.u64()?;
            let count = r.u32()?;
            if !(4096..=(16 << 20)).contains(&block)
                || u64::from(count) * u64::from(block) > MAX_CHECKSUM_BYTES
            {
                return Err(WireError::Malformed(
                    "checksum block size or count out of range",
                ));
            }
            let start = first
                .checked_mul(u64::from(block))
                .ok_or(WireError::Malformed("range beyond the largest file offset"))?;
            range_end(start, u64::from(count) * u64::from(block))?;
            Op::Checksums {
                path,
                block,
                first,
                count,
            }
        }
        opcode::SET_GENERATION => Op::SetGeneration { ids: r.ids()? },
        opcode::BEGIN_RESYNC => Op::BeginResync {
            generation: r.u64()?,
        },
        opcode::BARRIER => Op::Barrier,
        c => return Err(WireError::UnknownOp(c)),
    })
}

/// Checks that the range `[offset, offset + len)` lies within [`MAX_OFFSET`].
fn range_end(offset: u64, len: u64) -> Result<u64, WireError> {
    offset
        .checked_add(len)
        .filter(|end| *end <= MAX_OFFSET)
        .ok_or(WireError::Malformed("range beyond the largest file offset"))
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes16(&mut self, b: &[u8]) {
        // Every 16-bit-length field is bounded well below 64 KiB by its type
        // (paths, names, symlink targets, node names).
        self.0.extend_from_slice(&(b.len() as u16).to_be_bytes());
        self.0.extend_from_slice(b);
    }
    fn text(&mut self, s: &str) {
        let s = &s.as_bytes()[..s.len().min(MAX_TEXT)];
        self.bytes16(s);
    }
    fn path(&mut self, p: &RelPath) {
        self.bytes16(p.as_bytes());
    }
    fn target(&mut self, t: &Target) {
        match t {
            Target::Path(p) => {
                self.u8(0);
                self.path(p);
            }
            Target::Handle(h) => {
                self.u8(1);
                self.u64(h.0);
            }
        }
    }
    fn opt_u32(&mut self, v: Option<u32>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.u32(v);
            }
            None => self.u8(0),
        }
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
            None => self.u8(0),
        }
    }
    fn opt_time(&mut self, t: Option<Timestamp>) {
        match t {
            Some(t) => {
                self.u8(1);
                self.u64(t.sec as u64);
                self.u32(t.nsec);
            }
            None => self.u8(0),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Malformed("frame ends inside a field"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn bytes16(&mut self, max: usize) -> Result<&'a [u8], WireError> {
        let b = self.take(2)?;
        let len = u16::from_be_bytes([b[0], b[1]]) as usize;
        if len > max {
            return Err(WireError::Malformed("field longer than its limit"));
        }
        self.take(len)
    }
    fn text(&mut self) -> Result<String, WireError> {
        let b = self.bytes16(MAX_TEXT)?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::Malformed("text is not UTF-8"))
    }
    fn path(&mut self) -> Result<RelPath, WireError> {
        let b = self.bytes16(super::path::MAX_PATH)?;
        Ok(RelPath::new(b.to_vec())?)
    }
    /// A path that must name something below the root (not the root itself).
    fn named_path(&mut self) -> Result<RelPath, WireError> {
        let p = self.path()?;
        if p.is_root() {
            return Err(PathError::Root.into());
        }
        Ok(p)
    }
    fn ids(&mut self) -> Result<Vec<u64>, WireError> {
        let n = self.u32()? as usize;
        if n > super::generation::HISTORY_LEN {
            return Err(WireError::Malformed("generation history too long"));
        }
        (0..n).map(|_| self.u64()).collect()
    }
    fn xattr_name(&mut self) -> Result<Vec<u8>, WireError> {
        let b = self.bytes16(255)?;
        if b.is_empty() || b.contains(&0) {
            return Err(WireError::Malformed("xattr name empty or with NUL"));
        }
        Ok(b.to_vec())
    }
    fn target(&mut self) -> Result<Target, WireError> {
        match self.u8()? {
            0 => Ok(Target::Path(self.path()?)),
            1 => Ok(Target::Handle(HandleId(self.u64()?))),
            _ => Err(WireError::Malformed("unknown target kind")),
        }
    }
    fn flag(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Malformed("option flag is not 0 or 1")),
        }
    }
    fn opt_u32(&mut self) -> Result<Option<u32>, WireError> {
        Ok(if self.flag()? {
            Some(self.u32()?)
        } else {
            None
        })
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, WireError> {
        Ok(if self.flag()? {
            Some(self.u64()?)
        } else {
            None
        })
    }
    fn opt_time(&mut self) -> Result<Option<Timestamp>, WireError> {
        if !self.flag()? {
            return Ok(None);
        }
        let sec = self.u64()? as i64;
        let nsec = self.u32()?;
        if nsec >= 1_000_000_000 {
            return Err(WireError::Malformed("nanoseconds out of range"));
        }
        Ok(Some(Timestamp { sec, nsec }))
    }
}

#[cfg(test)]
#[path = "wire_test.rs"]
mod tests;
