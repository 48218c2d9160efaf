//! The system under test: a `mirrorfarm lab` (two nodes, a witness, a client
//! and a switch, each a network namespace) driven only through the
//! `mirrorfarm` command line, as an operator would: `lab up/start/down`,
//! `state --json`, `swap`. The lab is a guard: `lab down` removes it on drop,
//! also while unwinding from a panic or a stop signal.
//!
//! Faults are made here too: SIGKILL of every process of a node's namespace
//! (`ip netns pids`), or of its `apache2` processes only.

use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::common::sys::{netns_pids, output_within};
use crate::common::{name, sys};
use crate::probe;

/// The module the lab runs.
const MODULE: &str = "apache";
/// How long one `mirrorfarm state` may take before it counts as unanswered.
const STATE_LIMIT: Duration = Duration::from_secs(5);

/// One node's module state, from `mirrorfarm --socket S state apache --json`.
#[derive(Clone, Debug)]
pub(crate) struct NodeState {
    pub(crate) state: String,
    pub(crate) ready: bool,
    pub(crate) in_sync: Option<bool>,
    /// Seconds left of the witness lease this node holds.
    pub(crate) lease: Option<f64>,
    pub(crate) mismatch: bool,
    pub(crate) reason: String,
}

impl NodeState {
    fn summary(&self) -> String {
        format!(
            "{}{}{}{} ({})",
            self.state,
            if self.ready { "" } else { " in transition" },
            match self.in_sync {
                Some(true) => ", in sync",
                Some(false) => ", NOT in sync",
                None => "",
            },
            self.lease
                .map(|l| format!(", lease {l:.1} s"))
                .unwrap_or_default(),
            self.reason
        )
    }
}

/// A node of the lab.
struct Node {
    /// `node1`, `node2`: the name `lab start` takes.
    name: &'static str,
    netns: String,
    socket: PathBuf,
}

/// A lab built by `mirrorfarm lab up`, removed by `mirrorfarm lab down` on drop.
pub(crate) struct MirrorLab {
    mf: PathBuf,
    name: String,
    dir: PathBuf,
    log: PathBuf,
    nodes: [Node; 2],
    pub(crate) client_ns: String,
    pub(crate) vip: SocketAddr,
}

impl MirrorLab {
    /// `mirrorfarm lab up --name NAME` (it returns once node1 is PRIM and
    /// node2 SECOND); the commands' output goes to `log`.
    pub(crate) fn up(mf: &Path, lab_name: &str, log: &Path) -> Self {
        let dir = PathBuf::from("/var/lib/mirrorfarm-lab").join(lab_name);
        if dir.exists() {
            panic!(
                "{} exists: a lab named {lab_name} is there already (a previous run with this pid?): \
                 `mirrorfarm lab down --name {lab_name}`",
                dir.display()
            );
        }
        // The guard exists before `lab up`, so that a half-built lab is removed too.
        let mut lab = Self {
            mf: mf.to_path_buf(),
            name: lab_name.to_string(),
            dir,
            log: log.to_path_buf(),
            nodes: ["node1", "node2"].map(|n| Node {
                name: n,
                netns: String::new(),
                socket: PathBuf::new(),
            }),
            client_ns: String::new(),
            vip: SocketAddr::from(([0, 0, 0, 0], 80)),
        };
        // The mirror part only: the farm's three nodes would share the CPUs.
        eprintln!("[lab] mirrorfarm lab up --no-farm --name {lab_name}");
        if let Err(e) = lab.cli(
            &["lab", "up", "--no-farm", "--name", lab_name],
            Duration::from_secs(300),
        ) {
            panic!("mirrorfarm lab up failed: {e}");
        }
        let out = lab
            .cli(
                &["lab", "status", "--name", lab_name, "--json"],
                Duration::from_secs(30),
            )
            .unwrap_or_else(|e| panic!("mirrorfarm lab status: {e}"));
        let j: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("mirrorfarm lab status --json: not JSON: {e}"));
        let text = |v: &Value, what: &str| {
            v.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| panic!("lab status --json has no {what}: {j}"))
        };
        for n in lab.nodes.iter_mut() {
            let v = &j["nodes"][n.name];
            n.netns = text(&v["netns"], "netns");
            n.socket = PathBuf::from(text(&v["socket"], "socket"));
        }
        lab.client_ns = text(&j["client"]["netns"], "client.netns");
        let vip: Ipv4Addr = text(&j["vip"], "vip")
            .parse()
            .unwrap_or_else(|e| panic!("lab status: vip: {e}"));
        lab.vip = SocketAddr::from((vip, 80));
        lab
    }

    /// `node1` or `node2`.
    pub(crate) fn node_name(&self, i: usize) -> &'static str {
        self.nodes[i].name
    }

    /// The module file both daemons read.
    pub(crate) fn module_file(&self) -> PathBuf {
        self.dir.join("etc/modules").join(format!("{MODULE}.ron"))
    }

    /// Node `i`'s module log (transitions, steps, checker failures, with UTC
    /// times to the millisecond).
    pub(crate) fn module_log(&self, i: usize) -> PathBuf {
        self.dir
            .join(self.nodes[i].name)
            .join("state/modules")
            .join(MODULE)
            .join("module.log")
    }

    /// Node `i`'s module state, or why it could not be read.
    pub(crate) fn state(&self, i: usize) -> Result<NodeState, String> {
        let sock = self.nodes[i].socket.to_string_lossy().into_owned();
        let out = self.cli(&["--socket", &sock, "state", MODULE, "--json"], STATE_LIMIT)?;
        let j: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("state --json: not JSON: {e}"))?;
        let m = &j["modules"][0];
        Ok(NodeState {
            state: m["state"].as_str().unwrap_or("?").to_string(),
            ready: m["ready"].as_bool().unwrap_or(false),
            in_sync: m["in_sync"].as_bool(),
            lease: m["witness"]["lease_secs_left"].as_f64(),
            mismatch: m["config_mismatch"].as_bool().unwrap_or(false),
            reason: m["reason"].as_str().unwrap_or("").to_string(),
        })
    }

    /// Waits until one node is PRIM, ready and in sync, the other SECOND and
    /// ready, neither holds the witness lease and the witness does not have
    /// the secondary as behind (so a takeover is not held back by what the
    /// previous event left: the witness clears the mark on the first in-sync
    /// report after a lease ends), and the client gets the page through the
    /// VIP. Returns the primary's index. (A mark on the primary does not
    /// hold back its peer's takeover; the runs note it.)
    pub(crate) fn wait_settled(&self, limit: Duration) -> Result<usize, String> {
        let end = Instant::now() + limit;
        loop {
            let s = [self.state(0), self.state(1)];
            let mut last = describe(&s);
            if let [Ok(a), Ok(b)] = &s {
                let prim = |p: &NodeState, q: &NodeState| {
                    p.state == "PRIM"
                        && p.ready
                        && p.in_sync == Some(true)
                        && q.state == "SECOND"
                        && q.ready
                        && p.lease.is_none()
                        && q.lease.is_none()
                        && !p.mismatch
                        && !q.mismatch
                };
                let primary = if prim(a, b) {
                    Some(0)
                } else if prim(b, a) {
                    Some(1)
                } else {
                    None
                };
                let behind = self.witness_behind();
                if let Some(b) = &behind {
                    last += &format!("; the witness has {b} as behind");
                }
                let eligible = |p: usize| behind.as_deref() != Some(self.nodes[1 - p].name);
                if let Some(p) = primary.filter(|&p| eligible(p)) {
                    match self.client_get("/", Duration::from_secs(1)) {
                        Ok(r) if r.status == 200 => return Ok(p),
                        Ok(r) => last += &format!("; the client got status {}", r.status),
                        Err(e) => last += &format!("; the client's GET: {e}"),
                    }
                }
            }
            if Instant::now() > end {
                return Err(format!(
                    "the lab did not settle (PRIM in sync + SECOND, no lease, the secondary not behind, \
                     the VIP serving) within {} s; last: {last}",
                    limit.as_secs()
                ));
            }
            sys::nap(Duration::from_millis(100));
        }
    }

    /// The node the witness will not let take over (its peer wrote alone
    /// and they have not been reported in sync since), from the state file
    /// the witness saves before it answers.
    pub(crate) fn witness_behind(&self) -> Option<String> {
        let text = fs::read_to_string(self.dir.join("witness/state")).ok()?;
        let j: Value = serde_json::from_str(&text).ok()?;
        j["behind"][MODULE].as_str().map(str::to_string)
    }

    /// SIGKILLs every process in node `i`'s namespace; returns how many.
    pub(crate) fn kill_node(&self, i: usize) -> usize {
        let pids = netns_pids(&self.nodes[i].netns);
        kill_all(&pids)
    }

    /// SIGKILLs node `i`'s `apache2` processes only; returns how many.
    pub(crate) fn kill_apache(&self, i: usize) -> usize {
        let pids: Vec<i32> = netns_pids(&self.nodes[i].netns)
            .into_iter()
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "apache2")
            })
            .collect();
        kill_all(&pids)
    }

    /// `mirrorfarm lab start nodeN`: stops what is left of the node and
    /// starts its daemon.
    pub(crate) fn start(&self, i: usize) -> Result<(), String> {
        self.cli(
            &["lab", "start", self.nodes[i].name, "--name", &self.name],
            Duration::from_secs(120),
        )
        .map(drop)
    }

    /// `mirrorfarm --socket S swap apache` on node `i`.
    pub(crate) fn swap(&self, i: usize) -> Result<(), String> {
        let sock = self.nodes[i].socket.to_string_lossy().into_owned();
        self.cli(
            &["--socket", &sock, "swap", MODULE],
            Duration::from_secs(30),
        )
        .map(drop)
    }

    /// Rewrites the `timing:` values of the module file, then restarts both
    /// daemons (they compare the files' digests, so both must read the new
    /// one); the caller waits until the lab settles.
    pub(crate) fn set_timing(&self, interval_ms: u64, timeout_ms: u64) -> Result<(), String> {
        let path = self.module_file();
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut found = 0;
        let new: Vec<String> = text
            .lines()
            .map(|l| {
                let indent = &l[..l.len() - l.trim_start().len()];
                let key = l.trim_start().split(':').next().unwrap_or("");
                match key {
                    "heartbeat_interval_ms" => {
                        found += 1;
                        format!("{indent}heartbeat_interval_ms: {interval_ms},")
                    }
                    "heartbeat_timeout_ms" => {
                        found += 1;
                        format!("{indent}heartbeat_timeout_ms: {timeout_ms},")
                    }
                    _ => l.to_string(),
                }
            })
            .collect();
        if found != 2 {
            return Err(format!(
                "{}: expected one heartbeat_interval_ms and one heartbeat_timeout_ms line, found {found}",
                path.display()
            ));
        }
        fs::write(&path, new.join("\n") + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        self.start(0)?;
        self.start(1)
    }

    /// The `timing:` lines of the module file, as one line of text.
    pub(crate) fn timing(&self) -> String {
        fs::read_to_string(self.module_file())
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| {
                l.starts_with("heartbeat_interval_ms")
                    || l.starts_with("heartbeat_timeout_ms")
                    || l.starts_with("lease_ms")
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// CPU seconds used so far by each node's `mirrorfarm daemon` (None: not running).
    pub(crate) fn daemon_cpu(&self) -> [Option<(i32, f64)>; 2] {
        [0, 1].map(|i| {
            let pid: i32 = fs::read_to_string(self.dir.join(format!("{}.pid", self.nodes[i].name)))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((pid, cpu_secs(pid)?))
        })
    }

    /// A GET through the VIP from the client's namespace.
    pub(crate) fn client_get(
        &self,
        path: &str,
        limit: Duration,
    ) -> Result<probe::Response, String> {
        let (vip, path) = (self.vip, path.to_string());
        sys::in_netns(&self.client_ns, move || probe::get(vip, &path, limit))
    }

    /// A PUT through the VIP from the client's namespace; Ok if acknowledged
    /// (201 Created or 204 No Content).
    pub(crate) fn client_put(&self, path: &str, body: &[u8]) -> Result<(), String> {
        let (vip, path, body) = (self.vip, path.to_string(), body.to_vec());
        let r = sys::in_netns(&self.client_ns, move || {
            probe::request(vip, "PUT", &path, &body, Duration::from_secs(5))
        })?;
        match r.status {
            201 | 204 => Ok(()),
            s => Err(format!("PUT answered {s}")),
        }
    }

    /// Runs `mirrorfarm ARGS`, appending its output to the log; fails with
    /// its output if it fails or takes longer than `limit`.
    fn cli(&self, args: &[&str], limit: Duration) -> Result<Output, String> {
        let mut cmd = Command::new(&self.mf);
        cmd.args(args);
        let out = output_within(&mut cmd, limit)?;
        // Every command but the many state queries goes to the log.
        if !args.contains(&"state") || !out.status.success() {
            if let Ok(mut f) = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
            {
                let _ = writeln!(f, "$ mirrorfarm {}", args.join(" "));
                let _ = f.write_all(&out.stdout);
                let _ = f.write_all(&out.stderr);
            }
        }
        if out.status.success() {
            Ok(out)
        } else {
            Err(format!(
                "mirrorfarm {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for MirrorLab {
    fn drop(&mut self) {
        eprintln!("[lab] mirrorfarm lab down --name {}", self.name);
        let mut cmd = Command::new(&self.mf);
        cmd.args(["lab", "down", "--name", &self.name]);
        match output_within(&mut cmd, Duration::from_secs(120)) {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "{}: mirrorfarm lab down --name {} failed ({}): {}{}",
                name(),
                self.name,
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("{}: mirrorfarm lab down --name {}: {e}", name(), self.name),
        }
    }
}

/// Both nodes' states, for an error message.
fn describe(s: &[Result<NodeState, String>; 2]) -> String {
    s.iter()
        .enumerate()
        .map(|(i, r)| match r {
            Ok(st) => format!("node{} {}", i + 1, st.summary()),
            Err(e) => format!("node{} unreadable: {e}", i + 1),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// SIGKILLs `pids` (processes of namespaces this bench created); returns how many.
pub(crate) fn kill_all(pids: &[i32]) -> usize {
    for &p in pids {
        // SAFETY: plain syscall; the PIDs were just listed in our own namespace.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    pids.len()
}

/// CPU seconds (user + system) a process has used.
pub(crate) fn cpu_secs(pid: i32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: plain syscall without pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The lines of a module log from `since` (Unix seconds) on, with their
/// times: `2026-12-06T03:34:26.580Z SECOND -> ALONE: ...`.
pub(crate) fn log_since(path: &Path, since: f64) -> Vec<(f64, String)> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (ts, rest) = l.split_once(' ')?;
            let t = parse_utc(ts)?;
            // The log has millisecond times: keep the line of the event's own millisecond.
            (t >= since - 0.001).then(|| (t, rest.to_string()))
        })
        .collect()
}

/// `2026-12-06T03:34:26.580Z` as Unix seconds.
fn parse_utc(ts: &str) -> Option<f64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from 1970-01-01 to y-m-day (proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3_600 + min * 60) as f64 + sec)
}
