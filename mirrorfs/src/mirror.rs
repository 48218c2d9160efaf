//! [`Mirror`]: the thin driver of the primary's replication core
//! ([`Primary`], sans-IO, in `proto/primary.rs`, where every decision and
//! its rules live).
//!
//! Owns what the core must not touch: the metadata files (the generation
//! history, the dirty log and the activity log, written before a decision
//! that needs them takes effect), the connection to the secondary ([`Link`],
//! one per epoch), the clock, the supervisor thread (reconnects with backoff,
//! notices a lost connection, wakes the core at its deadlines) and the
//! replies of the application's calls that wait for a controller's decision
//! (parked, so that no FUSE thread is pinned while HOLD lasts), and with
//! `--ack=on-sync` the completion thread that concludes the ops answered
//! when queued, in submission order, off the application's path, and the
//! bounded wait for room among them (back-pressure). The overlay
//! reaches it through [`Replicate`] (`MirrorRef`), the resync workers
//! through the `resync_*` methods, the control socket through `status`,
//! `alone`, `fence` and `unfence`.
//!
//! Must not: decide anything the core decides; acknowledge a mutation the
//! core did not; let a decision take effect before what it needs is durable.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::ctl::{Changes, Status};
use crate::fs::replicate::{Begun, Replicate, Reply, Ticket};
use crate::meta::{ActivityLog, DirtyLog, Meta};
use crate::net::client::{ConnectError, Link, LinkConfig};
use crate::proto::dirty::DirtySet;
use crate::proto::path::RelPath;
pub use crate::proto::primary::{AckMode, OnPeerLoss, Role, RESYNC_YIELD};
use crate::proto::primary::{
    Action, Bound, Config, Durable, Job, OpId, OpResult, Primary, Touched, Verdict,
};
use crate::proto::wire::{HandleId, Op};

/// How long one reconnection attempt waits for the peer's first answer
/// (one that answered has the rest of the handshake to finish); attempts to
/// a peer that does not answer start this far apart. Within one attempt the
/// handshake's first packet is resent after ~75 ms and ~225 ms: a returning
/// peer is found ~60 ms after it listens, on average (attempts of 1 s 250 ms
/// apart, whose resends back off, took ~260 ms); a dead one costs a few
/// handshake packets a second.
const RECONNECT_ATTEMPT: Duration = Duration::from_millis(250);
/// The pause before the next attempt after a peer that answered but
/// refused (certificates, versions), doubled each time up to 5 s.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

/// One path handed to a resync worker.
#[derive(Debug)]
pub struct ResyncJob {
    /// The path to make equal on the secondary.
    pub path: RelPath,
    /// Compare every child of it (a directory), not just the differing ones.
    pub full: bool,
    /// The connection to use.
    pub link: Arc<Link>,
    job: Job,
}

/// What a resync worker is to do next.
#[derive(Debug)]
pub enum ResyncWork {
    /// Visit a path.
    Path(ResyncJob),
    /// Nothing is left to visit on this connection: conclude the resync
    /// (the secondary adopts our history).
    Finish(Arc<Link>),
}

/// How the mirror starts.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// How to reach the secondary.
    pub link: LinkConfig,
    /// What to do when it is lost.
    pub on_peer_loss: OnPeerLoss,
    /// When mutations are answered (`--ack`).
    pub ack: AckMode,
    /// Start without waiting for the peer (ALONE, or HOLD until the
    /// controller's `alone` with [`OnPeerLoss::Hold`]).
    pub start_alone: bool,
    /// Compare every file by checksum at the next resync.
    pub full_resync: bool,
    /// Upper bound of the resync's data rate, bytes per second (None: adaptive only).
    pub resync_rate_limit: Option<u64>,
    /// The resync's floor, bytes per second, once the application has
    /// written for [`crate::proto::primary::FLOOR_AFTER`] without a break
    /// (0: none; the pace may then hold it to
    /// [`crate::proto::pace::MAX_PAUSE`] between turns). The rate limit
    /// wins where it is lower.
    pub resync_min_rate: u64,
    /// With [`OnPeerLoss::Hold`]: how long mutations wait for the
    /// controller's order before the mount fences itself.
    pub hold_timeout: Duration,
}

/// Resync progress counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResyncProgress {
    /// Paths synchronised in this resync.
    pub files_done: u64,
    /// Paths still to do (grows while directories are walked).
    pub files_left: u64,
    /// Data bytes sent.
    pub bytes_sent: u64,
    /// Seconds since the resync started.
    pub elapsed_secs: f64,
    /// Bytes per second so far.
    pub rate_bytes_per_sec: f64,
    /// Whether every file is compared by checksum (first sync, or --full).
    pub full: bool,
    /// Estimated seconds left, from the pace of paths so far.
    pub eta_secs: Option<f64>,
}

struct Inner {
    core: Primary,
    dirty: DirtyLog,
    /// Directories with mutations in the last epochs (crash safety).
    activity: ActivityLog,
    /// The connection, with its epoch.
    link: Option<(u64, Arc<Link>)>,
    /// Replies of held ops, answered when the core releases them.
    parked: HashMap<OpId, Reply>,
    /// A worker concludes the resync now; when the next may try.
    finishing: bool,
    next_finish: Instant,
    shutdown: bool,
    /// The first op of the current activity epoch: the epoch before it is
    /// dropped only once every op begun before this one has its outcome.
    activity_from: OpId,
    /// A mutation waits for room among the early-answered ops
    /// ([`Primary::room_for`]): tell it when an outcome comes.
    room_wanted: bool,
    /// The resync's connection as of the last [`Mirror::finish`]: when it
    /// changes, the resync workers are woken (they sleep while there is
    /// none).
    resync_seen: Option<u64>,
}

/// The primary's replication driver.
pub struct Mirror {
    cfg: MirrorConfig,
    meta: Meta,
    inner: Mutex<Inner>,
    /// Wakes the supervisor and the resync workers.
    changed: Condvar,
    /// Wakes a mutation waiting for room among the early-answered ops.
    room: Condvar,
    /// `--ack=on-sync`: the tickets of early-answered ops, in submission
    /// order, to the completion thread that concludes them (at most the
    /// core's [`Bound`] of them: the channel needs no bound of its own).
    early: Option<crossbeam_channel::Sender<Ticket>>,
    /// Counts changes for the control socket's watchers.
    changes: Changes,
    /// How long an op's answer is waited for at most (the link answers every
    /// op itself; this only guards against a driver that is gone).
    limit: Duration,
}

impl fmt::Debug for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mirror").finish_non_exhaustive()
    }
}

/// Why the mirror could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The metadata area could not be read or written.
    #[error("metadata area {dir}: {source}")]
    Meta {
        /// The directory.
        dir: String,
        /// The error.
        source: io::Error,
    },
    /// The peer could not be reached at start (and --alone was not given).
    #[error("{0}")]
    Connect(#[from] ConnectError),
    /// The histories forbid replicating to this peer.
    #[error("{0}")]
    Refused(String),
}

/// A random seed for the core's generation ids.
fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: b is a valid buffer of its length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 8 {
        return u64::from_ne_bytes(b);
    }
    // getrandom cannot fail for 8 bytes after boot; fall back to the clock.
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ u64::from(std::process::id())
}

/// Things to do once the lock is released: answer parked replies.
#[must_use]
struct After(Vec<(Reply, io::Result<()>)>);

impl After {
    fn run(self) {
        for (reply, r) in self.0 {
            reply(r);
        }
    }
}

fn verdict_result(v: Verdict) -> io::Result<()> {
    match v {
        Verdict::Ack => Ok(()),
        Verdict::Fail(e) => Err(io::Error::from_raw_os_error(e)),
        Verdict::Hold => Err(io::Error::from_raw_os_error(libc::EIO)),
    }
}

impl Mirror {
    /// Opens the metadata area of `backing`, connects (unless starting
    /// without the peer) and starts the supervisor. The returned mirror is
    /// ready for the overlay.
    pub fn start(backing: &std::path::Path, cfg: MirrorConfig) -> Result<Arc<Self>, StartError> {
        let meta_err = |source| StartError::Meta {
            dir: backing.join(crate::meta::META_DIR).display().to_string(),
            source,
        };
        let meta = Meta::open(backing).map_err(meta_err)?;
        let history = meta.load_history().map_err(meta_err)?;
        let dirty = meta.dirty_log().map_err(meta_err)?;
        let activity = meta.activity_log().map_err(meta_err)?;
        let set = DirtySet::from_parts(dirty.paths(), |p| dirty.blocks(p).cloned(), dirty.trees());
        let now = Instant::now();
        let core = Primary::new(
            Config {
                on_peer_loss: cfg.on_peer_loss,
                hold_timeout: cfg.hold_timeout,
                full: cfg.full_resync,
                seed: random_seed(),
                me: cfg.link.identity.name.clone(),
                peer: cfg.link.pinned.name.clone(),
                ack: cfg.ack,
                bound: Bound::default(),
                longest_pause: crate::fs::resync::longest_pause(
                    cfg.resync_rate_limit
                        .filter(|l| *l > 0)
                        .map_or(cfg.resync_min_rate, |l| l.min(cfg.resync_min_rate)),
                ),
            },
            now,
            history,
            set,
        );
        let limit = cfg.link.stall_timeout.max(cfg.link.peer_timeout) * 2 + Duration::from_secs(1);
        let (early_tx, early_rx) = match cfg.ack {
            AckMode::OnSync => {
                let (tx, rx) = crossbeam_channel::unbounded::<Ticket>();
                (Some(tx), Some(rx))
            }
            AckMode::EachOp => (None, None),
        };
        let mirror = Arc::new(Self {
            meta,
            inner: Mutex::new(Inner {
                core,
                dirty,
                activity,
                link: None,
                parked: HashMap::new(),
                finishing: false,
                next_finish: now,
                shutdown: false,
                activity_from: OpId(0),
                room_wanted: false,
                resync_seen: None,
            }),
            changed: Condvar::new(),
            room: Condvar::new(),
            early: early_tx,
            changes: Changes::default(),
            limit,
            cfg,
        });
        {
            let mut st = mirror.lock();
            st.core.handle_start(now, mirror.cfg.start_alone);
            if let Err(e) = mirror.persist(&mut st) {
                return Err(meta_err(e));
            }
            mirror.finish(&mut st).run();
        }
        if !mirror.cfg.start_alone {
            let link = {
                let st = mirror.lock();
                Link::connect(&mirror.cfg.link, st.core.history())?
            };
            mirror.connected(link).map_err(StartError::Refused)?;
        }
        if let Some(rx) = early_rx {
            let m = mirror.clone();
            thread::Builder::new()
                .name("mirrorfs-completion".into())
                .spawn(move || m.complete_early(&rx))
                .map_err(|e| StartError::Meta {
                    dir: "completion thread".into(),
                    source: e,
                })?;
        }
        let m = mirror.clone();
        thread::Builder::new()
            .name("mirrorfs-supervisor".into())
            .spawn(move || m.supervise())
            .map_err(|e| StartError::Meta {
                dir: "supervisor thread".into(),
                source: e,
            })?;
        Ok(mirror)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes what the core staged and commits it; on failure aborts it
    /// (the caller says which op it concerned) and returns the error.
    fn persist(&self, st: &mut Inner) -> io::Result<()> {
        let Some(d) = st.core.take_durable() else {
            return Ok(());
        };
        match self.write_durable(st, &d) {
            Ok(()) => {
                st.core.commit();
                Ok(())
            }
            Err(e) => {
                error!(error = %e, "cannot write the mirror's metadata (generation history, dirty log): refusing what needed it");
                Err(e)
            }
        }
    }

    fn write_durable(&self, st: &mut Inner, d: &Durable) -> io::Result<()> {
        if let Some(h) = &d.history {
            self.meta.save_history(h)?;
            if let Some(id) = h.current() {
                info!(generation = %id, "new generation: changes are acknowledged without the secondary");
            }
        }
        let m = &d.marks;
        if !m.trees.is_empty() {
            st.dirty.mark_trees(&m.trees)?;
        }
        if !m.whole.is_empty() {
            st.dirty.mark(&m.whole)?;
        }
        if let Some((p, offset, len)) = &m.range {
            st.dirty.mark_range(p, *offset, *len)?;
        }
        if d.clear_dirty {
            st.dirty.clear()?;
        }
        Ok(())
    }

    /// Carries out what the core asks after an event; returns the replies to
    /// answer once the lock is released.
    fn finish(&self, st: &mut Inner) -> After {
        let mut after = Vec::new();
        let mut changed = false;
        while let Some(a) = st.core.poll_action() {
            changed = true;
            match a {
                Action::Release(op, v) => {
                    if let Some(reply) = st.parked.remove(&op) {
                        after.push((reply, verdict_result(v)));
                    }
                }
                Action::BeginResync { epoch, generation } => {
                    if let Some((_, link)) = st.link.as_ref().filter(|(e, _)| *e == epoch) {
                        // First on the stream, before any resync op: the
                        // secondary marks itself inconsistent until the
                        // resync's SetGeneration. Nobody waits for it.
                        drop(link.submit(Op::BeginResync { generation }));
                    }
                }
                Action::RoleChanged { from, to } => {
                    info!(%from, %to, "role change");
                }
            }
        }
        // A resync may begin without an action (the secondary still marked
        // inconsistent from the last one).
        let resync = st.core.resync_epoch();
        if resync != st.resync_seen {
            st.resync_seen = resync;
            changed = true;
        }
        if changed {
            self.notify();
        }
        After(after)
    }

    /// Wakes the threads waiting for a change of the state, and the control
    /// socket's watchers.
    fn notify(&self) {
        self.changes.bump();
        self.changed.notify_all();
    }

    /// Waits until the change count differs from `seen` (or `timeout`
    /// passes) and returns it: what the control socket's `watch` waits on.
    pub fn wait_change(&self, seen: u64, timeout: Duration) -> u64 {
        self.changes.wait(seen, timeout)
    }

    /// Starts a new activity epoch. The caller holds the overlay's sequencer
    /// (no mutation half-applied) and has flushed the backing filesystem since
    /// the previous rotation, so the epoch dropped now is durable locally.
    ///
    /// Not while an op begun before the previous rotation awaits its
    /// outcome (its directories are only in the epoch that would be
    /// dropped, and a crash now must still compare them): an early-answered
    /// op of an on-sync mount may wait long; so may any op on a stalled
    /// secondary. The next rotation tries again.
    pub fn rotate_activity(&self) {
        let mut st = self.lock();
        if let Some(op) = st
            .core
            .oldest_in_flight()
            .filter(|op| *op < st.activity_from)
        {
            info!(
                op = op.0,
                "an operation older than the activity epoch awaits the secondary: keeping the epoch"
            );
            return;
        }
        match st.activity.rotate() {
            Ok(()) => st.activity_from = st.core.next_op(),
            Err(e) => {
                warn!(error = %e, "cannot rotate the activity log; keeping the old epochs")
            }
        }
    }

    /// The completion thread of an on-sync mount: concludes the
    /// early-answered ops in submission order as their answers come (their
    /// applications were answered at submission; a sync op waiting for
    /// them is answered from here).
    fn complete_early(&self, rx: &crossbeam_channel::Receiver<Ticket>) {
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(ticket) => ticket.finish(Box::new(|_| {})),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if self.is_shut_down() {
                        return;
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// True once the mount is going away.
    pub fn is_shut_down(&self) -> bool {
        self.lock().shutdown
    }

    /// The mount is going away (unmounted: nothing new comes): waits until
    /// the early-answered ops (on-sync) have their outcomes, or the
    /// connection is lost, or at most the longest wait for an answer; what
    /// is left is in the activity log (compared at the next start).
    pub fn drain(&self) {
        let deadline = Instant::now() + self.limit;
        let mut st = self.lock();
        let mut logged = false;
        loop {
            let (left, _) = st.core.early_in_flight();
            let lost = st.link.as_ref().is_none_or(|(_, l)| l.lost().is_some());
            let now = Instant::now();
            if left == 0 || lost || now >= deadline {
                return;
            }
            if !logged {
                info!(ops = left, "unmounted: waiting for the secondary to answer the operations answered before it did");
                logged = true;
            }
            st.room_wanted = true;
            st = self
                .room
                .wait_timeout(st, (deadline - now).min(Duration::from_millis(100)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The mount is gone and [`Mirror::drain`]ed. The activity log is kept
    /// so that after a crash of this node the directories with recent
    /// mutations are compared with the peer's; with no op of the
    /// application open, once `backing`'s file system is flushed it guards
    /// nothing, and is cleared: a clean restart does not compare (and send
    /// again) everything written in the last minute. An op still open (the
    /// secondary did not answer in time) keeps it.
    pub fn settle(&self, backing: &std::path::Path) {
        if !self.lock().core.quiet() {
            info!("operations still await the secondary: the next start compares the directories they changed");
            return;
        }
        if let Err(e) = crate::meta::syncfs(backing) {
            warn!(error = %e, "syncfs of the backing file system failed at unmount: the next start compares the directories changed recently");
            return;
        }
        let mut st = self.lock();
        if !st.core.quiet() {
            return;
        }
        if let Err(e) = st.activity.clear() {
            warn!(error = %e, "cannot clear the activity log: the next start compares the directories changed recently");
        }
    }

    /// Stops the supervisor (the mount is going away).
    pub fn shutdown(&self) {
        self.lock().shutdown = true;
        self.notify();
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.lock().core.role()
    }

    /// True while the secondary is reachable but reports no progress with
    /// ops waiting for it ([`Link::stalled`]); cheap, for the control
    /// socket's watchers (the status's `stalled`).
    pub fn stalled(&self) -> bool {
        self.lock()
            .link
            .as_ref()
            .is_some_and(|(_, l)| l.lost().is_none() && l.stalled().is_some())
    }

    /// A snapshot for the control socket (`status`, `watch`): O(1).
    pub fn status(&self) -> Status {
        let st = self.lock();
        let now = Instant::now();
        let snap = st.core.snapshot(now);
        let link = st.link.as_ref().map(|(_, l)| l);
        let connected = snap.connected && link.is_some_and(|l| l.lost().is_none());
        let resync = snap.resync.map(|r| {
            let elapsed = now.saturating_duration_since(r.started).as_secs_f64();
            ResyncProgress {
                files_done: r.files_done,
                files_left: r.files_left,
                bytes_sent: r.bytes_sent,
                elapsed_secs: elapsed,
                rate_bytes_per_sec: if elapsed > 0.0 {
                    r.bytes_sent as f64 / elapsed
                } else {
                    0.0
                },
                full: r.full,
                eta_secs: (r.files_done > 0)
                    .then(|| elapsed / r.files_done as f64 * r.files_left as f64),
            }
        });
        let under_controller = self.cfg.on_peer_loss == OnPeerLoss::Hold;
        Status {
            version: crate::ctl::VERSION,
            role: match snap.role {
                Role::Prim => crate::ctl::Role::Prim,
                Role::Resync => crate::ctl::Role::Resync,
                Role::Alone => crate::ctl::Role::Alone,
                Role::Lost => crate::ctl::Role::Lost,
                Role::Hold => crate::ctl::Role::Hold,
                Role::Fenced => crate::ctl::Role::Fenced,
            },
            in_sync: snap.in_sync && connected,
            connected,
            dirty_files: snap.dirty_files,
            dirty_bytes: snap.dirty_bytes,
            resync,
            generation: snap.history.current().map(|g| g.to_string()),
            history: snap.history.ids().iter().map(|g| g.to_string()).collect(),
            stalled: connected && link.is_some_and(|l| l.stalled().is_some()),
            pid: std::process::id(),
            last_error: snap.last_error,
            peer: Some(self.cfg.link.peer.to_string()),
            peer_node: self.cfg.link.pinned.name.clone(),
            role_secs: now.saturating_duration_since(snap.role_since).as_secs_f64(),
            ops_in_flight: Some(link.map_or(0, |l| l.in_flight())),
            alone_secs_left: under_controller.then(|| snap.grant_left.map(|d| d.as_secs_f64())),
            held_ops: under_controller.then_some(snap.held_ops),
            primary_connected: None,
            last_applied: None,
            resync_running: None,
            inconsistent: None,
            ack: Some(self.cfg.ack),
        }
    }

    // ---- the controller's orders ---------------------------------------------

    /// `alone SECONDS`: the controller holds quorum that long.
    pub fn alone(&self, secs: Duration) -> Result<(), String> {
        let mut st = self.lock();
        st.core.handle_alone(Instant::now(), secs)?;
        if let Err(e) = self.persist(&mut st) {
            st.core.abort(None, false);
            self.finish(&mut st).run();
            return Err(format!(
                "cannot record the new generation in {}: {e}; the held changes stay held",
                self.meta.dir().display()
            ));
        }
        info!(secs = secs.as_secs_f64(), "the controller grants ALONE");
        let after = self.finish(&mut st);
        drop(st);
        after.run();
        Ok(())
    }

    /// `fence`: mutations fail with EIO from now on.
    pub fn fence(&self) {
        let mut st = self.lock();
        st.core
            .handle_fence(Instant::now(), "fenced by the controller");
        warn!("fenced by the controller: mutations fail with EIO until unfence");
        let after = self.finish(&mut st);
        drop(st);
        after.run();
    }

    /// `unfence`: back to HOLD, or through a resync to PRIM.
    pub fn unfence(&self) {
        let mut st = self.lock();
        st.core.handle_unfence(Instant::now());
        info!("unfenced by the controller");
        let after = self.finish(&mut st);
        drop(st);
        after.run();
    }

    // ---- the connection ---------------------------------------------------------

    /// A connection is up: the core decides from the histories what to do
    /// with it (refused: split brain, or a secondary with newer data).
    fn connected(&self, link: Link) -> Result<(), String> {
        let mut st = self.lock();
        let suspects: BTreeSet<RelPath> = st.activity.suspects();
        let r = st.core.handle_link_up(
            Instant::now(),
            link.peer_history(),
            link.peer_suspects(),
            suspects,
        );
        match r {
            Ok(epoch) => {
                st.link = Some((epoch, Arc::new(link)));
                let after = self.finish(&mut st);
                drop(st);
                after.run();
                Ok(())
            }
            Err(why) => {
                error!("{why}");
                self.finish(&mut st).run();
                Err(why)
            }
        }
    }

    /// The connection of `epoch` is gone.
    fn lost(&self, epoch: u64, reason: String) {
        let mut st = self.lock();
        if st.link.as_ref().is_some_and(|(e, _)| *e == epoch) {
            st.link = None;
        }
        st.core
            .handle_link_lost(Instant::now(), epoch, reason.clone());
        if self.persist(&mut st).is_err() {
            // The new generation stays to be made before the first change
            // acknowledged without the secondary.
            st.core.abort(None, false);
        }
        warn!(%reason, role = %st.core.role(), "the secondary is lost");
        let after = self.finish(&mut st);
        drop(st);
        after.run();
    }

    /// Reconnects with backoff while disconnected; notices connection loss;
    /// wakes the core at its deadlines (a grant running out, the hold timeout).
    fn supervise(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(200);
        let mut next_attempt = Instant::now();
        loop {
            let (link, deadline, shutdown) = {
                let mut st = self.lock();
                st.core.handle_tick(Instant::now());
                let after = self.finish(&mut st);
                let x = (st.link.clone(), st.core.poll_timeout(), st.shutdown);
                drop(st);
                after.run();
                x
            };
            if shutdown {
                return;
            }
            // Never sleep past a deadline of the core.
            let until = |t: Instant| {
                deadline
                    .map_or(t, |d| d.min(t))
                    .saturating_duration_since(Instant::now())
            };
            if let Some((epoch, link)) = link {
                if link.wait_lost(until(Instant::now() + Duration::from_millis(500))) {
                    let reason = link.lost().unwrap_or_default();
                    self.lost(epoch, reason);
                    backoff = Duration::from_millis(200);
                    next_attempt = Instant::now() + backoff;
                }
                continue;
            }
            if Instant::now() < next_attempt {
                let st = self.lock();
                let _ = self
                    .changed
                    .wait_timeout_while(st, until(next_attempt), |s| !s.shutdown)
                    .unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let history = self.lock().core.history().clone();
            let attempt = Instant::now();
            match Link::connect_within(&self.cfg.link, &history, RECONNECT_ATTEMPT) {
                Ok(link) => match self.connected(link) {
                    Ok(()) => backoff = Duration::from_millis(200),
                    Err(_) => backoff = Duration::from_secs(5),
                },
                Err(e) => {
                    backoff = match e {
                        // The next attempt RECONNECT_ATTEMPT after this one
                        // began (at once when it waited that long).
                        ConnectError::Unreachable { .. } => {
                            (attempt + RECONNECT_ATTEMPT).saturating_duration_since(Instant::now())
                        }
                        // A peer that answers but refuses (certificates,
                        // versions): an operator must act; do not hammer it.
                        _ => (backoff * 2).clamp(RECONNECT_PAUSE, Duration::from_secs(5)),
                    };
                    let mut st = self.lock();
                    st.core.handle_connect_failed(Instant::now(), e.to_string());
                    drop(st);
                    self.notify();
                }
            }
            next_attempt = Instant::now() + backoff;
        }
    }

    // ---- the resync workers' interface --------------------------------------

    /// Waits until there is resync work a worker may take (or shutdown:
    /// `None`). Several workers visit paths at once (see the core's walk);
    /// while the application is writing, only one. When nothing is left to
    /// visit, one worker at a time is told to conclude.
    pub fn next_resync_work(&self) -> Option<ResyncWork> {
        let mut st = self.lock();
        loop {
            if st.shutdown {
                return None;
            }
            let now = Instant::now();
            if let Some(job) = st.core.next_job(now) {
                match st
                    .link
                    .clone()
                    .filter(|(e, l)| *e == job.epoch && l.lost().is_none())
                {
                    Some((_, link)) => {
                        // Another worker looks for a next path (and wakes
                        // the next if it finds one): as many wake as there
                        // are paths to take, not every worker per path.
                        self.changed.notify_one();
                        return Some(ResyncWork::Path(ResyncJob {
                            path: job.path.clone(),
                            full: job.full,
                            link,
                            job,
                        }));
                    }
                    // Not on a lost connection: until the supervisor notices,
                    // every op on it would fail at once.
                    None => {
                        st.core.handle_job_retry(now, &job, None);
                    }
                }
            } else if let Some(epoch) = st.core.resync_epoch() {
                let link = st
                    .link
                    .clone()
                    .filter(|(e, l)| *e == epoch && l.lost().is_none());
                if let (Some((_, link)), true, false, true) = (
                    link,
                    st.core.walk_idle(),
                    st.finishing,
                    now >= st.next_finish,
                ) {
                    st.finishing = true;
                    return Some(ResyncWork::Finish(link));
                }
            }
            let wait = if st.core.resync_epoch().is_none() {
                // No resync: its start wakes the workers ([`Mirror::finish`]);
                // this only bounds a missed wake-up.
                Duration::from_secs(1)
            } else if st.core.app_active(now, RESYNC_YIELD) {
                Duration::from_millis(20)
            } else {
                Duration::from_millis(100)
            };
            st = self
                .changed
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The worker told to conclude is done (whether the resync completed or
    /// not: if not, another tries a little later).
    pub fn finish_done(&self) {
        let mut st = self.lock();
        st.finishing = false;
        st.next_finish = Instant::now() + Duration::from_millis(50);
    }

    /// True while an op sent on `link` awaits its answer.
    pub fn ops_in_flight(&self, link: &Arc<Link>) -> bool {
        let st = self.lock();
        st.link
            .as_ref()
            .filter(|(_, l)| Arc::ptr_eq(l, link))
            .is_some_and(|(e, _)| st.core.ops_in_flight(*e))
    }

    /// Hard links: the name the resync gave inode `key` first, if another
    /// than `path`; otherwise `path` becomes that name.
    pub fn resync_first_name(&self, key: (u64, u64), path: &RelPath) -> Option<RelPath> {
        self.lock().core.first_name(key, path)
    }

    /// Hard links: `path` is now the first name of inode `key`.
    pub fn resync_rename_first(&self, key: (u64, u64), path: &RelPath) {
        self.lock().core.set_first_name(key, path);
    }

    /// The names the secondary may still hold what is now at `p` under.
    pub fn old_names(&self, p: &RelPath) -> Vec<RelPath> {
        self.lock().core.old_names(p)
    }

    /// The old names of objects renamed while apart that `p` is, or is below.
    pub fn old_names_above(&self, p: &RelPath) -> Vec<RelPath> {
        self.lock().core.old_names_above(p)
    }

    /// The blocks of `p` to resend when only data blocks of it are dirty.
    pub fn dirty_blocks(&self, p: &RelPath) -> Option<Vec<u64>> {
        self.lock().core.dirty_blocks(p)
    }

    /// The resync found more paths to visit (children of a directory).
    pub fn add_pending(&self, paths: impl IntoIterator<Item = RelPath>) {
        self.lock().core.add_pending(paths);
        self.changed.notify_all();
    }

    /// `job`'s path could not be synchronised: visit it again, and say why
    /// (a failure: after a pause that doubles with each failure of the path,
    /// while the other paths go on).
    pub fn resync_retry(&self, job: &ResyncJob, why: Option<String>) {
        self.lock()
            .core
            .handle_job_retry(Instant::now(), &job.job, why);
        self.notify();
    }

    /// True when the application submitted an op in the last `within`.
    pub fn app_active(&self, within: Duration) -> bool {
        self.lock().core.app_active(Instant::now(), within)
    }

    /// Waits, while the application writes, until a resync worker may send
    /// its next piece or begin its next path (the core's
    /// [`Primary::resync_turn`](crate::proto::primary::Primary::resync_turn)).
    pub fn resync_turn(&self) {
        loop {
            let wait = {
                let mut st = self.lock();
                if st.shutdown {
                    return;
                }
                match st.core.resync_turn(Instant::now()) {
                    None => return,
                    Some(wait) => wait,
                }
            };
            // Then ask again: the pause may have shrunk, or the application
            // gone idle.
            thread::sleep(wait);
        }
    }

    /// The configured cap on the resync's data rate, bytes per second.
    pub fn resync_rate_limit(&self) -> Option<u64> {
        self.cfg.resync_rate_limit
    }

    /// Counts data bytes sent by the resync.
    pub fn resync_sent(&self, bytes: u64) {
        self.lock().core.handle_resync_sent(bytes);
        self.changes.bump();
    }

    /// `job`'s path is synchronised.
    pub fn resync_done(&self, job: &ResyncJob) {
        self.lock().core.handle_job_done(&job.job);
        self.changes.bump();
        // One worker looks at what this made ready (the next path, or the
        // resync's conclusion), not all of them: with the application
        // writing, one path goes at a time, and waking every idle worker
        // at each path's end had them all queue on this lock in front of
        // the application's ops.
        self.changed.notify_one();
    }

    /// True when nothing is left to visit and no worker is visiting anything.
    pub fn resync_idle(&self) -> bool {
        self.lock().core.walk_idle()
    }

    /// Under the sequencer: the history the secondary must adopt on `link`,
    /// when the resync has nothing left and no op is in flight on it.
    pub fn generation_to_send(&self, link: &Arc<Link>) -> Option<Vec<u64>> {
        let mut st = self.lock();
        let epoch = st
            .link
            .as_ref()
            .filter(|(_, l)| Arc::ptr_eq(l, link))
            .map(|(e, _)| *e)?;
        st.core.handle_generation_sent(epoch)
    }

    /// The secondary confirmed the history sent on `link`: if nothing became
    /// pending in the meantime, both sides hold the same data.
    pub fn resync_complete(&self, link: &Arc<Link>) -> io::Result<bool> {
        let mut st = self.lock();
        let Some(epoch) = st
            .link
            .as_ref()
            .filter(|(_, l)| Arc::ptr_eq(l, link))
            .map(|(e, _)| *e)
        else {
            return Ok(false);
        };
        let now = Instant::now();
        // The counters of the resync that is ending (the log line is what
        // operators and benches/resync read: `files= bytes= secs=`).
        let progress = st.core.resync_progress();
        if !st.core.handle_resync_complete(now, epoch) {
            return Ok(false);
        }
        if let Err(e) = self.persist(&mut st) {
            st.core.abort(None, false);
            return Err(e);
        }
        match progress {
            Some(p) => info!(
                files = p.files_done,
                bytes = p.bytes_sent,
                secs = now.saturating_duration_since(p.started).as_secs_f64(),
                "resync complete: in sync"
            ),
            None => info!("resync complete: in sync"),
        }
        let after = self.finish(&mut st);
        drop(st);
        after.run();
        Ok(true)
    }

    // ---- the application's ops ----------------------------------------------

    fn begin(&self, touched: Touched) -> io::Result<Begun> {
        let mut st = self.lock();
        if !st.core.room_for(&touched) {
            // Back-pressure (on-sync): as many early-answered ops await the
            // secondary as may. Bounded: the link answers every op, at the
            // latest when it is lost; past `limit` the op goes on, and is
            // answered only once the secondary has it (the core sees no
            // room), so nothing grows.
            st.room_wanted = true;
            st = self
                .room
                .wait_timeout_while(st, self.limit, |s| !s.core.room_for(&touched))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            st.room_wanted = false;
        }
        let b = match st.core.handle_begin(Instant::now(), touched.clone()) {
            Ok(b) => b,
            Err(errno) => {
                self.finish(&mut st).run();
                return Err(io::Error::from_raw_os_error(errno));
            }
        };
        if let Err(e) = self.persist(&mut st) {
            st.core.abort(Some(b.op), false);
            self.finish(&mut st).run();
            return Err(refusal(e));
        }
        if b.record_activity {
            // Once per directory per epoch: if this node dies with the op in
            // flight, the files of these directories are compared.
            let dirs: Vec<RelPath> = touched
                .paths
                .iter()
                .chain(&touched.reads)
                .map(|p| p.split().map_or(RelPath::root(), |(d, _)| d))
                .filter(|d| !st.activity.contains(d))
                .collect();
            if let Err(e) = st.activity.record(&dirs) {
                st.core.abort(Some(b.op), false);
                self.finish(&mut st).run();
                return Err(refusal(e));
            }
        }
        self.finish(&mut st).run();
        Ok(Begun {
            op: b.op,
            epoch: b.epoch,
            source_clean: b.source_clean,
            barrier: b.barrier,
        })
    }

    /// Sends `ops` on the connection of the op's epoch (under the sequencer).
    fn submit(&self, me: Arc<dyn Replicate>, begun: Begun, ops: Vec<Op>) -> Ticket {
        let mut st = self.lock();
        let sent_on = st.core.handle_submit(Instant::now(), begun.op);
        let link = match (sent_on, &st.link) {
            (Some(e), Some((le, link))) if e == *le => Some(link.clone()),
            _ => None,
        };
        let recorded = self.persist(&mut st);
        if recorded.is_err() {
            st.core.abort(None, true);
        }
        let early = self.early.as_ref().filter(|_| st.core.early(begun.op));
        // BeginResync, if any, goes out first.
        let after = self.finish(&mut st);
        drop(st);
        after.run();
        match (link, recorded) {
            (Some(link), Ok(())) if !ops.is_empty() => {
                // The op itself comes last (an open of its handle may precede it).
                let class = ops
                    .last()
                    .map_or(crate::latency::Class::Meta, crate::latency::Class::of);
                let rxs: Vec<_> = ops.into_iter().map(|op| link.submit(op)).collect();
                let l = link.clone();
                let ticket = Ticket::sent(
                    begun.op,
                    class,
                    rxs,
                    Box::new(move || l.lost().is_some()),
                    self.limit,
                    me,
                );
                match early {
                    // Queued in order for the secondary: answered now, and
                    // concluded by the completion thread. (Under the
                    // sequencer: the thread gets them in stream order.)
                    Some(tx) => {
                        if let Err(e) = tx.send(ticket) {
                            // The completion thread is gone (unmounting):
                            // concluded here instead.
                            e.into_inner().finish(Box::new(|_| {}));
                        }
                        Ticket::answered(begun.op, Ok(()))
                    }
                    None => ticket,
                }
            }
            (Some(_), Ok(())) => Ticket::now(begun.op, OpResult::Applied, me),
            _ => Ticket::now(begun.op, OpResult::NotSent, me),
        }
    }

    fn conclude(&self, op: OpId, result: OpResult, took: Option<Duration>, reply: Reply) {
        let mut st = self.lock();
        // Answered at submission (on-sync): `reply` is nobody's, and the
        // verdict goes to the next sync op.
        let early = st.core.early(op);
        let mut verdict = st.core.handle_outcome(Instant::now(), op, result, took);
        if let Err(e) = self.persist(&mut st) {
            st.core.abort(Some(op), true);
            warn!(error = %e, "a change the secondary may not hold could not be recorded: EIO");
            verdict = Verdict::Fail(libc::EIO);
        }
        if early {
            // Answered Ok, whatever the verdict (which the next sync op
            // gets): a completion thread's reply is nobody's; one on the
            // application's path (nothing was to be sent) was promised it.
            if verdict != Verdict::Ack {
                warn!(
                    ?result,
                    ?verdict,
                    "the secondary did not apply a change answered before it did (--ack=on-sync): the next sync reports it"
                );
            }
            if st.room_wanted {
                self.room.notify_all();
            }
            let mut after = self.finish(&mut st);
            after.0.push((reply, Ok(())));
            drop(st);
            after.run();
            return;
        }
        if verdict != Verdict::Ack && result != OpResult::Applied {
            match verdict {
                Verdict::Hold => {
                    info!(?result, "a change waits for the controller's decision")
                }
                Verdict::Fail(e) => warn!(
                    ?result,
                    errno = e,
                    "the secondary did not apply a change the primary applied"
                ),
                Verdict::Ack => {}
            }
        }
        let mut after = self.finish(&mut st);
        if verdict == Verdict::Hold {
            st.parked.insert(op, reply);
        } else {
            after.0.push((reply, verdict_result(verdict)));
        }
        drop(st);
        after.run();
    }

    fn close(&self, handle: HandleId, epoch: u64) {
        let st = self.lock();
        if let Some((_, link)) = st.link.as_ref().filter(|(e, _)| *e == epoch) {
            // Ordered after every write on the handle; nobody waits for it.
            drop(link.submit(Op::Close { handle }));
        }
    }
}

/// The application's error when what a change needs cannot be recorded.
fn refusal(e: io::Error) -> io::Error {
    error!(error = %e, "cannot record a change in the metadata area: refusing it");
    io::Error::from_raw_os_error(libc::EIO)
}

/// The overlay's handle on the mirror.
#[derive(Debug, Clone)]
pub struct MirrorRef(pub Arc<Mirror>);

impl Replicate for MirrorRef {
    fn begin(&self, touched: Touched) -> io::Result<Begun> {
        self.0.begin(touched)
    }

    fn abandon(&self, begun: Begun) {
        self.0.lock().core.handle_abandon(begun.op);
    }

    fn submit(&self, begun: Begun, ops: Vec<Op>) -> Ticket {
        self.0.submit(Arc::new(self.clone()), begun, ops)
    }

    fn conclude(&self, op: OpId, result: OpResult, took: Option<Duration>, reply: Reply) {
        self.0.conclude(op, result, took, reply);
    }

    fn close(&self, handle: HandleId, epoch: u64) {
        self.0.close(handle, epoch);
    }
}
