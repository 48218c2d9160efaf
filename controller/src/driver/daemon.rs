//! `mirrorfarm daemon`: one per node. Loads this node's modules, starts the
//! heartbeat and witness transport, a [`ModuleRunner`] per mirror module and
//! a [`FarmRunner`] per farm module, the
//! control socket and the metrics endpoint, and runs the loop that feeds
//! every event to the module cores.
//!
//! The loop is the only place the cores run. It never blocks on I/O: steps,
//! orders to mirrorfs, the VIP and the module logs all have threads of their
//! own, and the heartbeats have their transport's real-time thread. The loop
//! itself is raised to real-time priority, and the daemon's memory is locked,
//! so that a loaded or swapping machine does not delay a heartbeat into a
//! false failover.
//!
//! Stopping the daemon (SIGTERM) leaves the mirrorfs processes running and
//! the VIP until its lifetime ends: a restarted daemon adopts them, so that
//! an upgrade or a crash of the daemon does not take the service down. A
//! farm module's VIPs and filter go with the daemon (the other members take
//! its share over); its application keeps running.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, select, unbounded, Receiver, Sender};
use tracing::{info, warn};

use super::farm::FarmRunner;
use super::metrics;
use super::module::{ModuleEvent, ModuleRunner};
use super::net::{FarmPeer, Net, NetEvent, NetFarm, NetModule};
use crate::cluster::module::{Command, CoreStatus};
use crate::cluster::state::ModuleState;
use crate::config::{self, ModuleKind, NodeConfig};
use crate::ctl::{self, ModuleStatus, Request, State};
use mirrorfs::ctl::Role;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A module file is broken: nothing starts until it is fixed (a node
    /// that ran with part of its modules would surprise the operator).
    #[error(
        "{0}\n(fix the module file, check it with `mirrorfarm check`, then start the daemon again)"
    )]
    Config(String),
    /// This node's identity could not be loaded.
    #[error("{0}")]
    Identity(String),
    /// The heartbeat transport could not start.
    #[error("{0}")]
    Net(String),
    /// The control socket could not be created.
    #[error("control socket {path}: {source} (is another daemon running? remove the file if not)")]
    Socket {
        /// The socket.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A request from the control socket, with where to answer.
enum Call {
    State(Option<String>, Sender<Result<State, String>>),
    Order(Request, Sender<Result<String, String>>),
}

/// Runs the daemon until `shutdown` fires.
pub fn run(node: NodeConfig, shutdown: Receiver<()>) -> Result<(), DaemonError> {
    lock_memory();
    let (modules, errors) = config::load_modules(&node);
    if !errors.is_empty() {
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        return Err(DaemonError::Config(text.join("\n")));
    }
    if modules.is_empty() {
        warn!(dir = %node.modules.display(), "no modules: the daemon runs and waits (add a module file and restart it)");
    }
    let identity = mirrorfs::net::tls::load_identity(&node.key, &node.cert)
        .map_err(|e| DaemonError::Identity(e.to_string()))?;
    let incarnation = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1);

    let (mod_tx, mod_rx) = unbounded::<(String, ModuleEvent)>();
    let mut runners = BTreeMap::new();
    let mut farms: BTreeMap<String, FarmRunner> = BTreeMap::new();
    let mut net_modules = Vec::new();
    let (farm_modules, modules): (Vec<_>, Vec<_>) = modules
        .into_iter()
        .partition(|m| m.kind == ModuleKind::Farm);
    let mut net_farms = Vec::new();
    for m in farm_modules {
        let load = |p: &Path| {
            mirrorfs::net::tls::load_peer(p).map_err(|e| DaemonError::Identity(e.to_string()))
        };
        let me = m
            .nodes
            .iter()
            .find(|n| n.name == node.name)
            .cloned()
            .ok_or_else(|| {
                DaemonError::Config(format!("{}: {} is not listed", m.name, node.name))
            })?;
        let mut peers = Vec::new();
        for n in m.nodes.iter().filter(|n| n.name != node.name) {
            peers.push(FarmPeer {
                name: n.name.clone(),
                cert: load(&n.cert)?,
                addrs: n.addrs.clone(),
            });
        }
        net_farms.push(NetFarm {
            module: m.name.clone(),
            me: node.name.clone(),
            peers,
            local: me.addrs.clone(),
            port: m.heartbeat_port,
            interval: m.timing.heartbeat_interval,
            timeout: m.timing.heartbeat_timeout,
        });
        let name = m.name.clone();
        let runner = FarmRunner::start(m, &node, incarnation, mod_tx.clone())
            .map_err(DaemonError::Config)?;
        farms.insert(name, runner);
    }
    for m in modules {
        let peer = m.peer_of(&node.name).cloned().ok_or_else(|| {
            DaemonError::Config(format!("{}: {} is not listed", m.name, node.name))
        })?;
        let me = m
            .nodes
            .iter()
            .find(|n| n.name == node.name)
            .cloned()
            .ok_or_else(|| {
                DaemonError::Config(format!("{}: {} is not listed", m.name, node.name))
            })?;
        let load = |p: &Path| {
            mirrorfs::net::tls::load_peer(p).map_err(|e| DaemonError::Identity(e.to_string()))
        };
        net_modules.push(NetModule {
            module: m.name.clone(),
            me: node.name.clone(),
            peer: load(&peer.cert)?,
            local: me.addrs.clone(),
            remote: peer.addrs.clone(),
            port: m.heartbeat_port,
            witness: match &m.witness {
                Some(w) => Some((w.addr, load(&w.cert)?)),
                None => None,
            },
            interval: m.timing.heartbeat_interval,
            timeout: m.timing.heartbeat_timeout,
        });
        let name = m.name.clone();
        let runner = ModuleRunner::start(m, &node, incarnation, mod_tx.clone())
            .map_err(DaemonError::Config)?;
        runners.insert(name, runner);
    }
    let (net_tx, net_rx) = unbounded::<NetEvent>();
    let net = Net::start(identity, net_modules, net_farms, net_tx)
        .map_err(|e| DaemonError::Net(e.to_string()))?;

    let (call_tx, call_rx) = unbounded::<Call>();
    let stop = Arc::new(AtomicBool::new(false));
    let logs: BTreeMap<String, std::path::PathBuf> = runners
        .iter()
        .map(|(k, r)| (k.clone(), r.log.path().clone()))
        .chain(farms.iter().map(|(k, r)| (k.clone(), r.log.path().clone())))
        .collect();
    let backend = Arc::new(Backend {
        calls: call_tx,
        logs,
    });
    let server = ctl::server::serve(&node.socket, backend, stop.clone()).map_err(|source| {
        DaemonError::Socket {
            path: node.socket.display().to_string(),
            source,
        }
    })?;
    let snapshot = Arc::new(Mutex::new(Vec::<ModuleStatus>::new()));
    if let Some(addr) = node.metrics {
        let snap = snapshot.clone();
        let render: metrics::Render =
            Arc::new(move || render_metrics(&snap.lock().unwrap_or_else(|e| e.into_inner())));
        match metrics::serve(addr, render, stop.clone()) {
            Ok((a, _)) => info!(%a, "metrics at http://{a}/metrics"),
            Err(e) => warn!(%addr, "no metrics endpoint: {e}"),
        }
    }
    info!(node = %node.name, modules = runners.len() + farms.len(), socket = %node.socket.display(), "daemon running");

    raise_priority("the daemon's loop");
    let mut last_snapshot = Instant::now() - Duration::from_secs(1);
    loop {
        let now = Instant::now();
        let next = runners
            .values()
            .map(|r| r.core.poll_timeout())
            .chain(farms.values().map(|f| f.core.poll_timeout()))
            .min()
            .unwrap_or(now + Duration::from_secs(1));
        // At least 1 ms: this thread runs at real-time priority, and a
        // deadline that stays in the past must not make it spin.
        let wait = next
            .saturating_duration_since(now)
            .clamp(Duration::from_millis(1), Duration::from_millis(500));
        select! {
            recv(shutdown) -> _ => break,
            recv(net_rx) -> ev => if let Ok(ev) = ev { net_event(&mut runners, &mut farms, ev, &net) },
            recv(mod_rx) -> ev => if let Ok((m, ev)) = ev {
                if let Some(r) = runners.get_mut(&m) {
                    r.handle(Instant::now(), ev, Some(&net));
                } else if let Some(f) = farms.get_mut(&m) {
                    f.handle(Instant::now(), ev, Some(&net));
                }
            },
            recv(call_rx) -> call => if let Ok(call) = call {
                answer(&mut runners, &mut farms, &node, call, &net)
            },
            default(wait) => {},
        }
        let now = Instant::now();
        for r in runners.values_mut() {
            r.tick(now, Some(&net));
        }
        for f in farms.values_mut() {
            f.tick(now, Some(&net));
        }
        if now.duration_since(last_snapshot) >= Duration::from_millis(500) {
            last_snapshot = now;
            let all = all_statuses(&mut runners, &farms, &node, now);
            *snapshot.lock().unwrap_or_else(|e| e.into_inner()) = all;
        }
    }
    info!("daemon stopping: mirrorfs processes and the VIP stay (a restarted daemon adopts them)");
    stop.store(true, Ordering::Relaxed);
    for r in runners.values() {
        r.shutdown();
    }
    for f in farms.values() {
        f.shutdown();
    }
    net.stop();
    let _ = server.join();
    Ok(())
}

/// The control socket's backend: forwards to the loop and waits.
struct Backend {
    calls: Sender<Call>,
    logs: BTreeMap<String, std::path::PathBuf>,
}

/// How long a control request waits for the loop.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl ctl::Daemon for Backend {
    fn state(&self, module: Option<&str>) -> Result<State, String> {
        let (tx, rx) = bounded(1);
        self.calls
            .send(Call::State(module.map(str::to_owned), tx))
            .map_err(|_| "the daemon is stopping".to_string())?;
        rx.recv_timeout(CALL_TIMEOUT)
            .map_err(|_| "the daemon did not answer in time".to_string())?
    }

    fn order(&self, req: &Request) -> Result<String, String> {
        let (tx, rx) = bounded(1);
        self.calls
            .send(Call::Order(req.clone(), tx))
            .map_err(|_| "the daemon is stopping".to_string())?;
        rx.recv_timeout(CALL_TIMEOUT)
            .map_err(|_| "the daemon did not answer in time".to_string())?
    }

    fn log(&self, module: &str, lines: u32) -> Result<Vec<String>, String> {
        let path = self.log_path(module)?;
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines as usize);
        Ok(all[from..].iter().map(|s| s.to_string()).collect())
    }

    fn follow(
        &self,
        module: &str,
        from_line: u64,
        timeout: Duration,
    ) -> Result<(Vec<String>, u64), String> {
        let path = self.log_path(module)?;
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let count = text.lines().count() as u64;
            if from_line > count {
                return Ok((Vec::new(), count));
            }
            if from_line < count || Instant::now() >= deadline {
                let lines: Vec<String> = text
                    .lines()
                    .skip(from_line as usize)
                    .map(str::to_owned)
                    .collect();
                return Ok((lines, count));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Backend {
    fn log_path(&self, module: &str) -> Result<&std::path::PathBuf, String> {
        self.logs.get(module).ok_or_else(|| {
            format!(
                "no module {module:?} on this node (modules: {})",
                self.logs.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// Every module's status, sorted by name.
fn all_statuses(
    runners: &mut BTreeMap<String, ModuleRunner>,
    farms: &BTreeMap<String, FarmRunner>,
    node: &NodeConfig,
    now: Instant,
) -> Vec<ModuleStatus> {
    let mut all: Vec<ModuleStatus> = runners
        .values_mut()
        .map(|r| module_status(r, node, now))
        .chain(farms.values().map(|f| f.status(node, now)))
        .collect();
    all.sort_by(|a, b| a.module.cmp(&b.module));
    all
}

fn net_event(
    runners: &mut BTreeMap<String, ModuleRunner>,
    farms: &mut BTreeMap<String, FarmRunner>,
    ev: NetEvent,
    net: &Net,
) {
    let now = Instant::now();
    match ev {
        NetEvent::Beat {
            module,
            network,
            beat,
        } => {
            if let Some(r) = runners.get_mut(&module) {
                r.core.handle_beat(now, network, beat);
                r.tick(now, Some(net));
            }
        }
        NetEvent::Answer { module, answer } => {
            if let Some(r) = runners.get_mut(&module) {
                r.core.handle_answer(now, answer);
                r.tick(now, Some(net));
            }
        }
        NetEvent::Problem { module, text } => {
            if let Some(r) = runners.get(&module) {
                r.log.line(&text);
            } else if let Some(f) = farms.get(&module) {
                f.log.line(&text);
            }
        }
        NetEvent::FarmBeat { module, beat, .. } => {
            if let Some(f) = farms.get_mut(&module) {
                f.beat(now, beat, Some(net));
            }
        }
    }
}

fn answer(
    runners: &mut BTreeMap<String, ModuleRunner>,
    farms: &mut BTreeMap<String, FarmRunner>,
    node: &NodeConfig,
    call: Call,
    net: &Net,
) {
    let now = Instant::now();
    let mut all_names: Vec<String> = runners.keys().chain(farms.keys()).cloned().collect();
    all_names.sort();
    let names = all_names.join(", ");
    match call {
        Call::State(module, reply) => {
            let r = match module {
                Some(m) => match (runners.get_mut(&m), farms.get(&m)) {
                    (Some(r), _) => Ok(vec![module_status(r, node, now)]),
                    (None, Some(f)) => Ok(vec![f.status(node, now)]),
                    (None, None) => Err(format!("no module {m:?} on this node (modules: {names})")),
                },
                None => Ok(all_statuses(runners, farms, node, now)),
            };
            let _ = reply.send(r.map(|modules| State {
                version: ctl::VERSION,
                node: node.name.clone(),
                modules,
            }));
        }
        Call::Order(req, reply) => {
            let (m, cmd) = match &req {
                Request::Start { module } => (module, Command::Start),
                Request::Stop { module } => (module, Command::Stop),
                Request::Restart { module } => (module, Command::Restart),
                Request::Swap { module } => (module, Command::Swap),
                Request::Prim { module } => (module, Command::Prim),
                Request::Second { module } => (module, Command::Second),
                _ => {
                    let _ = reply.send(Err("not an order".into()));
                    return;
                }
            };
            let done = match (runners.get_mut(m), farms.get_mut(m)) {
                (Some(r), _) => Some(r.command(now, cmd, Some(net))),
                (None, Some(f)) => Some(f.command(now, cmd, Some(net))),
                (None, None) => None,
            };
            let r = match done {
                Some(done) => done.map(|()| {
                    format!(
                        "{m}: {} ordered (follow with `mirrorfarm state {m}`)",
                        format!("{cmd:?}").to_lowercase()
                    )
                }),
                None => Err(format!("no module {m:?} on this node (modules: {names})")),
            };
            let _ = reply.send(r);
        }
    }
}

/// Seconds since the Unix epoch of an instant of this process's clock.
pub(super) fn unix(t: Instant, now: Instant) -> f64 {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    if t <= now {
        wall - (now - t).as_secs_f64()
    } else {
        wall + (t - now).as_secs_f64()
    }
}

fn module_status(r: &mut ModuleRunner, node: &NodeConfig, now: Instant) -> ModuleStatus {
    let st: CoreStatus = r.core.status(now);
    let m = &r.module;
    let peer = m.peer_of(&node.name);
    ModuleStatus {
        module: m.name.clone(),
        node: node.name.clone(),
        peer: peer.map(|p| p.name.clone()).unwrap_or_default(),
        state: st.state.to_string(),
        ready: st.ready,
        reason: st.reason.clone(),
        since_unix: unix(st.since, now),
        step: st.step.map(|s| s.to_string()),
        in_sync: matches!(
            st.state,
            ModuleState::Prim | ModuleState::Alone | ModuleState::Second
        )
        .then_some(st.in_sync),
        resync: st.resync.map(|x| ctl::Resync {
            files_done: x.files_done,
            files_left: x.files_left,
            bytes_sent: x.bytes_sent,
            eta_secs: x.eta_secs,
        }),
        peer_state: st.peer.map(|(s, _)| s.to_string()),
        peer_ready: st.peer.map(|(_, r)| r),
        peer_reachable: st.peer_up,
        networks: peer
            .map(|p| {
                p.addrs
                    .iter()
                    .zip(st.peer_silence.iter())
                    .zip(st.rtt.iter())
                    .map(|((a, s), rtt)| ctl::NetworkStatus {
                        addr: a.to_string(),
                        heard_secs_ago: s.map(|d| d.as_secs_f64()),
                        rtt_ms: rtt.map(|d| d.as_secs_f64() * 1000.0),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        witness: m.witness.as_ref().map(|w| ctl::WitnessStatus {
            addr: w.addr.to_string(),
            reachable: st.witness_up,
            lease_secs_left: st
                .lease_until
                .map(|l| l.saturating_duration_since(now).as_secs_f64()),
            refused: st.lease_refused.clone(),
        }),
        vip: m
            .vip
            .as_ref()
            .map(|v| format!("{}/{} on {}", v.addr, v.prefix, v.interface)),
        dirs: r
            .mirror
            .dirs
            .iter()
            .zip(r.statuses.iter())
            .map(|(d, s)| ctl::DirStatus {
                mount: d.dir.mount.display().to_string(),
                backing: d.dir.backing.display().to_string(),
                role: s.as_ref().map(|s| s.role.to_string()),
                generation: s.as_ref().and_then(|s| s.generation.clone()),
                consistent: s.as_ref().and_then(|s| s.inconsistent.map(|i| !i)),
                dirty_bytes: s
                    .as_ref()
                    .filter(|s| s.role != Role::Second)
                    .map(|s| s.dirty_bytes),
                ops_in_flight: s.as_ref().and_then(|s| s.ops_in_flight),
            })
            .collect(),
        last_transition: r.core.history().last().map(|t| ctl::TransitionStatus {
            from: t.from.to_string(),
            to: t.to.to_string(),
            reason: t.reason.clone(),
            at_unix: t.at.map(|a| unix(a, now)).unwrap_or(0.0),
        }),
        last_failover: st.last_failover.as_ref().map(|f| ctl::FailoverStatus {
            to: f.to.clone(),
            cause: f.cause.clone(),
            at_unix: f.at.map(|a| unix(a, now)).unwrap_or(0.0),
        }),
        config_mismatch: st.digest_mismatch,
        farm: None,
    }
}

/// The Prometheus text of the modules' statuses.
fn render_metrics(modules: &[ModuleStatus]) -> String {
    let mut out = String::new();
    out.push_str("# HELP mirrorfarm_module_state 1 for the module's current state on this node.\n# TYPE mirrorfarm_module_state gauge\n");
    for m in modules {
        for s in ["STOP", "WAIT", "ALONE", "PRIM", "SECOND", "UP"] {
            out.push_str(&format!(
                "mirrorfarm_module_state{{module=\"{}\",node=\"{}\",state=\"{s}\"}} {}\n",
                m.module,
                m.node,
                u8::from(m.state == s)
            ));
        }
    }
    out.push_str("# HELP mirrorfarm_farm_buckets Buckets (of 256) of a farm module this node's kernel accepts.\n# TYPE mirrorfarm_farm_buckets gauge\n");
    for m in modules {
        if let Some(n) = m.farm.as_ref().and_then(|f| f.share) {
            out.push_str(&format!(
                "mirrorfarm_farm_buckets{{module=\"{}\",node=\"{}\"}} {n}\n",
                m.module, m.node
            ));
        }
    }
    out.push_str("# HELP mirrorfarm_module_ready 1 when the module's state is settled.\n# TYPE mirrorfarm_module_ready gauge\n");
    for m in modules {
        out.push_str(&format!(
            "mirrorfarm_module_ready{{module=\"{}\"}} {}\n",
            m.module,
            u8::from(m.ready)
        ));
    }
    out.push_str("# HELP mirrorfarm_peer_heard_seconds Seconds since the peer's last heartbeat, per network.\n# TYPE mirrorfarm_peer_heard_seconds gauge\n");
    for m in modules {
        for n in &m.networks {
            if let Some(s) = n.heard_secs_ago {
                out.push_str(&format!(
                    "mirrorfarm_peer_heard_seconds{{module=\"{}\",network=\"{}\"}} {s:.3}\n",
                    m.module, n.addr
                ));
            }
        }
    }
    out.push_str("# HELP mirrorfarm_heartbeat_rtt_seconds The last heartbeat round trip to the peer, per network.\n# TYPE mirrorfarm_heartbeat_rtt_seconds gauge\n");
    for m in modules {
        for n in &m.networks {
            if let Some(r) = n.rtt_ms {
                out.push_str(&format!(
                    "mirrorfarm_heartbeat_rtt_seconds{{module=\"{}\",network=\"{}\"}} {:.6}\n",
                    m.module,
                    n.addr,
                    r / 1000.0
                ));
            }
        }
    }
    out.push_str("# HELP mirrorfarm_replication_ops_in_flight Operations sent to the secondary and not yet acknowledged (replication lag), per directory.\n# TYPE mirrorfarm_replication_ops_in_flight gauge\n");
    out.push_str("# HELP mirrorfarm_replication_dirty_bytes Bytes written on the primary that the secondary lacks (what a resync sends), per directory.\n# TYPE mirrorfarm_replication_dirty_bytes gauge\n");
    for m in modules {
        for d in &m.dirs {
            if let Some(n) = d.ops_in_flight {
                out.push_str(&format!(
                    "mirrorfarm_replication_ops_in_flight{{module=\"{}\",dir=\"{}\"}} {n}\n",
                    m.module, d.mount
                ));
            }
            if let Some(b) = d.dirty_bytes {
                out.push_str(&format!(
                    "mirrorfarm_replication_dirty_bytes{{module=\"{}\",dir=\"{}\"}} {b}\n",
                    m.module, d.mount
                ));
            }
        }
    }
    out.push_str("# HELP mirrorfarm_in_sync 1 when the primary's replica holds every acknowledged write.\n# TYPE mirrorfarm_in_sync gauge\n");
    for m in modules {
        if let Some(s) = m.in_sync {
            out.push_str(&format!(
                "mirrorfarm_in_sync{{module=\"{}\"}} {}\n",
                m.module,
                u8::from(s)
            ));
        }
    }
    out.push_str("# HELP mirrorfarm_resync_files_left Files the running resync still has to visit.\n# TYPE mirrorfarm_resync_files_left gauge\n");
    for m in modules {
        let left = m.resync.as_ref().map_or(0, |r| r.files_left);
        out.push_str(&format!(
            "mirrorfarm_resync_files_left{{module=\"{}\"}} {left}\n",
            m.module
        ));
    }
    out
}

/// Locks the daemon's memory so that paging never delays a heartbeat (as
/// pages are touched: locking every thread's whole stack and malloc arena
/// up front would pin hundreds of MB for nothing).
fn lock_memory() {
    // SAFETY: mlockall has no memory effects on Rust objects.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) } != 0 {
        warn!(
            "cannot lock the daemon's memory ({}): heartbeats may be delayed under memory pressure",
            std::io::Error::last_os_error()
        );
    }
}

/// Raises the calling thread to real-time priority (SCHED_FIFO 10).
pub fn raise_priority(what: &str) {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: sched_setscheduler on the calling thread with a valid param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        warn!(
            "cannot give {what} real-time priority ({})",
            std::io::Error::last_os_error()
        );
    }
}
