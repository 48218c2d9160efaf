//! One farm module on one node: membership and bucket ownership, STOP /
//! WAIT / UP. No I/O: events come in through `handle_*` with the time they
//! happened (this node's monotonic clock); actions come out of
//! [`FarmCore::poll_action`]; the next deadline is [`FarmCore::poll_timeout`].
//!
//! # The driver's side
//!
//! - Every [`FarmAction::Beat`] goes to every other member (every network).
//! - [`FarmAction::ApplyOwned`]: replace the kernel's bucket set, then call
//!   [`FarmCore::handle_applied`] with the set now in the kernel. At start
//!   the first order is the empty set (a restarted daemon reinstalls its
//!   tables empty); until it is confirmed the core counts all 256 buckets as
//!   possibly held.
//! - [`FarmAction::RenewVip`]: (re)add the VIP at once with `valid_lft` =
//!   [`VIP_LIFE`] (1 s). The kernel must not hold it past `until` +
//!   [`VIP_SLACK`]; the driver renews *only* when told, so a killed daemon's
//!   VIP lapses by itself. [`FarmAction::DropVip`]: remove it now.
//! - [`FarmAction::Run`]: start/stop scripts; their failure, like a checker's,
//!   comes back as [`FarmCore::handle_health`].
//!
//! # Safety: a bucket never has two accepting owners
//!
//! A node accepts bucket `b` iff `b` is in its kernel set and its VIP is
//! valid. Each beat carries the sender's kernel-`applied` set and its
//! `claim`: what it holds, is applying, or wants. A node keeps `b` in its
//! claim until the kernel confirmed it no longer holds `b`. A node takes
//! `b` (adds it to the set it applies) only when, for every other member M,
//! either
//! 1. **released**: M's newest beat echoes a beat of ours sent after our
//!    claim on `b` began, and does not claim `b`; or
//! 2. **silent**: M has surely stopped accepting (below).
//!
//! Two nodes cannot both take `b` by (1): with claims starting at c_X, c_Y
//! and the releasing reports sent at r_Y > c_X (it echoes a beat sent after
//! c_X) and r_X > c_Y, "not claiming" gives r_Y < c_Y and r_X < c_X, so
//! c_X < r_Y < c_Y < r_X < c_X. Contradiction.
//!
//! **Holding.** A node renews its VIP (until now + [`VIP_LIFE`] + [`VIP_SLACK`])
//! only while a *quorum* of the configured members (itself included; more
//! than half, or exactly half holding the first-named member) confirms
//! hearing it: member V confirms us until `sent + T − margin`, where `sent`
//! is when our beat that V echoed left (V cannot have stopped hearing us
//! before `sent + T`, clock rates within 1 %, see [`super::margin`]). It also
//! stops renewing when a member it hears does not confirm hearing it (a
//! one-way cut): that member's side may then take over. When the VIP lapses,
//! the node forgets what it took, *restarts its claims* (new claim sequence
//! numbers, so only reports sent after the lapse count for (1)) and empties
//! its kernel set before it renews again: everything is taken again through
//! (1)/(2).
//!
//! **Silent (2).** Node Y takes X's bucket on silence at `t` when a quorum Q
//! (Y and members Y hears both ways) reports not having heard X: each
//! report from V says "silent for d_V", so V last heard X at h_V ≤
//! arrival − d_V·0.98, and V sent it at r_V ≥ y_V, when Y's beat echoed by V
//! left. Y requires max h + T + margin ≤ min y (and ≤ t for itself). At
//! τ = min r_V no member of Q confirms X any more (every beat of X that V
//! echoed left before h_V, so its confirmation ended before h_V + T ≤ τ, and
//! V sent no new echo of X between h_V and r_V): X has no quorum at τ (quorums
//! intersect), so its VIP lapsed before τ, and after that X takes `b` again
//! only through (1)/(2) against Y's claim.
//!
//! **Timing.** T below is [`FarmCore::window`]: the configured timeout, or
//! more when it is too short for a 1 s VIP lifetime. X killed at t0: its last renewal ends ≤ t0 + 1 s + slack, and
//! at most at X's confirmation deadline (≤ last beat + T − margin). The
//! others take X's share once T + margin passed since they last heard it and
//! their reports echo each other: about T + 2·margin + one interval + a
//! round trip. A node stops renewing ≥ [`VIP_LIFE`] before its confirmation
//! deadline, so ≥ 1 s before peers may take on silence.
//!
//! **Liveness.** Once faults stop and the members hear each other, views
//! agree, every node targets `assign()` of the eligible members, releases
//! what it must not own (its claim shrinks once applied) and takes the rest
//! after one round of echoes.
//!
//! TODO(witness): a witness to break ties for two-node farms is out of
//! scope here; with two nodes, the first-named keeps quorum alone.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use filter::buckets::{assign, BucketSet};
use serde::{Deserialize, Serialize};

use super::margin;
use super::msg::{FarmBeat, VERSION};

pub use super::module::VIP_LIFE;

/// How late after [`FarmAction::RenewVip`] the driver may set the lifetime:
/// the kernel holds the VIP at most until `until + VIP_SLACK`.
pub const VIP_SLACK: Duration = Duration::from_millis(50);

/// How many sent beats are remembered for their echoes.
const SENT_KEPT: usize = 256;

/// The cap on the silence a beat reports.
const SILENT_CAP_MS: u64 = 60_000;

/// A farm module's state on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FarmState {
    /// Stopped by the operator: holds nothing.
    Stop,
    /// Started but not serving its share: starting, no quorum, application
    /// failed, or buckets still being released/taken.
    Wait,
    /// Serving: the kernel holds exactly this node's share of the map.
    Up,
}

impl fmt::Display for FarmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stop => "STOP",
            Self::Wait => "WAIT",
            Self::Up => "UP",
        })
    }
}

/// One configured member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FarmMember {
    /// Its node name.
    pub name: String,
    /// Its weight (0: standby).
    pub weight: u32,
}

/// What the core needs to know of the module and this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FarmConfig {
    /// The module's name.
    pub module: String,
    /// This node (one of `members`).
    pub me: String,
    /// The configured members, in the configured order (the first-named
    /// breaks an exact half).
    pub members: Vec<FarmMember>,
    /// Heartbeat interval.
    pub interval: Duration,
    /// Heartbeat timeout T.
    pub timeout: Duration,
    /// This daemon's start time in ms since the Unix epoch.
    pub incarnation: u64,
}

/// Application scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FarmScript {
    /// Start the application (module start).
    StartBoth,
    /// Stop the application (module stop).
    StopBoth,
}

/// A change of state, for `mirrorfarm state` and the module log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FarmTransition {
    /// Before.
    pub from: FarmState,
    /// After.
    pub to: FarmState,
    /// Why.
    pub reason: String,
}

/// What the core asks the driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum FarmAction {
    /// Send to every other member.
    Beat(FarmBeat),
    /// Replace the kernel's bucket set; answer with
    /// [`FarmCore::handle_applied`].
    ApplyOwned(BucketSet),
    /// Renew the VIP now (`valid_lft` [`VIP_LIFE`]), never past `until` +
    /// [`VIP_SLACK`].
    RenewVip {
        /// On this node's clock.
        until: Instant,
    },
    /// Remove the VIP now.
    DropVip,
    /// Run a script.
    Run(FarmScript),
    /// The state changed.
    Transition(FarmTransition),
}

/// An operator's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FarmCommand {
    /// Start the module.
    Start,
    /// Stop it (release everything).
    Stop,
}

/// A snapshot for `mirrorfarm state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FarmStatus {
    /// The state.
    pub state: FarmState,
    /// Why.
    pub reason: String,
    /// The kernel's set (None: not confirmed yet).
    pub applied: Option<BucketSet>,
    /// This node's share in its current map.
    pub target: BucketSet,
    /// The members heard both ways (itself included).
    pub view: Vec<String>,
}

/// One configured member as this node sees it, for `mirrorfarm state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Its name.
    pub name: String,
    /// Its weight.
    pub weight: u32,
    /// This node (then the other fields are this node's own).
    pub me: bool,
    /// How long ago its newest beat arrived (`None`: never, or this node).
    pub heard: Option<Duration>,
    /// Its state as last heard (this node's own for `me`).
    pub state: Option<FarmState>,
    /// The buckets its kernel held as last heard (this node's confirmed set
    /// for `me`).
    pub applied: Option<BucketSet>,
    /// In this node's view (heard both ways).
    pub in_view: bool,
    /// The members whose flooding probes reached it, as last heard (this
    /// node's own for `me`; `None`: never heard).
    pub flood: Option<Vec<String>>,
}

/// What we know of one other member.
#[derive(Debug, Clone)]
struct Peer {
    /// When its newest beat arrived (or our start).
    heard: Instant,
    /// Its newest beat.
    beat: Option<FarmBeat>,
    /// It surely hears us until then.
    confirmed_until: Option<Instant>,
    /// When our beat that its newest echo names left (None: this
    /// incarnation of it never echoed one we remember).
    echo_sent: Option<Instant>,
    /// When the first beat of its current incarnation arrived.
    since: Instant,
}

/// One farm module on one node.
#[derive(Debug)]
pub struct FarmCore {
    cfg: FarmConfig,
    started: bool,
    healthy: bool,
    state: FarmState,
    reason: String,
    start: Instant,
    peers: BTreeMap<String, Peer>,
    sent: VecDeque<(u64, Instant)>,
    next_seq: u64,
    next_beat: Instant,
    /// The kernel's set as last confirmed (None: unknown).
    applied: Option<BucketSet>,
    /// The set last ordered, until confirmed.
    requested: Option<BucketSet>,
    /// What we took through the protocol since the VIP last lapsed.
    taken: BucketSet,
    /// The current share.
    target: BucketSet,
    /// Per bucket claimed: the first beat seq that carried the claim.
    claim_seq: BTreeMap<u8, u64>,
    /// The VIP is valid until then (None: not held).
    vip_until: Option<Instant>,
    last_renew: Option<Instant>,
    /// The last members given to `assign()`, and our share.
    share_cache: Option<(Vec<(String, u32)>, BucketSet)>,
    /// The members whose flooding probes reached us lately (driver's word).
    flood: Vec<String>,
    out: VecDeque<FarmAction>,
}

impl FarmCore {
    /// A core for `cfg`, started at `now` in STOP. Orders the kernel set
    /// emptied at once.
    pub fn new(now: Instant, cfg: FarmConfig) -> Self {
        let peers = cfg
            .members
            .iter()
            .filter(|m| m.name != cfg.me)
            .map(|m| {
                (
                    m.name.clone(),
                    Peer {
                        heard: now,
                        beat: None,
                        confirmed_until: None,
                        echo_sent: None,
                        since: now,
                    },
                )
            })
            .collect();
        let next_seq = (cfg.incarnation << 16).max(1);
        let mut core = Self {
            cfg,
            started: false,
            healthy: true,
            state: FarmState::Stop,
            reason: "not started".into(),
            start: now,
            peers,
            sent: VecDeque::new(),
            next_seq,
            next_beat: now,
            applied: None,
            requested: None,
            taken: BucketSet::empty(),
            target: BucketSet::empty(),
            claim_seq: BTreeMap::new(),
            vip_until: None,
            last_renew: None,
            share_cache: None,
            flood: Vec::new(),
            out: VecDeque::new(),
        };
        core.decide(now);
        core
    }

    /// An operator's order.
    pub fn handle_command(&mut self, now: Instant, cmd: FarmCommand) {
        match cmd {
            FarmCommand::Start if !self.started => {
                self.started = true;
                self.out.push_back(FarmAction::Run(FarmScript::StartBoth));
            }
            FarmCommand::Stop if self.started => {
                self.started = false;
                self.out.push_back(FarmAction::Run(FarmScript::StopBoth));
            }
            _ => {}
        }
        self.decide(now);
    }

    /// A beat from another member. Older beats than one seen are ignored.
    pub fn handle_beat(&mut self, now: Instant, beat: FarmBeat) {
        if beat.module != self.cfg.module || beat.version != VERSION {
            return;
        }
        let window = self.window();
        let Some(p) = self.peers.get_mut(&beat.from) else {
            return;
        };
        if let Some(old) = &p.beat {
            if beat.incarnation < old.incarnation || beat.seq <= old.seq {
                return;
            }
        }
        if p.beat
            .as_ref()
            .is_none_or(|o| o.incarnation != beat.incarnation)
        {
            // A new daemon there: it has yet to hear us.
            p.since = now;
            p.echo_sent = None;
        }
        p.heard = now;
        if let Some((_, e)) = beat.echo.iter().find(|(n, _)| *n == self.cfg.me) {
            if let Some(&(_, at)) = self.sent.iter().find(|(s, _)| s == e) {
                p.echo_sent = Some(at);
                let until = at + window - margin(window);
                if p.confirmed_until.is_none_or(|c| until > c) {
                    p.confirmed_until = Some(until);
                }
            }
        }
        p.beat = Some(beat);
        self.decide(now);
    }

    /// The kernel now holds `set` (after [`FarmAction::ApplyOwned`]).
    pub fn handle_applied(&mut self, now: Instant, set: BucketSet) {
        self.applied = Some(set);
        if self.requested == Some(set) {
            self.requested = None;
        }
        self.decide(now);
    }

    /// The members whose flooding probes (frames to the virtual MAC)
    /// reached this node lately; passed on in the beats, for the operator.
    pub fn handle_flood(&mut self, from: Vec<String>) {
        self.flood = from;
    }

    /// The application's health (checkers, scripts).
    pub fn handle_health(&mut self, now: Instant, healthy: bool) {
        self.healthy = healthy;
        self.decide(now);
    }

    /// Time passed (call at [`poll_timeout`](Self::poll_timeout)).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.decide(now);
    }

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<FarmAction> {
        self.out.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_beat;
        if let Some(v) = self.vip_until {
            t = t.min(v);
        }
        t
    }

    /// The state.
    pub fn state(&self) -> FarmState {
        self.state
    }

    /// The kernel set as confirmed (None: unknown).
    pub fn applied(&self) -> Option<BucketSet> {
        self.applied
    }

    /// A snapshot for `mirrorfarm state`.
    pub fn status(&self, now: Instant) -> FarmStatus {
        FarmStatus {
            state: self.state,
            reason: self.reason.clone(),
            applied: self.applied,
            target: self.target,
            view: self.view(now),
        }
    }

    /// Every configured member, in the configured order, as this node sees it.
    pub fn member_views(&self, now: Instant) -> Vec<MemberView> {
        let view = self.view(now);
        self.cfg
            .members
            .iter()
            .map(|m| {
                let in_view = view.contains(&m.name);
                if m.name == self.cfg.me {
                    return MemberView {
                        name: m.name.clone(),
                        weight: m.weight,
                        me: true,
                        heard: None,
                        state: Some(self.state),
                        applied: self.applied,
                        in_view,
                        flood: Some(self.flood.clone()),
                    };
                }
                let p = self.peers.get(&m.name);
                let beat = p.and_then(|p| p.beat.as_ref());
                MemberView {
                    name: m.name.clone(),
                    weight: m.weight,
                    me: false,
                    heard: p
                        .filter(|p| p.beat.is_some())
                        .map(|p| now.saturating_duration_since(p.heard)),
                    state: beat.map(|b| b.state),
                    applied: beat.map(|b| b.applied),
                    in_view,
                    flood: beat.map(|b| b.flood.clone()),
                }
            })
            .collect()
    }

    /// The silence after which a member counts as gone, and the length of a
    /// confirmation: the configured timeout T, but at least [`VIP_LIFE`] +
    /// [`VIP_SLACK`] + 3 intervals, so that a holder, which must stop
    /// renewing its VIP a lifetime before its confirmations run out, still
    /// holds between beats (with T = 1 s, interval 100 ms: 1.35 s).
    pub fn window(&self) -> Duration {
        self.cfg
            .timeout
            .max(VIP_LIFE + VIP_SLACK + 3 * self.cfg.interval)
    }

    // ---- decisions ----

    fn decide(&mut self, now: Instant) {
        // The VIP lapsed: what we took is no longer protected; take again.
        if self.vip_until.is_some_and(|v| now >= v) {
            self.vip_until = None;
            self.lapse();
        }
        let view = self.view(now);
        let quorum = self.quorum(&view);
        let hold = self.hold_until(now);
        let can_hold = hold.is_some_and(|h| h >= now + VIP_LIFE + VIP_SLACK);
        let eligible = self.started && self.healthy;
        // In the map (ours, and the others' from our beats) only once we
        // hold the VIPs: the others release our share when we can take it,
        // not while we still start (a joiner's clients would find no node).
        let serving = eligible && self.vip_until.is_some();
        let members = self.members(&view, serving);
        self.target = if eligible && quorum {
            self.share(&members)
        } else {
            BucketSet::empty()
        };
        // Not allowed to hold: drop the VIP now; what we took must be
        // taken again.
        let base = self.started && quorum && can_hold;
        if !base && (self.last_renew.is_some() || self.vip_until.is_some()) {
            self.last_renew = None;
            self.vip_until = None;
            self.lapse();
            self.out.push_back(FarmAction::DropVip);
        }
        // Release first.
        self.taken = self.taken.intersection(&self.target);
        self.update_claims();
        // Take.
        if quorum && can_hold && eligible {
            let want = self.target.difference(&self.taken);
            for b in want.iter() {
                if self.may_take(now, b, &view) {
                    self.taken.insert(b);
                }
            }
        }
        let pending = self.requested.or(self.applied);
        if pending != Some(self.taken) {
            self.requested = Some(self.taken);
            self.out.push_back(FarmAction::ApplyOwned(self.taken));
        }
        self.update_claims();
        // The VIP.
        let clean = self
            .applied
            .is_some_and(|a| a.difference(&self.taken).is_empty())
            && self
                .requested
                .is_none_or(|r| r.difference(&self.taken).is_empty());
        let renew_ok = base && clean;
        if renew_ok {
            let due = self.vip_until.is_none()
                || self.last_renew.is_none_or(|l| now >= l + self.cfg.interval);
            if due {
                self.last_renew = Some(now);
                self.vip_until = Some(now + VIP_LIFE + VIP_SLACK);
                self.out.push_back(FarmAction::RenewVip {
                    until: now + VIP_LIFE,
                });
            }
        }
        // The state.
        let (to, reason) = if !self.started {
            (FarmState::Stop, "stopped".to_string())
        } else if !self.healthy {
            (FarmState::Wait, "application failed".to_string())
        } else if !quorum {
            (
                FarmState::Wait,
                format!("no quorum: hears {}", view.join(", ")),
            )
        } else if !can_hold {
            (
                FarmState::Wait,
                "confirmations too old to hold the VIP".to_string(),
            )
        } else if !renew_ok || self.applied != Some(self.target) {
            (FarmState::Wait, "taking its share".to_string())
        } else {
            (
                FarmState::Up,
                format!(
                    "owns {} buckets of {}",
                    self.target.len(),
                    members
                        .iter()
                        .map(|m| m.0.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        };
        if to != self.state {
            self.out.push_back(FarmAction::Transition(FarmTransition {
                from: self.state,
                to,
                reason: reason.clone(),
            }));
            self.state = to;
        }
        self.reason = reason;
        if now >= self.next_beat {
            self.beat(now, &view, serving);
        }
    }

    /// Our share of `assign(members)` (cached: members rarely change).
    fn share(&mut self, members: &[(String, u32)]) -> BucketSet {
        if let Some((m, set)) = &self.share_cache {
            if m == members {
                return *set;
            }
        }
        let refs: Vec<(&str, u32)> = members.iter().map(|(n, w)| (n.as_str(), *w)).collect();
        let set = assign(&refs).remove(&self.cfg.me).unwrap_or_default();
        self.share_cache = Some((members.to_vec(), set));
        set
    }

    /// The VIP lapsed (or was dropped): forget what we took and restart
    /// every claim, so that a release we rely on from now on was reported
    /// after this moment (a report from before the lapse may predate the
    /// other side's takeover on our silence: simulation seed 116).
    fn lapse(&mut self) {
        self.taken = BucketSet::empty();
        self.claim_seq.clear();
    }

    /// The claim: what the kernel may hold, what we are applying and want.
    fn claim(&self) -> BucketSet {
        let kernel = self.applied.unwrap_or(BucketSet::full());
        let mut c = kernel.union(&self.target).union(&self.taken);
        if let Some(r) = self.requested {
            c = c.union(&r);
        }
        c
    }

    fn update_claims(&mut self) {
        let claim = self.claim();
        self.claim_seq.retain(|b, _| claim.contains(*b));
        for b in claim.iter() {
            self.claim_seq.entry(b).or_insert(self.next_seq);
        }
    }

    fn may_take(&self, now: Instant, b: u8, view: &[String]) -> bool {
        let Some(&since) = self.claim_seq.get(&b) else {
            return false;
        };
        self.peers.iter().all(|(name, p)| {
            let released = p.beat.as_ref().is_some_and(|beat| {
                !beat.claim.contains(b)
                    && beat
                        .echo
                        .iter()
                        .any(|(n, e)| *n == self.cfg.me && *e >= since)
            });
            released || self.silent(now, name, view)
        })
    }

    /// Member `x` has surely stopped accepting (see the module doc).
    fn silent(&self, now: Instant, x: &str, view: &[String]) -> bool {
        let t = self.window();
        let m = margin(t);
        let Some(px) = self.peers.get(x) else {
            return false;
        };
        if now.saturating_duration_since(px.heard) < t + m {
            return false;
        }
        // (h, y): latest possible last hearing of x, earliest report time.
        let mut q: Vec<(String, Instant, Instant)> = vec![(self.cfg.me.clone(), px.heard, now)];
        for v in view {
            if v == x || *v == self.cfg.me {
                continue;
            }
            let Some(beat) = self.peers.get(v).and_then(|p| p.beat.as_ref()) else {
                continue;
            };
            let Some(d) = beat.silent_ms.iter().find(|(n, _)| n == x).map(|e| e.1) else {
                continue;
            };
            let Some(y) = beat
                .echo
                .iter()
                .find(|(n, _)| *n == self.cfg.me)
                .and_then(|(_, e)| self.sent.iter().find(|(s, _)| s == e))
                .map(|(_, at)| *at)
            else {
                continue;
            };
            let arrival = self.peers[v].heard;
            let d = Duration::from_millis(d);
            let h = arrival
                .checked_sub(d - d / 50)
                .unwrap_or(self.start.min(arrival));
            q.push((v.clone(), h, y));
        }
        // Drop the members with the latest hearing until the rest fits.
        loop {
            let names: Vec<String> = q.iter().map(|e| e.0.clone()).collect();
            if !self.quorum(&names) {
                return false;
            }
            let hmax = q.iter().map(|e| e.1).max().expect("me");
            let ymin = q.iter().map(|e| e.2).min().expect("me");
            if hmax + t + m <= ymin {
                return true;
            }
            let worst = q
                .iter()
                .enumerate()
                .skip(1)
                .max_by_key(|(_, e)| e.1)
                .map(|(i, _)| i);
            match worst {
                Some(i) => {
                    q.remove(i);
                }
                None => return false,
            }
        }
    }

    /// The members heard both ways (heard within T, confirming us), and us.
    fn view(&self, now: Instant) -> Vec<String> {
        let mut v = vec![self.cfg.me.clone()];
        for (name, p) in &self.peers {
            let heard = p.beat.is_some() && now.saturating_duration_since(p.heard) < self.window();
            let confirmed = p.confirmed_until.is_some_and(|c| now < c);
            if heard && confirmed {
                v.push(name.clone());
            }
        }
        v.sort();
        v
    }

    /// Whether `names` (configured members) make a quorum: more than half,
    /// or exactly half with the first-named member.
    fn quorum(&self, names: &[String]) -> bool {
        let n = self.cfg.members.len();
        let k = self
            .cfg
            .members
            .iter()
            .filter(|m| names.contains(&m.name))
            .count();
        2 * k > n
            || (2 * k == n
                && self
                    .cfg
                    .members
                    .first()
                    .is_some_and(|f| names.contains(&f.name)))
    }

    /// Until when we may hold the VIP: the latest time at which a quorum
    /// still confirms us, and no member we hear has stopped hearing us.
    fn hold_until(&self, now: Instant) -> Option<Instant> {
        let mut confs: Vec<(Instant, &String)> = self
            .peers
            .iter()
            .filter_map(|(n, p)| p.confirmed_until.map(|c| (c, n)))
            .collect();
        confs.sort_by_key(|c| std::cmp::Reverse(c.0));
        let mut names = vec![self.cfg.me.clone()];
        let mut until = None;
        if self.quorum(&names) {
            until = Some(now + Duration::from_secs(3600));
        } else {
            for (c, n) in confs {
                names.push(n.clone());
                if self.quorum(&names) {
                    until = Some(c);
                    break;
                }
            }
        }
        // One-way: a member we hear whose beats do not echo ours (its newest
        // beat named one of ours more than two intervals older, or none for
        // two intervals since its daemon started). A member that merely went
        // silent is not one: its last beat echoed us, and the quorum above
        // decides (else every survivor of a crash would drop its VIP until
        // the dead member's silence ran out); nor is one that just started.
        let lag = 2 * self.cfg.interval;
        for p in self.peers.values() {
            let heard = p.beat.is_some() && now.saturating_duration_since(p.heard) < self.window();
            let deaf = match p.echo_sent {
                Some(at) => p.heard.saturating_duration_since(at) > lag,
                None => p.heard.saturating_duration_since(p.since) > lag,
            };
            if heard && deaf {
                let c = p.confirmed_until.unwrap_or(now);
                until = until.map(|u| u.min(c));
            }
        }
        until
    }

    /// The eligible members in `view`, with weights.
    fn members(&self, view: &[String], me_eligible: bool) -> Vec<(String, u32)> {
        self.cfg
            .members
            .iter()
            .filter(|m| {
                if m.name == self.cfg.me {
                    me_eligible
                } else {
                    view.contains(&m.name)
                        && self.peers[&m.name]
                            .beat
                            .as_ref()
                            .is_some_and(|b| b.eligible)
                }
            })
            .map(|m| (m.name.clone(), m.weight))
            .collect()
    }

    fn beat(&mut self, now: Instant, view: &[String], eligible: bool) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sent.push_back((seq, now));
        while self.sent.len() > SENT_KEPT {
            self.sent.pop_front();
        }
        self.next_beat = now + self.cfg.interval;
        let echo = self
            .peers
            .iter()
            .filter_map(|(n, p)| p.beat.as_ref().map(|b| (n.clone(), b.seq)))
            .collect();
        let silent_ms = self
            .peers
            .iter()
            .map(|(n, p)| {
                let ms = now.saturating_duration_since(p.heard).as_millis() as u64;
                (n.clone(), ms.min(SILENT_CAP_MS))
            })
            .collect();
        let claim = self.claim();
        self.out.push_back(FarmAction::Beat(FarmBeat {
            version: VERSION,
            module: self.cfg.module.clone(),
            from: self.cfg.me.clone(),
            incarnation: self.cfg.incarnation,
            seq,
            echo,
            silent_ms,
            view: view.to_vec(),
            eligible,
            state: self.state,
            applied: self.applied.unwrap_or(BucketSet::full()),
            claim,
            flood: self.flood.clone(),
        }));
    }
}

#[cfg(test)]
#[path = "farm_test.rs"]
mod tests;
