//! One module on this node, as the daemon runs it: its core
//! ([`ModuleCore`]) and the threads that carry the core's actions out
//! without ever blocking the daemon's loop — a worker that runs the steps one
//! at a time (scripts, mirrorfs processes, the VIP), an orders thread that
//! passes grants and fences to the mounts, the VIP thread that renews the
//! address and repeats its gratuitous ARP, the mirrorfs watchers and the
//! checkers.
//!
//! Owns: the module's run directory and log, the persisted start/stop goal,
//! the translation of the core's actions into those threads' jobs and of
//! their results into the core's events. Must not: decide (the core does).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{unbounded, Receiver, Sender};
use mirrorfs::ctl::{self, Request, Status};
use tracing::{info, warn};

use super::checkers::{self, Probe};
use super::mirror::{self, MirrorEvent, MirrorSet};
use super::net::Net;
use super::scripts::{self, ScriptOutcome, ScriptRun};
use super::vip::{self, VipSpec};
use crate::cluster::checker::{self as policy, CheckerPolicy, CheckerState, MaxLoop, Verdict};
use crate::cluster::module::{
    Action, Command, CoreConfig, MirrorView, ModuleCore, Script, ScriptSet, Step,
};
use crate::cluster::state::{ModuleState, RootInfo};
use crate::config::{Module, NodeConfig, OnFailure, Then};

/// What the module's threads tell the daemon's loop.
#[derive(Debug)]
pub enum ModuleEvent {
    /// A step ended (with the data's state, for [`Step::ReadRoots`]).
    StepDone {
        /// The step.
        step: Step,
        /// How it ended.
        result: Result<(), String>,
        /// The roots read.
        roots: Option<Vec<RootInfo>>,
    },
    /// A mirrorfs watcher reported.
    Mirror(MirrorEvent),
    /// A farm module's thread reported.
    Farm(super::farm::FarmEvent),
    /// A checker probed.
    Checked {
        /// Which checker.
        index: usize,
        /// The probe's result.
        result: Result<(), String>,
    },
}

/// The module log: lines appended with a time stamp, by a thread of its own.
#[derive(Debug, Clone)]
pub struct ModuleLog {
    path: PathBuf,
    tx: Sender<String>,
}

impl ModuleLog {
    /// A log at `path`.
    pub fn new(path: PathBuf) -> Self {
        let (tx, rx) = unbounded::<String>();
        let p = path.clone();
        let _ = thread::Builder::new()
            .name("module-log".into())
            .spawn(move || {
                for line in rx {
                    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(&p) {
                        let _ = writeln!(f, "{line}");
                    }
                }
            });
        Self { path, tx }
    }

    /// Appends one line.
    pub fn line(&self, text: &str) {
        let _ = self
            .tx
            .send(format!("{} {text}", scripts::timestamp(SystemTime::now())));
    }

    /// The file.
    pub fn path(&self) -> &PathBuf {
        &self.path
    }
}

/// A module on this node.
pub struct ModuleRunner {
    /// The module's configuration.
    pub module: Module,
    /// Its decisions.
    pub core: ModuleCore,
    /// Its mirrorfs processes.
    pub mirror: MirrorSet,
    /// The latest status of each directory's mirrorfs.
    pub statuses: Vec<Option<Status>>,
    /// The module log.
    pub log: ModuleLog,
    /// The VIP, if any.
    pub vip: Option<VipSpec>,
    last_view: MirrorView,
    worker: Sender<Step>,
    orders: Sender<Order>,
    vip_tx: Option<Sender<VipCmd>>,
    checkers: Vec<CheckerState>,
    checker_names: Vec<String>,
    maxloop: MaxLoop,
    app_up: Arc<AtomicBool>,
    /// Until when the VIP thread may renew the address, in ms after
    /// `epoch` (0: not at all): the core's quorum end less the lifetime.
    vip_until: Arc<AtomicU64>,
    epoch: Instant,
    /// The node was primary at the last look (see `drain`).
    was_primary: bool,
    goal_file: PathBuf,
    stop: Arc<AtomicBool>,
}

/// An order to the mounts.
enum Order {
    Grant(Instant),
    Fence,
}

/// A job for the VIP thread.
enum VipCmd {
    Add(Sender<Result<(), String>>),
    Remove(Sender<Result<(), String>>),
    Drop,
}

impl ModuleRunner {
    /// Sets the module up on this node: its directory, log and threads; asks
    /// the mirrorfs processes that may still run (a daemon restart) and
    /// hands what it found to the core.
    pub fn start(
        module: Module,
        node: &NodeConfig,
        incarnation: u64,
        events: Sender<(String, ModuleEvent)>,
    ) -> Result<Self, String> {
        let name = module.name.clone();
        let me = module
            .nodes
            .iter()
            .find(|n| n.name == node.name)
            .cloned()
            .ok_or_else(|| format!("{name}: this node ({}) is not listed", node.name))?;
        let peer = module
            .peer_of(&node.name)
            .cloned()
            .ok_or_else(|| format!("{name}: no peer for {}", node.name))?;
        let ModuleHome {
            dir,
            run_dir,
            log,
            goal_file,
            goal_running,
        } = ModuleHome::open(node, &name)?;
        let mirror = MirrorSet::new(&module, node, &me, &peer, &dir);
        let scripts = ScriptSet {
            prestart: module.scripts.prestart.is_some(),
            start_prim: module.scripts.start_prim.is_some(),
            stop_prim: module.scripts.stop_prim.is_some(),
            poststop: module.scripts.poststop.is_some(),
        };
        let cfg = CoreConfig {
            module: name.clone(),
            me: me.name.clone(),
            peer: peer.name.clone(),
            preferred: module.node_index(&me.name) == Some(0),
            dirs: module.dirs.len(),
            networks: me.addrs.len(),
            interval: module.timing.heartbeat_interval,
            timeout: module.timing.heartbeat_timeout,
            lease: module.timing.lease,
            witness: module.witness.is_some(),
            digest: module.digest,
            vip: module.vip.is_some(),
            scripts,
            incarnation,
        };
        let now = Instant::now();
        let mut core = ModuleCore::new(now, cfg);
        let statuses = mirror.probe();
        let view = mirror::view(&statuses);
        if view.mounts.is_some() || view.serves.is_some() {
            log.line(&format!(
                "adopting the running mirrorfs processes ({})",
                if view.mounts.is_some() {
                    "mounts"
                } else {
                    "serves"
                }
            ));
        }
        core.handle_adopt(now, view.clone(), goal_running);

        let stop = Arc::new(AtomicBool::new(false));
        let vip = module.vip.as_ref().map(|v| VipSpec {
            addr: v.addr,
            prefix: v.prefix,
            interface: v.interface.clone(),
        });
        // The address outlives a dead daemon by at most this long (iproute2
        // counts whole seconds); it is renewed only while the quorum lasts
        // that long more, so it is gone before the peer can take over.
        let lifetime = crate::config::VIP_LIFE;
        let epoch = Instant::now();
        let vip_until = Arc::new(AtomicU64::new(0));
        let vip_tx = vip.as_ref().map(|spec| {
            spawn_vip(
                spec.clone(),
                lifetime,
                module.timing.heartbeat_interval,
                (vip_until.clone(), epoch),
                log.clone(),
                stop.clone(),
            )
        });
        let app_up = Arc::new(AtomicBool::new(false));

        let (mirror_tx, mirror_rx) = unbounded::<MirrorEvent>();
        mirror.watch(mirror_tx, stop.clone());
        forward(&name, mirror_rx, events.clone(), ModuleEvent::Mirror);

        let worker = spawn_worker(
            name.clone(),
            mirror.clone(),
            module.clone(),
            node.clone(),
            me.name.clone(),
            peer.name.clone(),
            run_dir.clone(),
            log.clone(),
            vip_tx.clone(),
            events.clone(),
        );
        let orders = spawn_orders(mirror.clone(), log.clone());
        let mut checkers = Vec::new();
        let mut checker_names = Vec::new();
        for (i, c) in module.checkers.iter().enumerate() {
            checkers.push(CheckerState::new(CheckerPolicy {
                failures: c.failures,
                on_failure: match &c.on_failure {
                    OnFailure::Restart {
                        times,
                        window,
                        then,
                    } => policy::OnFailure::Restart {
                        times: *times,
                        window: *window,
                        then: match then {
                            Then::Swap => policy::Then::Swap,
                            // Validated: Leave is a farm's action, never a mirror's.
                            Then::Stop | Then::Leave => policy::Then::Stop,
                        },
                    },
                    OnFailure::Swap => policy::OnFailure::Swap,
                    OnFailure::Stop | OnFailure::Leave => policy::OnFailure::Stop,
                },
            }));
            checker_names.push(c.name.clone());
            spawn_checker(&name, i, c, app_up.clone(), stop.clone(), events.clone());
        }
        let maxloop = MaxLoop::new(module.maxloop.count, module.maxloop.window);
        log.line(&format!(
            "module loaded ({}), {}",
            module.file.display(),
            if goal_running {
                "to run"
            } else {
                "stopped by the operator"
            }
        ));
        let mut runner = Self {
            module,
            core,
            mirror,
            statuses,
            log,
            vip,
            last_view: view,
            worker,
            orders,
            vip_tx,
            checkers,
            checker_names,
            maxloop,
            app_up,
            vip_until,
            epoch,
            was_primary: false,
            goal_file,
            stop,
        };
        runner.drain(None);
        Ok(runner)
    }

    /// Feeds an event from the module's threads to the core.
    pub fn handle(&mut self, now: Instant, ev: ModuleEvent, net: Option<&Net>) {
        match ev {
            ModuleEvent::StepDone {
                step,
                result,
                roots,
            } => {
                if let Some(r) = roots {
                    self.core.handle_roots(now, r);
                }
                if matches!(
                    step,
                    Step::Mount | Step::StartServe | Step::Unmount | Step::StopServe
                ) {
                    // What runs now, without waiting for the watchers to
                    // reconnect: the core judges the step's outcome on it.
                    self.statuses = self.mirror.probe();
                    self.log
                        .line(&format!("after {step}: {}", self.describe_statuses()));
                    self.push_view(now);
                }
                match &result {
                    Ok(()) => self.log.line(&format!("done: {step}")),
                    Err(e) => self.log.line(&format!("FAILED: {step}: {e}")),
                }
                self.core.handle_step_done(now, step, result);
            }
            ModuleEvent::Mirror(MirrorEvent::Status { index, status }) => {
                // A status queued by a process that has exited since (a
                // replica stopped for a takeover) tells nothing any more.
                let live = i32::try_from(status.pid).is_ok_and(mirror::alive);
                if let Some(s) = self.statuses.get_mut(index).filter(|_| live) {
                    *s = Some(*status);
                }
                self.push_view(now);
            }
            ModuleEvent::Mirror(MirrorEvent::Gone { index, pid }) => {
                if let Some(s) = self.statuses.get_mut(index) {
                    // Only if it is the process we know of that went.
                    if s.as_ref().map(|st| st.pid) == pid || pid.is_none() && s.is_none() {
                        *s = None;
                    }
                }
                self.push_view(now);
            }
            ModuleEvent::Checked { index, result } => self.checked(now, index, result),
            // A farm's events never come from a mirror's threads.
            ModuleEvent::Farm(_) => {}
        }
        self.drain(net);
    }

    /// An operator's order.
    pub fn command(&mut self, now: Instant, cmd: Command, net: Option<&Net>) -> Result<(), String> {
        let r = self.core.handle_command(now, cmd).map_err(|e| e.0);
        if r.is_ok() {
            self.log.line(&format!("operator: {cmd:?}").to_lowercase());
            match cmd {
                Command::Start => self.save_goal(true),
                Command::Stop => self.save_goal(false),
                _ => {}
            }
        }
        self.drain(net);
        r
    }

    /// Time passed.
    pub fn tick(&mut self, now: Instant, net: Option<&Net>) {
        if self.core.poll_timeout() <= now {
            self.core.handle_timeout(now);
        }
        self.drain(net);
    }

    /// Stops the module's threads (not its mirrorfs processes, nor the VIP
    /// until its lifetime ends: a restarted daemon adopts them).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn push_view(&mut self, now: Instant) {
        let view = mirror::view(&self.statuses);
        let was_up = self.last_view.mounts.as_ref().is_some_and(|m| m.all_up);
        if was_up && !view.mounts.as_ref().is_some_and(|m| m.all_up) {
            self.log.line(&format!(
                "mounts no longer all up: {}",
                self.describe_statuses()
            ));
        }
        if view != self.last_view {
            self.last_view = view.clone();
            self.core.handle_mirror(now, view);
        }
    }

    /// Each directory's mirrorfs, for the log: `PRIM pid 123, not answering`.
    fn describe_statuses(&self) -> String {
        let seen: Vec<String> = self
            .statuses
            .iter()
            .map(|s| {
                s.as_ref().map_or("not answering".into(), |s| {
                    format!("{} pid {}", s.role, s.pid)
                })
            })
            .collect();
        seen.join(", ")
    }

    fn checked(&mut self, now: Instant, index: usize, result: Result<(), String>) {
        let name = self.checker_names.get(index).cloned().unwrap_or_default();
        if let Err(e) = &result {
            self.log.line(&format!("checker {name}: {e}"));
        }
        let Some(state) = self.checkers.get_mut(index) else {
            return;
        };
        let Some(verdict) = state.handle_result(now, result.is_ok()) else {
            return;
        };
        let cmd = match verdict {
            Verdict::Restart => Command::Restart,
            Verdict::Swap if self.maxloop.allow(now) => Command::Swap,
            Verdict::Swap => {
                self.log.line(&format!(
                    "checker {name}: swap refused by maxloop ({} in {} s): stopping the module",
                    self.module.maxloop.count,
                    self.module.maxloop.window.as_secs()
                ));
                Command::Stop
            }
            Verdict::Stop => Command::Stop,
        };
        self.log.line(&format!(
            "checker {name}: failed {} times: {cmd:?}",
            state.policy().failures
        ));
        if let Err(e) = self.core.handle_command(now, cmd) {
            self.log
                .line(&format!("checker {name}: {cmd:?} refused: {}", e.0));
            if cmd == Command::Swap {
                // No secondary to take over: restart here instead.
                let _ = self.core.handle_command(now, Command::Restart);
            }
        } else if cmd == Command::Stop {
            self.save_goal(false);
        }
    }

    /// Carries out the core's actions.
    fn drain(&mut self, net: Option<&Net>) {
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Run(step) => {
                    self.log.line(&format!("start: {step}"));
                    let _ = self.worker.send(step);
                }
                Action::Grant { until } => {
                    let _ = self.orders.send(Order::Grant(until));
                }
                Action::Fence => {
                    self.log.line("fence: every mount refuses writes");
                    let _ = self.orders.send(Order::Fence);
                }
                Action::DropVip => {
                    if let Some(tx) = &self.vip_tx {
                        let _ = tx.send(VipCmd::Drop);
                    }
                }
                Action::Beat(b) => {
                    if let Some(n) = net {
                        n.send_beat(&self.module.name, &b);
                    }
                }
                Action::Report(r) => {
                    if let Some(n) = net {
                        n.send_report(&self.module.name, &r);
                    }
                }
                Action::Transition(t) => {
                    info!(module = %self.module.name, from = %t.from, to = %t.to, "{}", t.reason);
                    self.log
                        .line(&format!("{} -> {}: {}", t.from, t.to, t.reason));
                }
            }
        }
        let until = self.core.quorum_until().map_or(0, |u| {
            u.saturating_duration_since(self.epoch).as_millis() as u64
        });
        self.vip_until.store(until, Ordering::Relaxed);
        let primary = matches!(self.core.state(), ModuleState::Prim | ModuleState::Alone);
        // The checkers probe while the application should run (settled
        // primary); their restart history starts anew each time this node
        // becomes primary (not at each restart: that would never let the
        // restarts run out and a swap come).
        let up = primary && self.core_ready();
        self.app_up.store(up, Ordering::Relaxed);
        if primary && !self.was_primary {
            for c in &mut self.checkers {
                c.reset();
            }
        }
        self.was_primary = primary;
    }

    fn core_ready(&mut self) -> bool {
        self.core.status(Instant::now()).ready
    }

    fn save_goal(&self, running: bool) {
        save_goal(&self.goal_file, running);
    }
}

/// A module's place on this node: `STATE_DIR/modules/NAME/` (its log and
/// the operator's start/stop goal) and `run/` in it (the application's
/// runtime directory), both made if missing.
pub(super) struct ModuleHome {
    /// `STATE_DIR/modules/NAME`.
    pub(super) dir: PathBuf,
    /// `DIR/run`, for the application's scripts (and Apache as www-data).
    pub(super) run_dir: PathBuf,
    /// `DIR/module.log`.
    pub(super) log: ModuleLog,
    /// `DIR/goal`: `started` or `stopped`.
    pub(super) goal_file: PathBuf,
    /// The goal read from it (running unless the operator stopped it).
    pub(super) goal_running: bool,
}

impl ModuleHome {
    pub(super) fn open(node: &NodeConfig, name: &str) -> Result<Self, String> {
        let dir = node.state_dir.join("modules").join(name);
        let run_dir = dir.join("run");
        for d in [&dir, &run_dir] {
            fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
            // The application's scripts (and Apache as www-data) use the run dir.
            let _ = fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        }
        let log = ModuleLog::new(dir.join("module.log"));
        let goal_file = dir.join("goal");
        let goal_running = fs::read_to_string(&goal_file)
            .map(|s| s.trim() != "stopped")
            .unwrap_or(true);
        Ok(Self {
            dir,
            run_dir,
            log,
            goal_file,
            goal_running,
        })
    }
}

/// Persists the operator's start/stop goal of a module.
pub(super) fn save_goal(goal_file: &Path, running: bool) {
    let text = if running { "started\n" } else { "stopped\n" };
    if let Err(e) = fs::write(goal_file, text) {
        warn!(file = %goal_file.display(), "cannot save the module's goal: {e}");
    }
}

/// When a VIP's gratuitous ARP is due again, after `announced` of them since
/// it was added: 0.5, 1 and 2 s after, then every 30 s.
pub(super) fn announce_due(announced: u32) -> Duration {
    match announced {
        0 => Duration::from_millis(500),
        1 => Duration::from_secs(1),
        2 => Duration::from_secs(2),
        n => Duration::from_secs(2 + 30 * u64::from(n - 2)),
    }
}

/// Forwards a thread's events to the daemon's loop, tagged with the module.
fn forward<T: Send + 'static>(
    module: &str,
    rx: Receiver<T>,
    events: Sender<(String, ModuleEvent)>,
    wrap: fn(T) -> ModuleEvent,
) {
    let module = module.to_owned();
    let _ = thread::Builder::new()
        .name("forward".into())
        .spawn(move || {
            for ev in rx {
                if events.send((module.clone(), wrap(ev))).is_err() {
                    return;
                }
            }
        });
}

/// The worker: runs the steps one at a time.
#[allow(clippy::too_many_arguments)]
fn spawn_worker(
    module_name: String,
    mirror: MirrorSet,
    module: Module,
    node: NodeConfig,
    me: String,
    peer: String,
    run_dir: PathBuf,
    log: ModuleLog,
    vip: Option<Sender<VipCmd>>,
    events: Sender<(String, ModuleEvent)>,
) -> Sender<Step> {
    let (tx, rx) = unbounded::<Step>();
    let mounts: Vec<String> = mirror
        .dirs
        .iter()
        .map(|d| d.dir.mount.display().to_string())
        .collect();
    let mut env = vec![
        ("MIRRORFARM_MODULE".to_string(), module_name.clone()),
        ("MIRRORFARM_NODE".to_string(), me),
        ("MIRRORFARM_PEER".to_string(), peer),
        (
            "MIRRORFARM_VIP".to_string(),
            module
                .vip
                .as_ref()
                .map(|v| v.addr.to_string())
                .unwrap_or_default(),
        ),
        (
            "MIRRORFARM_RUN_DIR".to_string(),
            run_dir.display().to_string(),
        ),
        (
            "MIRRORFARM_PATH_PREFIX".to_string(),
            node.path_prefix
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
    ];
    for (i, m) in mounts.iter().enumerate() {
        env.push((format!("MIRRORFARM_DIR_{}", i + 1), m.clone()));
    }
    let _ = thread::Builder::new()
        .name(format!("worker-{module_name}"))
        .spawn(move || {
            for step in rx {
                let mut roots = None;
                let result = match step {
                    Step::Script(s) => run_script(&module, s, &env, &log),
                    Step::ReadRoots => mirror.read_roots().map(|r| {
                        roots = Some(r);
                    }),
                    Step::StartServe => mirror.start_serves(),
                    Step::StopServe => mirror.stop_all(false),
                    Step::Mount => mirror.mount_all(),
                    Step::Unmount => mirror.stop_all(true),
                    Step::AddVip | Step::RemoveVip => match &vip {
                        Some(v) => {
                            let (rtx, rrx) = unbounded();
                            let cmd = if step == Step::AddVip {
                                VipCmd::Add(rtx)
                            } else {
                                VipCmd::Remove(rtx)
                            };
                            let _ = v.send(cmd);
                            rrx.recv()
                                .unwrap_or_else(|_| Err("the VIP thread is gone".into()))
                        }
                        None => Ok(()),
                    },
                    Step::Discard => mirror.discard_all(),
                };
                let ev = ModuleEvent::StepDone {
                    step,
                    result,
                    roots,
                };
                if events.send((module_name.clone(), ev)).is_err() {
                    return;
                }
            }
        });
    tx
}

fn run_script(
    module: &Module,
    s: Script,
    env: &[(String, String)],
    log: &ModuleLog,
) -> Result<(), String> {
    let path = match s {
        Script::Prestart => &module.scripts.prestart,
        Script::StartPrim => &module.scripts.start_prim,
        Script::StopPrim => &module.scripts.stop_prim,
        Script::Poststop => &module.scripts.poststop,
    };
    let Some(path) = path else {
        return Ok(());
    };
    let timeout = match s {
        Script::StopPrim | Script::Poststop => module.scripts.stop_timeout,
        _ => module.scripts.timeout,
    };
    run_module_script(module, path, &s.to_string(), timeout, env, log)
}

/// Runs one of `module`'s scripts (`label`, e.g. `start_prim script`) in its
/// scripts dir with `env`, its output in the module log; an error names the
/// module, the script and how it ended.
pub(super) fn run_module_script(
    module: &Module,
    path: &Path,
    label: &str,
    timeout: Duration,
    env: &[(String, String)],
    log: &ModuleLog,
) -> Result<(), String> {
    let run = ScriptRun {
        path: path.to_path_buf(),
        args: Vec::new(),
        env: env.to_vec(),
        cwd: module.scripts.dir.clone(),
        timeout,
        stop_grace: Duration::from_secs(5),
        log: log.path().clone(),
        label: format!("{} {label}", module.name),
    };
    match scripts::run(&run) {
        ScriptOutcome::Ok => Ok(()),
        other => Err(format!("{} {label}: {other}", module.name)),
    }
}

/// The orders thread: grants and fences to every mount, the grant's seconds
/// computed when it is sent.
fn spawn_orders(mirror: MirrorSet, log: ModuleLog) -> Sender<Order> {
    let (tx, rx) = unbounded::<Order>();
    let _ = thread::Builder::new().name("orders".into()).spawn(move || {
        for order in rx {
            for d in &mirror.dirs {
                let req = match &order {
                    Order::Grant(until) => {
                        let left = until.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            continue;
                        }
                        Request::Alone {
                            seconds: left.as_secs_f64().min(ctl::alone::MAX_SECONDS),
                        }
                    }
                    Order::Fence => Request::Fence,
                };
                if let Err(e) = ctl::client::request(&d.control, &req) {
                    log.line(&format!("{} to {}: {e}", req.name(), d.control.display()));
                }
            }
        }
    });
    tx
}

/// The VIP thread: adds, removes, renews the lifetime every interval while
/// held, and repeats the gratuitous ARP (at 0.5, 1, 2 s after adding, then
/// every 30 s).
fn spawn_vip(
    spec: VipSpec,
    lifetime: Duration,
    interval: Duration,
    (quorum_until, epoch): (Arc<AtomicU64>, Instant),
    log: ModuleLog,
    stop: Arc<AtomicBool>,
) -> Sender<VipCmd> {
    let (tx, rx) = unbounded::<VipCmd>();
    let _ = thread::Builder::new().name("vip".into()).spawn(move || {
        let mut held_since: Option<Instant> = None;
        let mut announced = 0u32;
        while !stop.load(Ordering::Relaxed) {
            match rx.recv_timeout(interval) {
                Ok(VipCmd::Add(reply)) => {
                    let r = vip::add(&spec, lifetime).map_err(|e| e.to_string());
                    if r.is_ok() {
                        held_since = Some(Instant::now());
                        announced = 0;
                        log.line(&format!("VIP {spec} added"));
                    }
                    let _ = reply.send(r);
                }
                Ok(VipCmd::Remove(reply)) => {
                    held_since = None;
                    let r = vip::remove(&spec).map_err(|e| e.to_string());
                    let _ = reply.send(r);
                }
                Ok(VipCmd::Drop) => {
                    if held_since.take().is_some() {
                        log.line(&format!("VIP {spec} dropped (quorum lost)"));
                    }
                    if let Err(e) = vip::remove(&spec) {
                        log.line(&format!("VIP {spec}: {e}"));
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
            if let Some(since) = held_since {
                // Only while the quorum surely lasts the address's lifetime
                // more (else it lapses by itself, at most `lifetime` later).
                let until = epoch + Duration::from_millis(quorum_until.load(Ordering::Relaxed));
                if Instant::now() + lifetime <= until {
                    if let Err(e) = vip::renew(&spec, lifetime) {
                        log.line(&format!("VIP {spec}: renewal failed: {e}"));
                    }
                }
                if since.elapsed() >= announce_due(announced) {
                    announced += 1;
                    if let Err(e) = filter::arp::announce(&spec.interface, spec.addr) {
                        log.line(&format!("VIP {spec}: gratuitous ARP: {e}"));
                    }
                }
            }
        }
    });
    tx
}

/// A checker's thread: probes every interval while the application should
/// run here.
pub(super) fn spawn_checker(
    module: &str,
    index: usize,
    c: &crate::config::Checker,
    app_up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    events: Sender<(String, ModuleEvent)>,
) {
    let probe: Probe = c.check.clone();
    let (interval, timeout, module) = (c.interval, c.timeout, module.to_owned());
    let _ = thread::Builder::new()
        .name(format!("checker-{}", c.name))
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(interval);
                if !app_up.load(Ordering::Relaxed) {
                    continue;
                }
                let result = checkers::probe(&probe, timeout);
                if !app_up.load(Ordering::Relaxed) {
                    continue;
                }
                if events
                    .send((module.clone(), ModuleEvent::Checked { index, result }))
                    .is_err()
                {
                    return;
                }
            }
        });
}
