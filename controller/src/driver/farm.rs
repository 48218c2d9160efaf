//! One farm module on this node, as the daemon runs it: its core
//! ([`FarmCore`]) and the threads that carry the core's actions out without
//! ever blocking the daemon's loop — the kernel thread (this module's
//! nftables tables and owned-bucket set, the VIPs and their gratuitous ARP,
//! the ARP responder that answers for the VIPs with the virtual MAC), the
//! script worker (start_both, stop_both) and the checkers.
//!
//! Owns: the module's run directory and log, the persisted start/stop goal,
//! the translation of the core's actions into those threads' jobs and of
//! their results (kernel set applied, script outcomes, checker verdicts)
//! into the core's events. Must not: decide who owns a bucket (the core
//! does) or touch any table, address or ARP but this module's.
//!
//! A checker's verdicts mean, for a farm: `Restart` runs stop_both then
//! start_both; `Leave` (the checker core's hand-over verdict) takes this
//! node out of the farm — its buckets go to the others — until a probe
//! passes again; `Stop` stops the module here.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, RecvTimeoutError, Sender};
use filter::buckets::BucketSet;
use filter::probe::ProbeListener;
use filter::{ArpResponder, FarmFilter, Installed};
use tracing::{info, warn};

use super::daemon::unix;
use super::module::{
    announce_due, run_module_script, save_goal, spawn_checker, ModuleEvent, ModuleHome, ModuleLog,
};
use super::net::Net;
use super::vip::{self, VipSpec};
use crate::cluster::checker::{self as policy, CheckerPolicy, CheckerState, Verdict};
use crate::cluster::farm::{
    FarmAction, FarmCommand, FarmConfig, FarmCore, FarmMember, FarmScript, FarmState,
    FarmTransition, VIP_LIFE, VIP_SLACK,
};
use crate::config::{Module, NodeConfig, OnFailure, Proto, Rule, Then};

/// What a farm module's threads tell the daemon's loop (inside
/// [`ModuleEvent::Farm`]).
#[derive(Debug)]
pub enum FarmEvent {
    /// The kernel now holds this owned set.
    Applied(BucketSet),
    /// A script ended.
    ScriptDone {
        /// Which.
        script: FarmScript,
        /// How.
        result: Result<(), String>,
    },
}

/// The kernel thread's jobs.
enum KernelCmd {
    Apply(BucketSet),
    Renew {
        until: Instant,
    },
    Drop,
    /// Remove everything, then answer.
    Shutdown(Sender<()>),
}

/// How long the daemon's stop waits for a farm's filter to be removed.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// A flooding probe goes to the virtual MAC this often...
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// ... and a member's counts as arriving while its newest is this recent.
const PROBE_FRESH: Duration = Duration::from_secs(20);
/// Flooding problems are reported once the daemon has run this long (every
/// member has sent probes by then).
const PROBE_SETTLE: Duration = Duration::from_secs(15);

/// One farm module on this node.
pub struct FarmRunner {
    /// The module.
    pub module: Module,
    /// Its decisions.
    pub core: FarmCore,
    /// Its log.
    pub log: ModuleLog,
    kernel: Sender<KernelCmd>,
    worker: Sender<FarmScript>,
    checkers: Vec<CheckerState>,
    checker_names: Vec<String>,
    /// The checkers probe while set (the application was started here).
    app_up: Arc<AtomicBool>,
    /// The VIPs are held (renewed and not dropped).
    vip_held: Arc<AtomicBool>,
    /// Out of the farm by a checker's verdict, until a probe passes.
    left: bool,
    /// The last start_both failed.
    start_failed: bool,
    /// A checker's restart runs: its start_both must not clear the
    /// checkers' restart history (else the restarts never run out and the
    /// node never leaves).
    checker_restart: bool,
    /// When the state last changed, and the change.
    since: Instant,
    last: Option<(FarmTransition, Instant)>,
    vips: Vec<VipSpec>,
    /// Whose flooding probes arrive here (None: the listener could not start).
    probe: Option<ProbeListener>,
    /// The flood list last given to the core, and when it was computed.
    flood: (Vec<String>, Instant),
    started: Instant,
    goal_file: PathBuf,
    stop: Arc<AtomicBool>,
}

impl FarmRunner {
    /// Sets the module up on this node: its directory and log, its filter
    /// (installed empty, after a preflight that changes nothing), the ARP
    /// responder and the threads. An error names what is wrong and the fix;
    /// nothing is left installed then.
    pub fn start(
        module: Module,
        node: &NodeConfig,
        incarnation: u64,
        events: Sender<(String, ModuleEvent)>,
    ) -> Result<Self, String> {
        let name = module.name.clone();
        let farm = module
            .farm
            .clone()
            .ok_or_else(|| format!("{name}: not a farm module"))?;
        let ModuleHome {
            run_dir,
            log,
            goal_file,
            goal_running,
            ..
        } = ModuleHome::open(node, &name)?;

        let filter = farm_filter(&module)?;
        preflight_vips(&module)?;
        filter::nft::check_support(&filter)
            .map_err(|e| format!("{name}: the farm filter cannot be installed: {e}"))?;
        let installed = filter::nft::install(&filter)
            .map_err(|e| format!("{name}: the farm filter cannot be installed: {e}"))?;
        let responder = ArpResponder::start(&filter.interface, &filter.vips, filter.vmac)
            .map_err(|e| format!("{name}: the ARP responder for the VIPs cannot start: {e}"))?;
        log.line(&format!(
            "filter installed on {} (virtual MAC {}), nothing accepted yet",
            filter.interface,
            filter::arp::format_mac(filter.vmac)
        ));
        let probe = match ProbeListener::start(&filter.interface, &filter.module, &node.name) {
            Ok(p) => Some(p),
            Err(e) => {
                log.line(&format!(
                    "cannot listen for flooding probes ({e}): whether the network floods the \
                     virtual MAC goes untested"
                ));
                None
            }
        };
        let vips: Vec<VipSpec> = farm
            .vips
            .iter()
            .map(|v| VipSpec {
                addr: v.addr,
                prefix: v.prefix,
                interface: v.interface.clone(),
            })
            .collect();

        let stop = Arc::new(AtomicBool::new(false));
        let vip_held = Arc::new(AtomicBool::new(false));
        let kernel = spawn_kernel(
            name.clone(),
            node.name.clone(),
            installed,
            responder,
            vips.clone(),
            filter.vmac,
            module.timing.heartbeat_interval,
            log.clone(),
            vip_held.clone(),
            events.clone(),
        );
        let worker = spawn_worker(&module, node, run_dir, log.clone(), events.clone());
        let app_up = Arc::new(AtomicBool::new(false));
        let mut checkers = Vec::new();
        let mut checker_names = Vec::new();
        for (i, c) in module.checkers.iter().enumerate() {
            checkers.push(CheckerState::new(CheckerPolicy {
                failures: c.failures,
                on_failure: policy_of(c.on_failure),
            }));
            checker_names.push(c.name.clone());
            spawn_checker(&name, i, c, app_up.clone(), stop.clone(), events.clone());
        }
        let now = Instant::now();
        let members = module
            .nodes
            .iter()
            .map(|n| FarmMember {
                name: n.name.clone(),
                weight: n.weight,
            })
            .collect();
        let core = FarmCore::new(
            now,
            FarmConfig {
                module: name.clone(),
                me: node.name.clone(),
                members,
                interval: module.timing.heartbeat_interval,
                timeout: module.timing.heartbeat_timeout,
                incarnation,
            },
        );
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
            log,
            kernel,
            worker,
            checkers,
            checker_names,
            app_up,
            vip_held,
            left: false,
            start_failed: false,
            checker_restart: false,
            since: now,
            last: None,
            vips,
            probe,
            flood: (Vec::new(), now),
            started: now,
            goal_file,
            stop,
        };
        if goal_running {
            runner.core.handle_command(now, FarmCommand::Start);
        }
        runner.drain(None);
        Ok(runner)
    }

    /// Feeds an event from the module's threads to the core.
    pub fn handle(&mut self, now: Instant, ev: ModuleEvent, net: Option<&Net>) {
        match ev {
            ModuleEvent::Farm(FarmEvent::Applied(set)) => self.core.handle_applied(now, set),
            ModuleEvent::Farm(FarmEvent::ScriptDone { script, result }) => {
                self.script_done(now, script, result);
            }
            ModuleEvent::Checked { index, result } => self.checked(now, index, result),
            // A mirror's events never come from a farm's threads.
            ModuleEvent::StepDone { .. } | ModuleEvent::Mirror(_) => {}
        }
        self.drain(net);
    }

    /// A beat from another member.
    pub fn beat(&mut self, now: Instant, beat: crate::cluster::msg::FarmBeat, net: Option<&Net>) {
        self.core.handle_beat(now, beat);
        self.drain(net);
    }

    /// An operator's order: start, stop, restart (the application's
    /// scripts); a farm has no primary to swap or name.
    pub fn command(
        &mut self,
        now: Instant,
        cmd: crate::cluster::module::Command,
        net: Option<&Net>,
    ) -> Result<(), String> {
        use crate::cluster::module::Command;
        match cmd {
            Command::Start => {
                self.save_goal(true);
                self.core.handle_command(now, FarmCommand::Start);
            }
            Command::Stop => {
                self.save_goal(false);
                self.core.handle_command(now, FarmCommand::Stop);
            }
            Command::Restart => {
                if self.core.state() == FarmState::Stop {
                    return Err(format!(
                        "{}: stopped here: start it (`mirrorfarm start {}`)",
                        self.module.name, self.module.name
                    ));
                }
                self.log.line("restart ordered: stop_both, then start_both");
                let _ = self.worker.send(FarmScript::StopBoth);
                let _ = self.worker.send(FarmScript::StartBoth);
            }
            Command::Swap | Command::Prim | Command::Second => {
                return Err(format!(
                    "{}: a farm module has no primary: every node serves its share \
                     (`mirrorfarm stop {}` on a node takes it out of the farm)",
                    self.module.name, self.module.name
                ));
            }
        }
        self.drain(net);
        Ok(())
    }

    /// Time passed.
    pub fn tick(&mut self, now: Instant, net: Option<&Net>) {
        if now >= self.flood.1 + Duration::from_secs(1) {
            let heard: Vec<String> = self
                .probe
                .as_ref()
                .map(|p| p.heard())
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, at)| now.saturating_duration_since(*at) < PROBE_FRESH)
                .map(|(n, _)| n)
                .collect();
            if heard != self.flood.0 {
                self.core.handle_flood(heard.clone());
            }
            self.flood = (heard, now);
        }
        if now >= self.core.poll_timeout() {
            self.core.handle_timeout(now);
        }
        self.drain(net);
    }

    /// The daemon stops: the VIPs go and the filter is removed before this
    /// returns (bounded), so that nothing of it outlives the daemon (the
    /// application keeps running; a restarted daemon takes it up again).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.kernel.send(KernelCmd::Shutdown(tx)).is_ok()
            && rx.recv_timeout(SHUTDOWN_WAIT).is_err()
        {
            warn!(module = %self.module.name, "the farm filter was not removed in time");
        }
    }

    /// This module's answer to `state`.
    pub fn status(&self, node: &NodeConfig, now: Instant) -> crate::ctl::ModuleStatus {
        status(self, node, now)
    }

    fn script_done(&mut self, now: Instant, script: FarmScript, result: Result<(), String>) {
        match (&script, &result) {
            (FarmScript::StartBoth, Ok(())) => {
                self.start_failed = false;
                self.app_up.store(true, Ordering::Relaxed);
                if !std::mem::take(&mut self.checker_restart) {
                    for c in &mut self.checkers {
                        c.reset();
                    }
                }
            }
            (FarmScript::StartBoth, Err(e)) => {
                self.log.line(&format!(
                    "{e}: this node stays out of the farm until the application runs (fix it, then `mirrorfarm restart {}`)",
                    self.module.name
                ));
                self.start_failed = true;
            }
            (FarmScript::StopBoth, r) => {
                self.app_up.store(false, Ordering::Relaxed);
                if let Err(e) = r {
                    self.log.line(&e.to_string());
                }
            }
        }
        self.core
            .handle_health(now, !self.left && !self.start_failed);
    }

    fn checked(&mut self, now: Instant, index: usize, result: Result<(), String>) {
        let name = self.checker_names.get(index).cloned().unwrap_or_default();
        match &result {
            Err(e) => self.log.line(&format!("checker {name}: {e}")),
            Ok(()) if self.left => {
                self.left = false;
                self.log
                    .line(&format!("checker {name}: passes again: back in the farm"));
                self.core.handle_health(now, !self.start_failed);
            }
            Ok(()) => {}
        }
        let Some(state) = self.checkers.get_mut(index) else {
            return;
        };
        let Some(verdict) = state.handle_result(now, result.is_ok()) else {
            return;
        };
        let failures = state.policy().failures;
        match verdict {
            Verdict::Restart => {
                self.log.line(&format!(
                    "checker {name}: failed {failures} times: restarting the application"
                ));
                self.checker_restart = true;
                let _ = self.worker.send(FarmScript::StopBoth);
                let _ = self.worker.send(FarmScript::StartBoth);
            }
            Verdict::Swap => {
                if !self.left {
                    self.log.line(&format!(
                        "checker {name}: failed {failures} times: leaving the farm until it passes"
                    ));
                }
                self.left = true;
                // The checkers keep probing: a pass brings the node back.
                self.app_up.store(true, Ordering::Relaxed);
                self.core.handle_health(now, false);
            }
            Verdict::Stop => {
                self.log.line(&format!(
                    "checker {name}: failed {failures} times: stopping the module here"
                ));
                self.save_goal(false);
                self.core.handle_command(now, FarmCommand::Stop);
            }
        }
    }

    /// Carries out the core's actions.
    fn drain(&mut self, net: Option<&Net>) {
        while let Some(a) = self.core.poll_action() {
            match a {
                FarmAction::Beat(b) => {
                    if let Some(n) = net {
                        n.send_farm_beat(&self.module.name, &b);
                    }
                }
                FarmAction::ApplyOwned(set) => {
                    let _ = self.kernel.send(KernelCmd::Apply(set));
                }
                FarmAction::RenewVip { until } => {
                    let _ = self.kernel.send(KernelCmd::Renew { until });
                }
                FarmAction::DropVip => {
                    let _ = self.kernel.send(KernelCmd::Drop);
                }
                FarmAction::Run(script) => {
                    self.log.line(&format!("start: {}", script_name(script)));
                    if script == FarmScript::StopBoth {
                        self.app_up.store(false, Ordering::Relaxed);
                    }
                    let _ = self.worker.send(script);
                }
                FarmAction::Transition(t) => {
                    info!(module = %self.module.name, from = %t.from, to = %t.to, "{}", t.reason);
                    self.log
                        .line(&format!("{} -> {}: {}", t.from, t.to, t.reason));
                    let now = Instant::now();
                    self.since = now;
                    self.last = Some((t, now));
                }
            }
        }
    }

    fn save_goal(&self, running: bool) {
        save_goal(&self.goal_file, running);
    }
}

/// Before anything is changed: each VIP's interface exists here and has an
/// address whose network holds the VIP (a VIP outside it would be answered
/// by no one, or routed elsewhere).
fn preflight_vips(module: &Module) -> Result<(), String> {
    for v in module.farm.iter().flat_map(|f| &f.vips) {
        let spec = VipSpec {
            addr: v.addr,
            prefix: v.prefix,
            interface: v.interface.clone(),
        };
        let nets = vip::networks(&spec).map_err(|e| format!("{}: {e}", module.name))?;
        if !nets.iter().any(|n| vip::within(v.addr, *n)) {
            let have: Vec<String> = nets.iter().map(|(a, p)| format!("{a}/{p}")).collect();
            return Err(format!(
                "{}: VIP {}/{} is not in the network of any address of {} here ({}): give {} \
                 this node's address on the VIP's network, or correct farm.vips in {}",
                module.name,
                v.addr,
                v.prefix,
                v.interface,
                if have.is_empty() {
                    "it has no IPv4 address".to_owned()
                } else {
                    have.join(", ")
                },
                v.interface,
                module.file.display()
            ));
        }
    }
    Ok(())
}

/// The checker core's policy for a farm's checker: its hand-over verdict
/// (`Swap`) stands for `Leave`.
fn policy_of(on_failure: OnFailure) -> policy::OnFailure {
    let then = |t: Then| match t {
        // Validated: Swap is a mirror's action, never a farm's.
        Then::Leave | Then::Swap => policy::Then::Swap,
        Then::Stop => policy::Then::Stop,
    };
    match on_failure {
        OnFailure::Restart {
            times,
            window,
            then: t,
        } => policy::OnFailure::Restart {
            times,
            window,
            then: then(t),
        },
        OnFailure::Leave | OnFailure::Swap => policy::OnFailure::Swap,
        OnFailure::Stop => policy::OnFailure::Stop,
    }
}

fn script_name(s: FarmScript) -> &'static str {
    match s {
        FarmScript::StartBoth => "start_both script",
        FarmScript::StopBoth => "stop_both script",
    }
}

/// The filter of `module` on this node, installed with nothing owned.
fn farm_filter(module: &Module) -> Result<FarmFilter, String> {
    let farm = module
        .farm
        .as_ref()
        .ok_or_else(|| format!("{}: not a farm module", module.name))?;
    let first = farm
        .vips
        .first()
        .ok_or_else(|| format!("{}: a farm module without a VIP", module.name))?;
    let vips: Vec<Ipv4Addr> = farm.vips.iter().map(|v| v.addr).collect();
    let table = table_name(&module.name);
    Ok(FarmFilter {
        vmac: filter::ruleset::vmac(&table, first.addr),
        module: table,
        interface: first.interface.clone(),
        vips,
        ports: farm
            .ports
            .iter()
            .map(|(p, port)| {
                let p = match p {
                    Proto::Tcp => filter::Proto::Tcp,
                    Proto::Udp => filter::Proto::Udp,
                };
                (p, *port)
            })
            .collect(),
        rule: match farm.rule {
            Rule::Address => filter::Rule::ByAddress,
            Rule::AddressAndPort => filter::Rule::ByAddressAndPort,
        },
        // The same on every node (the hash must agree): from the name.
        seed: (xxhash_rust::xxh3::xxh3_64(module.name.as_bytes()) & 0xffff_ffff) as u32,
        owned: BucketSet::empty(),
    })
}

/// For every running member R (this node, or one in its view) and every
/// other running member S: S's probes do not reach R.
fn flood_problems(members: &[crate::cluster::farm::MemberView]) -> Vec<String> {
    let running: Vec<&crate::cluster::farm::MemberView> =
        members.iter().filter(|m| m.me || m.in_view).collect();
    let mut out = Vec::new();
    for r in &running {
        let Some(heard) = &r.flood else { continue };
        for s in running.iter().filter(|s| s.name != r.name) {
            if !heard.contains(&s.name) {
                out.push(format!(
                    "frames to the virtual MAC sent by {} do not reach {}",
                    s.name, r.name
                ));
            }
        }
    }
    out
}

/// The filter's name for a module: its characters outside `[A-Za-z0-9_]`
/// become `_` (`apache-farm` → `apache_farm`), cut to the filter's limit.
pub fn table_name(module: &str) -> String {
    module
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(filter::ruleset::MAX_MODULE_LEN)
        .collect()
}

/// The kernel thread: the owned set, the VIPs (renewed only when told, so
/// that a dead daemon's VIPs lapse within their lifetime) with their
/// gratuitous ARP (at 0.5, 1, 2 s after they are added, then every 30 s),
/// and the ARP responder. A set the kernel refused is tried again every
/// interval; the core counts it as not applied until then.
#[allow(clippy::too_many_arguments)]
fn spawn_kernel(
    module: String,
    me: String,
    installed: Installed,
    responder: ArpResponder,
    vips: Vec<VipSpec>,
    vmac: [u8; 6],
    interval: Duration,
    log: ModuleLog,
    held: Arc<AtomicBool>,
    events: Sender<(String, ModuleEvent)>,
) -> Sender<KernelCmd> {
    let (tx, rx) = unbounded::<KernelCmd>();
    let _ = thread::Builder::new()
        .name(format!("kernel-{module}"))
        .spawn(move || {
            let mut pending: Option<BucketSet> = None;
            let mut held_since: Option<Instant> = None;
            let mut announced = 0u32;
            let mut done: Option<Sender<()>> = None;
            let table = table_name(&module);
            let mut probed: Option<Instant> = None;
            loop {
                if probed.is_none_or(|p| p.elapsed() >= PROBE_EVERY) {
                    probed = Some(Instant::now());
                    if let Some(v) = vips.first() {
                        if let Err(e) = filter::probe::send(&v.interface, vmac, &table, &me) {
                            log.line(&format!("flooding probe: {e}"));
                        }
                    }
                }
                let cmd = match rx.recv_timeout(interval) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                match cmd {
                    Some(KernelCmd::Apply(set)) => pending = Some(set),
                    // Never past `until` + slack: a late renewal is skipped
                    // (the core renews again or lets the VIP lapse).
                    Some(KernelCmd::Renew { until })
                        if Instant::now() + VIP_LIFE <= until + VIP_SLACK =>
                    {
                        for v in &vips {
                            if let Err(e) = vip::renew(v, VIP_LIFE) {
                                log.line(&format!("VIP {v}: renewal failed: {e}"));
                            }
                        }
                        if held_since.is_none() {
                            held_since = Some(Instant::now());
                            announced = 0;
                            log.line("VIPs held: serving this node's buckets");
                            held.store(true, Ordering::Relaxed);
                        }
                    }
                    Some(KernelCmd::Renew { .. }) => {}
                    Some(KernelCmd::Shutdown(reply)) => {
                        done = Some(reply);
                        break;
                    }
                    Some(KernelCmd::Drop) => {
                        if held_since.take().is_some() {
                            log.line("VIPs dropped");
                        }
                        held.store(false, Ordering::Relaxed);
                        for v in &vips {
                            if let Err(e) = vip::remove(v) {
                                log.line(&format!("VIP {v}: {e}"));
                            }
                        }
                    }
                    None => {}
                }
                if let Some(set) = pending {
                    match installed.set_owned(&set) {
                        Ok(()) => {
                            pending = None;
                            let ev = ModuleEvent::Farm(FarmEvent::Applied(set));
                            if events.send((module.clone(), ev)).is_err() {
                                break;
                            }
                        }
                        Err(e) => log.line(&format!("the kernel refused the bucket set: {e}")),
                    }
                }
                if let Some(since) = held_since {
                    if since.elapsed() >= announce_due(announced) {
                        announced += 1;
                        for v in &vips {
                            if let Err(e) =
                                filter::arp::announce_virtual(&v.interface, v.addr, vmac)
                            {
                                log.line(&format!("VIP {v}: gratuitous ARP: {e}"));
                            }
                        }
                    }
                }
            }
            // The runner is gone (daemon stop): nothing stays behind.
            held.store(false, Ordering::Relaxed);
            for v in &vips {
                let _ = vip::remove(v);
            }
            responder.stop();
            match installed.remove() {
                Ok(()) => log.line("filter and VIPs removed"),
                Err(e) => log.line(&format!("removing the filter: {e}")),
            }
            if let Some(reply) = done {
                let _ = reply.send(());
            }
        });
    tx
}

/// The script worker: runs start_both and stop_both one at a time.
fn spawn_worker(
    module: &Module,
    node: &NodeConfig,
    run_dir: PathBuf,
    log: ModuleLog,
    events: Sender<(String, ModuleEvent)>,
) -> Sender<FarmScript> {
    let (tx, rx) = unbounded::<FarmScript>();
    let vips: Vec<String> = module
        .farm
        .iter()
        .flat_map(|f| f.vips.iter().map(|v| v.addr.to_string()))
        .collect();
    let env = vec![
        ("MIRRORFARM_MODULE".to_string(), module.name.clone()),
        ("MIRRORFARM_NODE".to_string(), node.name.clone()),
        (
            "MIRRORFARM_VIP".to_string(),
            vips.first().cloned().unwrap_or_default(),
        ),
        ("MIRRORFARM_VIPS".to_string(), vips.join(" ")),
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
    let module = module.clone();
    let _ = thread::Builder::new()
        .name(format!("worker-{}", module.name))
        .spawn(move || {
            for script in rx {
                let (path, timeout, label) = match script {
                    FarmScript::StartBoth => (
                        &module.scripts.start_both,
                        module.scripts.timeout,
                        "start_both",
                    ),
                    FarmScript::StopBoth => (
                        &module.scripts.stop_both,
                        module.scripts.stop_timeout,
                        "stop_both",
                    ),
                };
                let result = match path {
                    None => Ok(()),
                    Some(path) => run_module_script(&module, path, label, timeout, &env, &log),
                };
                let ev = ModuleEvent::Farm(FarmEvent::ScriptDone { script, result });
                if events.send((module.name.clone(), ev)).is_err() {
                    return;
                }
            }
        });
    tx
}

fn status(r: &FarmRunner, node: &NodeConfig, now: Instant) -> crate::ctl::ModuleStatus {
    use crate::ctl::{FarmMemberStatus, FarmStatus, ModuleStatus, TransitionStatus};
    let st = r.core.status(now);
    let members = r.core.member_views(now);
    let held = r.vip_held.load(Ordering::Relaxed);
    let flood_tested =
        now.saturating_duration_since(r.started) >= PROBE_SETTLE && r.probe.is_some();
    let vips: Vec<String> = r.vips.iter().map(ToString::to_string).collect();
    let others: Vec<String> = members
        .iter()
        .filter(|m| !m.me)
        .map(|m| m.name.clone())
        .collect();
    ModuleStatus {
        module: r.module.name.clone(),
        node: node.name.clone(),
        peer: others.join(", "),
        state: st.state.to_string(),
        ready: st.state != FarmState::Wait,
        reason: st.reason.clone(),
        since_unix: unix(r.since, now),
        step: None,
        in_sync: None,
        resync: None,
        peer_state: None,
        peer_ready: None,
        peer_reachable: members.iter().any(|m| !m.me && m.in_view),
        networks: Vec::new(),
        witness: None,
        vip: held.then(|| vips.join(", ")),
        dirs: Vec::new(),
        last_transition: r.last.as_ref().map(|(t, at)| TransitionStatus {
            from: t.from.to_string(),
            to: t.to.to_string(),
            reason: t.reason.clone(),
            at_unix: unix(*at, now),
        }),
        last_failover: None,
        config_mismatch: false,
        farm: Some(FarmStatus {
            vips,
            vip_held: held,
            rule: r
                .module
                .farm
                .as_ref()
                .map(|f| format!("{:?}", f.rule))
                .unwrap_or_default(),
            share: st.applied.map(|a| a.len()),
            buckets: st.applied.map(|a| a.to_string()),
            target: st.target.len(),
            members: members
                .iter()
                .map(|m| FarmMemberStatus {
                    name: m.name.clone(),
                    weight: m.weight,
                    state: m.state.map(|s| s.to_string()),
                    heard_secs_ago: m.heard.map(|d| d.as_secs_f64()),
                    share: m.applied.map(|a| a.len()),
                    in_view: m.in_view,
                    flood_from: m.flood.clone(),
                })
                .collect(),
            flood_problems: if flood_tested {
                flood_problems(&members)
            } else {
                Vec::new()
            },
            flood_tested,
        }),
    }
}
