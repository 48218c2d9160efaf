//! The controller's fixture: a whole lab (`mirrorfarm lab up --name P`: two
//! nodes, a witness and a client in network namespaces, daemons, the Apache
//! mirror module) driven through the `mirrorfarm` command line, removed by
//! `mirrorfarm lab down` on drop — also when the test panics.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{require_root, wait_for, Probe};

/// Labs made by this test process (their names must differ).
static COUNT: AtomicU32 = AtomicU32::new(0);

/// A lab built by `mirrorfarm lab up`.
pub struct FarmLab {
    /// The lab's name (`--name`).
    pub name: String,
    /// The `mirrorfarm` binary.
    pub bin: PathBuf,
    /// `lab status --json` as it was after `up`.
    pub status: Value,
}

/// The `mirrorfarm` binary under test: `$MIRRORFARM_BIN`, or `release/mirrorfarm`
/// beside the release mirrorfs.
pub fn mirrorfarm_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MIRRORFARM_BIN") {
        return Ok(PathBuf::from(p));
    }
    let bin = super::mirrorfs_bin()?.with_file_name("mirrorfarm");
    if !bin.is_file() {
        bail!(
            "no mirrorfarm binary at {}: build it first: cargo build --release --workspace",
            bin.display()
        );
    }
    Ok(bin)
}

impl FarmLab {
    /// Builds a lab without its farm part and waits until the module is PRIM
    /// on node1 and SECOND on node2 (`lab up` itself waits for that and for
    /// the VIP to answer).
    pub fn up() -> Result<Self> {
        Self::build(&["up", "--no-farm"])
    }

    /// Builds the whole lab, the farm (farm1..3, module `apache-farm`) too.
    pub fn up_with_farm() -> Result<Self> {
        Self::build(&["up"])
    }

    fn build(up: &[&str]) -> Result<Self> {
        require_root()?;
        let bin = mirrorfarm_bin()?;
        // [a-z0-9]{1,10}, unique per process and lab.
        let name = format!(
            "t{}{}",
            std::process::id() % 100_000,
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Self {
            name,
            bin,
            status: Value::Null,
        };
        let out = lab.lab(up)?;
        if !out.status.success() {
            bail!(
                "mirrorfarm lab up --name {} failed: {}\n{}",
                lab.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        lab.status = lab.status_json()?;
        // Settled (start_prim done), and the secondary holds everything.
        lab.wait_states("PRIM", "SECOND", Duration::from_secs(60))?;
        lab.wait_in_sync("node1", Duration::from_secs(60))?;
        // node2 heard it too: it could take over.
        lab.wait_in_sync("node2", Duration::from_secs(60))?;
        Ok(lab)
    }

    /// Runs `mirrorfarm lab ARGS --name P`.
    pub fn lab(&self, args: &[&str]) -> Result<Output> {
        Command::new(&self.bin)
            .arg("lab")
            .args(args)
            .args(["--name", &self.name])
            .output()
            .with_context(|| format!("running {} lab {args:?}", self.bin.display()))
    }

    /// `lab status --json`.
    pub fn status_json(&self) -> Result<Value> {
        let out = self.lab(&["status", "--json"])?;
        if !out.status.success() {
            bail!(
                "lab status failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("lab status --json is not JSON")
    }

    /// A node's field in `lab status --json` (from `up`).
    pub fn node(&self, node: &str, field: &str) -> String {
        self.status["nodes"][node][field]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The VIP.
    pub fn vip(&self) -> String {
        self.status["vip"].as_str().unwrap_or_default().to_owned()
    }

    /// Runs `mirrorfarm --socket NODE's ARGS`.
    pub fn mf(&self, node: &str, args: &[&str]) -> Result<Output> {
        Command::new(&self.bin)
            .args(["--socket", &self.node(node, "socket")])
            .args(args)
            .output()
            .context("running mirrorfarm")
    }

    /// The module's status on `node` (`state apache --json`), or None when
    /// its daemon does not answer.
    pub fn module(&self, node: &str) -> Option<Value> {
        self.module_named(node, "apache")
    }

    /// Module `module`'s status on `node`.
    pub fn module_named(&self, node: &str, module: &str) -> Option<Value> {
        let out = self.mf(node, &["state", module, "--json"]).ok()?;
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["modules"].get(0).cloned()
    }

    /// `STATE` or `STATE-transient`, or `UNREACHABLE`.
    pub fn state(&self, node: &str) -> String {
        self.state_of(node, "apache")
    }

    /// The same for module `module`.
    pub fn state_of(&self, node: &str, module: &str) -> String {
        match self.module_named(node, module) {
            Some(m) => {
                let s = m["state"].as_str().unwrap_or("?").to_owned();
                if m["ready"].as_bool() == Some(true) {
                    s
                } else {
                    format!("{s}-transient")
                }
            }
            None => "UNREACHABLE".into(),
        }
    }

    /// Waits until node1 and node2 show `s1` and `s2` (settled).
    pub fn wait_states(&self, s1: &str, s2: &str, deadline: Duration) -> Result<()> {
        wait_for(deadline, &format!("node1 {s1}, node2 {s2}"), || {
            let (a, b) = (self.state("node1"), self.state("node2"));
            if a == s1 && b == s2 {
                Probe::Ready(())
            } else {
                Probe::Pending(format!("node1 {a}, node2 {b}"))
            }
        })
    }

    /// Waits until `node`'s primary reports in sync.
    pub fn wait_in_sync(&self, node: &str, deadline: Duration) -> Result<()> {
        wait_for(deadline, &format!("{node} in sync"), || {
            match self.module(node) {
                Some(m) if m["in_sync"] == Value::Bool(true) => Probe::Ready(()),
                Some(m) => Probe::Pending(format!("{m}")),
                None => Probe::Pending("unreachable".into()),
            }
        })
    }

    /// `mirrorfarm swap apache` on `node`, retried for a few seconds while
    /// it is refused (the nodes learn each other's readiness by heartbeats).
    pub fn swap(&self, node: &str) -> Result<()> {
        wait_for(Duration::from_secs(10), "a swap accepted", || {
            match self.mf(node, &["swap", "apache"]) {
                Ok(o) if o.status.success() => Probe::Ready(()),
                Ok(o) => Probe::Pending(String::from_utf8_lossy(&o.stderr).into_owned()),
                Err(e) => Probe::Fail(e),
            }
        })
    }

    /// A command in the client's namespace.
    pub fn client(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            self.status["client"]["netns"].as_str().unwrap_or_default(),
            program,
        ]);
        c
    }

    /// A command in `node`'s namespace (the mount namespace stays shared).
    pub fn on(&self, node: &str, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.node(node, "netns")))
            .arg(program);
        c
    }

    /// GET http://VIP/PATH from the client: the body, or None.
    pub fn get(&self, path: &str) -> Option<String> {
        let out = self
            .client("curl")
            .args([
                "-sf",
                "--max-time",
                "2",
                &format!("http://{}{path}", self.vip()),
            ])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// PUT `body` to http://VIP/PATH from the client: true when acknowledged
    /// (201 or 204).
    pub fn put(&self, path: &str, body: &str) -> bool {
        let out = self
            .client("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
                "-X",
                "PUT",
                "--data-binary",
                body,
                &format!("http://{}{path}", self.vip()),
            ])
            .output();
        matches!(out, Ok(o) if matches!(&o.stdout[..], b"201" | b"204"))
    }

    /// The processes in `node`'s namespace.
    pub fn pids(&self, node: &str) -> Vec<i32> {
        let ns = if node == "witness" {
            self.status["witness"]["netns"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        } else {
            self.node(node, "netns")
        };
        ns_pids(&ns)
    }

    /// SIGKILLs every process of `node` (all run in its namespace).
    pub fn kill_node(&self, node: &str) {
        self.kill_node_ns(&self.node(node, "netns"));
    }

    /// SIGKILLs every process in the lab's namespace `ns`.
    pub fn kill_node_ns(&self, ns: &str) {
        assert!(
            ns.starts_with(&format!("{}-", self.name)),
            "{ns} is not this lab's"
        );
        for pid in ns_pids(ns) {
            // SAFETY: kill has no memory effects; the pids run in this lab's namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    /// Runs `nft` in `node`'s namespace with the script `rules`.
    pub fn nft(&self, node: &str, rules: &str) -> Result<()> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node(node, "netns"), "nft", rules])
            .output()?;
        if !out.status.success() {
            bail!("nft {rules}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// The module log of `node`.
    pub fn module_log(&self, node: &str) -> String {
        let path = format!(
            "/var/lib/mirrorfarm-lab/{}/{node}/state/modules/apache/module.log",
            self.name
        );
        std::fs::read_to_string(path).unwrap_or_default()
    }
}

/// The processes in namespace `ns` (none if it cannot be read).
fn ns_pids(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for FarmLab {
    fn drop(&mut self) {
        if std::env::var_os("MIRRORFARM_E2E_KEEP").is_some() {
            eprintln!("keeping lab {} (MIRRORFARM_E2E_KEEP)", self.name);
            return;
        }
        match self.lab(&["down"]) {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "lab down --name {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("lab down --name {}: {e}", self.name),
        }
    }
}

/// Samples, every 20 ms on its own thread, which nodes hold the VIP (in
/// their namespace's addresses) and which run a writing mount (the mirrorfs
/// role of the first directory: PRIM, RESYNC or ALONE); records every moment
/// both did.
pub struct Overlap {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Overlap {
    /// Starts sampling `lab`.
    pub fn watch(lab: &FarmLab) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let vip = lab.vip();
        let nodes: Vec<(String, String, PathBuf)> = ["node1", "node2"]
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    lab.node(n, "netns"),
                    PathBuf::from(format!(
                        "/var/lib/mirrorfarm-lab/{}/{n}/state/modules/apache/dir1.sock",
                        lab.name
                    )),
                )
            })
            .collect();
        let mirrorfs = super::mirrorfs_bin().unwrap_or_else(|_| PathBuf::from("mirrorfs"));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let vips: Vec<bool> = nodes
                    .iter()
                    .map(|(_, ns, _)| {
                        Command::new("ip")
                            .args(["-n", ns, "-o", "addr", "show", "dev", "eth0"])
                            .output()
                            .map(|o| {
                                String::from_utf8_lossy(&o.stdout).contains(&format!(" {vip}/"))
                            })
                            .unwrap_or(false)
                    })
                    .collect();
                let writers: Vec<bool> = nodes
                    .iter()
                    .map(|(_, _, sock)| {
                        Command::new(&mirrorfs)
                            .args(["status", "--json", "--control"])
                            .arg(sock)
                            .output()
                            .ok()
                            .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
                            .and_then(|v| v["role"].as_str().map(str::to_owned))
                            .is_some_and(|r| matches!(r.as_str(), "PRIM" | "RESYNC" | "ALONE"))
                    })
                    .collect();
                if vips.iter().all(|b| *b) {
                    seen.push("both nodes hold the VIP".to_string());
                }
                if writers.iter().all(|b| *b) {
                    seen.push("both nodes run a writing mount".to_string());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops sampling; the overlaps seen.
    pub fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Overlap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
