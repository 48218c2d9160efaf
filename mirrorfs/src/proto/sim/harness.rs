//! The simulated world around one [`Primary`]: see the module doc of `sim`.
//!
//! The namespace is flat (a few names at the root) and a name's content is a
//! token; a copied range makes a new token from the source's and the
//! destination's, so a copy from a stale source on the secondary shows as a
//! wrong content there.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use super::invariants::{self, Violation};
use super::oracle::{Content, Oracle};
use crate::proto::dirty::DirtySet;
use crate::proto::generation::{GenerationId, History};
use crate::proto::path::RelPath;
use crate::proto::primary::{
    AckMode, Action, Begin, Bound, Config, Job, OnPeerLoss, OpId, OpResult, Primary, Role, Touched,
    Verdict, OP_COST,
};

/// Steps with faults, then at most this many to settle without them.
const FAULT_STEPS: usize = 4000;
const SETTLE_STEPS: usize = 20_000;
/// Application threads.
const ACTORS: usize = 3;
const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

/// A small seeded generator (xorshift64*): the simulation's only randomness.
#[derive(Debug)]
pub(super) struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A mutation of the application.
#[derive(Debug, Clone)]
enum Mutation {
    /// Create or overwrite `name` with a new token (`true`: through an
    /// `O_SYNC` open, a sync op).
    Write(RelPath, u64, bool),
    /// fsync of `name` (which must exist): a sync op.
    Sync(RelPath),
    Remove(RelPath),
    Rename(RelPath, RelPath),
    /// A range of `.0` copied into `.1` (which must exist).
    Copy(RelPath, RelPath),
}

/// What travels to the secondary.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SimOp {
    Set(RelPath, u64),
    /// A data write into an existing file: the secondary needs the file.
    Overwrite(RelPath, u64),
    Unlink(RelPath),
    Rename(RelPath, RelPath),
    Copy(RelPath, RelPath),
    /// The resync's removal (absent is fine).
    Remove(RelPath),
    List,
    SetGeneration(History),
    BeginResync,
    /// An each-op mount's fsync.
    Fsync(RelPath),
    /// An on-sync mount's sync op: answered once everything before it is
    /// applied (and durable: the simulated secondary's tree is).
    Barrier,
}

/// Who waits for an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    App(usize),
    /// An op answered early (on-sync): the completion thread concludes it.
    Early(OpId),
    Worker,
    Control,
}

/// An early-answered op awaiting the secondary's answers.
#[derive(Debug)]
struct Early {
    effects: Vec<(RelPath, usize)>,
    left: usize,
    failed: Option<i32>,
    since: Instant,
}

#[derive(Debug)]
struct Msg {
    op: SimOp,
    tag: Tag,
}

#[derive(Debug)]
struct Reply {
    tag: Tag,
    result: Result<Option<Vec<RelPath>>, i32>,
}

#[derive(Debug)]
struct Link {
    epoch: u64,
    to_sec: VecDeque<Msg>,
    to_pri: VecDeque<Reply>,
}

/// One application thread.
#[derive(Debug)]
enum Actor {
    Idle,
    /// Admitted; holds the sequencer.
    Begun {
        begin: Begin,
        m: Mutation,
    },
    /// Applied locally; holds the sequencer.
    Applied {
        op: OpId,
        effects: Vec<(RelPath, usize)>,
        sends: Vec<SimOp>,
    },
    Waiting {
        op: OpId,
        effects: Vec<(RelPath, usize)>,
        left: usize,
        failed: Option<i32>,
        since: Instant,
    },
    Held {
        op: OpId,
        effects: Vec<(RelPath, usize)>,
    },
}

/// The resync worker.
#[derive(Debug)]
enum Worker {
    Idle,
    /// `job` handed out; nothing read or sent yet (the real worker reads and
    /// submits later, under the sequencer).
    Taken(Job),
    /// Ops of `job` in flight, and the answers so far.
    Visiting {
        job: Job,
        left: usize,
        failed: Option<i32>,
        listing: Option<Vec<RelPath>>,
        listed: bool,
    },
    /// `SetGeneration` in flight on `epoch`.
    Finishing {
        epoch: u64,
        answer: Option<bool>,
    },
}

/// Counters: what a sweep exercised.
#[derive(Debug, Default, Clone)]
pub(super) struct Stats {
    pub(super) unreplicated_acks: u64,
    pub(super) held: u64,
    pub(super) released_by_grant: u64,
    pub(super) role_changed_mid_op: u64,
    pub(super) refused: u64,
    /// fsyncs the secondary refused for lack of the file while the resync
    /// had still to bring it over, acknowledged (`--on-peer-loss=fail`).
    pub(super) syncs_carried: u64,
    /// Data writes into a file a worker was visiting, sent before its copy
    /// and refused for lack of the file, acknowledged.
    pub(super) writes_carried_by_a_visit: u64,
    pub(super) resyncs_completed: u64,
    pub(super) copies_as_data: u64,
    pub(super) copies_as_ranges: u64,
    pub(super) persist_failures: u64,
    pub(super) fenced: u64,
    /// On-sync: ops answered at submission; sync ops that waited for the
    /// early ops before them; sync ops acknowledged, failed for an early
    /// op's failure; times the bound held a mutation back.
    pub(super) early_answers: u64,
    pub(super) syncs_waited: u64,
    pub(super) syncs_acked: u64,
    pub(super) syncs_told: u64,
    pub(super) back_pressure: u64,
}

impl Stats {
    pub(super) fn add(&mut self, o: &Self) {
        self.unreplicated_acks += o.unreplicated_acks;
        self.held += o.held;
        self.released_by_grant += o.released_by_grant;
        self.role_changed_mid_op += o.role_changed_mid_op;
        self.refused += o.refused;
        self.syncs_carried += o.syncs_carried;
        self.writes_carried_by_a_visit += o.writes_carried_by_a_visit;
        self.resyncs_completed += o.resyncs_completed;
        self.copies_as_data += o.copies_as_data;
        self.copies_as_ranges += o.copies_as_ranges;
        self.persist_failures += o.persist_failures;
        self.fenced += o.fenced;
        self.early_answers += o.early_answers;
        self.syncs_waited += o.syncs_waited;
        self.syncs_acked += o.syncs_acked;
        self.syncs_told += o.syncs_told;
        self.back_pressure += o.back_pressure;
    }
}

/// The world.
pub(super) struct Sim {
    rng: Rng,
    pub(super) now: Instant,
    pub(super) mode: OnPeerLoss,
    pub(super) ack: AckMode,
    /// On-sync: how many early ops may await the secondary.
    pub(super) bound: Bound,
    pub(super) core: Primary,
    pub(super) primary: BTreeMap<RelPath, u64>,
    pub(super) oracle: Oracle,
    /// The primary's metadata disk: the saved history, the recorded names.
    pub(super) disk_history: History,
    pub(super) disk_dirty: BTreeSet<RelPath>,
    pub(super) sec: BTreeMap<RelPath, u64>,
    pub(super) sec_history: History,
    /// The secondary marked itself inconsistent (a resync into it runs).
    pub(super) sec_inconsistent: bool,
    sec_up: bool,
    link: Option<Link>,
    actors: Vec<Actor>,
    worker: Worker,
    /// Held by an actor (its index) or the worker (`ACTORS`).
    sequencer: Option<usize>,
    /// The controller's grant as the controller sees it, and its fence.
    pub(super) grant: Option<Instant>,
    pub(super) fenced_by_order: bool,
    faults: bool,
    tokens: u64,
    pub(super) stats: Stats,
    pub(super) trace: Vec<String>,
    /// A violation found inside a step (reported after it).
    pub(super) deferred: Option<Violation>,
    /// On-sync: early-answered ops awaiting the secondary.
    early: BTreeMap<OpId, Early>,
    /// Changes answered without waiting for the secondary (on-sync), not
    /// yet covered by an acknowledged sync op: a sync op acknowledged
    /// after them acknowledges them.
    unsynced: BTreeMap<OpId, Vec<(RelPath, usize)>>,
    /// Sync ops begun and not answered.
    syncs: BTreeSet<OpId>,
    /// Those among them whose own ops the secondary applied.
    applied_syncs: BTreeSet<OpId>,
    /// Data writes submitted while a worker had taken their file and not
    /// yet sent its copy.
    before_visit: BTreeSet<OpId>,
    /// Every tree the primary had, in order of its changes: a consistent
    /// secondary at the primary's generation holds one of them (a prefix
    /// of the ops).
    pub(super) states: BTreeSet<Vec<(RelPath, u64)>>,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

fn name(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).expect("a valid name")
}

/// The content a copied range leaves in the destination.
fn mix(src: u64, dst: u64) -> u64 {
    (src ^ dst.rotate_left(17)).wrapping_mul(0x2545_F491_4F6C_DD1D) | 1
}

impl Sim {
    pub(super) fn new(seed: u64, origin: Instant, ack: AckMode) -> Self {
        let mut rng = Rng::new(seed);
        let mode = match seed % 3 {
            0 => OnPeerLoss::Fail,
            1 => OnPeerLoss::Alone,
            _ => OnPeerLoss::Hold,
        };
        let now = origin;
        let names: Vec<RelPath> = NAMES.iter().map(|n| name(n)).collect();
        let first = History::from_ids(vec![GenerationId(1)]);
        // A small bound, so that the application meets it.
        let bound = Bound {
            ops: 1 + rng.below(4),
            bytes: 3 * (OP_COST + 8),
        };
        let cfg = Config {
            on_peer_loss: mode,
            hold_timeout: Duration::from_secs(8),
            full: false,
            seed: rng.next(),
            me: "node1".into(),
            peer: "node2".into(),
            ack,
            bound,
            longest_pause: Duration::from_millis(8),
        };
        let core = Primary::new(cfg, now, first.clone(), DirtySet::default());
        let mut sim = Self {
            rng,
            now,
            mode,
            ack,
            bound,
            core,
            primary: BTreeMap::new(),
            oracle: Oracle::new(&names),
            disk_history: first.clone(),
            disk_dirty: BTreeSet::new(),
            sec: BTreeMap::new(),
            sec_history: first,
            sec_inconsistent: false,
            sec_up: true,
            link: None,
            actors: (0..ACTORS).map(|_| Actor::Idle).collect(),
            worker: Worker::Idle,
            sequencer: None,
            grant: None,
            fenced_by_order: false,
            faults: true,
            tokens: 0,
            stats: Stats::default(),
            trace: Vec::new(),
            deferred: None,
            early: BTreeMap::new(),
            unsynced: BTreeMap::new(),
            syncs: BTreeSet::new(),
            applied_syncs: BTreeSet::new(),
            before_visit: BTreeSet::new(),
            states: [Vec::new()].into(),
        };
        sim.core.handle_start(now, false);
        sim.persist(false);
        sim.drain_actions();
        sim
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "mode {:?}, ack {}, role {}, link {:?}, primary {:?}, secondary {:?}{}, disk dirty {:?}, history {:?} / secondary {:?}",
            self.mode,
            self.ack,
            self.core.role(),
            self.link.as_ref().map(|l| l.epoch),
            self.primary,
            self.sec,
            if self.sec_inconsistent { " (inconsistent)" } else { "" },
            self.disk_dirty,
            self.disk_history.current(),
            self.sec_history.current()
        )
    }

    pub(super) fn trace_tail(&self, n: usize) -> String {
        let from = self.trace.len().saturating_sub(n);
        self.trace[from..].join("\n")
    }

    fn log(&mut self, s: String) {
        self.trace.push(s);
    }

    /// The safety phase, then the liveness phase.
    pub(super) fn run(&mut self) -> Result<(), Violation> {
        for _ in 0..FAULT_STEPS {
            self.step()?;
        }
        self.faults = false;
        self.log("--- faults stop".into());
        for _ in 0..SETTLE_STEPS {
            self.step()?;
            if self.settled() {
                return invariants::check_settled(self);
            }
        }
        Err(Violation::NotSettled(self.describe()))
    }

    /// In sync, every application op answered, trees equal (checked).
    fn settled(&self) -> bool {
        self.core.snapshot(self.now).in_sync
            && self.actors.iter().all(|a| matches!(a, Actor::Idle))
            && self.early.is_empty()
            && self
                .link
                .as_ref()
                .is_some_and(|l| l.to_sec.is_empty() && l.to_pri.is_empty())
    }

    /// One random step, then every invariant.
    fn step(&mut self) -> Result<(), Violation> {
        self.now += Duration::from_millis(self.rng.below(20));
        // Per mille: the application and the stream most of the time; faults
        // rare enough that the pair also spends time connected and in sync.
        let controller = if self.mode == OnPeerLoss::Hold { 30 } else { 3 };
        match self.rng.below(1000) {
            0..=299 => {
                let i = self.rng.below(ACTORS as u64) as usize;
                self.actor_step(i)?;
            }
            300..=449 => self.secondary_step(),
            450..=599 => self.primary_receive()?,
            600..=749 => self.worker_step(),
            750..=799 => self.connect(),
            800..=803 if self.faults => self.lose_link("connection lost"),
            804..=805 if self.faults && self.sec_up => {
                self.lose_link("secondary killed");
                self.sec_up = false;
            }
            806..=835 if !self.sec_up => self.sec_up = true,
            c @ 836..=899 if c - 836 < controller => self.controller(),
            900..=919 => {
                self.now += Duration::from_millis(self.rng.below(3000));
                self.core.handle_tick(self.now);
                self.drain_actions();
            }
            _ => {}
        }
        invariants::check(self)
    }

    // ---- the application ------------------------------------------------

    fn actor_step(&mut self, i: usize) -> Result<(), Violation> {
        let free = self.sequencer.is_none_or(|h| h == i);
        match std::mem::replace(&mut self.actors[i], Actor::Idle) {
            Actor::Idle if free && self.faults => self.begin(i)?,
            Actor::Idle => {}
            Actor::Begun { begin, m } => self.apply(i, begin, m),
            Actor::Applied { op, effects, sends } => self.submit(i, op, effects, sends)?,
            other => self.actors[i] = other,
        }
        Ok(())
    }

    fn pick(&mut self) -> RelPath {
        name(NAMES[self.rng.below(NAMES.len() as u64) as usize])
    }

    fn begin(&mut self, i: usize) -> Result<(), Violation> {
        let (a, b) = (self.pick(), self.pick());
        let m = match self.rng.below(10) {
            0..=2 => {
                self.tokens += 1;
                Mutation::Write(a, self.tokens << 8, self.rng.chance(10))
            }
            3 => Mutation::Remove(a),
            4 | 5 if a != b => Mutation::Rename(a, b),
            6 | 7 if a != b => Mutation::Copy(a, b),
            8 | 9 => Mutation::Sync(a),
            _ => return Ok(()),
        };
        let touched = match &m {
            Mutation::Write(n, _, sync) if self.primary.contains_key(n) => Touched {
                paths: vec![n.clone()],
                data: Some((0, 8)),
                sync: *sync,
                ..Touched::default()
            },
            Mutation::Write(n, _, sync) => Touched {
                sync: *sync,
                ..Touched::paths(vec![n.clone()])
            },
            Mutation::Sync(n) => Touched {
                sync: true,
                synced: Some(n.clone()),
                ..Touched::default()
            },
            Mutation::Remove(n) => Touched::paths(vec![n.clone()]),
            Mutation::Rename(a, b) => Touched {
                paths: vec![a.clone(), b.clone()],
                rename: Some((a.clone(), b.clone())),
                ..Touched::default()
            },
            Mutation::Copy(a, b) => Touched {
                paths: vec![b.clone()],
                data: Some((0, 8)),
                reads: vec![a.clone()],
                ..Touched::default()
            },
        };
        if !self.core.room_for(&touched) {
            // The driver waits for room (bounded): mostly it comes; past
            // the wait the op goes on and is answered late.
            self.stats.back_pressure += 1;
            if self.rng.chance(90) {
                self.log(format!("actor {i}: {m:?} waits for room"));
                return Ok(());
            }
        }
        let sync = touched.sync;
        let role = self.core.role();
        match self.core.handle_begin(self.now, touched) {
            Err(e) => {
                self.log(format!("actor {i}: {m:?} refused in {role}: {e}"));
                self.drain_actions();
                Ok(())
            }
            Ok(begin) => {
                if self.fenced_by_order {
                    return Err(Violation::BeganWhileFenced(format!("{m:?}")));
                }
                if !self.persist(true) {
                    self.core.abort(Some(begin.op), false);
                    self.log(format!("actor {i}: {m:?} not recorded: EIO"));
                    self.drain_actions();
                    return Ok(());
                }
                self.log(format!("actor {i}: begin {m:?} in {role} as {begin:?}"));
                if sync {
                    self.syncs.insert(begin.op);
                }
                self.drain_actions();
                self.sequencer = Some(i);
                self.actors[i] = Actor::Begun { begin, m };
                Ok(())
            }
        }
    }

    fn apply(&mut self, i: usize, begin: Begin, m: Mutation) {
        let op = begin.op;
        let has = |s: &Self, n: &RelPath| s.primary.contains_key(n);
        let valid = match &m {
            Mutation::Write(..) => true,
            // An fsync needs an open file (one unlinked while open is named
            // by a handle, not modelled).
            Mutation::Sync(n) => has(self, n),
            Mutation::Remove(n) => has(self, n),
            Mutation::Rename(a, _) => has(self, a),
            Mutation::Copy(a, b) => has(self, a) && has(self, b),
        };
        if !valid {
            self.core.handle_abandon(op);
            self.sequencer = None;
            self.log(format!("actor {i}: {m:?} failed locally"));
            return;
        }
        let barrier = begin.barrier.then_some(SimOp::Barrier);
        let (effects, sends) = match m {
            Mutation::Write(n, t, _) => {
                // Into the existing file (a data write), or a new one.
                let send = if self.primary.insert(n.clone(), t).is_some() {
                    SimOp::Overwrite(n.clone(), t)
                } else {
                    SimOp::Set(n.clone(), t)
                };
                let v = self.oracle.changed(&n, Some(t));
                let mut sends = vec![send];
                sends.extend(barrier);
                (vec![(n, v)], sends)
            }
            // The barrier stands for the fsync.
            Mutation::Sync(n) => (Vec::new(), vec![barrier.unwrap_or(SimOp::Fsync(n))]),
            Mutation::Remove(n) => {
                self.primary.remove(&n);
                let v = self.oracle.changed(&n, None);
                (vec![(n.clone(), v)], vec![SimOp::Unlink(n)])
            }
            Mutation::Rename(a, b) => {
                let t = self.primary.remove(&a).expect("checked");
                self.primary.insert(b.clone(), t);
                let va = self.oracle.changed(&a, None);
                let vb = self.oracle.changed(&b, Some(t));
                (
                    vec![(a.clone(), va), (b.clone(), vb)],
                    vec![SimOp::Rename(a, b)],
                )
            }
            Mutation::Copy(a, b) => {
                let t = mix(self.primary[&a], self.primary[&b]);
                self.primary.insert(b.clone(), t);
                let v = self.oracle.changed(&b, Some(t));
                let send = if begin.source_clean {
                    self.stats.copies_as_ranges += 1;
                    SimOp::Copy(a, b.clone())
                } else {
                    self.stats.copies_as_data += 1;
                    SimOp::Set(b.clone(), t)
                };
                (vec![(b, v)], vec![send])
            }
        };
        self.log(format!("actor {i}: applied {effects:?}"));
        self.states
            .insert(self.primary.iter().map(|(n, t)| (n.clone(), *t)).collect());
        self.actors[i] = Actor::Applied { op, effects, sends };
    }

    fn submit(
        &mut self,
        i: usize,
        op: OpId,
        effects: Vec<(RelPath, usize)>,
        sends: Vec<SimOp>,
    ) -> Result<(), Violation> {
        self.sequencer = None;
        let written = sends.iter().find_map(|s| match s {
            SimOp::Overwrite(n, _) => Some(n),
            _ => None,
        });
        if let (Worker::Taken(job), Some(n)) = (&self.worker, written) {
            if job.path == *n {
                // Sent before the worker's copy creates the file there.
                self.before_visit.insert(op);
            }
        }
        let mut sent_on = self.core.handle_submit(self.now, op);
        if !self.persist(true) {
            // Not recorded: not sent either (the outcome records it again).
            self.core.abort(None, true);
            sent_on = None;
        }
        self.drain_actions();
        let early = self.core.early(op);
        let link = self.link.as_mut().filter(|l| Some(l.epoch) == sent_on);
        match link {
            Some(l) if early => {
                // Queued in order for the secondary: answered now.
                let left = sends.len();
                for s in sends {
                    l.to_sec.push_back(Msg {
                        op: s,
                        tag: Tag::Early(op),
                    });
                }
                self.early.insert(
                    op,
                    Early {
                        effects: effects.clone(),
                        left,
                        failed: None,
                        since: self.now,
                    },
                );
                self.stats.early_answers += 1;
                self.log(format!(
                    "actor {i}: submitted on {sent_on:?}, answered early"
                ));
                self.actors[i] = Actor::Idle;
                self.unsynced.insert(op, effects);
                Ok(())
            }
            Some(l) => {
                let left = sends.len();
                for s in sends {
                    l.to_sec.push_back(Msg {
                        op: s,
                        tag: Tag::App(i),
                    });
                }
                self.log(format!("actor {i}: submitted on {sent_on:?}"));
                self.actors[i] = Actor::Waiting {
                    op,
                    effects,
                    left,
                    failed: None,
                    since: self.now,
                };
                Ok(())
            }
            None => {
                if sent_on.is_none() && self.link.is_some() {
                    self.stats.role_changed_mid_op += 1;
                }
                self.log(format!("actor {i}: not sent ({sent_on:?})"));
                self.outcome(i, op, effects, OpResult::NotSent, None)
            }
        }
    }

    fn outcome(
        &mut self,
        i: usize,
        op: OpId,
        effects: Vec<(RelPath, usize)>,
        result: OpResult,
        took: Option<Duration>,
    ) -> Result<(), Violation> {
        if matches!(result, OpResult::Refused(_)) {
            self.stats.refused += 1;
        }
        let mut verdict = self.core.handle_outcome(self.now, op, result, took);
        if !self.persist(true) {
            self.core.abort(Some(op), true);
            verdict = Verdict::Fail(libc::EIO);
        }
        self.log(format!("actor {i}: {result:?} -> {verdict:?}"));
        // Only an fsync changes nothing; with --on-peer-loss=fail, nothing
        // but the resync carrying it acknowledges it unreplicated.
        if self.mode == OnPeerLoss::Fail
            && effects.is_empty()
            && result == OpResult::Refused(libc::ENOENT)
            && verdict == Verdict::Ack
        {
            self.stats.syncs_carried += 1;
        }
        if self.before_visit.remove(&op) && result == OpResult::Refused(libc::ENOENT) {
            match verdict {
                Verdict::Ack => self.stats.writes_carried_by_a_visit += 1,
                Verdict::Fail(libc::ENOENT) => {
                    return Err(Violation::FailedBeforeAVisit(format!("actor {i}, {op:?}")))
                }
                _ => {}
            }
        }
        let on_sync = self.ack == AckMode::OnSync && self.syncs.contains(&op);
        if on_sync && result == OpResult::Applied {
            self.applied_syncs.insert(op);
            if verdict == Verdict::Hold {
                self.stats.syncs_waited += 1;
            }
        }
        // Held before the releases it may cause.
        if verdict == Verdict::Hold {
            self.stats.held += 1;
            self.actors[i] = Actor::Held {
                op,
                effects: effects.clone(),
            };
        }
        self.drain_actions();
        match verdict {
            Verdict::Hold => Ok(()),
            v => self.answer(i, op, effects, v),
        }
    }

    /// The outcome of an early-answered op: concluded, nobody answered.
    fn early_outcome(&mut self, op: OpId, result: OpResult, took: Option<Duration>) {
        // Answered already: its verdict is a later sync op's.
        self.before_visit.remove(&op);
        let mut verdict = self.core.handle_outcome(self.now, op, result, took);
        if !self.persist(true) {
            self.core.abort(Some(op), true);
            verdict = Verdict::Fail(libc::EIO);
        }
        self.log(format!("early {op:?}: {result:?} -> {verdict:?}"));
        self.drain_actions();
    }

    /// The application gets `verdict` for op `op`, a change with `effects`.
    /// An acknowledged sync op (on-sync) acknowledges every change answered
    /// early before it too.
    fn answer(
        &mut self,
        i: usize,
        op: OpId,
        mut effects: Vec<(RelPath, usize)>,
        verdict: Verdict,
    ) -> Result<(), Violation> {
        self.actors[i] = Actor::Idle;
        let sync = self.syncs.remove(&op) && self.ack == AckMode::OnSync;
        let applied = self.applied_syncs.remove(&op);
        if verdict != Verdict::Ack {
            if sync && applied && matches!(verdict, Verdict::Fail(_)) {
                self.stats.syncs_told += 1;
            }
            return Ok(());
        }
        if sync {
            self.stats.syncs_acked += 1;
            let later = self.unsynced.split_off(&op);
            for (_, e) in std::mem::replace(&mut self.unsynced, later) {
                effects.extend(e);
            }
        }
        let missing: Vec<(RelPath, usize)> = effects
            .iter()
            .filter(|(n, v)| !self.oracle.at_least(n, *v, self.sec.get(n).copied()))
            .cloned()
            .collect();
        if !missing.is_empty() {
            self.stats.unreplicated_acks += 1;
            invariants::unreplicated_ack_allowed(self, &missing)?;
        }
        self.oracle.acked(&effects);
        Ok(())
    }

    // ---- the metadata disk ------------------------------------------------

    /// Writes what the core staged (or fails to, when `may_fail` and the
    /// dice say so: then the caller aborts). True when committed.
    fn persist(&mut self, may_fail: bool) -> bool {
        let Some(d) = self.core.take_durable() else {
            return true;
        };
        if may_fail && self.faults && self.rng.chance(3) {
            self.stats.persist_failures += 1;
            self.log("metadata disk: write failed".into());
            return false;
        }
        if let Some(h) = &d.history {
            if let Err(v) = invariants::generations_only_grow(&self.disk_history, h) {
                self.pending_violation(v);
            }
            self.disk_history = h.clone();
        }
        let m = &d.marks;
        self.disk_dirty.extend(m.trees.iter().cloned());
        self.disk_dirty.extend(m.whole.iter().cloned());
        self.disk_dirty.extend(m.range.iter().map(|r| r.0.clone()));
        if d.clear_dirty {
            self.disk_dirty.clear();
        }
        self.core.commit();
        true
    }

    fn drain_actions(&mut self) {
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Release(op, v) => {
                    let i = self
                        .actors
                        .iter()
                        .position(|a| matches!(a, Actor::Held { op: o, .. } if *o == op));
                    let Some(i) = i else {
                        panic!("release of {op:?}, which no actor holds");
                    };
                    let Actor::Held { effects, .. } =
                        std::mem::replace(&mut self.actors[i], Actor::Idle)
                    else {
                        unreachable!("matched above")
                    };
                    if v == Verdict::Ack && self.link.is_none() {
                        self.stats.released_by_grant += 1;
                    }
                    self.log(format!("actor {i}: released {v:?}"));
                    if let Err(e) = self.answer(i, op, effects, v) {
                        // Reported by the next invariant check.
                        self.pending_violation(e);
                    }
                }
                Action::BeginResync { epoch, .. } => {
                    if let Some(l) = self.link.as_mut().filter(|l| l.epoch == epoch) {
                        l.to_sec.push_back(Msg {
                            op: SimOp::BeginResync,
                            tag: Tag::Control,
                        });
                    }
                }
                Action::RoleChanged { from, to } => {
                    if to == Role::Fenced {
                        self.stats.fenced += 1;
                    }
                    self.log(format!("role {from} -> {to}"));
                }
            }
        }
    }

    fn pending_violation(&mut self, v: Violation) {
        self.deferred.get_or_insert(v);
    }

    // ---- the link and the secondary ----------------------------------------

    fn connect(&mut self) {
        if self.link.is_some() || !self.sec_up || !self.core.wants_link() {
            return;
        }
        let hist = self.sec_history.clone();
        match self
            .core
            .handle_link_up(self.now, &hist, &[], BTreeSet::new())
        {
            Ok(epoch) => {
                self.log(format!("connected: epoch {epoch}"));
                self.link = Some(Link {
                    epoch,
                    to_sec: VecDeque::new(),
                    to_pri: VecDeque::new(),
                });
            }
            Err(why) => self.log(format!("connection refused: {why}")),
        }
        self.drain_actions();
    }

    fn lose_link(&mut self, why: &str) {
        let Some(l) = self.link.take() else { return };
        self.log(format!("{why}: epoch {}", l.epoch));
        // The completion thread's ops first, in order (either order holds).
        for (op, _) in std::mem::take(&mut self.early) {
            self.early_outcome(op, OpResult::Lost, None);
        }
        for i in 0..ACTORS {
            if let Actor::Waiting { op, .. } = &self.actors[i] {
                let op = *op;
                let Actor::Waiting { effects, .. } =
                    std::mem::replace(&mut self.actors[i], Actor::Idle)
                else {
                    unreachable!()
                };
                if let Err(e) = self.outcome(i, op, effects, OpResult::Lost, None) {
                    self.pending_violation(e);
                }
            }
        }
        match std::mem::replace(&mut self.worker, Worker::Idle) {
            Worker::Visiting { job, .. } | Worker::Taken(job) => {
                self.core.handle_job_retry(self.now, &job, None);
            }
            Worker::Finishing { .. } | Worker::Idle => {}
        }
        self.core
            .handle_link_lost(self.now, l.epoch, why.to_string());
        if !self.persist(true) {
            // The new generation stays to be made before the next
            // unreplicated acknowledgement.
            self.core.abort(None, false);
        }
        self.drain_actions();
    }

    fn secondary_step(&mut self) {
        if !self.sec_up {
            return;
        }
        let n = 1 + self.rng.below(4);
        for _ in 0..n {
            let Some(msg) = self.link.as_mut().and_then(|l| l.to_sec.pop_front()) else {
                return;
            };
            let refuse = self.faults
                && matches!(
                    msg.op,
                    SimOp::Set(..) | SimOp::Overwrite(..) | SimOp::Copy(..) | SimOp::Rename(..)
                )
                && self.rng.chance(4);
            // A flush that fails (the secondary's disk): nothing diverges.
            let flush_failed = self.faults && msg.op == SimOp::Barrier && self.rng.chance(2);
            let result = if refuse {
                Err(libc::ENOSPC)
            } else if flush_failed {
                Err(libc::EIO)
            } else {
                self.sec_apply(&msg.op)
            };
            if result.is_err() && !flush_failed {
                // It no longer holds what the primary has: never promote it
                // as is (the resync's end clears the mark).
                self.sec_inconsistent = true;
            }
            self.log(format!("secondary: {:?} -> {result:?}", msg.op));
            if let Some(l) = self.link.as_mut() {
                l.to_pri.push_back(Reply {
                    tag: msg.tag,
                    result,
                });
            }
        }
    }

    fn sec_apply(&mut self, op: &SimOp) -> Result<Option<Vec<RelPath>>, i32> {
        match op {
            SimOp::Set(n, t) => {
                self.sec.insert(n.clone(), *t);
            }
            SimOp::Overwrite(n, t) => {
                *self.sec.get_mut(n).ok_or(libc::ENOENT)? = *t;
            }
            SimOp::Unlink(n) => {
                self.sec.remove(n).ok_or(libc::ENOENT)?;
            }
            SimOp::Rename(a, b) => {
                let t = self.sec.remove(a).ok_or(libc::ENOENT)?;
                self.sec.insert(b.clone(), t);
            }
            SimOp::Copy(a, b) => {
                let (Some(s), Some(d)) = (self.sec.get(a), self.sec.get(b)) else {
                    return Err(libc::EIO);
                };
                let t = mix(*s, *d);
                self.sec.insert(b.clone(), t);
            }
            SimOp::Remove(n) => {
                self.sec.remove(n);
            }
            SimOp::List => return Ok(Some(self.sec.keys().cloned().collect())),
            SimOp::SetGeneration(h) => {
                self.sec_history = h.clone();
                self.sec_inconsistent = false;
            }
            SimOp::BeginResync => self.sec_inconsistent = true,
            // The secondary opens the file by its path to flush it.
            SimOp::Fsync(n) => {
                self.sec.get(n).ok_or(libc::ENOENT)?;
            }
            SimOp::Barrier => {}
        }
        Ok(None)
    }

    fn primary_receive(&mut self) -> Result<(), Violation> {
        let n = 1 + self.rng.below(3);
        for _ in 0..n {
            let Some(r) = self.link.as_mut().and_then(|l| l.to_pri.pop_front()) else {
                return Ok(());
            };
            match r.tag {
                Tag::App(i) => {
                    let Actor::Waiting {
                        op,
                        effects,
                        left,
                        failed,
                        since,
                    } = std::mem::replace(&mut self.actors[i], Actor::Idle)
                    else {
                        panic!("an answer for actor {i}, which waits for none");
                    };
                    let failed = failed.or(r.result.err());
                    if left > 1 {
                        self.actors[i] = Actor::Waiting {
                            op,
                            effects,
                            left: left - 1,
                            failed,
                            since,
                        };
                        continue;
                    }
                    let result = failed.map_or(OpResult::Applied, OpResult::Refused);
                    let took = Some(self.now.saturating_duration_since(since));
                    self.outcome(i, op, effects, result, took)?;
                }
                Tag::Early(op) => {
                    let e = self.early.get_mut(&op).expect("an early op awaits it");
                    e.left -= 1;
                    e.failed = e.failed.or(r.result.err());
                    if e.left == 0 {
                        let e = self.early.remove(&op).expect("just seen");
                        let result = e.failed.map_or(OpResult::Applied, OpResult::Refused);
                        let took = Some(self.now.saturating_duration_since(e.since));
                        self.early_outcome(op, result, took);
                    }
                }
                Tag::Worker => self.worker_answer(r.result),
                Tag::Control => {}
            }
        }
        Ok(())
    }

    // ---- the resync worker -----------------------------------------------

    fn send(&mut self, op: SimOp, tag: Tag) -> bool {
        match self.link.as_mut() {
            Some(l) => {
                l.to_sec.push_back(Msg { op, tag });
                true
            }
            None => false,
        }
    }

    fn worker_answer(&mut self, result: Result<Option<Vec<RelPath>>, i32>) {
        match &mut self.worker {
            Worker::Visiting {
                left,
                failed,
                listing,
                ..
            } => {
                *left -= 1;
                match result {
                    Err(e) => *failed = failed.or(Some(e)),
                    Ok(Some(names)) => *listing = Some(names),
                    Ok(None) => {}
                }
            }
            Worker::Finishing { answer, .. } => *answer = Some(result.is_ok()),
            Worker::Idle | Worker::Taken(_) => panic!("an answer for a worker that sent nothing"),
        }
    }

    fn worker_step(&mut self) {
        if self.sequencer.is_some() {
            // Every step below reads and submits under the sequencer.
            return;
        }
        match std::mem::replace(&mut self.worker, Worker::Idle) {
            Worker::Idle => self.worker_take(),
            Worker::Taken(job) => self.worker_send(job),
            Worker::Visiting {
                job,
                left: 0,
                failed,
                listing,
                listed,
            } => self.worker_visited(job, failed, listing, listed),
            Worker::Finishing {
                epoch,
                answer: Some(ok),
            } => {
                if ok && self.core.handle_resync_complete(self.now, epoch) {
                    if self.persist(true) {
                        self.stats.resyncs_completed += 1;
                        self.log(format!("resync of epoch {epoch} complete"));
                    } else {
                        self.core.abort(None, false);
                    }
                } else {
                    self.core.abort(None, false);
                }
                self.drain_actions();
            }
            other => self.worker = other,
        }
    }

    fn worker_take(&mut self) {
        let Some(job) = self.core.next_job(self.now) else {
            if let Some(epoch) = self.core.epoch() {
                if let Some(ids) = self.core.handle_generation_sent(epoch) {
                    let h = History::from_ids(ids.into_iter().map(GenerationId).collect());
                    if self.send(SimOp::SetGeneration(h), Tag::Worker) {
                        self.worker = Worker::Finishing {
                            epoch,
                            answer: None,
                        };
                    }
                }
            }
            return;
        };
        self.log(format!("worker: took {job:?}"));
        self.worker = Worker::Taken(job);
    }

    /// Reads `job`'s path and sends what the secondary needs (under the
    /// sequencer, a step after the path was handed out).
    fn worker_send(&mut self, job: Job) {
        if self.link.as_ref().is_none_or(|l| l.epoch != job.epoch) {
            self.core.handle_job_retry(self.now, &job, None);
            return;
        }
        let op = if job.path.is_root() {
            SimOp::List
        } else {
            match self.primary.get(&job.path) {
                Some(t) => SimOp::Set(job.path.clone(), *t),
                None => SimOp::Remove(job.path.clone()),
            }
        };
        self.log(format!("worker: {job:?} -> {op:?}"));
        self.send(op, Tag::Worker);
        self.worker = Worker::Visiting {
            job,
            left: 1,
            failed: None,
            listing: None,
            listed: false,
        };
    }

    fn worker_visited(
        &mut self,
        job: Job,
        failed: Option<i32>,
        listing: Option<Vec<RelPath>>,
        listed: bool,
    ) {
        let lost = self.link.as_ref().is_none_or(|l| l.epoch != job.epoch);
        if let Some(e) = failed {
            let why = (!lost).then(|| format!("the secondary answered errno {e}"));
            self.core.handle_job_retry(self.now, &job, why);
            return;
        }
        if let (false, Some(names)) = (listed, listing) {
            // The root's listing: remove what the secondary has and we do
            // not (re-checked now, under the sequencer), visit what differs.
            let mut removals = 0;
            for n in &names {
                if !self.primary.contains_key(n) && self.send(SimOp::Remove(n.clone()), Tag::Worker)
                {
                    removals += 1;
                }
            }
            let queue: Vec<RelPath> = self
                .primary
                .keys()
                .filter(|n| job.full || !names.contains(n))
                .cloned()
                .collect();
            self.core.add_pending(queue);
            self.worker = Worker::Visiting {
                job,
                left: removals,
                failed: None,
                listing: None,
                listed: true,
            };
            return;
        }
        self.core.handle_job_done(&job);
    }

    // ---- the controller ----------------------------------------------------

    fn controller(&mut self) {
        let settle = !self.faults;
        match self.rng.below(10) {
            _ if settle => {
                if self.core.role() == Role::Fenced {
                    self.core.handle_unfence(self.now);
                    self.fenced_by_order = false;
                    self.log("controller: unfence".into());
                }
            }
            0..=5 => {
                let secs = Duration::from_millis(500 + self.rng.below(4000));
                match self.core.handle_alone(self.now, secs) {
                    Ok(()) => {
                        if self.persist(true) {
                            self.grant = Some(self.now + secs);
                            self.log(format!("controller: alone {secs:?}"));
                        } else {
                            self.core.abort(None, false);
                            // The core keeps the grant (held ops stay held,
                            // acknowledgements still need the new
                            // generation): so does the controller.
                            self.grant = Some(self.now + secs);
                            self.log(format!(
                                "controller: alone {secs:?}, new generation not saved"
                            ));
                        }
                    }
                    Err(why) => self.log(format!("controller: alone refused: {why}")),
                }
            }
            6 | 7 => {
                self.core.handle_fence(self.now, "fenced by the controller");
                self.grant = None;
                self.fenced_by_order = true;
                self.log("controller: fence".into());
            }
            _ => {
                self.core.handle_unfence(self.now);
                self.fenced_by_order = false;
                self.log("controller: unfence".into());
            }
        }
        self.drain_actions();
    }

    /// Names the secondary's content for, as `Content`.
    pub(super) fn sec_content(&self, n: &RelPath) -> Content {
        self.sec.get(n).copied()
    }

    /// True when some application op was applied locally and is not answered.
    pub(super) fn ops_unanswered(&self) -> bool {
        self.actors.iter().any(|a| {
            matches!(
                a,
                Actor::Applied { .. } | Actor::Waiting { .. } | Actor::Held { .. }
            )
        })
    }

    /// True when an op sent to the secondary and not yet answered changes `n`.
    pub(super) fn in_flight_touches(&self, n: &RelPath) -> bool {
        self.actors.iter().any(
            |a| matches!(a, Actor::Waiting { effects, .. } if effects.iter().any(|(e, _)| e == n)),
        ) || self
            .early
            .values()
            .any(|e| e.effects.iter().any(|(x, _)| x == n))
    }

    /// Early-answered ops awaiting the secondary.
    pub(super) fn early_awaiting(&self) -> u64 {
        self.early.len() as u64
    }

    /// True when the link carries something.
    pub(super) fn link_busy(&self) -> bool {
        self.link
            .as_ref()
            .is_some_and(|l| !l.to_sec.is_empty() || !l.to_pri.is_empty())
    }
}
