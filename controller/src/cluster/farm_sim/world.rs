//! The simulated farm: nodes (daemon core, kernel bucket set, VIP,
//! application health) on virtual time in microseconds, stepped by 1 ms.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use filter::buckets::{assign, BucketSet};

use super::invariants::{self, Violation};
use crate::cluster::farm::{
    FarmAction, FarmCommand, FarmConfig, FarmCore, FarmMember, FarmState, VIP_LIFE,
};
use crate::cluster::msg::FarmBeat;
use crate::cluster::sim::Rng;

/// One simulated millisecond, in microseconds.
const MS: u64 = 1000;

/// The simulation's settings (drawn from the seed).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) weights: Vec<u32>,
    pub(crate) interval_ms: u64,
    pub(crate) timeout_ms: u64,
    pub(crate) safety_ms: u64,
    /// The bound on convergence once faults stop.
    pub(crate) liveness_ms: u64,
    pub(crate) fault_rate: f64,
}

impl Settings {
    pub(crate) fn from_seed(rng: &mut Rng) -> Self {
        let n = match rng.range(0, 9) {
            0 | 1 => 2,
            2 | 3 => 4,
            _ => 3,
        };
        let weights = (0..n)
            .map(|_| match rng.range(0, 9) {
                0 => 0,
                1 | 2 => 2,
                3 => 3,
                _ => 1,
            })
            .collect();
        let (interval_ms, timeout_ms) = match rng.range(0, 2) {
            0 => (100, 1000),
            1 => (250, 1500),
            _ => (100, 1500),
        };
        Self {
            weights,
            interval_ms,
            timeout_ms,
            safety_ms: 10_000,
            liveness_ms: 12_000,
            fault_rate: 1.0 / 400.0,
        }
    }
}

/// One node.
#[derive(Debug)]
pub(crate) struct NodeSim {
    pub(crate) name: String,
    rate: f64,
    pub(crate) core: Option<FarmCore>,
    /// The kernel's bucket set (survives crashes).
    pub(crate) kernel: BucketSet,
    /// Orders to the kernel in flight: (set, done at).
    pub(crate) apply: Option<VecDeque<(BucketSet, u64)>>,
    /// The kernel holds the VIP until then (virtual µs).
    pub(crate) vip_until: u64,
    healthy: bool,
    started: bool,
    stalled_until: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Heal {
    Restart(usize),
    Link(usize, usize),
    Loss,
    Health(usize),
}

/// The world.
pub(crate) struct World {
    pub(crate) settings: Settings,
    rng: Rng,
    origin: Instant,
    pub(crate) now: u64,
    pub(crate) nodes: Vec<NodeSim>,
    cut: Vec<Vec<bool>>,
    loss: f64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    msgs: Vec<Option<(usize, FarmBeat)>>,
    heals: Vec<(u64, Heal)>,
    msg_seq: u64,
    pub(crate) trace: Vec<String>,
}

impl World {
    pub(crate) fn new(seed: u64, origin: Instant) -> Self {
        let mut rng = Rng::new(seed);
        let settings = Settings::from_seed(&mut rng);
        let n = settings.weights.len();
        let nodes = (0..n)
            .map(|i| NodeSim {
                name: format!("n{}", i + 1),
                rate: 1.0 + (rng.range(0, 1800) as f64 - 900.0) / 100_000.0,
                core: None,
                kernel: BucketSet::empty(),
                apply: None,
                vip_until: 0,
                healthy: true,
                started: true,
                stalled_until: 0,
            })
            .collect();
        let mut w = Self {
            settings,
            rng,
            origin,
            now: 0,
            nodes,
            cut: vec![vec![false; n]; n],
            loss: 0.01,
            queue: BinaryHeap::new(),
            msgs: Vec::new(),
            heals: Vec::new(),
            msg_seq: 0,
            trace: Vec::new(),
        };
        w.trace(format!("settings {:?}", w.settings));
        for i in 0..n {
            w.start_daemon(i);
        }
        w
    }

    /// The safety phase, then the liveness phase.
    pub(crate) fn run(&mut self) -> Result<(), Violation> {
        let end = self.settings.safety_ms * MS;
        while self.now < end {
            self.maybe_fault();
            self.tick()?;
        }
        self.trace("--- liveness: every fault heals");
        self.heal_all();
        let deadline = end + self.settings.liveness_ms * MS;
        let mut since = None;
        while self.now < deadline {
            self.tick()?;
            if self.converged() {
                let s = *since.get_or_insert(self.now);
                if self.now - s > 5 * self.settings.interval_ms * MS {
                    return Ok(());
                }
            } else {
                since = None;
            }
        }
        Err(Violation::NotLive(format!(
            "{} s after the faults stopped: {}",
            self.settings.liveness_ms / 1000,
            self.describe()
        )))
    }

    /// Every node UP with its `assign()` share of all (healthy) members,
    /// VIP valid.
    fn converged(&self) -> bool {
        let members: Vec<(&str, u32)> = self
            .nodes
            .iter()
            .zip(&self.settings.weights)
            .map(|(n, w)| (n.name.as_str(), *w))
            .collect();
        let map = assign(&members);
        self.nodes.iter().all(|n| {
            n.core.as_ref().is_some_and(|c| c.state() == FarmState::Up)
                && n.kernel == map[&n.name]
                && self.now < n.vip_until
        })
    }

    pub(crate) fn describe(&self) -> String {
        self.nodes
            .iter()
            .map(|n| match &n.core {
                Some(c) => {
                    let st = c.status(self.clock_of(n));
                    format!(
                        "{}: {} ({}) kernel {} buckets, target {}, view {:?}, vip {}",
                        n.name,
                        st.state,
                        st.reason,
                        n.kernel.len(),
                        st.target.len(),
                        st.view,
                        self.now < n.vip_until
                    )
                }
                None => format!("{}: daemon down, kernel {} buckets", n.name, n.kernel.len()),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// What node `n` accepts now.
    pub(crate) fn accepting(&self, n: &NodeSim) -> BucketSet {
        if self.now < n.vip_until {
            n.kernel
        } else {
            BucketSet::empty()
        }
    }

    fn tick(&mut self) -> Result<(), Violation> {
        self.now += MS;
        self.heal_due();
        self.deliver_due();
        for i in 0..self.nodes.len() {
            self.finish_apply(i);
            self.wake(i);
        }
        invariants::check(self)
    }

    fn clock_of(&self, n: &NodeSim) -> Instant {
        self.origin + Duration::from_micros((self.now as f64 * n.rate) as u64)
    }

    fn clock(&self, i: usize) -> Instant {
        self.clock_of(&self.nodes[i])
    }

    fn trace(&mut self, s: impl Into<String>) {
        let line = format!("{:>8.3} {}", self.now as f64 / 1e6, s.into());
        self.trace.push(line);
    }

    fn up(&self, i: usize) -> bool {
        self.nodes[i].core.is_some() && self.now >= self.nodes[i].stalled_until
    }

    fn start_daemon(&mut self, i: usize) {
        let cfg = FarmConfig {
            module: "web".into(),
            me: self.nodes[i].name.clone(),
            members: self
                .nodes
                .iter()
                .zip(&self.settings.weights)
                .map(|(n, w)| FarmMember {
                    name: n.name.clone(),
                    weight: *w,
                })
                .collect(),
            interval: Duration::from_millis(self.settings.interval_ms),
            timeout: Duration::from_millis(self.settings.timeout_ms),
            // Start time in ms; distinct and increasing per node.
            incarnation: self.now / MS * 8 + i as u64 + 1,
        };
        let clock = self.clock(i);
        let mut core = FarmCore::new(clock, cfg);
        if self.nodes[i].started {
            core.handle_command(clock, FarmCommand::Start);
        }
        if !self.nodes[i].healthy {
            core.handle_health(clock, false);
        }
        self.nodes[i].core = Some(core);
        self.nodes[i].apply = None;
        self.trace(format!("{}: daemon starts", self.nodes[i].name));
        self.drain(i);
    }

    fn wake(&mut self, i: usize) {
        if !self.up(i) {
            return;
        }
        let clock = self.clock(i);
        let core = self.nodes[i].core.as_mut().expect("up");
        if core.poll_timeout() <= clock {
            core.handle_timeout(clock);
        }
        self.drain(i);
    }

    fn drain(&mut self, i: usize) {
        while let Some(a) = self.nodes[i].core.as_mut().and_then(|c| c.poll_action()) {
            match a {
                FarmAction::Beat(b) => {
                    for j in 0..self.nodes.len() {
                        if j != i {
                            self.send(i, j, b.clone());
                        }
                    }
                }
                FarmAction::ApplyOwned(set) => {
                    let at = self.now + self.rng.range(1, 20) * MS;
                    self.nodes[i]
                        .apply
                        .get_or_insert_with(VecDeque::new)
                        .push_back((set, at));
                }
                FarmAction::RenewVip { until } => {
                    // The driver sets valid_lft 1 s within 2 ms (on the
                    // node's clock); the core allowed until + slack.
                    let late = self.rng.range(0, 2000);
                    let life = (VIP_LIFE.as_micros() as f64 / self.nodes[i].rate) as u64;
                    let end = self.now + late + life;
                    let _ = until;
                    if self.nodes[i].vip_until <= self.now {
                        let name = self.nodes[i].name.clone();
                        let k = self.nodes[i].kernel;
                        self.trace(format!("{name}: adds the VIP (kernel {k})"));
                    }
                    let n = &mut self.nodes[i];
                    n.vip_until = n.vip_until.max(end);
                }
                FarmAction::DropVip => {
                    self.nodes[i].vip_until = self.now;
                    let name = self.nodes[i].name.clone();
                    self.trace(format!("{name}: drops the VIP"));
                }
                FarmAction::Run(_) => {}
                FarmAction::Transition(t) => {
                    let name = self.nodes[i].name.clone();
                    self.trace(format!("{name}: {} -> {}: {}", t.from, t.to, t.reason));
                }
            }
        }
    }

    fn finish_apply(&mut self, i: usize) {
        // A stalled daemon's driver waits too.
        if self.nodes[i].core.is_some() && !self.up(i) {
            return;
        }
        loop {
            let Some(q) = self.nodes[i].apply.as_mut() else {
                return;
            };
            match q.front() {
                Some(&(set, at)) if at <= self.now => {
                    q.pop_front();
                    if q.is_empty() {
                        self.nodes[i].apply = None;
                    }
                    self.nodes[i].kernel = set;
                    let name = self.nodes[i].name.clone();
                    self.trace(format!("{name}: kernel set {} buckets", set.len()));
                    let clock = self.clock(i);
                    if let Some(c) = self.nodes[i].core.as_mut() {
                        c.handle_applied(clock, set);
                    }
                    self.drain(i);
                }
                _ => return,
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, beat: FarmBeat) {
        if self.cut[from][to] || self.rng.chance(self.loss) {
            return;
        }
        let mut delay = self.rng.range(50, 3000);
        if self.rng.chance(0.02) {
            delay = self.rng.range(20_000, 300_000);
        }
        self.msg_seq += 1;
        let id = self.msgs.len();
        self.msgs.push(Some((to, beat)));
        self.queue
            .push(Reverse((self.now + delay, self.msg_seq, id)));
    }

    fn deliver_due(&mut self) {
        while let Some(Reverse((at, seq, id))) = self.queue.peek().copied() {
            if at > self.now {
                return;
            }
            self.queue.pop();
            let Some((to, _)) = &self.msgs[id] else {
                continue;
            };
            let to = *to;
            if self.nodes[to].core.is_some() && self.now < self.nodes[to].stalled_until {
                self.queue
                    .push(Reverse((self.nodes[to].stalled_until, seq, id)));
                continue;
            }
            let Some((_, beat)) = self.msgs[id].take() else {
                continue;
            };
            if self.up(to) {
                let clock = self.clock(to);
                self.nodes[to]
                    .core
                    .as_mut()
                    .expect("up")
                    .handle_beat(clock, beat);
                self.drain(to);
            }
        }
    }

    fn maybe_fault(&mut self) {
        if !self.rng.chance(self.settings.fault_rate) {
            return;
        }
        let n = self.nodes.len();
        let i = self.rng.range(0, n as u64 - 1) as usize;
        let name = self.nodes[i].name.clone();
        match self.rng.range(0, 9) {
            0 if self.nodes[i].core.is_some() => {
                self.trace(format!("--- fault: {name} crashes (kernel set kept)"));
                self.nodes[i].core = None;
                self.nodes[i].apply = None;
                let back = self.now + self.rng.range(300, 6000) * MS;
                self.heals.push((back, Heal::Restart(i)));
            }
            1 if self.nodes[i].core.is_some() => {
                self.trace(format!("--- fault: {name}'s daemon restarts"));
                self.nodes[i].core = None;
                self.nodes[i].apply = None;
                self.start_daemon(i);
            }
            2 if self.nodes[i].core.is_some() => {
                let ms = self.rng.range(100, 3000);
                self.trace(format!("--- fault: {name}'s daemon stalls for {ms} ms"));
                self.nodes[i].stalled_until = self.now + ms * MS;
            }
            3..=5 => {
                let j = (i + 1 + self.rng.range(0, n as u64 - 2) as usize) % n;
                let one_way = self.rng.chance(0.4);
                let ms = self.rng.range(200, 8000);
                self.trace(format!(
                    "--- fault: link {i}-{j} cut{} for {ms} ms",
                    if one_way { " one way" } else { "" }
                ));
                self.cut[i][j] = true;
                if !one_way {
                    self.cut[j][i] = true;
                }
                self.heals.push((self.now + ms * MS, Heal::Link(i, j)));
            }
            6 => {
                let ms = self.rng.range(200, 6000);
                self.trace(format!("--- fault: {name} isolated for {ms} ms"));
                for j in 0..n {
                    if j != i {
                        self.cut[i][j] = true;
                        self.cut[j][i] = true;
                        self.heals.push((self.now + ms * MS, Heal::Link(i, j)));
                    }
                }
            }
            7 => {
                self.trace("--- fault: 30% message loss");
                self.loss = 0.3;
                let back = self.now + self.rng.range(500, 3000) * MS;
                self.heals.push((back, Heal::Loss));
            }
            8 if self.nodes[i].healthy => {
                self.trace(format!("--- fault: {name}'s application fails"));
                self.set_health(i, false);
                let back = self.now + self.rng.range(200, 5000) * MS;
                self.heals.push((back, Heal::Health(i)));
            }
            9 if self.up(i) => {
                let clock = self.clock(i);
                let start = !self.nodes[i].started;
                self.nodes[i].started = start;
                let cmd = if start {
                    FarmCommand::Start
                } else {
                    FarmCommand::Stop
                };
                self.trace(format!("--- operator: {cmd:?} on {name}"));
                self.nodes[i]
                    .core
                    .as_mut()
                    .expect("up")
                    .handle_command(clock, cmd);
                self.drain(i);
            }
            _ => {}
        }
    }

    fn set_health(&mut self, i: usize, healthy: bool) {
        self.nodes[i].healthy = healthy;
        let clock = self.clock(i);
        if let Some(c) = self.nodes[i].core.as_mut() {
            c.handle_health(clock, healthy);
        }
        self.drain(i);
    }

    fn heal_due(&mut self) {
        let now = self.now;
        let mut due = Vec::new();
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
            Heal::Restart(i) => {
                if self.nodes[i].core.is_none() {
                    self.trace(format!("--- {} restarts", self.nodes[i].name));
                    self.start_daemon(i);
                }
            }
            Heal::Link(a, b) => {
                self.cut[a][b] = false;
                self.cut[b][a] = false;
            }
            Heal::Loss => self.loss = 0.01,
            Heal::Health(i) => {
                if !self.nodes[i].healthy {
                    self.trace(format!(
                        "--- {}'s application is healthy",
                        self.nodes[i].name
                    ));
                    self.set_health(i, true);
                }
            }
        }
    }

    fn heal_all(&mut self) {
        let mut all: Vec<Heal> = self.heals.drain(..).map(|(_, h)| h).collect();
        all.sort();
        for h in all {
            self.heal(h);
        }
        for i in 0..self.nodes.len() {
            self.nodes[i].stalled_until = 0;
            if !self.nodes[i].healthy {
                self.set_health(i, true);
            }
            if !self.nodes[i].started {
                self.nodes[i].started = true;
                let clock = self.clock(i);
                if let Some(c) = self.nodes[i].core.as_mut() {
                    c.handle_command(clock, FarmCommand::Start);
                }
                self.drain(i);
            }
        }
        for row in &mut self.cut {
            row.iter_mut().for_each(|c| *c = false);
        }
        self.loss = 0.01;
    }
}
