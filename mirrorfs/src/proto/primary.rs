//! The primary's replication decisions, sans-IO: [`Primary`].
//!
//! Owns every decision that depends on the order in which the application's
//! mutations, the connection to the secondary, the resync and the
//! controller's orders meet: the role (PRIM, RESYNC, ALONE, LOST, HOLD,
//! FENCED), the generation history, which paths are recorded dirty and when,
//! when a mutation may be acknowledged, and when a resync is complete. The
//! driver (`crate::mirror`) feeds events in as `handle_*` calls with the time
//! passed in, makes durable what a call staged ([`Primary::take_durable`],
//! then [`Primary::commit`] or [`Primary::abort`] before the next event), and
//! carries out what [`Primary::poll_action`] returns.
//!
//! The rules, in one place:
//! - an op is sent only on the connection it was begun under; begun without
//!   one, or submitted after that connection changed, it is *unreplicated*;
//! - an op the secondary may not hold (unreplicated, refused, lost with the
//!   connection, or sent behind a refused op it depends on) is recorded dirty
//!   before it is acknowledged, and acknowledged only in a generation the
//!   secondary does not share, so that a secondary promoted before the resync
//!   ends never looks in sync;
//! - one sent during a resync on a path the walk has still to bring over
//!   (or an fsync of a file there, or data written into a file a worker
//!   visits), that the secondary refuses because it lacks the file (or, on
//!   any path, the handle of an open it refused) while marked inconsistent
//!   for this resync, is acknowledged whatever the mode: the walk carries it
//!   (the path is recorded again); any other refusal fails with the
//!   secondary's error unless ALONE is allowed;
//! - the secondary may share our current generation from the moment a
//!   `SetGeneration` is submitted, not only once it is confirmed;
//! - with `--on-peer-loss=hold` an unreplicated op is acknowledged only while
//!   a grant (`alone SECONDS`) runs (once the secondary is back, the grant of
//!   the loss covers only the ops begun in it, until it runs out); without
//!   one it waits ([`Verdict::Hold`]); `fence` and the hold timeout fail it;
//!   a resync that completes brings it to the secondary and acknowledges it;
//! - in sync only when connected, nothing is dirty and no resync runs;
//! - with [`AckMode::OnSync`], an op that is not a sync op ([`Touched::sync`])
//!   is answered as soon as it is submitted on a connection ([`Primary::early`]),
//!   at most [`Bound`] of them unanswered by the secondary at once
//!   ([`Primary::room_for`]); its outcome is still concluded here, and one
//!   that the secondary may not hold is recorded dirty as above. A sync op is
//!   answered only once every op submitted before it has its verdict; it gets
//!   [`Verdict::Ack`] only if none of the early-answered ones before it
//!   failed (the verdict an each-op mount would have given them: covered by
//!   ALONE or by the resync counts as not failed), else the first one's
//!   error. A failure is told to every sync op begun before the first sync
//!   op that reported it (concurrent syncs all learn it), then forgotten, as
//!   an each-op mount answers one failed op and goes on; one the resync's
//!   completion brought over is never told.
//!
//! No I/O: nothing here touches a file, a socket, a clock or a thread.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use super::dirty::{DirtySet, Marks};
use super::generation::{relate, GenerationId, History, Relation};
use super::pace::Pace;
use super::path::RelPath;
use super::renames::Renames;
use super::walk::Walk;
use super::wire::Class;

/// While the application submitted an op this recently, the resync keeps only
/// one path in flight (each of its ops delays the application's behind it).
pub const RESYNC_YIELD: Duration = Duration::from_millis(100);
/// How long the application may hold the resync below its floor
/// ([`Config::longest_pause`]): a burst of writes this long has the resync
/// yield to it as far as the pace asks; past it, the resync takes at least
/// its floor, so that it ends under an application that never stops.
pub const FLOOR_AFTER: Duration = Duration::from_secs(10);
/// The pause before a failed resync path is tried again, at first...
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// ... and at most.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What `touched` counts for in [`Bound::bytes`].
fn cost(touched: &Touched) -> u64 {
    OP_COST.saturating_add(touched.data.map_or(0, |(_, len)| len))
}

/// Identifies one mutation from [`Primary::handle_begin`] to its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

/// The most ops answered early ([`AckMode::OnSync`]) that may await the
/// secondary's answer at once: beyond it, the driver waits before the next
/// one ([`Primary::room_for`]), so the stream's memory stays bounded.
pub const MAX_EARLY_OPS: u64 = 4096;
/// The most bytes of data those ops may carry at once (with [`OP_COST`]
/// counted per op): 64 MiB.
pub const MAX_EARLY_BYTES: u64 = 64 << 20;
/// What an op counts for in [`Bound::bytes`] besides its data (its frame,
/// its paths, its state here).
pub const OP_COST: u64 = 256;

/// When the application's mutations are answered (`mirrorfs mount --ack`;
/// the status's `ack` spells it the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AckMode {
    /// Every mutation returns once the secondary applied it (`each-op`).
    #[default]
    EachOp,
    /// A mutation returns once applied here and queued, in order, for the
    /// secondary; a sync op ([`Touched::sync`]) returns once every op of
    /// the mount before it is applied and durable there (`on-sync`). The
    /// secondary then always holds a prefix of the ops the primary applied.
    OnSync,
}

impl AckMode {
    /// The name operators write and read (`each-op`, `on-sync`).
    pub fn name(self) -> &'static str {
        match self {
            Self::EachOp => "each-op",
            Self::OnSync => "on-sync",
        }
    }
}

impl fmt::Display for AckMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for AckMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "each-op" => Ok(Self::EachOp),
            "on-sync" => Ok(Self::OnSync),
            other => Err(format!(
                "unknown acknowledgement mode {other:?}: use each-op (every write waits for the secondary) or on-sync (only fsync and O_SYNC writes wait)"
            )),
        }
    }
}

/// How many early-answered ops may await the secondary at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// Ops.
    pub ops: u64,
    /// Bytes: their data plus [`OP_COST`] each.
    pub bytes: u64,
}

impl Default for Bound {
    fn default() -> Self {
        Self {
            ops: MAX_EARLY_OPS,
            bytes: MAX_EARLY_BYTES,
        }
    }
}

/// What the primary does when the secondary is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnPeerLoss {
    /// Mutations fail with EIO until the peer is back (the safe default while
    /// no controller holds quorum).
    Fail,
    /// Carry on ALONE, recording every change for the resync.
    Alone,
    /// Mutations wait for a controller's order (`alone SECONDS` or `fence`)
    /// or the hold timeout.
    Hold,
}

/// The primary's role, as operators read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Connected and in sync.
    Prim,
    /// Connected, bringing the secondary up to date.
    Resync,
    /// No peer; changes are recorded for a later resync.
    Alone,
    /// No peer, and mutations fail (`--on-peer-loss=fail`).
    Lost,
    /// No peer, and mutations wait for the controller (`--on-peer-loss=hold`).
    Hold,
    /// Mutations fail until `unfence`.
    Fenced,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Prim => "PRIM",
            Self::Resync => "RESYNC",
            Self::Alone => "ALONE",
            Self::Lost => "LOST",
            Self::Hold => "HOLD",
            Self::Fenced => "FENCED",
        })
    }
}

/// How the core starts.
#[derive(Debug, Clone)]
pub struct Config {
    /// What to do when the secondary is lost.
    pub on_peer_loss: OnPeerLoss,
    /// How long mutations may be held before the mount fences itself.
    pub hold_timeout: Duration,
    /// Compare every file at the next resync.
    pub full: bool,
    /// Seeds the generation ids (random at each start, fixed in simulation).
    pub seed: u64,
    /// This node's name and the peer's, for messages.
    pub me: String,
    /// The secondary's node name.
    pub peer: String,
    /// When mutations are answered.
    pub ack: AckMode,
    /// With [`AckMode::OnSync`]: how many early-answered ops may await the
    /// secondary at once.
    pub bound: Bound,
    /// The longest pause between two resync turns once the application
    /// has written for [`FLOOR_AFTER`] without a break: the resync's floor
    /// (`--resync-min-rate`, see [`super::pace::longest_pause`]).
    pub longest_pause: Duration,
}

/// What a mutation changes, announced before it is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Paths whose content, metadata or existence may change.
    pub paths: Vec<RelPath>,
    /// For a rename: (from, to), so that state kept per path can follow it.
    pub rename: Option<(RelPath, RelPath)>,
    /// For a data write to the one path: the byte range `(offset, len)` it
    /// changes (nothing else about the file changes).
    pub data: Option<(u64, u64)>,
    /// Paths whose content the op reads on the secondary (the source of a
    /// copied range): if the secondary may still hold old bytes there, the
    /// op must carry the data itself.
    pub reads: Vec<RelPath>,
    /// The application asked for durability: fsync or fdatasync of a file
    /// or a directory (msync comes as one), a write through an `O_SYNC` or
    /// `O_DSYNC` open. With [`AckMode::OnSync`] it is answered only once
    /// every op before it is applied and durable on the secondary.
    pub sync: bool,
    /// The file or directory an fsync names on the secondary by its path,
    /// without changing it: the secondary lacks it while the walk has still
    /// to bring it over, and refuses the fsync for that.
    pub synced: Option<RelPath>,
}

impl Touched {
    /// Touches these paths.
    pub fn paths(paths: Vec<RelPath>) -> Self {
        Self {
            paths,
            ..Self::default()
        }
    }
}

/// A mutation admitted by [`Primary::handle_begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// Its id.
    pub op: OpId,
    /// The connection its ops go to (handles opened on another are unknown
    /// there), or `None`: they are not sent.
    pub epoch: Option<u64>,
    /// Record the touched directories in the activity log first (the op goes
    /// to the secondary; if this node dies with it in flight, they are
    /// compared).
    pub record_activity: bool,
    /// The secondary holds what the op reads ([`Touched::reads`]) as we do:
    /// a copied range may be copied there; otherwise send the bytes.
    pub source_clean: bool,
    /// A sync op of an [`AckMode::OnSync`] mount with a connection: its ops
    /// end with `Op::Barrier` (the secondary answers it once everything
    /// before it is applied and durable), which replaces an `Op::Fsync`.
    pub barrier: bool,
}

/// How an op's ops fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpResult {
    /// The secondary applied every one.
    Applied,
    /// The secondary answered that it could not apply one (errno).
    Refused(i32),
    /// The connection was lost before every answer came (unknown).
    Lost,
    /// Nothing was sent ([`Primary::handle_submit`] said so).
    NotSent,
}

/// What the application gets for a mutation that was applied locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Success.
    Ack,
    /// This errno.
    Fail(i32),
    /// Nothing yet: it waits for the controller; [`Action::Release`] comes later.
    Hold,
}

/// What must be durable before a staged decision takes effect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Durable {
    /// A new generation history to save.
    pub history: Option<History>,
    /// Dirty records to append.
    pub marks: Marks,
    /// Forget every dirty record (the secondary holds our data again).
    pub clear_dirty: bool,
}

impl Durable {
    /// True when nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.history.is_none() && self.marks.is_empty() && !self.clear_dirty
    }
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A held op's verdict came: answer the application.
    Release(OpId, Verdict),
    /// Before any resync op on connection `epoch`: have the secondary mark
    /// itself inconsistent (`Op::BeginResync`) until the resync completes.
    BeginResync {
        /// The connection.
        epoch: u64,
        /// Our current generation.
        generation: u64,
    },
    /// The role changed (for the log).
    RoleChanged {
        /// The old role.
        from: Role,
        /// The new one.
        to: Role,
    },
}

/// One path handed to a resync worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The path to make equal on the secondary.
    pub path: RelPath,
    /// Compare every child of it (a directory), not just the differing ones.
    pub full: bool,
    /// The connection to use.
    pub epoch: u64,
}

/// Resync progress counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Paths synchronised in this resync.
    pub files_done: u64,
    /// Paths still to do (grows while directories are walked).
    pub files_left: u64,
    /// Data bytes sent.
    pub bytes_sent: u64,
    /// When the resync started.
    pub started: Instant,
    /// Whether every file is compared.
    pub full: bool,
}

/// A snapshot of the core for the status (O(1) to take).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The role.
    pub role: Role,
    /// PRIM, connected, nothing dirty, no resync.
    pub in_sync: bool,
    /// A connection is up.
    pub connected: bool,
    /// Paths recorded dirty.
    pub dirty_files: u64,
    /// Bytes the application wrote while they were not replicated (an upper
    /// bound of what the resync sends for them).
    pub dirty_bytes: u64,
    /// The resync's progress, while one runs.
    pub resync: Option<Progress>,
    /// The generation history, current first.
    pub history: History,
    /// Time left of the controller's grant.
    pub grant_left: Option<Duration>,
    /// Ops waiting for a decision.
    pub held_ops: u64,
    /// The last problem.
    pub last_error: Option<String>,
    /// Since when in this role.
    pub role_since: Instant,
}

#[derive(Debug, Clone)]
struct OpState {
    /// The connection it was begun for.
    epoch: Option<u64>,
    touched: Touched,
    /// Its place among submissions (stream order), once submitted.
    submitted: Option<u64>,
    /// Submitted while in sync (for the pace of the resync).
    in_sync_at_submit: bool,
    /// What it reads was clean when it began.
    clean_at_begin: bool,
    /// Its paths were recorded dirty already.
    recorded: bool,
    /// Sent behind an op the secondary refused that it depends on.
    tainted: bool,
    /// Sent during a resync while a path it changes or reads was still to
    /// be visited: the walk carries it, whatever the secondary makes of it.
    carried: bool,
    /// Answered when submitted ([`AckMode::OnSync`]): its verdict is never
    /// the application's, but a later sync op's.
    early: bool,
    /// Counted in `early_ops`/`early_bytes` (until its outcome), for this
    /// many bytes.
    counted: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct LinkState {
    epoch: u64,
    /// Bringing the secondary up to date.
    resync: bool,
    /// The secondary was told to mark itself inconsistent, and no
    /// `SetGeneration` (which clears the mark) was sent since.
    peer_marked: bool,
    /// The generation of the history last submitted to the secondary by a
    /// `SetGeneration` on this connection (the resync completes only if it
    /// is still ours when confirmed).
    generation_sent: Option<GenerationId>,
}

/// What a staged decision changes once its [`Durable`] is written.
#[derive(Debug, Default)]
struct Staged {
    durable: Durable,
    /// Bytes to count as dirty.
    bytes: u64,
    /// Held ops to release.
    releases: Vec<(OpId, Verdict)>,
    /// The resync of this connection completes.
    complete: Option<u64>,
    /// Early-answered ops whose verdict is final once this is durable.
    early_done: Vec<(OpId, Verdict)>,
    /// The op submitted is answered early (counting this many bytes).
    early_submit: Option<(OpId, u64)>,
}

/// The primary's replication state machine.
#[derive(Debug)]
pub struct Primary {
    cfg: Config,
    now: Instant,
    ids: u64,
    history: History,
    /// The secondary may hold our current generation (assumed at start).
    peer_may_share: bool,
    dirty: DirtySet,
    /// Paths changed here that the secondary may lack but that could not be
    /// recorded durably (the metadata disk failed): resynced, not recorded.
    volatile: BTreeSet<RelPath>,
    dirty_bytes: u64,
    link: Option<LinkState>,
    last_epoch: u64,
    fenced: bool,
    /// The controller's grant runs until then.
    grant: Option<Instant>,
    /// The grant that ran when the secondary came back: it no longer makes
    /// this node ALONE, but the ops begun before (without a link) are still
    /// acknowledged under it until it runs out, as the controller allowed.
    carried_grant: Option<Instant>,
    /// Holding since then (for the hold timeout).
    hold_since: Option<Instant>,
    ops: BTreeMap<OpId, OpState>,
    held: BTreeSet<OpId>,
    next_op: u64,
    submissions: u64,
    walk: Walk,
    /// Paths whose visit failed: when they may be tried again, and the pause
    /// after the next failure.
    retry: BTreeMap<RelPath, (Instant, Duration)>,
    renames: Renames,
    /// Files with several names visited by the current resync: the first
    /// name of each inode.
    first_names: BTreeMap<(u64, u64), RelPath>,
    full: bool,
    files_done: u64,
    bytes_sent: u64,
    resync_started: Instant,
    app_last: Option<Instant>,
    /// When the application's current burst of ops began (ops no more
    /// than [`RESYNC_YIELD`] apart since).
    app_since: Option<Instant>,
    pace: Pace,
    /// While the application writes: when the next resync turn may be
    /// taken (see [`Primary::resync_turn`]).
    next_resync_turn: Option<Instant>,
    last_error: Option<String>,
    role: Role,
    role_since: Instant,
    actions: VecDeque<Action>,
    staged: Option<Staged>,
    /// Early-answered ops whose verdict is not final: awaiting their
    /// outcome, or held. A sync op waits for every one before it.
    early_open: BTreeSet<OpId>,
    /// Early-answered ops awaiting the secondary, and their bytes (the
    /// bound).
    early_ops: u64,
    early_bytes: u64,
    /// Early-answered ops the secondary may not hold, that an each-op mount
    /// would have failed: their errno, and `next_op` when a sync op first
    /// told the application (every sync op begun before then tells it too).
    failures: BTreeMap<OpId, (i32, Option<u64>)>,
    /// Sync ops whose own verdict is known, waiting for the early-answered
    /// ops before them.
    waiting: BTreeMap<OpId, Verdict>,
}

impl Primary {
    /// A core over the durable state found at start: the history and the dirty
    /// set. Not connected; [`Primary::handle_start`] comes next.
    pub fn new(cfg: Config, now: Instant, history: History, dirty: DirtySet) -> Self {
        let full = cfg.full;
        let ids = cfg.seed;
        let mut me = Self {
            cfg,
            now,
            ids,
            history,
            peer_may_share: true,
            dirty,
            volatile: BTreeSet::new(),
            dirty_bytes: 0,
            link: None,
            last_epoch: 0,
            fenced: false,
            grant: None,
            carried_grant: None,
            hold_since: None,
            ops: BTreeMap::new(),
            held: BTreeSet::new(),
            next_op: 1,
            submissions: 0,
            walk: Walk::default(),
            retry: BTreeMap::new(),
            renames: Renames::default(),
            first_names: BTreeMap::new(),
            full,
            files_done: 0,
            bytes_sent: 0,
            resync_started: now,
            app_last: None,
            app_since: None,
            pace: Pace::default(),
            next_resync_turn: None,
            last_error: None,
            role: Role::Lost,
            role_since: now,
            actions: VecDeque::new(),
            staged: None,
            early_open: BTreeSet::new(),
            early_ops: 0,
            early_bytes: 0,
            failures: BTreeMap::new(),
            waiting: BTreeMap::new(),
        };
        me.role = me.current_role();
        me
    }

    // ---- durability of staged decisions ----------------------------------

    /// What the last event staged, to be made durable now; `None`: nothing.
    /// Then [`commit`](Self::commit) (written) or [`abort`](Self::abort).
    pub fn take_durable(&mut self) -> Option<Durable> {
        match &self.staged {
            Some(s) if !s.durable.is_empty() => Some(s.durable.clone()),
            Some(_) => {
                self.commit();
                None
            }
            None => None,
        }
    }

    /// The staged decision's records are durable: it takes effect.
    pub fn commit(&mut self) {
        let Some(s) = self.staged.take() else { return };
        if let Some(h) = s.durable.history {
            self.history = h;
            self.peer_may_share = false;
        }
        self.dirty.apply(&s.durable.marks);
        self.dirty_bytes = self.dirty_bytes.saturating_add(s.bytes);
        if let Some((op, bytes)) = s.early_submit {
            if let Some(o) = self.ops.get_mut(&op) {
                o.early = true;
                o.counted = Some(bytes);
                self.early_ops += 1;
                self.early_bytes = self.early_bytes.saturating_add(bytes);
                self.early_open.insert(op);
            }
        }
        for (op, v) in s.early_done {
            self.finish_early(op, v);
        }
        if s.complete.is_some() {
            // The resync brought every recorded change over, those of the
            // early-answered ops that failed too: a sync op from here on
            // (its barrier follows the resync's ops) has nothing to report.
            // Sync ops released below are answered as held ops are.
            self.failures.clear();
        }
        for (op, v) in s.releases {
            self.release(op, v);
        }
        if let Some(epoch) = s.complete {
            self.dirty.clear();
            self.volatile.clear();
            self.dirty_bytes = 0;
            self.renames.clear();
            self.full = false;
            if let Some(l) = self.link.as_mut().filter(|l| l.epoch == epoch) {
                l.resync = false;
            }
        } else if s.durable.clear_dirty {
            self.dirty.clear();
        }
        self.note_role();
    }

    /// The staged decision could not be made durable: it does not take
    /// effect (an op it concerned fails with EIO: the driver answers so).
    /// `applied`: that op's change was applied locally all the same; its
    /// paths are remembered (not durably) so that this process's resync
    /// still brings them over and nothing reports in sync before.
    pub fn abort(&mut self, op: Option<OpId>, applied: bool) {
        let mut staged = self.staged.take();
        // An early-answered op whose change could not be recorded: the
        // application was answered, a later sync op must not be.
        let early_done = staged
            .as_mut()
            .map(|s| std::mem::take(&mut s.early_done))
            .unwrap_or_default();
        for (early, _) in early_done {
            self.finish_early(early, Verdict::Fail(libc::EIO));
        }
        if let (true, Some(s)) = (applied, staged) {
            let m = s.durable.marks;
            let paths = m
                .trees
                .iter()
                .chain(&m.whole)
                .chain(m.range.as_ref().map(|r| &r.0));
            self.volatile.extend(paths.cloned());
        }
        if let Some(op) = op {
            if let Some(mut o) = self.ops.remove(&op) {
                self.uncount(&mut o);
                if o.early {
                    self.finish_early(op, Verdict::Fail(libc::EIO));
                }
            }
            self.held.remove(&op);
            self.waiting.remove(&op);
        }
        self.note_role();
    }

    fn stage(&mut self) -> &mut Staged {
        self.staged.get_or_insert_with(Staged::default)
    }

    /// A new generation, unless the secondary already lacks our current one.
    fn stage_ahead(&mut self) {
        if !self.peer_may_share || self.stage().durable.history.is_some() {
            return;
        }
        let id = self.next_id();
        let mut h = self.history.clone();
        h.advance(id);
        self.stage().durable.history = Some(h);
    }

    /// A fresh generation id (SplitMix64 over the seed: distinct for the
    /// life of this process; the seed is random at each start).
    fn next_id(&mut self) -> GenerationId {
        loop {
            self.ids = self.ids.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.ids;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            if z != 0 && !self.history.ids().contains(&GenerationId(z)) {
                return GenerationId(z);
            }
        }
    }

    fn event(&mut self, now: Instant) {
        debug_assert!(
            self.staged.is_none(),
            "a staged decision was neither committed nor aborted"
        );
        self.now = self.now.max(now);
        self.expire();
    }

    // ---- start ------------------------------------------------------------

    /// The mount starts: a tree that was never part of a mirror gets its
    /// first generation; `alone` (started without waiting for the peer):
    /// whatever is written from now on is written without it.
    pub fn handle_start(&mut self, now: Instant, alone: bool) {
        self.event(now);
        if self.history.current().is_none() {
            let id = self.next_id();
            let mut h = History::default();
            h.advance(id);
            self.stage().durable.history = Some(h);
        }
        if alone {
            if self.alone_allowed() {
                self.stage_ahead();
            } else if self.cfg.on_peer_loss == OnPeerLoss::Hold {
                self.hold_since = Some(self.now);
            }
        }
        self.note_role();
    }

    // ---- the application's mutations ---------------------------------------

    /// A mutation is about to be applied locally (under the sequencer).
    /// `Err(errno)`: refuse it, nothing is applied. Otherwise what it staged
    /// must be durable before it is applied.
    pub fn handle_begin(&mut self, now: Instant, touched: Touched) -> Result<Begin, i32> {
        self.event(now);
        let role = self.current_role();
        let mut recorded = false;
        let mut carried = false;
        let (epoch, record_activity, mut source_clean) = match role {
            Role::Fenced | Role::Lost => {
                if self.is_sync(&touched) {
                    // The application learns that a sync failed: what an
                    // early-answered op failed to bring over is told.
                    self.tell(OpId(self.next_op));
                }
                return Err(libc::EIO);
            }
            Role::Prim | Role::Resync => (self.link.map(|l| l.epoch), true, true),
            Role::Alone | Role::Hold => (None, false, false),
        };
        match role {
            Role::Resync => {
                source_clean = !touched.reads.iter().any(|r| self.stale_on_peer(r));
                if self.carried_by_walk(&touched) {
                    self.record(&touched);
                    recorded = true;
                    carried = true;
                } else {
                    carried = self.carried_by_visit(&touched);
                }
            }
            Role::Alone | Role::Hold => {
                if let Some((from, to)) = &touched.rename {
                    self.renames.renamed(from, to);
                }
                self.record(&touched);
                recorded = true;
            }
            _ => {}
        }
        let op = OpId(self.next_op);
        self.next_op += 1;
        let barrier = epoch.is_some() && self.is_sync(&touched);
        self.ops.insert(
            op,
            OpState {
                epoch,
                clean_at_begin: source_clean,
                recorded,
                touched,
                submitted: None,
                in_sync_at_submit: false,
                tainted: false,
                carried,
                early: false,
                counted: None,
            },
        );
        self.note_role();
        Ok(Begin {
            op,
            epoch,
            record_activity,
            source_clean,
            barrier,
        })
    }

    /// With [`AckMode::OnSync`]: true when an op touching `touched` may be
    /// answered early now without passing the [`Bound`] (a single op
    /// always may); the driver waits for room (bounded) before it begins
    /// one. Always true for a sync op and in [`AckMode::EachOp`].
    pub fn room_for(&self, touched: &Touched) -> bool {
        if self.cfg.ack != AckMode::OnSync || touched.sync || self.early_ops == 0 {
            return true;
        }
        self.early_ops < self.cfg.bound.ops
            && self.early_bytes.saturating_add(cost(touched)) <= self.cfg.bound.bytes
    }

    /// True when `op` was answered at its submission ([`AckMode::OnSync`]):
    /// the driver answers the application now and concludes the op's
    /// outcome later, off the application's path.
    pub fn early(&self, op: OpId) -> bool {
        self.ops.get(&op).is_some_and(|o| o.early)
    }

    /// The local change failed: nothing is replicated, nothing answered here.
    pub fn handle_abandon(&mut self, op: OpId) {
        self.ops.remove(&op);
    }

    /// The op was applied locally and its ops are about to be sent (under the
    /// sequencer, so the stream's order is the local order): the connection
    /// to send them on, or `None` (then [`OpResult::NotSent`] follows). What
    /// it staged must be durable before they are sent: a path the op changes
    /// or reads that became one the resync must still visit since the op
    /// began (a live op the secondary refused) is recorded first, since the
    /// secondary may act on old content there.
    pub fn handle_submit(&mut self, now: Instant, op: OpId) -> Option<u64> {
        self.event(now);
        if !self.app_active(self.now, RESYNC_YIELD) {
            self.app_since = Some(self.now);
        }
        self.app_last = Some(self.now);
        let link = self.link?;
        let o = self.ops.get(&op)?;
        if o.epoch != Some(link.epoch) {
            return None;
        }
        let copy_went_stale =
            o.clean_at_begin && o.touched.reads.iter().any(|r| self.stale_on_peer(r));
        if copy_went_stale {
            // A copied range would copy old bytes there: not sent.
            return None;
        }
        let carried = !o.recorded && self.carried_by_walk(&o.touched);
        let visited = self.carried_by_visit(&o.touched);
        let early = self.cfg.ack == AckMode::OnSync && !o.touched.sync && self.room_for(&o.touched);
        let bytes = cost(&o.touched);
        if carried {
            let touched = o.touched.clone();
            self.record(&touched);
        }
        let in_sync = self.current_role() == Role::Prim;
        self.submissions += 1;
        let o = self.ops.get_mut(&op)?;
        o.carried |= carried || visited;
        o.recorded = true;
        o.submitted = Some(self.submissions);
        o.in_sync_at_submit = in_sync;
        if early {
            // Once what the submission staged is durable: if it cannot be,
            // the op is not sent and is answered once concluded.
            self.stage().early_submit = Some((op, bytes));
        }
        self.note_role();
        Some(link.epoch)
    }

    /// The outcome of an op's ops (`took`: from submission to the last
    /// answer). What it staged must be durable before the verdict counts.
    pub fn handle_outcome(
        &mut self,
        now: Instant,
        op: OpId,
        result: OpResult,
        took: Option<Duration>,
    ) -> Verdict {
        self.event(now);
        let Some(mut o) = self.ops.remove(&op) else {
            return Verdict::Fail(libc::EIO);
        };
        self.uncount(&mut o);
        let early = o.early;
        let sync = self.is_sync(&o.touched);
        let mut verdict = self.own_verdict(op, o, result, took);
        if verdict != Verdict::Hold {
            if early {
                // The application has its answer; a later sync op gets
                // this one once the records it needs are durable.
                self.stage().early_done.push((op, verdict));
            } else if sync {
                verdict = self.settle_or_wait(op, verdict);
            }
        }
        self.note_role();
        verdict
    }

    /// The verdict an each-op mount gives `o` (already out of `ops`; put
    /// back and held for [`Verdict::Hold`]).
    fn own_verdict(
        &mut self,
        op: OpId,
        o: OpState,
        result: OpResult,
        took: Option<Duration>,
    ) -> Verdict {
        if let OpResult::Refused(_) = result {
            self.taint_after(&o);
        }
        if result == OpResult::Applied && !o.tainted {
            if let Some(took) = took {
                let kind = if o.touched.sync {
                    Class::Sync
                } else if o.touched.data.is_some() {
                    Class::Data
                } else {
                    Class::Meta
                };
                if o.in_sync_at_submit {
                    self.pace.in_sync(kind, took);
                } else {
                    self.pace.during_resync(kind, took);
                }
            }
            return Verdict::Ack;
        }
        // The secondary may not hold this change: record it first.
        self.record(&o.touched);
        let answered = match result {
            OpResult::Refused(e) => Some(e),
            OpResult::Applied => Some(libc::EIO),
            OpResult::Lost | OpResult::NotSent => None,
        };
        // A path the walk still had to bring over, on a secondary marked
        // inconsistent for this resync: that it lacks the file (or the
        // handle its refused open would have made) is expected, and the
        // walk carries the recorded change. Any other refusal (a full disk)
        // is the secondary's failure and is answered as one.
        let lacks_base = match result {
            OpResult::Refused(e) => matches!(e, libc::ENOENT | libc::ENOTDIR | libc::EBADF),
            OpResult::Applied => o.tainted,
            OpResult::Lost | OpResult::NotSent => false,
        };
        // A handle the secondary lacks (EBADF) is one whose open it refused
        // and the walk carried, even if the walk has visited its path since.
        let missing_handle = result == OpResult::Refused(libc::EBADF);
        let carried_by_resync = lacks_base
            && (o.carried || missing_handle)
            && self
                .link
                .is_some_and(|l| Some(l.epoch) == o.epoch && l.peer_marked);
        // Begun without a link under a grant that still runs: the secondary
        // came back since.
        let granted_before = o.epoch.is_none() && self.carried_grant.is_some_and(|d| self.now < d);
        let verdict = if self.fenced {
            Verdict::Fail(libc::EIO)
        } else if self.alone_allowed() || carried_by_resync || granted_before {
            // Acknowledged without the secondary: in a generation it does
            // not share, or a secondary promoted before the resync ends
            // would look in sync and the change would be overwritten.
            self.stage_ahead();
            Verdict::Ack
        } else if let Some(errno) = answered {
            Verdict::Fail(errno)
        } else if self.cfg.on_peer_loss == OnPeerLoss::Hold {
            Verdict::Hold
        } else {
            Verdict::Fail(libc::EIO)
        };
        if verdict == Verdict::Hold {
            // Waiting for a decision, not for the secondary.
            let mut o = o;
            o.submitted = None;
            self.ops.insert(op, o);
            self.held.insert(op);
        }
        verdict
    }

    /// True for a sync op of an [`AckMode::OnSync`] mount.
    fn is_sync(&self, touched: &Touched) -> bool {
        self.cfg.ack == AckMode::OnSync && touched.sync
    }

    /// `o`'s outcome came (or it went away): it no longer counts against
    /// the bound.
    fn uncount(&mut self, o: &mut OpState) {
        if let Some(bytes) = o.counted.take() {
            self.early_ops = self.early_ops.saturating_sub(1);
            self.early_bytes = self.early_bytes.saturating_sub(bytes);
        }
    }

    /// The early-answered `op` has its final verdict: a failure is kept
    /// for the next sync ops, and sync ops waiting for it may be answered.
    fn finish_early(&mut self, op: OpId, verdict: Verdict) {
        if !self.early_open.remove(&op) {
            return;
        }
        if let Verdict::Fail(errno) = verdict {
            self.failures.insert(op, (errno, None));
        }
        while let Some((&s, &own)) = self.waiting.first_key_value() {
            if self.early_open.range(..s).next().is_some() {
                // Every later one waits for that op too.
                break;
            }
            self.waiting.remove(&s);
            let v = self.settle(s, own);
            self.actions.push_back(Action::Release(s, v));
        }
    }

    /// The verdict of sync op `s` whose own verdict is `own` (Ack or Fail):
    /// [`Verdict::Hold`] while an early-answered op before it is not final
    /// (it waits; [`Action::Release`] comes later).
    fn settle_or_wait(&mut self, s: OpId, own: Verdict) -> Verdict {
        if self.early_open.range(..s).next().is_some() {
            self.waiting.insert(s, own);
            return Verdict::Hold;
        }
        self.settle(s, own)
    }

    /// Every early-answered op before sync op `s` is final: `own`, unless
    /// one of them failed (the first one's errno then).
    fn settle(&mut self, s: OpId, own: Verdict) -> Verdict {
        let told = self.tell(s);
        match (own, told) {
            (Verdict::Ack, Some(errno)) => Verdict::Fail(errno),
            (own, _) => own,
        }
    }

    /// The first failure of an early-answered op before sync op `s` that
    /// `s` must report: one no sync op reported yet, or one first reported
    /// after `s` began. Marks them reported, and forgets those no pending
    /// sync op can report any more.
    fn tell(&mut self, s: OpId) -> Option<i32> {
        let now = self.next_op;
        let mut first = None;
        for (errno, told) in self.failures.range_mut(..s).map(|(_, f)| f) {
            let report = match told {
                None => {
                    *told = Some(now);
                    true
                }
                Some(at) => s.0 < *at,
            };
            if report && first.is_none() {
                first = Some(*errno);
            }
        }
        let oldest_sync = self
            .ops
            .iter()
            .filter(|(_, o)| self.is_sync(&o.touched))
            .map(|(id, _)| *id)
            .chain(self.waiting.keys().copied())
            .min();
        self.failures
            .retain(|_, (_, told)| told.is_none_or(|at| oldest_sync.is_some_and(|o| o.0 < at)));
        first
    }

    /// Records what `touched` changes as dirty (staged), and schedules it for
    /// the resync when connected.
    fn record(&mut self, touched: &Touched) {
        let mut paths = touched.paths.clone();
        if let Some((from, to)) = &touched.rename {
            // Recorded paths below the old name follow it.
            if let Some((lo, hi)) = from.below() {
                let moved: Vec<RelPath> = self
                    .dirty
                    .paths()
                    .range(lo..hi)
                    .filter_map(|p| {
                        let rest = &p.as_bytes()[from.as_bytes().len()..];
                        RelPath::new([to.as_bytes(), rest].concat()).ok()
                    })
                    .collect();
                paths.extend(moved);
            }
        }
        let data_only = touched.data.is_some() && touched.rename.is_none() && paths.len() == 1;
        let marks = if let (true, Some((offset, len))) = (data_only, touched.data) {
            self.dirty
                .marks_for(&[], &[], Some((&paths[0], offset, len)))
        } else {
            let trees: Vec<RelPath> = touched
                .rename
                .iter()
                .flat_map(|(a, b)| [a.clone(), b.clone()])
                .collect();
            self.dirty.marks_for(&trees, &paths, None)
        };
        let bytes = touched.data.map_or(0, |(_, len)| len);
        let s = self.stage();
        s.durable.marks.extend(marks);
        s.bytes = s.bytes.saturating_add(bytes);
        if self.link.is_some() {
            for p in paths {
                self.walk.insert(p);
            }
            if let Some((a, b)) = &touched.rename {
                self.walk.insert_tree(a.clone());
                self.walk.insert_tree(b.clone());
            }
            self.start_resync();
        }
    }

    /// Ops submitted after `refused` on its connection that touch or read
    /// near what it touched may have acted on what the secondary lacks.
    fn taint_after(&mut self, refused: &OpState) {
        let Some(at) = refused.submitted else { return };
        for o in self.ops.values_mut() {
            if o.epoch != refused.epoch || o.submitted.is_none_or(|s| s <= at) {
                continue;
            }
            let near = o.touched.paths.iter().chain(&o.touched.reads).any(|p| {
                refused.touched.paths.iter().any(|q| {
                    p == q || p.ancestors().any(|a| a == *q) || q.ancestors().any(|a| a == *p)
                })
            });
            o.tainted |= near;
        }
    }

    /// True when `touched` is near a path the resync has still to visit, or
    /// renames or removes one a worker visits now: the change must be
    /// recorded, the walk carries it. Data written to a file being visited
    /// is not recorded: the worker reads and sends under the sequencer, so the
    /// live write reaches the secondary after any older bytes (and marking
    /// it would revisit a busy file forever; [`Primary::carried_by_visit`]
    /// covers its refusal). An fsync of a file the secondary may not hold
    /// yet is carried too: the walk brings the file.
    fn carried_by_walk(&self, touched: &Touched) -> bool {
        let data_only = touched.data.is_some() && touched.rename.is_none();
        touched
            .paths
            .iter()
            .any(|p| self.walk.pending_near(p) || (!data_only && self.walk.in_flight_near(p)))
            || touched
                .reads
                .iter()
                .chain(&touched.synced)
                .any(|r| self.stale_on_peer(r))
    }

    /// True when `touched` writes data into a file a worker visits now:
    /// sent before the worker's copy made the file there, the secondary
    /// refuses it for lack of the file, and the copy, read after it, brings
    /// it over. Not recorded for that (see [`Primary::carried_by_walk`]).
    fn carried_by_visit(&self, touched: &Touched) -> bool {
        touched.data.is_some()
            && touched.rename.is_none()
            && touched.paths.iter().any(|p| self.walk.in_flight_near(p))
    }

    /// The secondary may hold older content than ours at `p`.
    fn stale_on_peer(&self, p: &RelPath) -> bool {
        self.walk.pending_near(p) || self.walk.in_flight_near(p)
    }

    /// From PRIM to RESYNC (the walk has work); the secondary is told to
    /// mark itself inconsistent first, unless it still is since the last
    /// time (no `SetGeneration` sent since): its tree is about to differ
    /// from ours in ways only the resync repairs.
    fn start_resync(&mut self) {
        let Some(l) = self.link.as_mut() else { return };
        let epoch = l.epoch;
        if !l.resync {
            l.resync = true;
            self.files_done = 0;
            self.bytes_sent = 0;
            self.resync_started = self.now;
        }
        if !l.peer_marked {
            l.peer_marked = true;
            self.actions.push_back(Action::BeginResync {
                epoch,
                generation: self.history.current().map_or(0, |g| g.0),
            });
        }
    }

    // ---- the connection -------------------------------------------------------

    /// The number the next connection gets.
    pub fn next_epoch(&self) -> u64 {
        self.last_epoch + 1
    }

    /// A connection is up (its hello told the secondary's history and the
    /// directories it may hold unreplicated changes in; `local_suspects`:
    /// ours, from the activity log). Returns its epoch, or why it must not be
    /// used (split brain, a secondary with newer data).
    pub fn handle_link_up(
        &mut self,
        now: Instant,
        peer_history: &History,
        peer_suspects: &[RelPath],
        local_suspects: BTreeSet<RelPath>,
    ) -> Result<u64, String> {
        self.event(now);
        let relation = relate(&self.history, peer_history);
        let peer_gen = peer_history
            .current()
            .map_or("none".to_string(), |g| g.to_string());
        let me = self
            .history
            .current()
            .map(|g| g.to_string())
            .unwrap_or_default();
        let why = match relation {
            Relation::SecondaryAhead => Some(format!(
                "the secondary {} holds newer data (its generation {peer_gen} follows ours, {me}): this node must not overwrite it; make {} the primary, or run `mirrorfs discard --root DIR` on {} to throw its changes away (they are kept in DIR/.mirrorfs/discarded-*)",
                self.cfg.peer, self.cfg.peer, self.cfg.peer
            )),
            Relation::SplitBrain => Some(format!(
                "split brain: both this node ({} at generation {me}) and the secondary {} (at generation {peer_gen}) wrote since they parted; nothing was synchronised. Choose the side to keep and run `mirrorfs discard --root DIR` on the other (its changed files are kept in DIR/.mirrorfs/discarded-*)",
                self.cfg.me, self.cfg.peer
            )),
            _ => None,
        };
        if let Some(why) = why {
            self.last_error = Some(why.clone());
            return Err(why);
        }
        self.last_epoch += 1;
        let epoch = self.last_epoch;
        // Paths the workers still visit for an old connection are done with
        // it; what they did not finish is dirty or pending again.
        self.walk.forget_in_flight();
        self.retry.clear();
        self.first_names.clear();
        self.peer_may_share = relation == Relation::InSync;
        self.hold_since = None;
        // A grant was for the loss that just ended; one for the next loss
        // comes while connected (the controller may see it first). It still
        // covers the ops begun in that loss.
        self.carried_grant = self.grant.take();
        self.last_error = None;
        let mut suspects = local_suspects;
        suspects.extend(peer_suspects.iter().cloned());
        self.link = Some(LinkState {
            epoch,
            resync: false,
            peer_marked: false,
            generation_sent: None,
        });
        let in_sync = relation == Relation::InSync
            && self.dirty.is_empty()
            && !self.full
            && suspects.is_empty()
            && self.volatile.is_empty()
            && self.held.is_empty();
        if !in_sync {
            let mut pending = self.dirty.paths().clone();
            pending.extend(self.volatile.iter().cloned());
            pending.extend(suspects.iter().cloned());
            self.walk.restart(pending, suspects);
            for t in self.dirty.trees().clone() {
                self.walk.insert_tree(t);
            }
            let nothing_known = self.walk.nothing_pending() && relation != Relation::InSync;
            // A peer with more suspect directories than it can tell sends the
            // root alone: compare everything. The root among other suspects
            // (a write at the top level) means only its own entries.
            let peer_overflow = peer_suspects == [RelPath::root()];
            if relation == Relation::SecondaryNew || self.full || nothing_known || peer_overflow {
                self.full = true;
                self.walk.insert(RelPath::root());
            }
            self.start_resync();
        }
        self.note_role();
        Ok(epoch)
    }

    /// Connection `epoch` is gone.
    pub fn handle_link_lost(&mut self, now: Instant, epoch: u64, reason: String) {
        self.event(now);
        if self.link.is_none_or(|l| l.epoch != epoch) {
            return;
        }
        self.link = None;
        self.carried_grant = None;
        self.walk.forget_in_flight();
        self.last_error = Some(reason);
        if self.alone_allowed() {
            // Going ALONE: a new generation marks "written without the peer".
            self.stage_ahead();
        } else if self.cfg.on_peer_loss == OnPeerLoss::Hold {
            self.hold_since = Some(self.now);
        }
        self.note_role();
    }

    /// A connection attempt failed (for the status).
    pub fn handle_connect_failed(&mut self, now: Instant, why: String) {
        self.event(now);
        self.last_error = Some(why);
    }

    /// True while a connection is wanted and none is up.
    pub fn wants_link(&self) -> bool {
        self.link.is_none()
    }

    // ---- the controller's orders -------------------------------------------

    /// `alone SECONDS`: the controller holds quorum until `now + secs`.
    pub fn handle_alone(&mut self, now: Instant, secs: Duration) -> Result<(), String> {
        self.event(now);
        if self.cfg.on_peer_loss != OnPeerLoss::Hold {
            return Err(format!(
                "this mount was started with --on-peer-loss={}: `alone` orders are for mounts under a controller (--on-peer-loss=hold)",
                if self.cfg.on_peer_loss == OnPeerLoss::Alone { "alone" } else { "fail" }
            ));
        }
        if self.fenced {
            return Err("this mount is fenced: `unfence` it first".into());
        }
        self.grant = Some(self.now + secs);
        if self.carried_grant.is_some() {
            // The controller's newest order is its promise.
            self.carried_grant = self.grant;
        }
        if self.link.is_none() {
            self.hold_since = None;
            self.stage_ahead();
            let held: Vec<OpId> = self.held.iter().copied().collect();
            self.stage()
                .releases
                .extend(held.into_iter().map(|op| (op, Verdict::Ack)));
        }
        self.note_role();
        Ok(())
    }

    /// `fence`: mutations fail with EIO from now on; held ones too.
    pub fn handle_fence(&mut self, now: Instant, why: &str) {
        self.event(now);
        self.fence(why.to_string());
        self.note_role();
    }

    fn fence(&mut self, why: String) {
        self.fenced = true;
        self.grant = None;
        self.carried_grant = None;
        self.hold_since = None;
        self.last_error = Some(why);
        for op in std::mem::take(&mut self.held) {
            self.release(op, Verdict::Fail(libc::EIO));
        }
    }

    /// `unfence`: back to HOLD (or ALONE, LOST per configuration), or to the
    /// connection's role.
    pub fn handle_unfence(&mut self, now: Instant) {
        self.event(now);
        if self.fenced {
            self.fenced = false;
            if self.link.is_none() && self.cfg.on_peer_loss == OnPeerLoss::Hold {
                self.hold_since = Some(self.now);
            }
        }
        self.note_role();
    }

    /// Time passed: a grant may have run out (back to HOLD), a hold may have
    /// lasted too long (FENCED).
    pub fn handle_tick(&mut self, now: Instant) {
        self.event(now);
        self.note_role();
    }

    fn expire(&mut self) {
        if self.carried_grant.is_some_and(|d| self.now >= d) {
            self.carried_grant = None;
        }
        if self.grant.is_some_and(|d| self.now >= d) {
            self.grant = None;
            if self.link.is_none() && !self.fenced && self.cfg.on_peer_loss == OnPeerLoss::Hold {
                self.hold_since = Some(self.now);
            }
        }
        if let Some(since) = self.hold_since {
            if self.now >= since + self.cfg.hold_timeout && self.current_role() == Role::Hold {
                self.fence(format!(
                    "no order came for {:.0} s (--hold-timeout): fenced",
                    self.cfg.hold_timeout.as_secs_f64()
                ));
            }
        }
    }

    /// When [`handle_tick`](Self::handle_tick) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let hold = self.hold_since.map(|s| s + self.cfg.hold_timeout);
        match (self.grant, hold) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn alone_allowed(&self) -> bool {
        !self.fenced
            && (self.cfg.on_peer_loss == OnPeerLoss::Alone
                || self.grant.is_some_and(|d| self.now < d))
    }

    fn release(&mut self, op: OpId, verdict: Verdict) {
        if !(self.held.remove(&op) || self.ops.contains_key(&op)) {
            return;
        }
        let o = self.ops.remove(&op);
        if o.as_ref().is_some_and(|o| o.early) {
            // Answered long ago: its verdict is a later sync op's.
            self.finish_early(op, verdict);
            return;
        }
        let verdict = if o.is_some_and(|o| self.is_sync(&o.touched)) {
            self.settle_or_wait(op, verdict)
        } else {
            verdict
        };
        if verdict != Verdict::Hold {
            self.actions.push_back(Action::Release(op, verdict));
        }
    }

    // ---- the resync's workers -------------------------------------------------

    /// A path a worker may visit now, if any: only while resyncing, and only
    /// one at a time while the application writes.
    pub fn next_job(&mut self, now: Instant) -> Option<Job> {
        self.now = self.now.max(now);
        let link = self.link.filter(|l| l.resync)?;
        if self.walk.busy() && self.app_active(self.now, RESYNC_YIELD) {
            return None;
        }
        let now = self.now;
        let retry = &self.retry;
        let ready = |p: &RelPath| retry.get(p).is_none_or(|(at, _)| now >= *at);
        // Renames are replayed before the visits they would race with (see
        // `Renames::waits_for`); with nothing in flight, a path goes anyway,
        // so that renames in a cycle cannot stop the walk.
        let (walk, renames) = (&self.walk, &self.renames);
        let pending = |t: &RelPath| walk.pending_or_in_flight(t);
        let found = walk
            .find_ready(|p| ready(p) && !renames.waits_for(p, pending))
            .or_else(|| {
                if walk.busy() {
                    None
                } else {
                    walk.find_ready(ready)
                }
            })?;
        let (path, full_dir) = self.walk.take_found(found, link.epoch);
        Some(Job {
            full: self.full || full_dir,
            path,
            epoch: link.epoch,
        })
    }

    /// `job`'s path is synchronised.
    pub fn handle_job_done(&mut self, job: &Job) {
        self.renames.visited(&job.path);
        self.walk.release(&job.path, job.epoch);
        self.retry.remove(&job.path);
        self.files_done += 1;
    }

    /// `job`'s path could not be synchronised: visit it again (after a
    /// failure, `why`: after a pause that doubles with each failure of the
    /// path, while the other paths go on).
    pub fn handle_job_retry(
        &mut self,
        now: Instant,
        job: &Job,
        why: Option<String>,
    ) -> Option<Duration> {
        self.now = self.now.max(now);
        self.walk.release(&job.path, job.epoch);
        let pause = why.map(|why| {
            let pause = self
                .retry
                .get(&job.path)
                .map_or(RETRY_FIRST, |(_, p)| (*p * 2).min(RETRY_MAX));
            self.retry
                .insert(job.path.clone(), (self.now + pause, pause));
            self.last_error = Some(format!(
                "resync of {}: {why}; retrying in {:.0} s",
                job.path,
                pause.as_secs_f64()
            ));
            pause
        });
        self.walk.insert(job.path.clone());
        pause
    }

    /// The resync found more paths to visit (children of a directory).
    pub fn add_pending(&mut self, paths: impl IntoIterator<Item = RelPath>) {
        self.walk.extend(paths);
    }

    /// The blocks of `p` to resend when only data blocks of it are dirty.
    pub fn dirty_blocks(&self, p: &RelPath) -> Option<Vec<u64>> {
        self.dirty.blocks(p).map(|b| b.iter().copied().collect())
    }

    /// The names the secondary may still hold what is now at `p` under.
    pub fn old_names(&self, p: &RelPath) -> Vec<RelPath> {
        self.renames.old_names(p)
    }

    /// The old names of objects renamed while apart that `p` is, or is below.
    pub fn old_names_above(&self, p: &RelPath) -> Vec<RelPath> {
        self.renames.old_names_above(p)
    }

    /// Hard links: the name the resync gave inode `key` first, if another
    /// than `path`; otherwise `path` becomes that name.
    pub fn first_name(&mut self, key: (u64, u64), path: &RelPath) -> Option<RelPath> {
        match self.first_names.get(&key) {
            Some(first) if first != path => Some(first.clone()),
            Some(_) => None,
            None => {
                self.first_names.insert(key, path.clone());
                None
            }
        }
    }

    /// Hard links: `path` is now the first name of inode `key`.
    pub fn set_first_name(&mut self, key: (u64, u64), path: &RelPath) {
        self.first_names.insert(key, path.clone());
    }

    /// Counts data bytes sent by the resync.
    pub fn handle_resync_sent(&mut self, bytes: u64) {
        self.bytes_sent = self.bytes_sent.saturating_add(bytes);
    }

    /// True when nothing is left to visit and no worker is visiting anything.
    pub fn walk_idle(&self) -> bool {
        self.walk.is_idle()
    }

    /// The application submitted an op within `within` before `now`.
    pub fn app_active(&self, now: Instant, within: Duration) -> bool {
        self.app_last
            .is_some_and(|t| now.saturating_duration_since(t) < within)
    }

    /// The pause between two resync turns ([`Primary::resync_turn`]): the
    /// pace's while the application writes, at most the floor's once it
    /// has written for [`FLOOR_AFTER`] without a break.
    fn resync_pause(&self, now: Instant) -> Duration {
        if !self.app_active(now, RESYNC_YIELD) {
            return Duration::ZERO;
        }
        let pause = self.pace.pause();
        let busy_for = self
            .app_since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        if busy_for >= FLOOR_AFTER {
            pause.min(self.cfg.longest_pause)
        } else {
            pause
        }
    }

    /// A resync worker asks to send its next piece or begin its next path:
    /// `None` when it may (the turn is its), else how long to wait before
    /// asking again. While the application writes, turns go one at a time
    /// and at least the pace's pause apart, whichever worker takes them:
    /// the workers busy with a path when the application woke do not each
    /// add their own stream of pieces. Always `None` while the application
    /// is idle or the pace asks for no pause.
    pub fn resync_turn(&mut self, now: Instant) -> Option<Duration> {
        self.now = self.now.max(now);
        let pause = self.resync_pause(self.now);
        if pause.is_zero() {
            return None;
        }
        match self
            .next_resync_turn
            .and_then(|t| t.checked_duration_since(self.now))
        {
            Some(wait) if !wait.is_zero() => Some(wait.min(pause)),
            _ => {
                self.next_resync_turn = Some(self.now + pause);
                None
            }
        }
    }

    /// The resync of `epoch` has nothing left and no op is in flight on it:
    /// the history the secondary must adopt, to be submitted now (under the
    /// sequencer). From here on the secondary may share our generation.
    pub fn handle_generation_sent(&mut self, epoch: u64) -> Option<Vec<u64>> {
        // No op may be in flight on the connection: one the secondary
        // refuses before the `SetGeneration` in the stream would leave it
        // holding our generation without our data, and the refusal would
        // come too late to be visited (the walk is idle). Under the
        // sequencer, nothing is submitted while this is decided and sent.
        let busy = self.ops_in_flight(epoch);
        let l = self
            .link
            .as_mut()
            .filter(|l| l.epoch == epoch && l.resync)?;
        if busy || !self.walk.is_idle() {
            return None;
        }
        l.peer_marked = false;
        l.generation_sent = self.history.current();
        self.peer_may_share = true;
        Some(self.history.ids().iter().map(|g| g.0).collect())
    }

    /// True while an op sent on connection `epoch` awaits its answer.
    pub fn ops_in_flight(&self, epoch: u64) -> bool {
        self.ops
            .values()
            .any(|o| o.submitted.is_some() && o.epoch == Some(epoch))
    }

    /// The connection whose resync runs, if one does.
    pub fn resync_epoch(&self) -> Option<u64> {
        self.link.filter(|l| l.resync).map(|l| l.epoch)
    }

    /// The secondary confirmed the history sent on `epoch`: if nothing became
    /// pending in the meantime, and our generation is still the one sent,
    /// both sides hold the same data (staged: the dirty records are
    /// cleared; held ops are answered). A new generation since (an op
    /// acknowledged without the secondary that changed no path: a refused
    /// fsync or barrier) makes the resync conclude again, with it.
    pub fn handle_resync_complete(&mut self, now: Instant, epoch: u64) -> bool {
        self.event(now);
        let current = self.history.current();
        let ok = self.link.is_some_and(|l| {
            l.epoch == epoch
                && l.resync
                && l.generation_sent.is_some()
                && l.generation_sent == current
        }) && self.walk.is_idle();
        if ok {
            let held: Vec<OpId> = self.held.iter().copied().collect();
            let s = self.stage();
            s.durable.clear_dirty = true;
            s.complete = Some(epoch);
            s.releases
                .extend(held.into_iter().map(|op| (op, Verdict::Ack)));
        }
        ok
    }

    // ---- what the driver reads -------------------------------------------------

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The role now.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The connection's epoch, if one is up.
    pub fn epoch(&self) -> Option<u64> {
        self.link.map(|l| l.epoch)
    }

    /// The generation history.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The dirty set.
    pub fn dirty(&self) -> &DirtySet {
        &self.dirty
    }

    /// Paths to resync that could not be recorded durably.
    pub fn volatile(&self) -> &BTreeSet<RelPath> {
        &self.volatile
    }

    /// The oldest op sent to the secondary whose outcome has not come: the
    /// activity log keeps the directories of every op from it on (after a
    /// crash of this node they are compared), however long the answer
    /// takes (an early-answered op of an on-sync mount may wait long).
    pub fn oldest_in_flight(&self) -> Option<OpId> {
        self.ops
            .iter()
            .find(|(_, o)| o.submitted.is_some())
            .map(|(id, _)| *id)
    }

    /// No op of the application is open (begun and not concluded).
    pub fn quiet(&self) -> bool {
        self.ops.is_empty()
    }

    /// The id the next op begun gets.
    pub fn next_op(&self) -> OpId {
        OpId(self.next_op)
    }

    /// Early-answered ops awaiting the secondary's answer, and their bytes
    /// (see [`Bound`]).
    pub fn early_in_flight(&self) -> (u64, u64) {
        (self.early_ops, self.early_bytes)
    }

    /// Ops waiting for a decision.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// A snapshot for the status.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let resync = self.resync_progress();
        Snapshot {
            role: self.role,
            in_sync: self.role == Role::Prim && self.dirty.is_empty() && self.volatile.is_empty(),
            connected: self.link.is_some(),
            dirty_files: self.dirty.len() as u64,
            dirty_bytes: self.dirty_bytes,
            resync,
            history: self.history.clone(),
            grant_left: self.grant.map(|d| d.saturating_duration_since(now)),
            held_ops: self.held.len() as u64,
            last_error: self.last_error.clone(),
            role_since: self.role_since,
        }
    }

    /// The running resync's counters, if one runs.
    pub fn resync_progress(&self) -> Option<Progress> {
        self.link.filter(|l| l.resync).map(|_| Progress {
            files_done: self.files_done,
            files_left: self.walk.left() as u64,
            bytes_sent: self.bytes_sent,
            started: self.resync_started,
            full: self.full,
        })
    }

    fn current_role(&self) -> Role {
        if self.fenced {
            Role::Fenced
        } else if let Some(l) = self.link {
            if l.resync {
                Role::Resync
            } else {
                Role::Prim
            }
        } else if self.alone_allowed() {
            Role::Alone
        } else if self.cfg.on_peer_loss == OnPeerLoss::Hold {
            Role::Hold
        } else {
            Role::Lost
        }
    }

    fn note_role(&mut self) {
        let role = self.current_role();
        if role != self.role {
            self.actions.push_back(Action::RoleChanged {
                from: self.role,
                to: role,
            });
            self.role = role;
            self.role_since = self.now;
        }
    }
}

#[cfg(test)]
#[path = "primary_test.rs"]
mod tests;
