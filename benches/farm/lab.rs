//! The system under test: the farm part of a `mirrorfarm lab` (farm1..3,
//! each a network namespace on the lab's bridge, Apache through the farm
//! module `apache-farm`, VIP 10.77.0.200), driven only through the
//! `mirrorfarm` command line: `lab up/status/start/down`, `state --json`.
//! The lab is a guard: `lab down` removes it on drop, also while unwinding
//! from a panic or a stop signal.

use std::fs;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::sys::{netns_pids, output_within};
use crate::common::{name, sys};

/// How long one `mirrorfarm state` may take before it counts as unanswered.
const STATE_LIMIT: Duration = Duration::from_secs(5);

/// A farm node of the lab.
pub(crate) struct FarmNode {
    /// `farm1`..`farm3`: the name `lab start` takes.
    pub(crate) name: String,
    pub(crate) netns: String,
    pub(crate) addr: Ipv4Addr,
    socket: PathBuf,
}

/// One farm node's module state, from `mirrorfarm state apache-farm --json`.
#[derive(Clone, Debug)]
pub(crate) struct FarmState {
    pub(crate) state: String,
    pub(crate) share: Option<u64>,
    pub(crate) target: u64,
    pub(crate) vip_held: bool,
    pub(crate) in_view: usize,
    pub(crate) rule: String,
}

/// A lab built by `mirrorfarm lab up`, removed by `mirrorfarm lab down` on drop.
pub(crate) struct FarmLab {
    mf: PathBuf,
    name: String,
    pub(crate) dir: PathBuf,
    log: PathBuf,
    pub(crate) module: String,
    pub(crate) nodes: Vec<FarmNode>,
    pub(crate) client_ns: String,
    pub(crate) client_addr: Ipv4Addr,
    pub(crate) vip: Ipv4Addr,
}

impl FarmLab {
    /// `mirrorfarm lab up --name NAME`; panics with what it saw (the lab's
    /// status, the farm daemons' and module logs) if the farm is not UP.
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
            module: String::new(),
            nodes: Vec::new(),
            client_ns: String::new(),
            client_addr: Ipv4Addr::UNSPECIFIED,
            vip: Ipv4Addr::UNSPECIFIED,
        };
        eprintln!("[lab] mirrorfarm lab up --name {lab_name}");
        if let Err(e) = lab.cli(&["lab", "up", "--name", lab_name], Duration::from_secs(300)) {
            panic!("mirrorfarm lab up failed: {e}");
        }
        let j = lab.status_json();
        let text = |v: &Value, what: &str| {
            v.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| panic!("lab status --json has no {what}: {j}"))
        };
        let farm = &j["farm"];
        if farm.is_null() {
            panic!("lab status --json has no farm part: {j}");
        }
        lab.module = text(&farm["module"], "farm.module");
        lab.vip = text(&farm["vip"], "farm.vip")
            .parse()
            .unwrap_or_else(|e| panic!("lab status: farm.vip: {e}"));
        for n in ["farm1", "farm2", "farm3"] {
            let v = &farm["nodes"][n];
            lab.nodes.push(FarmNode {
                name: n.to_string(),
                netns: text(&v["netns"], "netns"),
                addr: text(&v["addr"], "addr")
                    .parse()
                    .unwrap_or_else(|e| panic!("lab status: {n}.addr: {e}")),
                socket: PathBuf::from(text(&v["socket"], "socket")),
            });
        }
        lab.client_ns = text(&j["client"]["netns"], "client.netns");
        lab.client_addr = text(&j["client"]["addr"], "client.addr")
            .parse()
            .unwrap_or_else(|e| panic!("lab status: client.addr: {e}"));
        let states: Vec<String> = lab
            .nodes
            .iter()
            .map(|n| farm["nodes"][&n.name]["state"].to_string())
            .collect();
        if states.iter().any(|s| s != "\"UP\"") {
            panic!(
                "the farm is not UP after `lab up` (states {states:?}); lab status:\n{j}\n{}",
                lab.logs_tail()
            );
        }
        lab
    }

    /// Sets a sysctl in the client's namespace (per namespace: the
    /// machine's own stays as it is).
    pub(crate) fn client_sysctl(&self, key: &str, value: &str) {
        sys::run(Command::new("ip").args([
            "netns",
            "exec",
            &self.client_ns,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ]));
    }

    /// `mirrorfarm lab status --json`.
    pub(crate) fn status_json(&self) -> Value {
        let out = self
            .cli(
                &["lab", "status", "--name", &self.name, "--json"],
                Duration::from_secs(30),
            )
            .unwrap_or_else(|e| panic!("mirrorfarm lab status: {e}"));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("mirrorfarm lab status --json: not JSON: {e}"))
    }

    /// The tails of the farm daemons' logs and module logs, for a report of
    /// what went wrong.
    pub(crate) fn logs_tail(&self) -> String {
        let mut s = String::new();
        for n in ["farm1", "farm2", "farm3"] {
            for p in [
                self.dir.join("logs").join(format!("{n}.log")),
                self.module_log(n),
            ] {
                s += &format!("--- {}:\n{}\n", p.display(), sys::log_tail(&p, 15));
            }
        }
        s
    }

    /// Node `n`'s module log.
    pub(crate) fn module_log(&self, n: &str) -> PathBuf {
        self.dir
            .join(n)
            .join("state/modules")
            .join(&self.module)
            .join("module.log")
    }

    /// Node `i`'s Apache access log.
    fn access_log(&self, i: usize) -> PathBuf {
        self.dir
            .join(&self.nodes[i].name)
            .join("state/modules")
            .join(&self.module)
            .join("run/access.log")
    }

    /// Lines in each node's Apache access log: requests served so far.
    pub(crate) fn access_counts(&self) -> Vec<u64> {
        (0..self.nodes.len())
            .map(|i| {
                fs::read(self.access_log(i))
                    .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
                    .unwrap_or(0)
            })
            .collect()
    }

    /// The farm module file all three daemons read.
    pub(crate) fn module_file(&self) -> PathBuf {
        self.dir
            .join("etc/farm-modules")
            .join(format!("{}.ron", self.module))
    }

    /// The module file's `rule:` and `timing:` lines, as one line of text.
    pub(crate) fn settings(&self) -> String {
        fs::read_to_string(self.module_file())
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| {
                l.starts_with("rule:")
                    || l.starts_with("heartbeat_interval_ms")
                    || l.starts_with("heartbeat_timeout_ms")
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Rewrites the module file's `rule:` (e.g. `AddressAndPort`), then
    /// restarts the three daemons (they compare the files' digests).
    pub(crate) fn set_rule(&self, rule: &str) -> Result<(), String> {
        let path = self.module_file();
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut found = 0;
        let new: Vec<String> = text
            .lines()
            .map(|l| {
                let indent = &l[..l.len() - l.trim_start().len()];
                if l.trim_start().starts_with("rule:") {
                    found += 1;
                    format!("{indent}rule: {rule},")
                } else {
                    l.to_string()
                }
            })
            .collect();
        if found != 1 {
            return Err(format!(
                "{}: expected one `rule:` line, found {found}",
                path.display()
            ));
        }
        fs::write(&path, new.join("\n") + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        for i in 0..self.nodes.len() {
            self.start(i)?;
        }
        Ok(())
    }

    /// Node `i`'s module state, or why it could not be read (`ip netns exec
    /// NS mirrorfarm state MODULE --socket SOCK --json`).
    pub(crate) fn state(&self, i: usize) -> Result<FarmState, String> {
        let n = &self.nodes[i];
        let sock = n.socket.to_string_lossy().into_owned();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &n.netns]).arg(&self.mf).args([
            "state",
            &self.module,
            "--socket",
            &sock,
            "--json",
        ]);
        let out = output_within(&mut cmd, STATE_LIMIT)?;
        if !out.status.success() {
            return Err(format!(
                "state failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let j: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("state --json: not JSON: {e}"))?;
        let m = &j["modules"][0];
        let f = &m["farm"];
        Ok(FarmState {
            state: m["state"].as_str().unwrap_or("?").to_string(),
            share: f["share"].as_u64(),
            target: f["target"].as_u64().unwrap_or(0),
            vip_held: f["vip_held"].as_bool().unwrap_or(false),
            in_view: f["members"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|m| m["in_view"] == true).count()),
            rule: f["rule"].as_str().unwrap_or("?").to_string(),
        })
    }

    /// Waits until every node is UP, holds the VIP, sees all three members
    /// and owns its target share, and the client gets `/node.txt` through
    /// the VIP. Returns the shares.
    pub(crate) fn wait_settled(&self, limit: Duration) -> Result<Vec<u64>, String> {
        let end = Instant::now() + limit;
        loop {
            let s: Vec<Result<FarmState, String>> =
                (0..self.nodes.len()).map(|i| self.state(i)).collect();
            let mut last = self.describe(&s);
            let ok: Vec<&FarmState> = s.iter().filter_map(|r| r.as_ref().ok()).collect();
            let n = self.nodes.len();
            if ok.len() == n
                && ok.iter().all(|f| {
                    f.state == "UP"
                        && f.vip_held
                        && f.in_view == n
                        && f.target > 0
                        && f.share == Some(f.target)
                })
            {
                let vip = self.vip;
                match sys::in_netns(&self.client_ns, move || {
                    crate::takeover::get_node(vip, None, Duration::from_secs(1))
                }) {
                    Ok(_) => return Ok(ok.iter().map(|f| f.share.unwrap_or(0)).collect()),
                    Err(e) => last += &format!("; the client's GET of the VIP: {e}"),
                }
            }
            if Instant::now() > end {
                return Err(format!(
                    "the farm did not settle (all UP with the VIP and their target share, all in \
                     view, the VIP serving) within {} s; last: {last}",
                    limit.as_secs()
                ));
            }
            sys::nap(Duration::from_millis(200));
        }
    }

    fn describe(&self, s: &[Result<FarmState, String>]) -> String {
        s.iter()
            .zip(&self.nodes)
            .map(|(r, n)| match r {
                Ok(f) => format!(
                    "{} {} share {:?}/target {} vip {} in view {} rule {}",
                    n.name, f.state, f.share, f.target, f.vip_held, f.in_view, f.rule
                ),
                Err(e) => format!("{}: {e}", n.name),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// SIGKILLs every process in node `i`'s namespace; returns how many.
    pub(crate) fn kill_node(&self, i: usize) -> usize {
        let pids = netns_pids(&self.nodes[i].netns);
        for &p in &pids {
            // SAFETY: plain syscall; the PIDs were just listed in the lab's namespace.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        pids.len()
    }

    /// `mirrorfarm lab start farmN`: stops what is left of the node and
    /// starts its daemon.
    pub(crate) fn start(&self, i: usize) -> Result<(), String> {
        self.cli(
            &["lab", "start", &self.nodes[i].name, "--name", &self.name],
            Duration::from_secs(120),
        )
        .map(drop)
    }

    /// The lab's switch namespace (`P-sw`, holding the bridge `br0`).
    pub(crate) fn switch_ns(&self) -> String {
        format!("{}-sw", self.name)
    }

    pub(crate) fn lab_name(&self) -> &str {
        &self.name
    }

    /// Runs `mirrorfarm ARGS`, appending its output to the log; fails with
    /// its output if it fails or takes longer than `limit`.
    fn cli(&self, args: &[&str], limit: Duration) -> Result<Output, String> {
        let mut cmd = Command::new(&self.mf);
        cmd.args(args);
        let out = output_within(&mut cmd, limit)?;
        if let Ok(mut f) = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
        {
            let _ = writeln!(f, "$ mirrorfarm {}", args.join(" "));
            let _ = f.write_all(&out.stdout);
            let _ = f.write_all(&out.stderr);
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

impl Drop for FarmLab {
    fn drop(&mut self) {
        eprintln!("[lab] mirrorfarm lab down --name {}", self.name);
        if let Err(e) = self.cli(
            &["lab", "down", "--name", &self.name],
            Duration::from_secs(120),
        ) {
            eprintln!(
                "{}: `mirrorfarm lab down --name {}` failed: {e}",
                name(),
                self.name
            );
        }
    }
}
