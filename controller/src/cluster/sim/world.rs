//! The simulated world: two nodes (daemon core, mirrorfs, application, VIP,
//! disk) and a witness, on virtual time in microseconds, stepped by 1 ms.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::time::{Duration, Instant};

use super::invariants::{self, Violation};
use super::oracle::Oracle;
use super::Rng;
use crate::cluster::module::{
    Action, Command, CoreConfig, MirrorView, ModuleCore, MountsView, Script, ScriptSet, ServesView,
    Step,
};
use crate::cluster::msg::{Answer, Beat, Report};
use crate::cluster::state::{ModuleState, RootInfo};
use crate::cluster::witness::{Persisted, Witness};

/// One simulated millisecond, in microseconds.
const MS: u64 = 1000;

/// The kernel drops a VIP this long after the daemon last renewed it
/// (`valid_lft 1`, iproute2's smallest).
const VIP_LIFE: u64 = crate::cluster::module::VIP_LIFE.as_micros() as u64;

/// The simulation's settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) interval_ms: u64,
    pub(crate) timeout_ms: u64,
    pub(crate) lease_ms: u64,
    pub(crate) networks: usize,
    /// Virtual milliseconds with faults, then without.
    pub(crate) safety_ms: u64,
    pub(crate) liveness_ms: u64,
    /// A fault starts on a millisecond with this probability.
    pub(crate) fault_rate: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            interval_ms: 250,
            timeout_ms: 1500,
            lease_ms: 3000,
            networks: 2,
            safety_ms: 30_000,
            liveness_ms: 40_000,
            fault_rate: 1.0 / 1500.0,
        }
    }
}

/// A node's data on disk (one replicated directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Data {
    /// Generations, current first.
    pub(crate) history: Vec<u64>,
    /// The writes it holds.
    pub(crate) writes: BTreeSet<u64>,
    pub(crate) consistent: bool,
}

impl Data {
    fn root(&self) -> RootInfo {
        RootInfo {
            history: self.history.iter().map(|g| format!("{g:016x}")).collect(),
            consistent: self.consistent,
        }
    }
}

/// A running `mirrorfs mount`.
#[derive(Debug, Clone)]
pub(crate) struct MountSim {
    /// The grant's end, on the node's clock.
    pub(crate) grant_until: Option<Instant>,
    pub(crate) fenced: bool,
    pub(crate) connected: bool,
    /// Milliseconds of resync left (0: in sync once connected).
    pub(crate) resync_left: u64,
    /// A generation was started since the peer was last connected.
    pub(crate) alone_gen: bool,
}

/// One node.
#[derive(Debug)]
pub(crate) struct NodeSim {
    pub(crate) name: String,
    /// Clock rate relative to virtual time.
    rate: f64,
    pub(crate) core: Option<ModuleCore>,
    incarnation: u64,
    stalled_until: u64,
    /// The step running and when it ends.
    step: Option<(Step, u64)>,
    pub(crate) data: Data,
    pub(crate) mount: Option<MountSim>,
    pub(crate) serve: bool,
    pub(crate) app: bool,
    /// The daemon added the VIP (and renews it while it runs).
    vip_added: bool,
    /// The kernel holds the VIP until then.
    pub(crate) vip_until: u64,
    /// The module is started (persisted across daemon restarts).
    goal_running: bool,
    last_view: Option<MirrorView>,
    /// The node is down (crashed) until restarted.
    down: bool,
}

/// A message in flight.
#[derive(Debug, Clone)]
enum Msg {
    Beat { to: usize, net: usize, beat: Beat },
    Report { from: usize, report: Report },
    Answer { to: usize, answer: Answer },
}

/// Faults scheduled to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Heal {
    RestartNode(usize),
    RestartDaemon(usize),
    RestartWitness,
    Link(usize, usize),
    Loss,
}

/// The world.
pub(crate) struct World {
    settings: Settings,
    rng: Rng,
    origin: Instant,
    pub(crate) now: u64,
    pub(crate) nodes: Vec<NodeSim>,
    witness: Option<Witness>,
    witness_rate: f64,
    witness_persisted: Persisted,
    /// cut[a][b]: messages from host a to host b are dropped (host 2 is
    /// the witness).
    cut: [[bool; 3]; 3],
    loss: f64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    msgs: Vec<Option<Msg>>,
    heals: Vec<(u64, Heal)>,
    next_gen: u64,
    next_write: u64,
    pub(crate) oracle: Oracle,
    pub(crate) trace: Vec<String>,
    msg_seq: u64,
    /// A violation found while carrying out actions (checked each tick).
    violation: Option<Violation>,
}

impl World {
    pub(crate) fn new(seed: u64, origin: Instant, settings: Settings) -> Self {
        let mut rng = Rng::new(seed);
        let mut nodes = Vec::new();
        for (i, name) in ["n1", "n2"].into_iter().enumerate() {
            let rate = 1.0 + (rng.range(0, 1800) as f64 - 900.0) / 100_000.0;
            nodes.push(NodeSim {
                name: name.into(),
                rate,
                core: None,
                incarnation: i as u64,
                stalled_until: 0,
                step: None,
                data: Data {
                    history: vec![1],
                    writes: BTreeSet::new(),
                    consistent: true,
                },
                mount: None,
                serve: false,
                app: false,
                vip_added: false,
                vip_until: 0,
                goal_running: true,
                last_view: None,
                down: false,
            });
        }
        let witness_rate = 1.0 + (rng.range(0, 1800) as f64 - 900.0) / 100_000.0;
        let mut w = Self {
            settings,
            rng,
            origin,
            now: 0,
            nodes,
            witness: None,
            witness_rate,
            witness_persisted: Persisted::default(),
            cut: [[false; 3]; 3],
            loss: 0.01,
            queue: BinaryHeap::new(),
            msgs: Vec::new(),
            heals: Vec::new(),
            next_gen: 2,
            next_write: 1,
            oracle: Oracle::default(),
            trace: Vec::new(),
            msg_seq: 0,
            violation: None,
        };
        w.witness = Some(Witness::new(w.witness_clock(), Persisted::default()));
        for i in 0..2 {
            w.start_daemon(i);
        }
        w
    }

    /// Runs the safety phase, then the liveness phase; returns the first
    /// violation.
    pub(crate) fn run(&mut self) -> Result<(), Violation> {
        let safety_end = self.settings.safety_ms * MS;
        while self.now < safety_end {
            self.maybe_fault();
            self.tick()?;
        }
        self.trace("--- liveness: every fault heals");
        self.heal_all();
        let end = safety_end + self.settings.liveness_ms * MS;
        let mut settled_since = None;
        while self.now < end {
            self.tick()?;
            if self.settled() {
                let since = *settled_since.get_or_insert(self.now);
                // Settled for a few heartbeats: done.
                if self.now - since > 5 * self.settings.interval_ms * MS {
                    return invariants::at_the_end(self);
                }
            } else {
                settled_since = None;
            }
        }
        Err(Violation::NotLive(format!(
            "after {} s without faults the module is {}",
            self.settings.liveness_ms / 1000,
            self.describe()
        )))
    }

    fn settled(&mut self) -> bool {
        let now = self.now;
        let mut states = Vec::new();
        for i in 0..2 {
            let clock = self.clock(i, now);
            let n = &mut self.nodes[i];
            let Some(c) = n.core.as_mut() else {
                return false;
            };
            let st = c.status(clock);
            states.push((st.state, st.ready, st.in_sync));
        }
        states.sort_by_key(|s| s.0 as u8);
        matches!(
            states.as_slice(),
            [
                (ModuleState::Prim, true, true),
                (ModuleState::Second, true, _)
            ] | [
                (ModuleState::Second, true, _),
                (ModuleState::Prim, true, true)
            ]
        )
    }

    pub(crate) fn describe(&mut self) -> String {
        let now = self.now;
        (0..2)
            .map(|i| {
                let clock = self.clock(i, now);
                let n = &mut self.nodes[i];
                match n.core.as_mut() {
                    Some(c) => {
                        let st = c.status(clock);
                        format!(
                            "{}: {}{} ({}) mount={:?} serve={} data={:?}",
                            n.name,
                            st.state,
                            if st.ready { "" } else { " (transient)" },
                            st.reason,
                            n.mount
                                .as_ref()
                                .map(|m| (m.connected, m.fenced, m.resync_left)),
                            n.serve,
                            (&n.data.history, n.data.writes.len(), n.data.consistent)
                        )
                    }
                    None => format!("{}: daemon down", n.name),
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// One millisecond.
    fn tick(&mut self) -> Result<(), Violation> {
        self.now += MS;
        self.heal_due();
        self.deliver_due();
        for i in 0..2 {
            self.finish_step(i)?;
        }
        self.mirror_model();
        for i in 0..2 {
            self.push_view(i);
            self.wake(i);
            self.renew_vip(i);
        }
        self.app_writes();
        if let Some(v) = self.violation.take() {
            return Err(v);
        }
        invariants::check(self)
    }

    // ---- clocks ----

    pub(crate) fn clock(&self, i: usize, virt: u64) -> Instant {
        self.origin + Duration::from_micros((virt as f64 * self.nodes[i].rate) as u64)
    }

    fn witness_clock(&self) -> Instant {
        self.origin + Duration::from_micros((self.now as f64 * self.witness_rate) as u64)
    }

    fn trace(&mut self, s: impl Into<String>) {
        let line = format!("{:>8.3} {}", self.now as f64 / 1e6, s.into());
        self.trace.push(line);
    }

    // ---- daemons ----

    fn start_daemon(&mut self, i: usize) {
        let peer = self.nodes[1 - i].name.clone();
        let s = &self.settings;
        let cfg = CoreConfig {
            module: "m".into(),
            me: self.nodes[i].name.clone(),
            peer,
            preferred: i == 0,
            dirs: 1,
            networks: s.networks,
            interval: Duration::from_millis(s.interval_ms),
            timeout: Duration::from_millis(s.timeout_ms),
            lease: Duration::from_millis(s.lease_ms),
            witness: true,
            digest: 7,
            vip: true,
            scripts: ScriptSet {
                prestart: false,
                start_prim: true,
                stop_prim: true,
                poststop: false,
            },
            incarnation: 0,
        };
        self.nodes[i].incarnation += 2;
        let cfg = CoreConfig {
            incarnation: self.nodes[i].incarnation,
            ..cfg
        };
        let clock = self.clock(i, self.now);
        let mut core = ModuleCore::new(clock, cfg);
        let view = self.view(i);
        let goal = self.nodes[i].goal_running;
        core.handle_adopt(clock, view.clone(), goal);
        self.nodes[i].last_view = Some(view);
        self.nodes[i].core = Some(core);
        self.nodes[i].step = None;
        self.trace(format!("{}: daemon starts", self.nodes[i].name));
        self.drain(i);
    }

    fn up(&self, i: usize) -> bool {
        self.nodes[i].core.is_some() && self.now >= self.nodes[i].stalled_until
    }

    fn wake(&mut self, i: usize) {
        if !self.up(i) {
            return;
        }
        let clock = self.clock(i, self.now);
        let core = self.nodes[i].core.as_mut().expect("up");
        if core.poll_timeout() <= clock {
            core.handle_timeout(clock);
        }
        self.drain(i);
    }

    /// Carries out node `i`'s actions.
    fn drain(&mut self, i: usize) {
        loop {
            let Some(action) = self.nodes[i].core.as_mut().and_then(|c| c.poll_action()) else {
                return;
            };
            match action {
                Action::Run(step) => {
                    let ms = match step {
                        Step::Script(_) => self.rng.range(2, 60),
                        Step::Mount | Step::StartServe => self.rng.range(3, 40),
                        _ => self.rng.range(1, 15),
                    };
                    self.nodes[i].step = Some((step, self.now + ms * MS));
                    if step == Step::Mount && self.violation.is_none() {
                        // The decision to become primary is taken now: the
                        // data it mounts must hold every acknowledged write.
                        // (Once started, a mount completes even if the daemon
                        // stalls; it writes only connected or under a grant.)
                        self.violation = invariants::on_mount(self, i).err();
                    }
                }
                Action::Grant { until } => {
                    // The control socket takes up to 2 ms to deliver it.
                    let late = Duration::from_micros(self.rng.range(0, 2000));
                    if let Some(m) = self.nodes[i].mount.as_mut() {
                        if !m.fenced {
                            m.grant_until = Some(until + late);
                        }
                    }
                    let name = self.nodes[i].name.clone();
                    let left = until.saturating_duration_since(self.clock(i, self.now));
                    self.trace(format!("{name}: grant {:.3} s", left.as_secs_f64()));
                }
                Action::Fence => {
                    if let Some(m) = self.nodes[i].mount.as_mut() {
                        m.fenced = true;
                    }
                }
                Action::DropVip => self.nodes[i].vip_added = false,
                Action::Beat(beat) => {
                    for net in 0..self.settings.networks {
                        self.send(
                            i,
                            1 - i,
                            Msg::Beat {
                                to: 1 - i,
                                net,
                                beat: beat.clone(),
                            },
                        );
                    }
                }
                Action::Report(report) => self.send(i, 2, Msg::Report { from: i, report }),
                Action::Transition(t) => {
                    let name = self.nodes[i].name.clone();
                    self.trace(format!("{name}: {} -> {}: {}", t.from, t.to, t.reason));
                }
            }
        }
    }

    fn finish_step(&mut self, i: usize) -> Result<(), Violation> {
        let Some((step, at)) = self.nodes[i].step else {
            return Ok(());
        };
        if self.now < at || !self.up(i) {
            return Ok(());
        }
        self.nodes[i].step = None;
        let mut result = Ok(());
        match step {
            Step::StartServe => self.nodes[i].serve = true,
            Step::StopServe => self.nodes[i].serve = false,
            Step::Mount => {
                self.nodes[i].mount = Some(MountSim {
                    grant_until: None,
                    fenced: false,
                    connected: false,
                    resync_left: 0,
                    alone_gen: false,
                });
            }
            Step::Unmount => {
                self.nodes[i].mount = None;
                self.nodes[i].app = false;
            }
            Step::AddVip => self.nodes[i].vip_added = true,
            Step::RemoveVip => self.nodes[i].vip_added = false,
            Step::Script(Script::StartPrim) => {
                if self.nodes[i].mount.is_some() {
                    self.nodes[i].app = true;
                } else {
                    result = Err("no mount".to_string());
                }
            }
            Step::Script(Script::StopPrim) => self.nodes[i].app = false,
            Step::Script(_) | Step::Discard => {}
            Step::ReadRoots => {
                let roots = vec![self.nodes[i].data.root()];
                let clock = self.clock(i, self.now);
                if let Some(c) = self.nodes[i].core.as_mut() {
                    c.handle_roots(clock, roots);
                }
            }
        }
        let clock = self.clock(i, self.now);
        if let Some(c) = self.nodes[i].core.as_mut() {
            c.handle_step_done(clock, step, result);
        }
        self.drain(i);
        Ok(())
    }

    // ---- messages ----

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if self.cut[from][to] || self.rng.chance(self.loss) {
            return;
        }
        let mut delay = self.rng.range(50, 3000);
        if self.rng.chance(0.02) {
            delay = self.rng.range(20_000, 300_000);
        }
        self.msg_seq += 1;
        let id = self.msgs.len();
        self.msgs.push(Some(msg));
        self.queue
            .push(Reverse((self.now + delay, self.msg_seq, id)));
    }

    fn deliver_due(&mut self) {
        while let Some(Reverse((at, _, id))) = self.queue.peek().copied() {
            if at > self.now {
                return;
            }
            // Messages for a stalled daemon wait in its socket buffer.
            let target = match &self.msgs[id] {
                Some(Msg::Beat { to, .. }) | Some(Msg::Answer { to, .. }) => Some(*to),
                _ => None,
            };
            if let Some(t) = target {
                if self.nodes[t].core.is_some() && self.now < self.nodes[t].stalled_until {
                    let Reverse(e) = self.queue.pop().expect("peeked");
                    self.queue
                        .push(Reverse((self.nodes[t].stalled_until, e.1, e.2)));
                    continue;
                }
            }
            self.queue.pop();
            let Some(msg) = self.msgs[id].take() else {
                continue;
            };
            match msg {
                Msg::Beat { to, net, beat } => {
                    if self.up(to) {
                        let clock = self.clock(to, self.now);
                        let c = self.nodes[to].core.as_mut().expect("up");
                        c.handle_beat(clock, net, beat);
                        self.drain(to);
                    }
                }
                Msg::Report { from, report } => {
                    let wclock = self.witness_clock();
                    if let Some(w) = self.witness.as_mut() {
                        let answer = w.handle_report(wclock, &report);
                        let persisted = w.poll_persist();
                        if let Some(p) = persisted {
                            self.trace(format!("witness: behind = {:?}", p.behind.get("m")));
                            self.witness_persisted = p;
                        }
                        if matches!(
                            answer.lease,
                            crate::cluster::msg::LeaseAnswer::Granted { .. }
                        ) {
                            let name = self.nodes[from].name.clone();
                            self.trace(format!("witness: lease to {name} (report {})", report.seq));
                        }
                        self.send(2, from, Msg::Answer { to: from, answer });
                    }
                }
                Msg::Answer { to, answer } => {
                    if self.up(to) {
                        let clock = self.clock(to, self.now);
                        let c = self.nodes[to].core.as_mut().expect("up");
                        c.handle_answer(clock, answer);
                        self.drain(to);
                    }
                }
            }
        }
    }

    // ---- mirrorfs and the application ----

    fn data_link(&self, a: usize, b: usize) -> bool {
        !self.cut[a][b] && !self.cut[b][a]
    }

    fn mirror_model(&mut self) {
        for i in 0..2 {
            let j = 1 - i;
            let Some(mut m) = self.nodes[i].mount.clone() else {
                continue;
            };
            let peer_ok = self.nodes[j].serve && self.data_link(i, j);
            // The serve refuses a primary whose history lacks its current
            // generation (split brain) or while it is a mount itself.
            let compatible = self.nodes[j]
                .data
                .history
                .first()
                .is_none_or(|g| self.nodes[i].data.history.contains(g));
            let can = peer_ok && compatible && !m.fenced;
            if can && !m.connected {
                m.connected = true;
                m.alone_gen = false;
                // mirrorfs ends a grant when the peer is back: it was for
                // the loss that just ended.
                m.grant_until = None;
                if self.nodes[i].data == self.nodes[j].data {
                    m.resync_left = 0;
                } else {
                    m.resync_left = self.rng.range(5, 200);
                    self.nodes[j].data.consistent = false;
                }
                self.trace(format!(
                    "{}: mirrorfs connected to {}",
                    self.nodes[i].name, self.nodes[j].name
                ));
            } else if !can && m.connected {
                m.connected = false;
                self.trace(format!(
                    "{}: mirrorfs lost {}",
                    self.nodes[i].name, self.nodes[j].name
                ));
            }
            if m.connected && m.resync_left > 0 {
                m.resync_left -= 1;
                if m.resync_left == 0 {
                    self.nodes[j].data = self.nodes[i].data.clone();
                }
            }
            let clock = self.clock(i, self.now);
            let granted = m.grant_until.is_some_and(|g| clock < g);
            if !m.connected && granted && !m.fenced && !m.alone_gen {
                m.alone_gen = true;
                let g = self.next_gen;
                self.next_gen += 1;
                self.nodes[i].data.history.insert(0, g);
            }
            self.nodes[i].mount = Some(m);
        }
    }

    /// Whether node `i`'s mount acknowledges a write now.
    pub(crate) fn can_ack(&self, i: usize) -> bool {
        let Some(m) = &self.nodes[i].mount else {
            return false;
        };
        if m.fenced {
            return false;
        }
        let clock = self.clock(i, self.now);
        m.connected || (m.alone_gen && m.grant_until.is_some_and(|g| clock < g))
    }

    fn app_writes(&mut self) {
        for i in 0..2 {
            if !self.nodes[i].app || !self.now.is_multiple_of(3 * MS) {
                continue;
            }
            if !self.can_ack(i) {
                continue;
            }
            let w = self.next_write;
            self.next_write += 1;
            self.nodes[i].data.writes.insert(w);
            if self.nodes[i].mount.as_ref().is_some_and(|m| m.connected) {
                self.nodes[1 - i].data.writes.insert(w);
            }
            self.oracle.acked(w, i);
        }
    }

    fn view(&self, i: usize) -> MirrorView {
        let n = &self.nodes[i];
        MirrorView {
            mounts: n.mount.as_ref().map(|m| MountsView {
                all_up: true,
                connected: m.connected,
                in_sync: m.connected && m.resync_left == 0,
                fenced: m.fenced,
                roots: vec![n.data.root()],
                resync: None,
            }),
            serves: n.serve.then(|| ServesView {
                all_up: true,
                primary_connected: self.nodes[1 - i]
                    .mount
                    .as_ref()
                    .is_some_and(|m| m.connected),
                roots: vec![n.data.root()],
            }),
        }
    }

    fn push_view(&mut self, i: usize) {
        if !self.up(i) {
            return;
        }
        let view = self.view(i);
        if self.nodes[i].last_view.as_ref() == Some(&view) {
            return;
        }
        self.nodes[i].last_view = Some(view.clone());
        let clock = self.clock(i, self.now);
        self.nodes[i]
            .core
            .as_mut()
            .expect("up")
            .handle_mirror(clock, view);
        self.drain(i);
    }

    /// The VIP thread renews the address every interval (here: every ms)
    /// while the core allows it; a dead or stalled daemon renews nothing.
    fn renew_vip(&mut self, i: usize) {
        if !self.up(i) {
            return;
        }
        if !self.nodes[i].vip_added {
            self.nodes[i].vip_until = 0;
            return;
        }
        let clock = self.clock(i, self.now);
        let life = Duration::from_micros(VIP_LIFE);
        let ok = self.nodes[i]
            .core
            .as_ref()
            .is_some_and(|c| c.vip_renewable(clock, life));
        if ok {
            self.nodes[i].vip_until = self.now + VIP_LIFE;
        }
    }

    pub(crate) fn vip_held(&self, i: usize) -> bool {
        self.now < self.nodes[i].vip_until
    }

    // ---- faults ----

    fn maybe_fault(&mut self) {
        if !self.rng.chance(self.settings.fault_rate) {
            return;
        }
        let i = self.rng.range(0, 1) as usize;
        let name = self.nodes[i].name.clone();
        match self.rng.range(0, 9) {
            0 if !self.nodes[i].down => {
                self.trace(format!(
                    "--- fault: {name} crashes (every process SIGKILLed)"
                ));
                let n = &mut self.nodes[i];
                n.core = None;
                n.step = None;
                n.mount = None;
                n.serve = false;
                n.app = false;
                n.vip_added = false;
                n.down = true;
                let back = self.now + self.rng.range(300, 6000) * MS;
                self.heals.push((back, Heal::RestartNode(i)));
            }
            1 if self.nodes[i].core.is_some() => {
                self.trace(format!(
                    "--- fault: {name}'s daemon crashes (mirrorfs runs on)"
                ));
                let n = &mut self.nodes[i];
                n.core = None;
                n.step = None;
                // The address stays in the kernel until its lifetime ends.
                n.vip_added = false;
                let back = self.now + self.rng.range(100, 4000) * MS;
                self.heals.push((back, Heal::RestartDaemon(i)));
            }
            2 if self.nodes[i].core.is_some() => {
                let ms = self.rng.range(100, 4000);
                self.trace(format!("--- fault: {name}'s daemon stalls for {ms} ms"));
                self.nodes[i].stalled_until = self.now + ms * MS;
            }
            3 | 4 => {
                let (a, b) = match self.rng.range(0, 2) {
                    0 => (0, 1),
                    1 => (0, 2),
                    _ => (1, 2),
                };
                let one_way = self.rng.chance(0.3);
                let ms = self.rng.range(200, 8000);
                self.trace(format!(
                    "--- fault: link {a}-{b} cut{} for {ms} ms",
                    if one_way { " one way" } else { "" }
                ));
                self.cut[a][b] = true;
                if !one_way {
                    self.cut[b][a] = true;
                }
                self.heals.push((self.now + ms * MS, Heal::Link(a, b)));
            }
            5 => {
                self.trace("--- fault: 30% message loss");
                self.loss = 0.3;
                let back = self.now + self.rng.range(500, 3000) * MS;
                self.heals.push((back, Heal::Loss));
            }
            6 if self.witness.is_some() => {
                self.trace("--- fault: the witness restarts");
                self.witness = None;
                let back = self.now + self.rng.range(100, 3000) * MS;
                self.heals.push((back, Heal::RestartWitness));
            }
            7 if self.up(i) => {
                let clock = self.clock(i, self.now);
                let r = self.nodes[i]
                    .core
                    .as_mut()
                    .expect("up")
                    .handle_command(clock, Command::Swap);
                self.trace(format!("--- operator: swap on {name}: {r:?}"));
                self.drain(i);
            }
            _ => {}
        }
    }

    fn heal_due(&mut self) {
        let now = self.now;
        let mut due: Vec<Heal> = Vec::new();
        self.heals.retain(|(at, h)| {
            if *at <= now {
                due.push(*h);
                false
            } else {
                true
            }
        });
        due.sort();
        for h in due {
            self.heal(h);
        }
    }

    fn heal(&mut self, h: Heal) {
        match h {
            Heal::RestartNode(i) => {
                self.nodes[i].down = false;
                if self.nodes[i].core.is_none() {
                    self.trace(format!("--- {} restarts", self.nodes[i].name));
                    self.start_daemon(i);
                }
            }
            Heal::RestartDaemon(i) => {
                if self.nodes[i].core.is_none() && !self.nodes[i].down {
                    self.start_daemon(i);
                }
            }
            Heal::RestartWitness => {
                if self.witness.is_none() {
                    self.trace("--- the witness restarts");
                    self.witness = Some(Witness::new(
                        self.witness_clock(),
                        self.witness_persisted.clone(),
                    ));
                }
            }
            Heal::Link(a, b) => {
                self.trace(format!("--- link {a}-{b} heals"));
                self.cut[a][b] = false;
                self.cut[b][a] = false;
            }
            Heal::Loss => self.loss = 0.01,
        }
    }

    fn heal_all(&mut self) {
        let mut all: Vec<Heal> = self.heals.drain(..).map(|(_, h)| h).collect();
        all.sort();
        for h in all {
            self.heal(h);
        }
        for n in &mut self.nodes {
            n.stalled_until = 0;
        }
        self.cut = [[false; 3]; 3];
        self.loss = 0.01;
    }
}
