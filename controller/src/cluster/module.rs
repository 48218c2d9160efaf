//! One mirror module on one node: the state machine STOP, WAIT, ALONE,
//! PRIM, SECOND. No I/O: events come in through `handle_*` with the time
//! they happened; actions come out of [`ModuleCore::poll_action`]; the next
//! deadline is [`ModuleCore::poll_timeout`].
//!
//! What it decides, and the rules it keeps:
//! - Who is primary. At start a node waits (WAIT) for its peer to compare
//!   data (generations); the newer becomes primary (same data: the node listed
//!   first), the other secondary; diverged data (a split brain) waits for the
//!   operator. A node whose peer runs as primary becomes its secondary.
//! - When a secondary takes over: its peer is gone (every heartbeat network
//!   silent past the timeout) or stopped cleanly, the peer was in sync with it
//!   when last heard, its own trees are consistent, and it holds the witness's
//!   lease (without a witness: at once, the accepted split-brain risk).
//! - When a primary may write without its peer: only under the lease; it
//!   passes the lease's remaining time to mirrorfs (`alone SECONDS`), so that
//!   mirrorfs holds writes again by itself if this daemon freezes.
//! - When a primary must step down (fence, stop the application, drop the
//!   VIP, unmount, WAIT): when neither its peer nor the witness confirmed
//!   it recently (each confirmation counts from when our message *left*), or
//!   the witness refuses it the lease it needs.
//!
//! Steps with I/O (scripts, starting mirrorfs, the VIP) run one at a time:
//! [`Action::Run`] starts one and [`ModuleCore::handle_step_done`] reports
//! its end. A transition is a plan of steps; the state shown is the target's,
//! not ready until the plan is done. Fencing and grants are immediate
//! ([`Action::Fence`], [`Action::Grant`]) and never wait behind a step.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::link::PeerLink;
use super::margin;
use super::msg::{Answer, Beat, LeaseAnswer, Report, VERSION};
use super::state::{DataOrder, ModuleState, RootInfo};

/// How long the kernel keeps a virtual IP after its last renewal
/// (iproute2's `valid_lft` counts whole seconds).
pub const VIP_LIFE: Duration = Duration::from_secs(1);

/// How many transitions [`ModuleCore::history`] keeps.
const HISTORY: usize = 32;

/// The generations a beat carries per directory (the newest ones).
const BEAT_HISTORY: usize = 8;

/// What the core needs to know of the module and this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreConfig {
    /// The module's name.
    pub module: String,
    /// This node.
    pub me: String,
    /// The other node.
    pub peer: String,
    /// This node is listed first: with equal data it starts as primary.
    pub preferred: bool,
    /// The replicated directories (one mirrorfs each).
    pub dirs: usize,
    /// The heartbeat networks.
    pub networks: usize,
    /// Heartbeat interval.
    pub interval: Duration,
    /// Heartbeat timeout: the peer is lost after this long without a beat.
    pub timeout: Duration,
    /// The witness lease's length.
    pub lease: Duration,
    /// A witness is configured (else: the split-brain risk is accepted).
    pub witness: bool,
    /// The module file's digest, compared with the peer's.
    pub digest: u64,
    /// The module has a virtual IP.
    pub vip: bool,
    /// Which scripts exist.
    pub scripts: ScriptSet,
    /// This daemon's incarnation: its start time in milliseconds since the
    /// Unix epoch (later incarnations have larger numbers).
    pub incarnation: u64,
}

/// Which application scripts a module has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScriptSet {
    /// Runs at module start, on both nodes.
    pub prestart: bool,
    /// Starts the application on the primary.
    pub start_prim: bool,
    /// Stops the application on the primary.
    pub stop_prim: bool,
    /// Runs at module stop, on both nodes.
    pub poststop: bool,
}

/// An application script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Script {
    /// At module start, both nodes.
    Prestart,
    /// Start the application (primary).
    StartPrim,
    /// Stop the application (primary).
    StopPrim,
    /// At module stop, both nodes.
    Poststop,
}

impl fmt::Display for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Prestart => "prestart",
            Self::StartPrim => "start_prim",
            Self::StopPrim => "stop_prim",
            Self::Poststop => "poststop",
        })
    }
}

/// A step with I/O; the driver runs it and reports its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Run a script (graceful stop, then forced, past its timeout).
    Script(Script),
    /// Read every directory's generations and consistency
    /// ([`ModuleCore::handle_roots`] before the step's end).
    ReadRoots,
    /// Start a `mirrorfs serve` per directory (this node becomes the
    /// replica); done once every control socket answers.
    StartServe,
    /// Stop the serves.
    StopServe,
    /// Mount every directory (`--on-peer-loss=hold --alone`: writes wait
    /// until the peer is connected or a grant comes); done once mounted.
    Mount,
    /// Unmount every directory (after the application stopped).
    Unmount,
    /// Add the virtual IP (the driver renews its lifetime from then on).
    AddVip,
    /// Remove the virtual IP.
    RemoveVip,
    /// Give up this node's own changes after a split brain (`mirrorfs
    /// discard`), so that the primary's data replaces them.
    Discard,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Script(s) => write!(f, "script {s}"),
            Self::ReadRoots => f.write_str("read the data's state"),
            Self::StartServe => f.write_str("start the replica (mirrorfs serve)"),
            Self::StopServe => f.write_str("stop the replica"),
            Self::Mount => f.write_str("mount (mirrorfs mount)"),
            Self::Unmount => f.write_str("unmount"),
            Self::AddVip => f.write_str("add the virtual IP"),
            Self::RemoveVip => f.write_str("remove the virtual IP"),
            Self::Discard => f.write_str("discard this node's changes"),
        }
    }
}

/// What the core asks the driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start a step; answer with [`ModuleCore::handle_step_done`].
    Run(Step),
    /// Tell every mount `alone SECONDS`, the seconds left until `until` (the
    /// lease's end less the margin) at the moment the order is sent.
    Grant {
        /// When the grant ends, on this node's clock.
        until: Instant,
    },
    /// Remove the virtual IP now and stop renewing it, ahead of any step
    /// (quorum lost: the peer may take it soon).
    DropVip,
    /// Tell every mount `fence`: mutations fail from now on.
    Fence,
    /// Send a heartbeat on every network.
    Beat(Beat),
    /// Send a report to the witness.
    Report(Report),
    /// The state changed (for the module log).
    Transition(Transition),
}

/// A change of state, for `mirrorfarm state` and the module log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The state before.
    pub from: ModuleState,
    /// The state after (its plan may still run).
    pub to: ModuleState,
    /// Why.
    pub reason: String,
    /// When, on the core's clock.
    #[serde(skip)]
    pub at: Option<Instant>,
}

/// An operator's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Start the module.
    Start,
    /// Stop the module (a primary's peer takes over).
    Stop,
    /// Restart the application (scripts only; no failover).
    Restart,
    /// Planned switchover: the peer becomes primary.
    Swap,
    /// This node's data is the good one: start as primary (from WAIT).
    Prim,
    /// The peer's data is the good one: start as secondary (from WAIT),
    /// discarding this node's own changes after a split brain.
    Second,
}

/// What the mirrorfs processes of this node report, summed over the
/// directories.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MirrorView {
    /// The mounts, while this node runs them.
    pub mounts: Option<MountsView>,
    /// The serves, while this node runs them.
    pub serves: Option<ServesView>,
}

/// The mounts of every directory.
#[derive(Debug, Clone, PartialEq)]
pub struct MountsView {
    /// Every mount answers on its control socket.
    pub all_up: bool,
    /// Every mount is connected to the peer's serve.
    pub connected: bool,
    /// Every mount is connected and in sync.
    pub in_sync: bool,
    /// A mount is fenced (by an order, or by its own hold timeout while no
    /// controller answered): it writes nothing until unmounted.
    pub fenced: bool,
    /// Each directory's data.
    pub roots: Vec<RootInfo>,
    /// The resync, while one runs: (bytes left, ETA seconds).
    pub resync: Option<ResyncView>,
}

/// A running resync, summed over the directories.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ResyncView {
    /// Files done.
    pub files_done: u64,
    /// Files left.
    pub files_left: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Estimated seconds to the end (None: unknown yet).
    pub eta_secs: Option<f64>,
}

/// The serves of every directory.
#[derive(Debug, Clone, PartialEq)]
pub struct ServesView {
    /// Every serve answers on its control socket.
    pub all_up: bool,
    /// Every serve has a primary connected.
    pub primary_connected: bool,
    /// Each directory's data.
    pub roots: Vec<RootInfo>,
}

/// The last failover, for `mirrorfarm state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    /// The node that took over.
    pub to: String,
    /// Why.
    pub cause: String,
    /// When, on the core's clock.
    #[serde(skip)]
    pub at: Option<Instant>,
}

/// Why an operator's order was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// A snapshot for `mirrorfarm state`.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreStatus {
    /// The state (the target of a running transition).
    pub state: ModuleState,
    /// Settled (no transition running).
    pub ready: bool,
    /// Why it is in this state, or what it waits for.
    pub reason: String,
    /// When it entered the state.
    pub since: Instant,
    /// The step running now.
    pub step: Option<Step>,
    /// The peer's state as last heard, and whether it counts as present.
    pub peer: Option<(ModuleState, bool)>,
    /// The peer is present now.
    pub peer_up: bool,
    /// Per heartbeat network, how long ago the peer was heard.
    pub peer_silence: Vec<Option<Duration>>,
    /// Per heartbeat network, the last round trip measured.
    pub rtt: Vec<Option<Duration>>,
    /// Primary: connected and in sync. Secondary: its primary's last beat
    /// said it was in sync with this node (it could take over).
    pub in_sync: bool,
    /// A resync in progress.
    pub resync: Option<ResyncView>,
    /// The lease runs until (this node's clock).
    pub lease_until: Option<Instant>,
    /// The witness last refused this node the lease, saying why.
    pub lease_refused: Option<String>,
    /// The witness answered within the heartbeat timeout.
    pub witness_up: bool,
    /// The last failover to this node.
    pub last_failover: Option<Failover>,
    /// The module files differ between the nodes.
    pub digest_mismatch: bool,
}

/// One mirror module on one node.
#[derive(Debug)]
pub struct ModuleCore {
    cfg: CoreConfig,
    state: ModuleState,
    reason: String,
    since: Instant,
    /// When this core started: quorum is judged only a heartbeat timeout
    /// later (a restarted daemon has no confirmations yet).
    started: Instant,
    /// The latest time seen (deadlines before it have been acted on).
    last_now: Instant,
    goal_running: bool,
    plan: VecDeque<Step>,
    busy: Option<Step>,
    force: Option<Command>,
    /// The running transition to primary was ordered by the operator
    /// (`prim`): it may start from inconsistent data.
    forced_prim: bool,
    /// This node runs mounts / serves (from the steps' ends).
    mounted: bool,
    serving: bool,
    fenced: bool,
    view: MirrorView,
    roots: Option<Vec<RootInfo>>,
    link: PeerLink,
    peer: Option<Beat>,
    /// The peer, when last heard as primary, was in sync with this node.
    peer_was_in_sync: bool,
    /// The peer was ever seen as primary since this node became secondary.
    peer_was_primary: bool,
    // The witness.
    report_seq: u64,
    reports: VecDeque<(u64, Instant)>,
    witness_until: Option<Instant>,
    /// When the witness last answered (whatever it said).
    witness_heard: Option<Instant>,
    want_lease: bool,
    lease_until: Option<Instant>,
    lease_refused: Option<String>,
    /// The last refusal was temporary (ask again, do not give up).
    lease_retry: bool,
    /// The last report that gave the lease up: grants to earlier reports
    /// are void.
    released_seq: u64,
    /// The witness says this node's data is behind its peer's.
    behind: bool,
    /// The witness says the other node holds the lease.
    other_holds: Option<String>,
    /// The first beat sent after the mounts came up: the peer's answer to it
    /// (or a later one) tells whether it follows this node as primary.
    mount_seq: Option<u64>,
    /// The first beat sent in the current state: the peer's beats that echo
    /// it or a later one were sent knowing this state ("fresh").
    state_seq: u64,
    /// The peer acknowledged this node as primary since the mounts came up:
    /// a beat echoing `mount_seq` or later showed it SECOND.
    peer_follows: bool,
    granted_until: Option<Instant>,
    // Swaps.
    handover: bool,
    swap_requested: Option<Instant>,
    next_beat: Instant,
    next_report: Instant,
    history: VecDeque<Transition>,
    last_failover: Option<Failover>,
    out: VecDeque<Action>,
}

impl ModuleCore {
    /// A module core at `now`, STOP, nothing running. Call
    /// [`handle_adopt`](Self::handle_adopt) next with what already runs.
    pub fn new(now: Instant, cfg: CoreConfig) -> Self {
        // Beats count from the incarnation (the daemon's start time in ms)
        // shifted left: always above what an earlier incarnation sent.
        let link = PeerLink::new(cfg.networks, cfg.timeout, cfg.incarnation << 16);
        let cfg_incarnation = cfg.incarnation;
        Self {
            cfg,
            state: ModuleState::Stop,
            reason: "not started".into(),
            since: now,
            started: now,
            last_now: now,
            goal_running: false,
            plan: VecDeque::new(),
            busy: None,
            force: None,
            forced_prim: false,
            mounted: false,
            serving: false,
            fenced: false,
            view: MirrorView::default(),
            roots: None,
            link,
            peer: None,
            peer_was_in_sync: false,
            peer_was_primary: false,
            // Reports count from the incarnation too (see the link).
            report_seq: cfg_incarnation << 16,
            reports: VecDeque::new(),
            witness_until: None,
            witness_heard: None,
            want_lease: false,
            lease_until: None,
            lease_refused: None,
            lease_retry: false,
            released_seq: 0,
            behind: false,
            other_holds: None,
            mount_seq: None,
            state_seq: 0,
            peer_follows: false,
            granted_until: None,
            handover: false,
            swap_requested: None,
            next_beat: now,
            next_report: now,
            history: VecDeque::new(),
            last_failover: None,
            out: VecDeque::new(),
        }
    }

    /// The module's configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// What already runs at daemon start (mirrorfs processes that outlived
    /// the previous daemon), and whether the module is to run. Mounts that
    /// run make this node the primary again (the VIP is re-added; the
    /// application is assumed to run: the checkers tell); serves, the
    /// secondary.
    pub fn handle_adopt(&mut self, now: Instant, view: MirrorView, goal_running: bool) {
        self.goal_running = goal_running;
        if let Some(m) = &view.mounts {
            self.roots = Some(m.roots.clone());
            self.mounted = true;
            self.mount_seq = Some(self.link.next_seq());
            if m.fenced {
                // Fenced while no daemon ran (mirrorfs's hold timeout):
                // it cannot write again; take it down and decide afresh.
                self.fenced = true;
                self.view = view;
                self.enter(
                    now,
                    ModuleState::Wait,
                    "adopted mounts that are fenced: taking them down",
                );
                self.plan_stepdown();
                self.decide(now);
                return;
            }
            let to = if m.connected {
                ModuleState::Prim
            } else {
                ModuleState::Alone
            };
            self.view = view;
            self.enter(now, to, "adopted the running mounts after a daemon restart");
            if self.cfg.vip {
                self.plan.push_back(Step::AddVip);
            }
        } else if let Some(s) = &view.serves {
            self.roots = Some(s.roots.clone());
            self.serving = true;
            self.view = view;
            self.enter(
                now,
                ModuleState::Second,
                "adopted the running replica after a daemon restart",
            );
        } else if goal_running {
            self.start(now, "started with the daemon");
        }
        self.decide(now);
    }

    /// An operator's order; refused (with why and what to do) when it does
    /// not apply now.
    pub fn handle_command(&mut self, now: Instant, cmd: Command) -> Result<(), Refused> {
        let r = self.command(now, cmd);
        self.decide(now);
        r
    }

    /// A step started by [`Action::Run`] ended.
    pub fn handle_step_done(&mut self, now: Instant, step: Step, result: Result<(), String>) {
        if self.busy != Some(step) {
            return;
        }
        self.busy = None;
        match (step, &result) {
            (Step::StartServe, Ok(())) => self.serving = true,
            (Step::StopServe, _) => self.serving = false,
            (Step::Mount, Ok(())) => {
                self.mounted = true;
                self.fenced = false;
                self.mount_seq = Some(self.link.next_seq());
                self.peer_follows = false;
            }
            (Step::Unmount, _) => {
                self.mounted = false;
                self.fenced = false;
                self.view.mounts = None;
                self.want_lease = false;
                self.granted_until = None;
                // Unmounted, nothing can write on the lease any more: it is
                // given up (the reports say `release`, and the witness may
                // hand it on), so it must never be used again.
                self.lease_until = None;
            }
            _ => {}
        }
        if let Err(e) = result {
            self.step_failed(now, step, &e);
        }
        self.keep_plan_whole();
        self.decide(now);
    }

    /// The data's state, read for [`Step::ReadRoots`] (one entry per
    /// directory).
    pub fn handle_roots(&mut self, now: Instant, roots: Vec<RootInfo>) {
        self.roots = Some(roots);
        self.decide(now);
    }

    /// The mirrorfs processes reported a change.
    pub fn handle_mirror(&mut self, now: Instant, view: MirrorView) {
        // Only a view of every directory says what the data is (a partial
        // one, while a process is down, would compare as diverged).
        let roots = match (&view.mounts, &view.serves) {
            (Some(m), _) => Some(&m.roots),
            (None, Some(s)) => Some(&s.roots),
            _ => None,
        };
        if let Some(r) = roots.filter(|r| r.len() == self.cfg.dirs) {
            self.roots = Some(r.clone());
        }
        self.view = view;
        self.decide(now);
    }

    /// A heartbeat arrived on `network`.
    pub fn handle_beat(&mut self, now: Instant, network: usize, beat: Beat) {
        if beat.module != self.cfg.module || beat.from != self.cfg.peer {
            return;
        }
        if !self.link.receive(
            now,
            network,
            beat.incarnation,
            beat.seq,
            beat.echo,
            Duration::from_micros(beat.echo_held_us),
        ) {
            self.decide(now);
            return;
        }
        // A primary that is stopping (STOP while still mounted) stopped its
        // application first: what it said of sync before the stop holds
        // (its mount's connection goes down as it unmounts).
        if beat.primary && beat.state != ModuleState::Stop {
            self.peer_was_primary = true;
            self.peer_was_in_sync = beat.in_sync;
        }
        // The peer changed (took the mounts, handed over, stopped): answer
        // at once, so that what waits on our echo (a new primary's
        // acknowledgement, a swap) waits a round trip, not an interval.
        if self.peer.as_ref().is_none_or(|p| {
            (p.state, p.primary, p.handover, p.serving)
                != (beat.state, beat.primary, beat.handover, beat.serving)
        }) {
            self.next_beat = self.next_beat.min(now);
        }
        if let (Some(m), Some(e)) = (self.mount_seq, beat.echo) {
            if e >= m {
                self.peer_follows = !beat.primary && beat.state == ModuleState::Second;
            }
        }
        self.peer = Some(beat);
        self.decide(now);
    }

    /// The witness answered a report.
    pub fn handle_answer(&mut self, now: Instant, answer: Answer) {
        if answer.module != self.cfg.module {
            return;
        }
        let Some(&(_, sent)) = self.reports.iter().find(|(s, _)| *s == answer.seq) else {
            return;
        };
        self.behind = answer.behind;
        self.witness_heard = Some(now);
        self.other_holds = answer
            .holder
            .as_ref()
            .filter(|h| **h != self.cfg.me)
            .cloned();
        let t = self.cfg.timeout;
        let until = sent + t - margin(t);
        if self.other_holds.is_none() && self.witness_until.is_none_or(|w| until > w) {
            self.witness_until = Some(until);
        }
        match answer.lease {
            // A grant to a report sent before a release is void: the
            // witness may have handed the lease on since.
            LeaseAnswer::Granted { .. } if answer.seq <= self.released_seq => {}
            LeaseAnswer::Granted { ms } => {
                let lease = Duration::from_millis(ms);
                let until = sent + lease - margin(lease);
                if self.lease_until.is_none_or(|l| until > l) {
                    self.lease_until = Some(until);
                }
                self.lease_refused = None;
            }
            LeaseAnswer::Refused { reason, retry } => {
                if self.want_lease {
                    self.lease_retry = retry;
                    self.lease_refused = Some(reason);
                }
            }
            LeaseAnswer::NotAsked => {}
        }
        self.decide(now);
    }

    /// Time passed (call at [`poll_timeout`](Self::poll_timeout)).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.decide(now);
    }

    /// The next action to carry out.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_beat;
        if self.cfg.witness {
            t = t.min(self.next_report);
        }
        // Only deadlines still ahead: one that passed has been acted on
        // (a past one would make the driver spin on a zero wait).
        for d in [self.link.deadline(), self.witness_until, self.lease_until]
            .into_iter()
            .flatten()
            .filter(|d| *d > self.last_now)
        {
            t = t.min(d);
        }
        t
    }

    /// The state now.
    pub fn state(&self) -> ModuleState {
        self.state
    }

    /// The transitions so far, oldest first (at most the last 32).
    pub fn history(&self) -> impl Iterator<Item = &Transition> {
        self.history.iter()
    }

    /// Whether this node may acknowledge writes now: its mounts run, are not
    /// fenced, and are connected or under a valid lease. (What the
    /// simulation's invariants check against.)
    pub fn may_write(&self, now: Instant) -> bool {
        self.mounted && !self.fenced && (self.connected() || self.lease_valid(now))
    }

    /// A snapshot for `mirrorfarm state`.
    pub fn status(&mut self, now: Instant) -> CoreStatus {
        let peer_up = self.link.up(now);
        CoreStatus {
            state: self.state,
            ready: self.ready(),
            reason: self.reason.clone(),
            since: self.since,
            step: self.busy,
            peer: self.peer.as_ref().map(|b| (b.state, b.ready)),
            peer_up,
            peer_silence: self.link.silence(now),
            rtt: self.link.rtt().to_vec(),
            in_sync: if self.mounted {
                self.view.mounts.as_ref().is_some_and(|m| m.in_sync)
            } else {
                // A secondary: its primary said so in its last beat.
                self.serving && self.peer_was_primary && self.peer_was_in_sync
            },
            resync: self.view.mounts.as_ref().and_then(|m| m.resync),
            lease_until: self.lease_until.filter(|l| now < *l),
            lease_refused: self.lease_refused.clone(),
            witness_up: self
                .witness_heard
                .is_some_and(|w| now.saturating_duration_since(w) < self.cfg.timeout),
            last_failover: self.last_failover.clone(),
            digest_mismatch: self
                .peer
                .as_ref()
                .is_some_and(|b| b.digest != self.cfg.digest),
        }
    }

    // ---- decisions ----

    fn command(&mut self, now: Instant, cmd: Command) -> Result<(), Refused> {
        let m = self.cfg.module.clone();
        match cmd {
            Command::Start => {
                if self.goal_running {
                    return Err(Refused(format!(
                        "{m} is already started here ({})",
                        self.state
                    )));
                }
                if self.digest_mismatch() {
                    return Err(Refused(format!(
                        "{m}'s module file differs from {}'s: make them identical (copy it over), then start",
                        self.cfg.peer
                    )));
                }
                self.start(now, "operator: start");
                Ok(())
            }
            Command::Stop => {
                if !self.goal_running && self.state == ModuleState::Stop {
                    return Err(Refused(format!("{m} is already stopped here")));
                }
                self.stop(now, "operator: stop");
                Ok(())
            }
            Command::Restart => {
                if !self.mounted || !self.ready() {
                    return Err(Refused(format!(
                        "restart restarts the application on the primary; {m} is {} here{}",
                        self.state,
                        if self.ready() { "" } else { " (in transition)" }
                    )));
                }
                self.plan_scripts(&[Script::StopPrim, Script::StartPrim]);
                self.note(now, "operator: restart the application");
                Ok(())
            }
            Command::Swap => self.swap(now),
            Command::Prim | Command::Second => {
                if self.state != ModuleState::Wait || !self.ready() {
                    return Err(Refused(format!(
                        "{} applies when {m} waits (WAIT) for the operator; it is {} here{}",
                        if cmd == Command::Prim {
                            "prim"
                        } else {
                            "second"
                        },
                        self.state,
                        if self.state == ModuleState::Second {
                            ": use `mirrorfarm swap` to make it primary"
                        } else {
                            ""
                        }
                    )));
                }
                self.force = Some(cmd);
                Ok(())
            }
        }
    }

    fn swap(&mut self, now: Instant) -> Result<(), Refused> {
        let m = self.cfg.module.clone();
        let peer = self.cfg.peer.clone();
        if self.state == ModuleState::Second && self.ready() {
            if !self.link.up(now) {
                return Err(Refused(format!(
                    "{peer} is not reachable: nothing to swap with"
                )));
            }
            self.swap_requested = Some(now);
            return Ok(());
        }
        if self.state != ModuleState::Prim || !self.ready() {
            return Err(Refused(format!(
                "swap needs {m} PRIM (ready) on one node and SECOND on the other; it is {} here",
                self.state
            )));
        }
        self.try_handover(now).map_err(Refused)
    }

    /// Hands the service to a ready, in-sync secondary.
    fn try_handover(&mut self, now: Instant) -> Result<(), String> {
        let peer = self.cfg.peer.clone();
        let peer_ok = self.link.up(now)
            && self
                .peer
                .as_ref()
                .is_some_and(|b| b.state == ModuleState::Second && b.ready && b.serving);
        if !peer_ok {
            return Err(format!(
                "{peer} is not a ready SECOND: nothing to swap with"
            ));
        }
        if !self.view.mounts.as_ref().is_some_and(|m| m.in_sync) {
            return Err(format!(
                "{peer} is not in sync yet (resync running): swap once it is"
            ));
        }
        self.plan.clear();
        self.plan_scripts(&[Script::StopPrim]);
        if self.cfg.vip {
            self.plan.push_back(Step::RemoveVip);
        }
        self.plan.push_back(Step::Unmount);
        self.plan.push_back(Step::StartServe);
        self.handover = true;
        self.enter(
            now,
            ModuleState::Second,
            &format!("swap: handing the service to {peer}"),
        );
        Ok(())
    }

    fn start(&mut self, now: Instant, why: &str) {
        self.goal_running = true;
        self.plan.clear();
        self.plan_scripts(&[Script::Prestart]);
        self.plan.push_back(Step::ReadRoots);
        self.enter(now, ModuleState::Wait, why);
    }

    fn stop(&mut self, now: Instant, why: &str) {
        self.goal_running = false;
        self.force = None;
        self.handover = false;
        self.plan.clear();
        if self.mounted {
            self.plan_stepdown();
        }
        if self.serving {
            self.plan.push_back(Step::StopServe);
        }
        self.plan_scripts(&[Script::Poststop]);
        self.enter(now, ModuleState::Stop, why);
    }

    /// A plan made while a step ran may not know what that step started:
    /// mounts that came up while the target is no longer primary are taken
    /// down again, a replica that came up after a stop is stopped.
    fn keep_plan_whole(&mut self) {
        let primary = matches!(self.state, ModuleState::Prim | ModuleState::Alone);
        if self.mounted && !primary && !self.plan.contains(&Step::Unmount) {
            let rest: Vec<Step> = self.plan.drain(..).collect();
            if !self.fenced {
                self.fenced = true;
                self.out.push_back(Action::Fence);
            }
            self.plan_stepdown();
            self.plan.extend(rest);
        }
        if self.serving && self.state == ModuleState::Stop && !self.plan.contains(&Step::StopServe)
        {
            self.plan.push_front(Step::StopServe);
        }
    }

    /// The steps that take the service down on this node (and read what the
    /// data is then: the next decision compares it with the peer's).
    fn plan_stepdown(&mut self) {
        self.plan_scripts(&[Script::StopPrim]);
        if self.cfg.vip {
            self.plan.push_back(Step::RemoveVip);
        }
        self.plan.push_back(Step::Unmount);
        self.plan.push_back(Step::ReadRoots);
    }

    fn step_down(&mut self, now: Instant, why: &str) {
        if self.mounted && !self.fenced {
            self.fenced = true;
            self.out.push_back(Action::Fence);
        }
        if self.cfg.vip {
            self.out.push_back(Action::DropVip);
        }
        self.plan.clear();
        self.plan_stepdown();
        self.handover = false;
        self.enter(now, ModuleState::Wait, why);
    }

    fn become_primary(&mut self, now: Instant, to: ModuleState, why: &str) {
        self.plan.clear();
        self.forced_prim = false;
        if self.serving {
            self.plan.push_back(Step::StopServe);
        }
        self.plan.push_back(Step::ReadRoots);
        self.plan.push_back(Step::Mount);
        if self.cfg.vip {
            self.plan.push_back(Step::AddVip);
        }
        self.plan_scripts(&[Script::StartPrim]);
        self.enter(now, to, why);
    }

    fn become_secondary(&mut self, now: Instant, discard: bool, why: &str) {
        self.plan.clear();
        if discard {
            if self.serving {
                self.plan.push_back(Step::StopServe);
            }
            self.plan.push_back(Step::Discard);
        }
        if !self.serving || discard {
            self.plan.push_back(Step::StartServe);
        }
        self.peer_was_primary = false;
        self.peer_was_in_sync = false;
        self.enter(now, ModuleState::Second, why);
    }

    fn step_failed(&mut self, now: Instant, step: Step, e: &str) {
        let why = format!("{step} failed: {e}");
        match step {
            // Stopping steps: go on with the rest of the plan (the
            // application and the VIP must go down whatever happens).
            Step::Script(Script::StopPrim | Script::Poststop)
            | Step::RemoveVip
            | Step::StopServe
            | Step::Unmount => {
                self.note(now, &why);
            }
            _ if self.state == ModuleState::Stop => self.note(now, &why),
            _ if self.mounted => self.step_down(now, &why),
            _ => {
                self.plan.clear();
                if self.serving && self.state == ModuleState::Second {
                    self.plan.push_back(Step::StopServe);
                }
                self.enter(now, ModuleState::Wait, &why);
            }
        }
    }

    /// Re-evaluates everything after an event.
    fn decide(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        self.safety(now);
        self.lease_and_grants(now);
        self.send_messages(now);
        if self.busy.is_some() {
            return;
        }
        if let Some(step) = self.plan.front().copied() {
            // The application and the VIP come up only once the mounts can
            // take writes (connected, or the lease granted).
            if matches!(step, Step::AddVip | Step::Script(Script::StartPrim))
                && self.mounted
                && !self.may_serve(now)
            {
                if !self.connected() {
                    self.want_lease = true;
                }
                if let Some(r) = self.lease_refused.clone().filter(|_| !self.lease_retry) {
                    self.step_down(now, &format!("the witness refused the lease: {r}"));
                    self.decide_next(now);
                }
                return;
            }
            if step == Step::Mount && !self.forced_prim && !self.promotion_holds(now) {
                // Decided a while ago (a step ran long, or this daemon
                // stalled): what it rested on no longer holds.
                self.plan.clear();
                let peer = self.cfg.peer.clone();
                self.enter(
                    now,
                    ModuleState::Wait,
                    &format!("the decision to become primary is stale: neither the lease nor a recent word from {peer} backs it"),
                );
                self.decide_next(now);
                return;
            }
            if step == Step::Mount && self.roots_inconsistent() && !self.forced_prim {
                self.plan.clear();
                self.enter(
                    now,
                    ModuleState::Wait,
                    "this node's data is inconsistent (a resync into it did not finish): it cannot be primary; `mirrorfarm prim` only if the other node's data is lost",
                );
                return;
            }
            self.plan.pop_front();
            self.busy = Some(step);
            self.out.push_back(Action::Run(step));
            return;
        }
        self.settled(now);
        // A plan made just now (a takeover, a swap) starts at once, not at
        // the next event (a heartbeat interval later).
        if self.busy.is_none() && !self.plan.is_empty() {
            self.decide(now);
        }
    }

    fn decide_next(&mut self, now: Instant) {
        if self.busy.is_none() {
            if let Some(step) = self.plan.pop_front() {
                self.busy = Some(step);
                self.out.push_back(Action::Run(step));
            } else {
                self.settled(now);
            }
        }
    }

    /// Rules that hold whatever runs: a primary without quorum steps down.
    fn safety(&mut self, now: Instant) {
        if !self.mounted || self.fenced {
            return;
        }
        if let Some(h) = self.other_holds.clone().filter(|_| !self.connected()) {
            self.step_down(
                now,
                &format!("the witness says {h} holds the lease: it takes over"),
            );
            return;
        }
        if !self.quorum(now) && now >= self.started + self.cfg.timeout {
            self.step_down(
                now,
                &format!(
                    "lost quorum: neither {} nor the witness confirmed this node within {:.1} s",
                    self.cfg.peer,
                    self.cfg.timeout.as_secs_f64()
                ),
            );
            return;
        }
        if !self.connected() && self.want_lease && !self.lease_retry {
            if let Some(r) = self.lease_refused.clone() {
                self.step_down(now, &format!("the witness refused the lease: {r}"));
            }
        }
    }

    /// Whether this node may bring the service up (VIP, application): it
    /// can write, and either holds the lease or its peer acknowledged it
    /// as primary after the mounts came up (so the peer is not taking over
    /// at the same moment).
    fn may_serve(&self, now: Instant) -> bool {
        if !self.may_write(now) || !self.quorum(now) {
            return false;
        }
        // The VIP it adds lives at least VIP_LIFE: the quorum must too.
        if self.cfg.vip && !self.vip_renewable(now, VIP_LIFE) {
            return false;
        }
        // The peer that follows us may hold an old lease (a swap right
        // after it wrote alone): it does not write, it serves us.
        let follows = self.connected() && self.peer_follows;
        follows || (self.other_holds.is_none() && (self.lease_valid(now) || !self.cfg.witness))
    }

    /// Whether this node may keep the service: its peer or the witness
    /// confirmed it lately, or it holds the lease (always, without a
    /// witness).
    fn quorum(&self, now: Instant) -> bool {
        !self.cfg.witness
            || self.link.confirmed(now)
            || self.witness_until.is_some_and(|w| now < w)
            || self.lease_valid(now)
    }

    fn lease_and_grants(&mut self, now: Instant) {
        if self.mounted && !self.fenced && self.view.mounts.is_some() {
            // Connected, writes are replicated: no lease needed (and
            // mirrorfs ended its grant: the next loss needs a new one).
            self.want_lease = !self.connected();
            if self.connected() {
                self.granted_until = None;
            }
        }
        if !self.want_lease {
            return;
        }
        if !self.cfg.witness {
            self.lease_until = Some(now + self.cfg.lease);
        }
        let Some(until) = self.lease_until.filter(|l| now < *l) else {
            return;
        };
        // Grants go only to mounts of a primary that means to stay one (a
        // mount being taken down for a swap or a stop must not write alone).
        if !self.mounted
            || self.fenced
            || !matches!(self.state, ModuleState::Prim | ModuleState::Alone)
        {
            return;
        }
        // Renew the grant when a third of it is used.
        let renew = self
            .granted_until
            .is_none_or(|g| g <= now + self.cfg.lease * 2 / 3 || until < g);
        if renew && until > now {
            self.granted_until = Some(until);
            self.out.push_back(Action::Grant { until });
        }
    }

    fn send_messages(&mut self, now: Instant) {
        if now >= self.next_beat {
            self.next_beat = now + self.cfg.interval;
            let (seq, echo, held) = self.link.send(now);
            let roots = self
                .roots
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|mut r| {
                    r.history.truncate(BEAT_HISTORY);
                    r
                })
                .collect();
            self.out.push_back(Action::Beat(Beat {
                version: VERSION,
                module: self.cfg.module.clone(),
                from: self.cfg.me.clone(),
                incarnation: self.cfg.incarnation,
                seq,
                echo,
                echo_held_us: held.as_micros() as u64,
                digest: self.cfg.digest,
                state: self.state,
                ready: self.ready(),
                primary: self.mounted,
                in_sync: self.mounted && self.view.mounts.as_ref().is_some_and(|m| m.in_sync),
                serving: self.serving,
                handover: self.handover,
                swap_requested: self.swap_requested.is_some(),
                behind: self.behind,
                knows: self.knows_peer(),
                roots,
            }));
        }
        if self.cfg.witness && now >= self.next_report {
            self.next_report = now + self.cfg.interval;
            self.report_seq += 1;
            let release = !self.mounted && !self.want_lease;
            if release {
                self.released_seq = self.report_seq;
                self.lease_until = None;
            }
            self.reports.push_back((self.report_seq, now));
            while self.reports.len() > 64 {
                self.reports.pop_front();
            }
            self.out.push_back(Action::Report(Report {
                version: VERSION,
                module: self.cfg.module.clone(),
                node: self.cfg.me.clone(),
                peer: self.cfg.peer.clone(),
                seq: self.report_seq,
                primary: self.mounted && !self.fenced,
                in_sync: self.mounted && self.view.mounts.as_ref().is_some_and(|m| m.in_sync),
                want_lease: self.want_lease,
                release,
                lease_ms: self.cfg.lease.as_millis() as u64,
                timeout_ms: self.cfg.timeout.as_millis() as u64,
            }));
        }
    }

    /// Nothing runs: what should?
    fn settled(&mut self, now: Instant) {
        if let Some(at) = self.swap_requested {
            if self.state != ModuleState::Second || now > at + self.cfg.timeout * 5 {
                self.swap_requested = None;
            }
        }
        match self.state {
            ModuleState::Stop => {}
            ModuleState::Wait => self.settled_wait(now),
            ModuleState::Second => self.settled_second(now),
            ModuleState::Prim | ModuleState::Alone => self.settled_primary(now),
        }
    }

    fn settled_wait(&mut self, now: Instant) {
        if !self.goal_running {
            return;
        }
        if self.roots.is_none() {
            self.plan.push_back(Step::ReadRoots);
            self.decide_next(now);
            return;
        }
        let peer_name = self.cfg.peer.clone();
        let m = self.cfg.module.clone();
        let peer_up = self.link.up(now);
        let order = self.peer.as_ref().and_then(|b| self.order_with(b));
        match self.force.take() {
            Some(Command::Prim) => {
                let to = if peer_up {
                    ModuleState::Prim
                } else {
                    ModuleState::Alone
                };
                self.become_primary(now, to, "operator: prim (this node's data is the good one)");
                self.forced_prim = true;
                return;
            }
            Some(Command::Second) => {
                let discard =
                    order.is_some_and(|o| matches!(o, DataOrder::Newer | DataOrder::Diverged));
                return self.become_secondary(
                    now,
                    discard,
                    "operator: second (the peer's data is the good one)",
                );
            }
            _ => {}
        }
        if !peer_up {
            self.set_reason(format!(
                "waiting for {peer_name} to compare data before starting (it is unreachable); `mirrorfarm prim {m}` starts here with this node's data"
            ));
            return;
        }
        let Some(peer) = self.peer.clone().filter(|_| self.peer_fresh(now)) else {
            self.set_reason(format!("waiting for {peer_name} to answer"));
            return;
        };
        if peer.digest != self.cfg.digest {
            self.set_reason(format!(
                "{m}'s module file differs from {peer_name}'s: make them identical"
            ));
            return;
        }
        let Some(order) = order else {
            self.set_reason(format!(
                "waiting for {peer_name} to tell the state of its data"
            ));
            return;
        };
        if peer.primary {
            match order {
                DataOrder::Same | DataOrder::Older => {
                    self.become_secondary(now, false, &format!("{peer_name} is primary"))
                }
                DataOrder::Newer => self.set_reason(format!(
                    "{peer_name} is primary with older data than this node's: `mirrorfarm second {m}` here gives up this node's changes"
                )),
                DataOrder::Diverged => self.set_reason(format!(
                    "split brain: {peer_name} is primary and both nodes changed the data without the other; `mirrorfarm second {m}` here gives up this node's changes"
                )),
            }
            return;
        }
        let peer_settled_elsewhere = matches!(peer.state, ModuleState::Stop)
            || (peer.state == ModuleState::Second && peer.ready);
        match order {
            DataOrder::Newer => self.become_primary(
                now,
                ModuleState::Prim,
                &format!("this node's data is newer than {peer_name}'s"),
            ),
            DataOrder::Same if self.cfg.preferred || peer_settled_elsewhere => self.become_primary(
                now,
                ModuleState::Prim,
                &format!("same data as {peer_name}; this node starts as primary"),
            ),
            DataOrder::Same => self.set_reason(format!(
                "same data as {peer_name}, which starts as primary (listed first)"
            )),
            DataOrder::Older if peer.state == ModuleState::Stop => self.set_reason(format!(
                "{peer_name} has newer data and {m} is stopped there: start it there, or `mirrorfarm prim {m}` here to go on without its changes"
            )),
            DataOrder::Older => self.set_reason(format!(
                "{peer_name} has newer data: waiting for it to start as primary"
            )),
            DataOrder::Diverged => self.set_reason(format!(
                "split brain: both nodes changed the data without the other; `mirrorfarm prim {m}` on the node whose data to keep, `mirrorfarm second {m}` on the other (its changes are kept aside by mirrorfs discard)"
            )),
        }
    }

    fn settled_second(&mut self, now: Instant) {
        let peer_name = self.cfg.peer.clone();
        if !self.serving || self.view.serves.as_ref().is_some_and(|s| !s.all_up) {
            self.serving = false;
            self.plan.push_back(Step::StartServe);
            self.note(
                now,
                "the replica (mirrorfs serve) is not running: starting it",
            );
            self.decide_next(now);
            return;
        }
        let peer_up = self.link.up(now);
        if self.handover {
            // We handed the service over: done once the peer is primary;
            // given up if the peer is gone, or waits or stopped instead of
            // taking over (SECOND: not yet; PRIM or ALONE, transient: it is
            // taking over).
            let fresh = self.peer_fresh(now);
            match &self.peer {
                Some(b) if b.primary => {
                    self.handover = false;
                    self.set_reason(format!("{peer_name} is primary (swap)"));
                }
                Some(b)
                    if peer_up
                        && !(fresh && matches!(b.state, ModuleState::Wait | ModuleState::Stop)) =>
                {
                    return
                }
                _ => {
                    self.handover = false;
                    self.note(
                        now,
                        &format!("swap abandoned: {peer_name} did not take over"),
                    );
                }
            }
            if self.handover || self.peer.as_ref().is_some_and(|b| b.primary) {
                return;
            }
        }
        let peer = self.peer.clone().filter(|_| self.peer_fresh(now));
        if peer_up
            && peer
                .as_ref()
                .is_some_and(|b| b.handover && !b.primary && b.serving)
        {
            self.swap_requested = None;
            self.last_failover = Some(Failover {
                to: self.cfg.me.clone(),
                cause: format!("swap from {peer_name}"),
                at: Some(now),
            });
            return self.become_primary(
                now,
                ModuleState::Prim,
                &format!("swap: {peer_name} handed the service over"),
            );
        }
        let stopped_cleanly = peer_up
            && peer
                .as_ref()
                .is_some_and(|b| !b.primary && b.state == ModuleState::Stop);
        // The peer waits (it stepped down) with older data than ours: it
        // waits for us, so we take over.
        let peer_waits_for_us = peer_up
            && peer.as_ref().is_some_and(|b| {
                !b.primary
                    && b.state == ModuleState::Wait
                    && b.ready
                    && self.order_with(b) == Some(DataOrder::Newer)
            });
        if peer_waits_for_us {
            self.peer_was_primary = true;
            self.peer_was_in_sync = true;
        }
        // Both secondaries (a swap cut short by crashes): the node with the
        // newer data, or the one listed first, goes through WAIT to primary.
        let both_second = peer.as_ref().is_some_and(|b| {
            !b.primary && !b.handover && b.state == ModuleState::Second && b.ready && {
                let order = self.order_with(b);
                order == Some(DataOrder::Newer)
                    || (order == Some(DataOrder::Same) && self.cfg.preferred)
            }
        });
        if peer_up && both_second {
            self.enter(
                now,
                ModuleState::Wait,
                &format!("no primary: {peer_name} is secondary too"),
            );
            return;
        }
        let stopped_cleanly = stopped_cleanly || peer_waits_for_us;
        // A takeover waits for silence on every network (one-way beats
        // count: the peer may be primary and unable to hear us).
        if (peer_up || !self.link.silent(now)) && !stopped_cleanly {
            self.want_lease = false;
            self.lease_refused = None;
            if self.peer.as_ref().is_some_and(|b| b.primary) {
                self.set_reason(format!("{peer_name} is primary"));
            }
            return;
        }
        if !self.peer_was_primary {
            self.set_reason(format!("waiting for {peer_name} to start as primary"));
            return;
        }
        let cause = if stopped_cleanly {
            format!("{peer_name} stopped")
        } else {
            format!(
                "{peer_name} lost (no heartbeat on any network for {:.1} s)",
                self.cfg.timeout.as_secs_f64()
            )
        };
        if !self.peer_was_in_sync {
            self.enter(
                now,
                ModuleState::Wait,
                &format!(
                    "{cause}, and it had changes this node lacks (not in sync): start it again, or `mirrorfarm prim {}` here to go on without them",
                    self.cfg.module
                ),
            );
            return;
        }
        if self.roots_inconsistent() {
            // Still the replica (a resync into it was running): it serves on
            // and the primary resumes the resync when it is back.
            self.set_reason(format!(
                "{cause}, and this node's data is inconsistent (a resync did not finish): it cannot take over"
            ));
            return;
        }
        self.want_lease = true;
        if !self.lease_valid(now) {
            match &self.lease_refused {
                Some(r) => {
                    self.set_reason(format!("{cause}; the witness refuses the takeover: {r}"))
                }
                None => self.set_reason(format!("{cause}; asking the witness for the lease")),
            }
            return;
        }
        self.last_failover = Some(Failover {
            to: self.cfg.me.clone(),
            cause: cause.clone(),
            at: Some(now),
        });
        self.become_primary(now, ModuleState::Alone, &format!("takeover: {cause}"));
    }

    fn settled_primary(&mut self, now: Instant) {
        let peer_name = self.cfg.peer.clone();
        let Some(m) = self.view.mounts.clone() else {
            return;
        };
        if !m.all_up {
            return self.step_down(
                now,
                "a mirrorfs mount exited: the application's writes fail",
            );
        }
        if m.fenced {
            return self.step_down(
                now,
                "a mirrorfs mount fenced itself (no order came within its hold timeout)",
            );
        }
        if m.connected {
            self.want_lease = false;
            self.lease_refused = None;
            if self.state == ModuleState::Alone {
                self.enter(
                    now,
                    ModuleState::Prim,
                    &format!("{peer_name} is back: resync, then in sync"),
                );
            }
        } else if self.state == ModuleState::Prim && self.lease_valid(now) {
            self.enter(
                now,
                ModuleState::Alone,
                &format!("{peer_name} lost: writing alone under the lease"),
            );
        }
        if !self.cfg.preferred && self.peer.as_ref().is_some_and(|b| b.primary) && self.link.up(now)
        {
            // Only without a witness (or for a moment around a handover):
            // the node listed second gives way.
            return self.step_down(now, &format!("{peer_name} is primary too: stepping down"));
        }
        if self.peer.as_ref().is_some_and(|b| b.swap_requested) && self.link.up(now) {
            let _ = self.try_handover(now);
        }
    }

    // ---- helpers ----

    /// How this node's data compares with the peer's, by generations, and
    /// then by the witness: a node it marked behind (its peer wrote alone
    /// since they were in sync) is older whatever the generations say.
    /// None while either side's data is unknown.
    fn order_with(&self, peer: &Beat) -> Option<DataOrder> {
        let mine = self.roots.as_ref()?;
        if peer.roots.is_empty() {
            return None;
        }
        // The peer's history is cut in its beats; where it says its whole
        // history holds our current generation, show it so.
        let theirs: Vec<RootInfo> = peer
            .roots
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut r = r.clone();
                let ours = mine.get(i).and_then(|m| m.history.first());
                if let (Some(g), Some((known, true))) = (ours, peer.knows.get(i)) {
                    if known == g && !r.history.contains(g) {
                        r.history.push(g.clone());
                    }
                }
                r
            })
            .collect();
        let order = DataOrder::compare(mine, &theirs);
        Some(match (self.behind, peer.behind) {
            _ if order == DataOrder::Diverged => order,
            (true, false) => DataOrder::Older,
            (false, true) => DataOrder::Newer,
            _ => order,
        })
    }

    /// For each directory, the peer's current generation (from its last
    /// beat) and whether this node's whole history holds it.
    fn knows_peer(&self) -> Vec<(String, bool)> {
        let (Some(mine), Some(peer)) = (self.roots.as_ref(), self.peer.as_ref()) else {
            return Vec::new();
        };
        peer.roots
            .iter()
            .zip(mine)
            .filter_map(|(p, m)| {
                let g = p.history.first()?;
                Some((g.clone(), m.history.contains(g)))
            })
            .collect()
    }

    fn connected(&self) -> bool {
        self.view
            .mounts
            .as_ref()
            .is_some_and(|m| m.all_up && m.connected)
    }

    fn lease_valid(&self, now: Instant) -> bool {
        self.lease_until.is_some_and(|l| now < l)
    }

    fn ready(&self) -> bool {
        self.busy.is_none() && self.plan.is_empty()
    }

    fn roots_inconsistent(&self) -> bool {
        self.roots
            .as_ref()
            .is_some_and(|r| r.iter().any(|r| !r.consistent))
    }

    fn digest_mismatch(&self) -> bool {
        self.peer
            .as_ref()
            .is_some_and(|b| b.digest != self.cfg.digest)
    }

    fn plan_scripts(&mut self, scripts: &[Script]) {
        for s in scripts {
            let exists = match s {
                Script::Prestart => self.cfg.scripts.prestart,
                Script::StartPrim => self.cfg.scripts.start_prim,
                Script::StopPrim => self.cfg.scripts.stop_prim,
                Script::Poststop => self.cfg.scripts.poststop,
            };
            if exists {
                self.plan.push_back(Step::Script(*s));
            }
        }
    }

    fn set_reason(&mut self, reason: String) {
        self.reason = reason;
    }

    fn note(&mut self, now: Instant, why: &str) {
        self.push_transition(now, self.state, why);
    }

    fn enter(&mut self, now: Instant, to: ModuleState, why: &str) {
        if to != self.state {
            self.since = now;
        }
        if to != ModuleState::Prim && to != ModuleState::Alone {
            self.want_lease = self.want_lease && self.mounted;
        }
        self.push_transition(now, to, why);
        self.state = to;
        self.reason = why.to_owned();
        self.state_seq = self.link.next_seq();
    }

    /// The peer's last beat was sent after it heard this node in its
    /// current state: decisions that depend on the peer's state use only
    /// such beats (a beat delayed, or queued while this daemon stalled,
    /// tells of a past that may have changed).
    ///
    /// The peer must also have confirmed hearing us lately: beats queued
    /// while this daemon stalled echo a seq of its state all right, but
    /// tell of a peer that may have moved on since.
    fn peer_fresh(&self, now: Instant) -> bool {
        self.link.confirmed(now)
            && self
                .peer
                .as_ref()
                .and_then(|b| b.echo)
                .is_some_and(|e| e >= self.state_seq)
    }

    /// Whether a promotion may still mount: the lease backs it, or the peer
    /// is not primary and confirmed hearing this node lately (so it cannot
    /// have decided we are gone; and it takes over otherwise only from a
    /// state of ours this one is not), or there is no witness to ask.
    fn promotion_holds(&self, now: Instant) -> bool {
        !self.cfg.witness
            || self.lease_valid(now)
            || (self.link.confirmed(now) && self.peer.as_ref().is_some_and(|b| !b.primary))
    }

    /// Whether the VIP may be renewed now for `life` more: only while this
    /// node's quorum surely lasts that long (the peer's confirmation, the
    /// witness's, or the lease). An address outlives a dead daemon by
    /// `life` in the kernel, and must be gone before the peer may take
    /// over.
    pub fn vip_renewable(&self, now: Instant, life: Duration) -> bool {
        self.quorum_until().is_some_and(|u| u >= now + life)
    }

    /// Until when this node surely keeps its quorum as things stand (the
    /// peer's confirmation, the witness's — unless it says the other node
    /// holds the lease —, or the lease), while its mounts run unfenced.
    pub fn quorum_until(&self) -> Option<Instant> {
        if !self.mounted || self.fenced {
            return None;
        }
        [
            self.link.confirmed_until(),
            self.witness_until.filter(|_| self.other_holds.is_none()),
            self.lease_until,
        ]
        .into_iter()
        .flatten()
        .max()
    }

    fn push_transition(&mut self, now: Instant, to: ModuleState, why: &str) {
        let t = Transition {
            from: self.state,
            to,
            reason: why.to_owned(),
            at: Some(now),
        };
        self.out.push_back(Action::Transition(t.clone()));
        self.history.push_back(t);
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }
}

#[cfg(test)]
#[path = "module_test.rs"]
mod tests;
