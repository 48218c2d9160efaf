//! [`Mirror`]: the primary's replication state — role, connection, generation
//! history and dirty log — behind the overlay's [`Replicate`] interface.
//!
//! Roles, as operators read them: PRIM (connected, in sync: every mutation is
//! applied by the secondary before it returns), RESYNC (connected, bringing the
//! secondary up to date while live mutations keep being replicated), ALONE
//! (no peer: mutations are applied locally and their paths recorded durably in
//! the dirty log first) and, with `--on-peer-loss=fail`, PRIM with the peer
//! lost (mutations fail with EIO). A supervisor thread reconnects with backoff
//! and decides from the generation histories ([`relate`]) whether to resync,
//! or to refuse (split brain, or a secondary with newer data). The resync
//! itself walks the dirty paths in `fs::resync`.
//!
//! Must not: acknowledge a mutation the secondary did not apply unless its
//! paths are recorded in the dirty log; mark anything in sync that was not
//! confirmed by the secondary.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::ctl::{Changes, Status};
use crate::fs::replicate::{Replicate, Ticket, Touched};
use crate::meta::{ActivityLog, DirtyLog, Meta};
use crate::net::client::{ConnectError, Link, LinkConfig};
use crate::proto::generation::{relate, GenerationId, History, Relation};
use crate::proto::pace::Pace;
use crate::proto::path::RelPath;
use crate::proto::renames::Renames;
use crate::proto::walk::Walk;
use crate::proto::wire::Op;

/// While the application submitted an op this recently, the resync keeps only
/// one path in flight (each of its ops delays the application's behind it).
pub const RESYNC_YIELD: Duration = Duration::from_millis(100);

/// The pause before a failed resync path is tried again, at first...
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// ... and at most.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// How long one reconnection attempt waits for an answer.
const RECONNECT_ATTEMPT: Duration = Duration::from_secs(1);
/// The longest pause between reconnection attempts.
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
    /// The connection epoch it was handed out under.
    epoch: u64,
}

/// What the primary does when the secondary is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnPeerLoss {
    /// Mutations fail with EIO until the peer is back (the safe default while
    /// no controller holds quorum).
    Fail,
    /// Carry on ALONE, recording every change for the resync.
    Alone,
    /// Mutations wait for the controller's order (`alone` or `fence` on the
    /// control socket) or `--hold-timeout`.
    Hold,
}

/// The primary's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Role {
    /// Connected and in sync.
    Prim,
    /// Connected, bringing the secondary up to date.
    Resync,
    /// No peer; changes are recorded for a later resync.
    Alone,
    /// No peer, and mutations fail (`--on-peer-loss=fail`).
    Lost,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Prim => "PRIM",
            Self::Resync => "RESYNC",
            Self::Alone => "ALONE",
            Self::Lost => "PRIM (peer lost: writes fail)",
        })
    }
}

/// How the mirror starts.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// How to reach the secondary.
    pub link: LinkConfig,
    /// What to do when it is lost.
    pub on_peer_loss: OnPeerLoss,
    /// Start ALONE, without waiting for the peer.
    pub start_alone: bool,
    /// Compare every file by checksum at the next resync.
    pub full_resync: bool,
    /// Upper bound of the resync's data rate, bytes per second (None: adaptive only).
    pub resync_rate_limit: Option<u64>,
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

struct State {
    role: Role,
    link: Option<Arc<Link>>,
    history: History,
    dirty: DirtyLog,
    /// Directories with mutations in the last epochs (crash safety).
    activity: ActivityLog,
    /// The paths the current resync still has to visit, or visits now.
    walk: Walk,
    /// Paths whose visit failed: when they may be tried again, and the
    /// pause after the next failure (doubling up to RETRY_MAX).
    retry: HashMap<RelPath, (Instant, Duration)>,
    /// Renames made while ALONE, so that the resync can move the objects on
    /// the secondary instead of sending them again.
    renames: Renames,
    /// Files with several names visited by the current resync: the first
    /// name of each inode (device, inode number); later names are linked.
    first_names: HashMap<(u64, u64), RelPath>,
    /// Compare every file of the pending directories' subtrees.
    full: bool,
    last_error: Option<String>,
    since: Instant,
    progress: ResyncProgress,
    resync_started: Instant,
    /// Counts connections: handles opened under another are unknown remotely.
    epoch: u64,
    /// When the application last submitted an op (the resync yields to it).
    app_active: Instant,
    /// How long the application's ops take, and so how long a resync worker
    /// pauses between pieces while it writes.
    pace: Pace,
    shutdown: bool,
    /// The secondary holds our current generation: a change it does not
    /// have must start a new one before it is acknowledged.
    shares_generation: bool,
}

/// The primary's replication state.
pub struct Mirror {
    cfg: MirrorConfig,
    meta: Meta,
    state: Mutex<State>,
    changed: Condvar,
    /// Counts changes for the control socket's watchers.
    changes: Changes,
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

fn random_id() -> GenerationId {
    let mut b = [0u8; 8];
    // SAFETY: b is a valid buffer of its length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 8 {
        // getrandom cannot fail for 8 bytes after boot; fall back to the clock.
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        return GenerationId(t ^ u64::from(std::process::id()));
    }
    GenerationId(u64::from_ne_bytes(b))
}

impl Mirror {
    /// Opens the metadata area of `backing`, connects (unless starting ALONE)
    /// and starts the supervisor. The returned mirror is ready for the overlay.
    pub fn start(backing: &std::path::Path, cfg: MirrorConfig) -> Result<Arc<Self>, StartError> {
        let meta_err = |source| StartError::Meta {
            dir: backing.join(crate::meta::META_DIR).display().to_string(),
            source,
        };
        let meta = Meta::open(backing).map_err(meta_err)?;
        let mut history = meta.load_history().map_err(meta_err)?;
        let dirty = meta.dirty_log().map_err(meta_err)?;
        let activity = meta.activity_log().map_err(meta_err)?;
        if history.current().is_none() {
            history.advance(random_id());
            meta.save_history(&history).map_err(meta_err)?;
        }
        // A backstop only: the link completes every op itself (EIO once the
        // peer is lost, which takes at most the stall timeout without progress).
        let limit = cfg.link.stall_timeout.max(cfg.link.peer_timeout) * 2 + Duration::from_secs(1);
        let mirror = Arc::new(Self {
            meta,
            state: Mutex::new(State {
                role: Role::Alone,
                link: None,
                history,
                dirty,
                activity,
                walk: Walk::default(),
                retry: HashMap::new(),
                renames: Renames::default(),
                first_names: HashMap::new(),
                full: cfg.full_resync,
                last_error: None,
                since: Instant::now(),
                progress: ResyncProgress::default(),
                resync_started: Instant::now(),
                epoch: 0,
                app_active: Instant::now(),
                pace: Pace::default(),
                shutdown: false,
                shares_generation: false,
            }),
            changed: Condvar::new(),
            changes: Changes::default(),
            limit,
            cfg,
        });
        if mirror.cfg.start_alone {
            // Whatever is written from now on was written without the peer.
            mirror.go_alone_from("started with --alone".into(), true);
        } else {
            let link = {
                let st = mirror.lock();
                Link::connect(&mirror.cfg.link, &st.history)?
            };
            mirror.connected(link).map_err(StartError::Refused)?;
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

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a new activity epoch. The caller holds the overlay's sequencer
    /// (no mutation half-applied) and has flushed the backing filesystem since
    /// the previous rotation, so the epoch dropped now is durable locally.
    pub fn rotate_activity(&self) {
        if let Err(e) = self.lock().activity.rotate() {
            warn!(error = %e, "cannot rotate the activity log; keeping the old epochs");
        }
    }

    /// True once the mount is going away.
    pub fn is_shut_down(&self) -> bool {
        self.lock().shutdown
    }

    /// Stops the supervisor (the mount is going away).
    pub fn shutdown(&self) {
        self.lock().shutdown = true;
        self.notify();
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.lock().role
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

    /// True while the secondary is reachable but reports no progress with
    /// ops waiting for it ([`Link::stalled`]); cheap, for the control
    /// socket's watchers (the status's `stalled`).
    pub fn stalled(&self) -> bool {
        let st = self.lock();
        st.link
            .as_ref()
            .is_some_and(|l| l.lost().is_none() && l.stalled().is_some())
    }

    /// A snapshot for the control socket (`status`, `watch`).
    pub fn status(&self) -> Status {
        let st = self.lock();
        let progress = (st.role == Role::Resync).then(|| {
            let mut p = st.progress.clone();
            p.files_left = st.walk.left() as u64;
            p.elapsed_secs = st.resync_started.elapsed().as_secs_f64();
            p.rate_bytes_per_sec = if p.elapsed_secs > 0.0 {
                p.bytes_sent as f64 / p.elapsed_secs
            } else {
                0.0
            };
            p.full = st.full;
            p.eta_secs = (p.files_done > 0)
                .then(|| p.elapsed_secs / p.files_done as f64 * p.files_left as f64);
            p
        });
        // Sizes of the dirty paths as they are now (bounded work, and done
        // after the lock is released: mutations must not wait for status).
        let dirty_paths: Vec<RelPath> = st.dirty.paths().iter().take(100_000).cloned().collect();
        let connected = st.link.as_ref().is_some_and(|l| l.lost().is_none());
        let under_controller = self.cfg.on_peer_loss == OnPeerLoss::Hold;
        let mut status = Status {
            version: crate::ctl::VERSION,
            role: match st.role {
                Role::Prim => crate::ctl::Role::Prim,
                Role::Resync => crate::ctl::Role::Resync,
                Role::Alone => crate::ctl::Role::Alone,
                Role::Lost => crate::ctl::Role::Lost,
            },
            in_sync: st.role == Role::Prim && connected && st.dirty.is_empty(),
            connected,
            dirty_files: st.dirty.len() as u64,
            dirty_bytes: 0,
            resync: progress,
            generation: st.history.current().map(|g| g.to_string()),
            history: st.history.ids().iter().map(|g| g.to_string()).collect(),
            stalled: connected && st.link.as_ref().is_some_and(|l| l.stalled().is_some()),
            pid: std::process::id(),
            last_error: st.last_error.clone(),
            peer: Some(self.cfg.link.peer.to_string()),
            peer_node: self.cfg.link.pinned.name.clone(),
            role_secs: st.since.elapsed().as_secs_f64(),
            ops_in_flight: Some(st.link.as_ref().map_or(0, |l| l.in_flight())),
            alone_secs_left: under_controller.then_some(None),
            held_ops: under_controller.then_some(0),
            primary_connected: None,
            last_applied: None,
            resync_running: None,
            inconsistent: None,
        };
        drop(st);
        status.dirty_bytes = dirty_paths
            .iter()
            .filter_map(|p| std::fs::symlink_metadata(self.meta.root().join(p.as_os_str())).ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum();
        status
    }

    fn set_role(st: &mut State, role: Role) {
        if st.role != role {
            info!(from = %st.role, to = %role, "role change");
            st.role = role;
            st.since = Instant::now();
        }
    }

    /// The peer is gone: ALONE (new generation) or LOST, per configuration.
    fn lost(&self, reason: String) {
        match self.cfg.on_peer_loss {
            OnPeerLoss::Alone => self.go_alone(reason),
            // Hold: like Fail until the hold core decides (issue 7).
            OnPeerLoss::Fail | OnPeerLoss::Hold => {
                let mut st = self.lock();
                st.link = None;
                error!(%reason, "peer lost: mutations fail with EIO until it is back");
                st.last_error = Some(reason);
                Self::set_role(&mut st, Role::Lost);
                self.notify();
            }
        }
    }

    fn go_alone(&self, reason: String) {
        self.go_alone_from(reason, false);
    }

    /// Enters ALONE; a new generation starts unless already ALONE (`fresh`:
    /// always, as at a start with `--alone`, where nothing was ALONE before).
    fn go_alone_from(&self, reason: String, fresh: bool) {
        let mut st = self.lock();
        st.link = None;
        if fresh || st.role != Role::Alone {
            // A new generation marks "written without the peer".
            let id = self.advance(&mut st).unwrap_or_else(|e| {
                error!(error = %e, "cannot record the new generation; staying without peer anyway");
                GenerationId(0)
            });
            warn!(%reason, generation = %id, "going ALONE: changes are recorded for the resync");
            st.last_error = Some(reason);
            Self::set_role(&mut st, Role::Alone);
        }
        self.notify();
    }

    /// Starts a new generation, durably.
    fn advance(&self, st: &mut State) -> io::Result<GenerationId> {
        let id = random_id();
        st.history.advance(id);
        st.shares_generation = false;
        self.meta.save_history(&st.history)?;
        Ok(id)
    }

    /// A connection is up: decide from the histories what to do with it.
    fn connected(&self, link: Link) -> Result<(), String> {
        let mut st = self.lock();
        // A new connection: the secondary holds none of the handles opened
        // before (they are named by path from now on).
        st.epoch += 1;
        // Paths the workers still visit for the old connection are done with
        // it; what they did not finish is in the dirty log or pending again.
        st.walk.forget_in_flight();
        st.retry.clear();
        st.first_names.clear();
        let relation = relate(&st.history, link.peer_history());
        st.shares_generation = relation == Relation::InSync;
        let peer_gen = link
            .peer_history()
            .current()
            .map_or("none".to_string(), |g| g.to_string());
        let me = st
            .history
            .current()
            .map(|g| g.to_string())
            .unwrap_or_default();
        let refuse = |why: String| -> Result<(), String> { Err(why) };
        // Directories where either side may hold a change the other lacks
        // (writes in flight when a primary died): their files get compared.
        let mut suspects = st.activity.suspects();
        suspects.extend(link.peer_suspects().iter().cloned());
        match relation {
            Relation::InSync if st.dirty.is_empty() && !st.full && suspects.is_empty() => {
                st.link = Some(Arc::new(link));
                st.last_error = None;
                Self::set_role(&mut st, Role::Prim);
            }
            Relation::InSync | Relation::PrimaryAhead | Relation::SecondaryNew => {
                let mut pending = st.dirty.paths().clone();
                pending.extend(suspects.iter().cloned());
                st.walk.restart(pending, suspects);
                for t in st.dirty.trees().clone() {
                    st.walk.insert_tree(t);
                }
                let nothing_known = st.walk.nothing_pending() && relation != Relation::InSync;
                // A peer with more suspect directories than a hello carries
                // sends the root alone: compare everything. The root among
                // other suspects (a write at the top level) means only its
                // own entries, like any other directory.
                let peer_overflow = link.peer_suspects() == [RelPath::root()];
                if relation == Relation::SecondaryNew || st.full || nothing_known || peer_overflow {
                    // Nothing tells what differs: compare everything.
                    st.full = true;
                    st.walk.insert(RelPath::root());
                }
                st.progress = ResyncProgress::default();
                st.resync_started = Instant::now();
                info!(
                    ?relation,
                    paths = st.walk.left(),
                    full = st.full,
                    "resync starts"
                );
                st.link = Some(Arc::new(link));
                st.last_error = None;
                Self::set_role(&mut st, Role::Resync);
            }
            Relation::SecondaryAhead => {
                let why = format!(
                    "the secondary {} holds newer data (its generation {peer_gen} follows ours, {me}): this node must not overwrite it; make {} the primary, or run `mirrorfs discard --root DIR` on {} to throw its changes away (they are kept in DIR/.mirrorfs/discarded-*)",
                    self.cfg.link.pinned.name, self.cfg.link.pinned.name, self.cfg.link.pinned.name
                );
                st.last_error = Some(why.clone());
                return refuse(why);
            }
            Relation::SplitBrain => {
                let why = format!(
                    "split brain: both this node ({} at generation {me}) and the secondary {} (at generation {peer_gen}) wrote since they parted; nothing was synchronised. Choose the side to keep and run `mirrorfs discard --root DIR` on the other (its changed files are kept in DIR/.mirrorfs/discarded-*)",
                    self.cfg.link.identity.name, self.cfg.link.pinned.name
                );
                error!("{why}");
                st.last_error = Some(why.clone());
                return refuse(why);
            }
        }
        self.notify();
        Ok(())
    }

    /// Reconnects with backoff while disconnected; notices connection loss.
    fn supervise(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let (link, shutdown) = {
                let st = self.lock();
                (st.link.clone(), st.shutdown)
            };
            if shutdown {
                return;
            }
            match link {
                Some(link) => {
                    if link.wait_lost(Duration::from_millis(500)) {
                        let reason = link.lost().unwrap_or_default();
                        self.lost(reason);
                        backoff = Duration::from_millis(200);
                    }
                }
                None => {
                    {
                        let st = self.lock();
                        let _ = self
                            .changed
                            .wait_timeout_while(st, backoff, |s| !s.shutdown)
                            .unwrap_or_else(|e| e.into_inner());
                    }
                    if self.lock().shutdown {
                        return;
                    }
                    let history = self.lock().history.clone();
                    match Link::connect_within(&self.cfg.link, &history, RECONNECT_ATTEMPT) {
                        Ok(link) => match self.connected(link) {
                            Ok(()) => backoff = Duration::from_millis(200),
                            Err(_) => backoff = Duration::from_secs(5),
                        },
                        Err(e) => {
                            backoff = match e {
                                // Attempts of RECONNECT_ATTEMPT, RECONNECT_PAUSE
                                // apart: a returning peer is found a few hundred
                                // ms after it listens; a dead one costs a few
                                // handshake packets a second.
                                ConnectError::Unreachable { .. } => RECONNECT_PAUSE,
                                // A peer that answers but refuses (certificates,
                                // versions): an operator must act; do not
                                // hammer it.
                                _ => (backoff * 2).clamp(RECONNECT_PAUSE, Duration::from_secs(5)),
                            };
                            self.lock().last_error = Some(e.to_string());
                            self.changes.bump();
                        }
                    }
                }
            }
        }
    }

    /// Records `paths` as possibly different on the secondary (durably), and
    /// schedules them for the resync when connected.
    fn mark(&self, st: &mut State, paths: &[RelPath]) -> io::Result<()> {
        if paths.is_empty() {
            // Nothing to resync: a role change here would wait for nothing.
            return Ok(());
        }
        st.dirty.mark(paths)?;
        self.changes.bump();
        self.schedule(st, paths, false);
        Ok(())
    }

    /// Records renamed paths as trees: everything below each is compared,
    /// since a directory swapped with another (`RENAME_EXCHANGE`) holds
    /// entries of the same names and kinds but other contents.
    fn mark_trees(&self, st: &mut State, paths: &[RelPath]) -> io::Result<()> {
        st.dirty.mark_trees(paths)?;
        self.changes.bump();
        self.schedule(st, paths, true);
        Ok(())
    }

    /// Puts recorded paths in the walk (as trees: compared down to every
    /// file), starting a resync if in sync. Only a live connection resyncs;
    /// a lost one is the supervisor's to handle (ALONE or LOST), not a reason
    /// to start a resync.
    fn schedule(&self, st: &mut State, paths: &[RelPath], trees: bool) {
        if st.link.as_ref().is_none_or(|l| l.lost().is_some()) {
            return;
        }
        for p in paths {
            if trees {
                st.walk.insert_tree(p.clone());
            } else {
                st.walk.insert(p.clone());
            }
        }
        if st.role == Role::Prim {
            st.progress = ResyncProgress::default();
            st.resync_started = Instant::now();
            Self::set_role(st, Role::Resync);
        }
        self.notify();
    }

    // ---- the resync workers' interface --------------------------------------

    /// Waits until there is resync work a worker may take (or shutdown:
    /// `None`). Several workers visit paths at once (see [`Walk`]); while the
    /// application is writing, only one.
    pub fn next_resync_path(&self) -> Option<ResyncJob> {
        let mut st = self.lock();
        loop {
            if st.shutdown {
                return None;
            }
            let yield_to_app = st.walk.busy() && st.app_active.elapsed() < RESYNC_YIELD;
            if st.role == Role::Resync && !yield_to_app {
                // Not on a lost connection: until the supervisor notices,
                // every op on it would fail at once.
                if let Some(link) = st.link.clone().filter(|l| l.lost().is_none()) {
                    let epoch = st.epoch;
                    let now = Instant::now();
                    let State { walk, retry, .. } = &mut *st;
                    let ready = |p: &RelPath| retry.get(p).is_none_or(|(at, _)| now >= *at);
                    if let Some((path, full_dir)) = walk.take_ready(epoch, ready) {
                        return Some(ResyncJob {
                            full: st.full || full_dir,
                            path,
                            link,
                            epoch,
                        });
                    }
                }
            }
            let wait = if yield_to_app {
                Duration::from_millis(20)
            } else {
                Duration::from_millis(500)
            };
            st = self
                .changed
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Hard links: the name the resync gave inode `key` first, if another
    /// than `path`; otherwise `path` becomes that name.
    pub fn resync_first_name(&self, key: (u64, u64), path: &RelPath) -> Option<RelPath> {
        let mut st = self.lock();
        match st.first_names.get(&key) {
            Some(first) if first != path => Some(first.clone()),
            Some(_) => None,
            None => {
                st.first_names.insert(key, path.clone());
                None
            }
        }
    }

    /// Hard links: `path` is now the first name of inode `key` (the one
    /// recorded no longer names it).
    pub fn resync_rename_first(&self, key: (u64, u64), path: &RelPath) {
        self.lock().first_names.insert(key, path.clone());
    }

    /// The names the secondary may still hold what is now at `p` under (it
    /// was renamed while ALONE; empty if not).
    pub fn old_names(&self, p: &RelPath) -> Vec<RelPath> {
        self.lock().renames.old_names(p)
    }

    /// The old names of objects renamed while ALONE that `p` is, or is below.
    pub fn old_names_above(&self, p: &RelPath) -> Vec<RelPath> {
        self.lock().renames.old_names_above(p)
    }

    /// The blocks of `p` to resend when only data blocks of it are dirty.
    pub fn dirty_blocks(&self, p: &RelPath) -> Option<Vec<u64>> {
        self.lock()
            .dirty
            .blocks(p)
            .map(|b| b.iter().copied().collect())
    }

    /// The resync found more paths to visit (children of a directory).
    pub fn add_pending(&self, paths: impl IntoIterator<Item = RelPath>) {
        self.lock().walk.extend(paths);
    }

    /// `job`'s path could not be synchronised: visit it again, and say why
    /// (a failure: after a pause that doubles with each failure of the path,
    /// from RETRY_FIRST to RETRY_MAX, while the other paths go on).
    pub fn resync_retry(&self, job: &ResyncJob, why: Option<String>) {
        let mut st = self.lock();
        st.walk.release(&job.path, job.epoch);
        if let Some(why) = why {
            let pause = st
                .retry
                .get(&job.path)
                .map_or(RETRY_FIRST, |(_, p)| (*p * 2).min(RETRY_MAX));
            st.retry
                .insert(job.path.clone(), (Instant::now() + pause, pause));
            st.last_error = Some(format!(
                "resync of {}: {why}; retrying in {:.0} s",
                job.path,
                pause.as_secs_f64()
            ));
        }
        st.walk.insert(job.path.clone());
        self.notify();
    }

    /// True when the application submitted an op in the last `within`.
    pub fn app_active(&self, within: Duration) -> bool {
        self.lock().app_active.elapsed() < within
    }

    /// How long a resync worker pauses after a piece or a path: while the
    /// application writes, long enough to keep its ops close to their
    /// latency in sync; nothing while it is idle.
    pub fn resync_pause(&self) -> Duration {
        let st = self.lock();
        if st.app_active.elapsed() < RESYNC_YIELD {
            st.pace.pause()
        } else {
            Duration::ZERO
        }
    }

    /// An application op submitted in `role` was acknowledged after `took`.
    fn observe_app_latency(&self, role: Role, took: Duration) {
        let mut st = self.lock();
        match role {
            Role::Prim => st.pace.in_sync(took),
            Role::Resync => st.pace.during_resync(took),
            Role::Alone | Role::Lost => {}
        }
    }

    /// The configured cap on the resync's data rate, bytes per second.
    pub fn resync_rate_limit(&self) -> Option<u64> {
        self.cfg.resync_rate_limit
    }

    /// Counts data bytes sent by the resync (as they go, so that the rate of
    /// a large file shows while it is copied).
    pub fn resync_sent(&self, bytes: u64) {
        self.lock().progress.bytes_sent += bytes;
        self.changes.bump();
    }

    /// `job`'s path is synchronised.
    pub fn resync_done(&self, job: &ResyncJob) {
        let mut st = self.lock();
        st.walk.release(&job.path, job.epoch);
        st.retry.remove(&job.path);
        st.progress.files_done += 1;
        self.notify();
    }

    /// True when nothing is left to visit and no worker is visiting anything.
    pub fn resync_idle(&self) -> bool {
        let st = self.lock();
        st.walk.is_idle()
    }

    /// The history the secondary must adopt when the resync is complete.
    pub fn history_ids(&self) -> Vec<u64> {
        self.lock().history.ids().iter().map(|g| g.0).collect()
    }

    /// The secondary confirmed the history: if nothing became pending in the
    /// meantime (on the same connection), both sides hold the same data.
    pub fn resync_complete(&self, link: &Arc<Link>) -> io::Result<bool> {
        let mut st = self.lock();
        let same = st.link.as_ref().is_some_and(|l| Arc::ptr_eq(l, link));
        if !same || !st.walk.is_idle() || st.role != Role::Resync {
            return Ok(false);
        }
        st.dirty.clear()?;
        st.renames.clear();
        st.shares_generation = true;
        st.full = false;
        let p = &st.progress;
        info!(
            files = p.files_done,
            bytes = p.bytes_sent,
            secs = st.resync_started.elapsed().as_secs_f64(),
            "resync complete: in sync"
        );
        Self::set_role(&mut st, Role::Prim);
        self.changes.bump();
        Ok(true)
    }

    /// Called by a waiter whose op the secondary did not apply.
    fn failed(&self, touched: &Touched, errno: i32) -> io::Result<()> {
        let mut st = self.lock();
        // Whatever happens next, the secondary may now differ on these paths.
        let marked = match &touched.rename {
            Some((from, to)) => self.mark_trees(&mut st, &[from.clone(), to.clone()]),
            None => Ok(()),
        };
        if let Err(e) = marked.and_then(|()| self.mark(&mut st, &touched.paths)) {
            error!(error = %e, "cannot record a path in the dirty log");
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let connected = st.link.as_ref().is_some_and(|l| l.lost().is_none());
        match self.cfg.on_peer_loss {
            // Recorded: the resync will bring the secondary up to date. But
            // acknowledged without the secondary: if it still holds our
            // generation, a new one must mark that we are ahead, or a
            // secondary promoted before the resync ends would look "in sync"
            // or "ahead" and overwrite what was acknowledged here.
            OnPeerLoss::Alone if st.shares_generation => match self.advance(&mut st) {
                Ok(id) => {
                    warn!(generation = %id, errno, "the secondary did not apply a change: new generation, the resync will bring it over");
                    Ok(())
                }
                Err(e) => {
                    error!(error = %e, "cannot record a new generation: refusing the change");
                    Err(io::Error::from_raw_os_error(libc::EIO))
                }
            },
            OnPeerLoss::Alone => Ok(()),
            OnPeerLoss::Fail | OnPeerLoss::Hold if connected => {
                Err(io::Error::from_raw_os_error(errno))
            }
            OnPeerLoss::Fail | OnPeerLoss::Hold => Err(io::Error::from_raw_os_error(libc::EIO)),
        }
    }
}

/// The overlay's handle on the mirror.
#[derive(Debug, Clone)]
pub struct MirrorRef(pub Arc<Mirror>);

impl Replicate for MirrorRef {
    fn begin(&self, touched: &Touched) -> io::Result<()> {
        let m = &self.0;
        let mut st = m.lock();
        match st.role {
            Role::Prim => {
                // Once per directory per epoch: if this node dies with the op
                // in flight, the files of these directories are compared.
                let dirs: Vec<RelPath> = touched
                    .paths
                    .iter()
                    .map(|p| p.split().map_or(RelPath::root(), |(d, _)| d))
                    .filter(|d| !st.activity.contains(d))
                    .collect();
                st.activity.record(&dirs).map_err(|e| {
                    error!(error = %e, "cannot record activity: refusing the change");
                    io::Error::from_raw_os_error(libc::EIO)
                })
            }
            Role::Lost => Err(io::Error::from_raw_os_error(libc::EIO)),
            Role::Alone | Role::Resync => {
                if st.role == Role::Resync {
                    let dirs: Vec<RelPath> = touched
                        .paths
                        .iter()
                        .map(|p| p.split().map_or(RelPath::root(), |(d, _)| d))
                        .collect();
                    st.activity.record(&dirs).map_err(|e| {
                        error!(error = %e, "cannot record activity: refusing the change");
                        io::Error::from_raw_os_error(libc::EIO)
                    })?;
                }
                if let (Role::Alone, Some((from, to))) = (st.role, &touched.rename) {
                    st.renames.renamed(from, to);
                }
                let mut paths = touched.paths.clone();
                if let Some((from, to)) = &touched.rename {
                    // Recorded paths below the old name follow it.
                    let mut lo = from.as_bytes().to_vec();
                    lo.push(b'/');
                    let moved: Vec<RelPath> = st
                        .dirty
                        .paths()
                        .iter()
                        .filter(|p| p.as_bytes().starts_with(&lo))
                        .filter_map(|p| {
                            let rest = &p.as_bytes()[from.as_bytes().len()..];
                            RelPath::new([to.as_bytes(), rest].concat()).ok()
                        })
                        .collect();
                    paths.extend(moved);
                }
                // A change near a path still to visit is carried by the walk;
                // so is one that renames or removes a path being visited (its
                // worker gives up on it). Data written to a file being visited
                // needs nothing: the worker reads and sends under the
                // sequencer, so the live write reaches the secondary after
                // any older bytes (and marking it would revisit a busy file
                // forever).
                let data_only = touched.data.is_some() && touched.rename.is_none();
                let needed = st.role == Role::Alone
                    || paths.iter().any(|p| {
                        st.walk.pending_near(p) || (!data_only && st.walk.in_flight_near(p))
                    });
                if let (true, Some((offset, len)), [path]) = (needed, touched.data, &paths[..]) {
                    // Only data changed: record the blocks, not the whole file.
                    st.dirty.mark_range(path, offset, len).map_err(|e| {
                        error!(error = %e, "cannot record a change in the dirty log: refusing it");
                        io::Error::from_raw_os_error(libc::EIO)
                    })?;
                    m.changes.bump();
                    if st.link.is_some() {
                        st.walk.insert(path.clone());
                        m.notify();
                    }
                    return Ok(());
                }
                if let (true, Some((from, to))) = (needed, &touched.rename) {
                    m.mark_trees(&mut st, &[from.clone(), to.clone()])
                        .map_err(|e| {
                            error!(error = %e, "cannot record a change in the dirty log: refusing it");
                            io::Error::from_raw_os_error(libc::EIO)
                        })?;
                }
                if needed {
                    m.mark(&mut st, &paths).map_err(|e| {
                        error!(error = %e, "cannot record a change in the dirty log: refusing it");
                        io::Error::from_raw_os_error(libc::EIO)
                    })?;
                }
                Ok(())
            }
        }
    }

    fn epoch(&self) -> u64 {
        self.0.lock().epoch
    }

    fn submit(&self, op: Op, touched: &Touched) -> Ticket {
        let m = &self.0;
        let (link, role) = {
            let mut st = m.lock();
            st.app_active = Instant::now();
            match st.role {
                Role::Alone => return Ticket::done(Ok(Vec::new())),
                Role::Lost => return Ticket::done(Err(libc::EIO)),
                Role::Prim | Role::Resync => (st.link.clone(), st.role),
            }
        };
        let Some(link) = link else {
            return Ticket::done(Err(libc::EIO));
        };
        let rx = link.submit(op);
        let mirror = m.clone();
        let touched = touched.clone();
        let observer = m.clone();
        Ticket::wait_for(
            rx,
            m.limit,
            Some(Box::new(move |errno| mirror.failed(&touched, errno))),
        )
        .observed(Box::new(move |took| {
            observer.observe_app_latency(role, took)
        }))
    }
}
