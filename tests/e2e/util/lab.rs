//! A network lab of namespaces: one node per network namespace, all joined by veth
//! pairs to a bridge that lives in a dedicated "switch" namespace, so no traffic
//! ever touches the host's own interfaces.
//!
//! Owns: the namespaces it creates (named `mft<pid>x<counter><role>`), the links
//! inside them, its log directory, and the processes spawned on its nodes. `Drop`
//! removes all of them, also while a test panics. Processes run in a node's
//! *network* namespace only (`nsenter --net`), so FUSE mounts they make are seen by
//! the test (`ip netns exec` would give them a private mount namespace).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Once};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use super::{cmd, run_ok, tail, wait_for, Probe};

/// Prefix of every namespace a lab creates; stale ones are recognised by it.
const PREFIX: &str = "mft";
/// How long a process gets to exit after SIGTERM before it is sent SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// Labs made by this process so far: makes names and subnets unique.
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A set of nodes on one private layer-2 segment. Hold it for the whole test:
/// dropping it tears the network down.
pub struct Lab {
    tag: String,
    subnet: [u8; 3],
    switch_ns: String,
    nodes: Vec<Node>,
    /// Every namespace this lab created, in creation order; removed on drop.
    namespaces: Vec<String>,
    logs: Arc<TempDir>,
}

/// Builds a [`Lab`]: `Lab::builder().node("node1").node("node2").build()?`.
#[derive(Default)]
pub struct LabBuilder {
    names: Vec<String>,
    subnet: Option<[u8; 3]>,
}

/// One host of the lab: a network namespace with one interface on the bridge.
#[derive(Clone, Debug)]
pub struct Node {
    /// The test's name for the node (`node1`), used in logs.
    pub name: String,
    /// The network namespace (`/run/netns/<ns>`).
    pub ns: String,
    /// The node's address on the lab segment (a /24).
    pub ip: Ipv4Addr,
    logs: Arc<TempDir>,
}

/// Which packets [`Node::block`] drops, seen from the node it is applied on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Packets arriving from the peer.
    Inbound,
    /// Packets sent to the peer.
    Outbound,
    /// Both: a full partition between the two nodes.
    Both,
}

/// A process started by [`Node::spawn`]. Dropping it stops exactly that process:
/// SIGTERM, a bounded wait, then SIGKILL. Its stdout and stderr go to files in
/// the lab's log directory; on drop the tail of stderr is printed (libtest shows
/// it only for failing tests).
pub struct Proc {
    label: String,
    child: Child,
    status: Option<ExitStatus>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Lab {
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// The node named `name`; panics if the lab has none (a bug in the test).
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("lab {} has no node {name}", self.tag))
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Every namespace this lab made (nodes and switch).
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The lab's subnet, e.g. `10.77.12.0/24`.
    pub fn subnet(&self) -> String {
        let [a, b, c] = self.subnet;
        format!("{a}.{b}.{c}.0/24")
    }

    /// Where the lab keeps the logs of spawned processes.
    pub fn log_dir(&self) -> &Path {
        self.logs.path()
    }

    fn create_namespace(&mut self, ns: &str) -> Result<()> {
        run_ok(&mut cmd("ip", ["netns", "add", ns]))?;
        self.namespaces.push(ns.to_owned());
        run_ok(&mut cmd("ip", ["-n", ns, "link", "set", "lo", "up"]))?;
        Ok(())
    }

    /// Adds node `name` with a veth pair: `eth0` in the node, `p<i>` on the
    /// switch's bridge. Both ends are created directly in their namespaces, so
    /// their names cannot collide with another lab's.
    fn add_node(&mut self, name: &str) -> Result<()> {
        let i = self.nodes.len() + 1;
        let ns = format!("{}n{i}", self.tag);
        let [a, b, c] = self.subnet;
        let ip = Ipv4Addr::new(a, b, c, u8::try_from(i).context("at most 254 nodes")?);
        self.create_namespace(&ns)?;
        let port = format!("p{i}");
        let sw = self.switch_ns.as_str();
        run_ok(&mut cmd(
            "ip",
            [
                "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ],
        ))?;
        run_ok(&mut cmd(
            "ip",
            ["-n", sw, "link", "set", &port, "master", "br0", "up"],
        ))?;
        let cidr = format!("{ip}/24");
        run_ok(&mut cmd(
            "ip",
            ["-n", &ns, "addr", "add", &cidr, "dev", "eth0"],
        ))?;
        run_ok(&mut cmd("ip", ["-n", &ns, "link", "set", "eth0", "up"]))?;
        let node = Node {
            name: name.to_owned(),
            ns,
            ip,
            logs: Arc::clone(&self.logs),
        };
        node.install_filter_table()?;
        self.nodes.push(node);
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Nodes first, the switch last, the reverse of creation.
        for ns in self.namespaces.iter().rev() {
            kill_processes_in(ns);
            if let Err(e) = run_ok(&mut cmd("ip", ["netns", "del", ns])) {
                eprintln!("lab {}: cannot remove namespace {ns}: {e:#}", self.tag);
            }
        }
    }
}

impl LabBuilder {
    /// The lab's /24 (its first three bytes), instead of one from the PID:
    /// for a test whose outcome depends on the addresses themselves (a hash
    /// of them), so that it is the same in every run.
    pub fn subnet(mut self, net: [u8; 3]) -> Self {
        self.subnet = Some(net);
        self
    }

    /// Adds a node; nodes get addresses .1, .2, ... in the order they are added.
    pub fn node(mut self, name: &str) -> Self {
        self.names.push(name.to_owned());
        self
    }

    /// Creates the namespaces, the bridge and the links. On error everything made
    /// so far is removed again.
    pub fn build(self) -> Result<Lab> {
        super::require_root()?;
        static REAP: Once = Once::new();
        REAP.call_once(remove_stale_namespaces);

        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{PREFIX}{pid}x{n}");
        let logs = tempfile::Builder::new()
            .prefix(&format!("{tag}-logs."))
            .tempdir_in("/var/tmp")
            .context("cannot create the lab's log dir under /var/tmp")?;
        let mut lab = Lab {
            switch_ns: format!("{tag}sw"),
            subnet: self.subnet.unwrap_or_else(|| subnet_for(pid, n)),
            tag,
            nodes: Vec::new(),
            namespaces: Vec::new(),
            logs: Arc::new(logs),
        };
        let sw = lab.switch_ns.clone();
        lab.create_namespace(&sw)?;
        run_ok(&mut cmd(
            "ip",
            ["-n", &sw, "link", "add", "br0", "type", "bridge"],
        ))?;
        run_ok(&mut cmd("ip", ["-n", &sw, "link", "set", "br0", "up"]))?;
        for name in &self.names {
            lab.add_node(name)
                .with_context(|| format!("adding node {name} to lab {}", lab.tag))?;
        }
        Ok(lab)
    }
}

impl Node {
    /// A command that runs `argv` in this node's network namespace (the mount
    /// namespace stays the test's own). Add env, stdin etc. before spawning it.
    pub fn command<S: AsRef<OsStr>>(&self, argv: impl IntoIterator<Item = S>) -> Command {
        let mut net = OsString::from("--net=/run/netns/");
        net.push(&self.ns);
        let mut c = Command::new("nsenter");
        c.arg(net).arg("--").args(argv);
        c
    }

    /// Runs `argv` in the node to completion; the caller judges the status.
    pub fn run<S: AsRef<OsStr>>(&self, argv: impl IntoIterator<Item = S>) -> Result<Output> {
        let mut c = self.command(argv);
        c.stdin(Stdio::null());
        c.output()
            .with_context(|| format!("cannot run {c:?} on {}", self.name))
    }

    /// Starts `argv` in the node and returns its guard. `label` names the log
    /// files (`<node>-<label>.out/.err` in the lab's log dir).
    pub fn spawn<S: AsRef<OsStr>>(
        &self,
        label: &str,
        argv: impl IntoIterator<Item = S>,
    ) -> Result<Proc> {
        Proc::spawn(
            self.command(argv),
            &format!("{}-{label}", self.name),
            self.logs.path(),
        )
    }

    /// Whether a single ping from this node to `ip` is answered within a second.
    pub fn pings(&self, ip: Ipv4Addr) -> Result<bool> {
        let out = self.run(["ping", "-n", "-q", "-c", "1", "-W", "1", &ip.to_string()])?;
        // ping exits 1 for no reply and 2 for other errors (e.g. not installed properly).
        if out.status.code() == Some(2) || out.status.code().is_none() {
            bail!(
                "ping failed on {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.status.success())
    }

    /// Bytes received so far on the node's lab interface (`eth0`), from the
    /// kernel's counters: everything that reached this node over the wire.
    pub fn rx_bytes(&self) -> Result<u64> {
        let out = run_ok(&mut cmd(
            "ip",
            ["-n", &self.ns, "-s", "-j", "link", "show", "eth0"],
        ))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("ip -j link show on {} printed no JSON", self.name))?;
        v[0]["stats64"]["rx"]["bytes"].as_u64().with_context(|| {
            format!(
                "no stats64.rx.bytes in the ip -j -s link output of {}: {v}",
                self.name
            )
        })
    }

    /// Starts dropping packets between this node and `peer` (in this node's
    /// namespace, with nftables) until [`Node::unblock`].
    pub fn block(&self, peer: &Node, dir: Direction) -> Result<()> {
        self.edit_blocked("add", peer, dir)
    }

    /// Undoes [`Node::block`] with the same arguments.
    pub fn unblock(&self, peer: &Node, dir: Direction) -> Result<()> {
        self.edit_blocked("delete", peer, dir)
    }

    /// Lists the nftables ruleset of the node (for failure messages).
    pub fn ruleset(&self) -> Result<String> {
        let out = run_ok(&mut self.command(["nft", "list", "ruleset"]))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn edit_blocked(&self, verb: &str, peer: &Node, dir: Direction) -> Result<()> {
        let sets: &[&str] = match dir {
            Direction::Inbound => &["blocked_in"],
            Direction::Outbound => &["blocked_out"],
            Direction::Both => &["blocked_in", "blocked_out"],
        };
        let script: String = sets
            .iter()
            .map(|set| format!("{verb} element inet mftlab {set} {{ {} }}\n", peer.ip))
            .collect();
        self.nft(&script)
            .with_context(|| format!("{verb} {dir:?} block {} -> {}", self.name, peer.name))
    }

    /// The node's fault-injection table: two address sets, matched in the
    /// input and output hooks. Blocking a peer is then one set element.
    fn install_filter_table(&self) -> Result<()> {
        self.nft(
            "table inet mftlab {
               set blocked_in { type ipv4_addr; }
               set blocked_out { type ipv4_addr; }
               chain input { type filter hook input priority 0; ip saddr @blocked_in drop; }
               chain output { type filter hook output priority 0; ip daddr @blocked_out drop; }
             }\n",
        )
    }

    fn nft(&self, script: &str) -> Result<()> {
        let mut c = self.command(["nft", "-f", "-"]);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .context("cannot run nft (scripts/setup.sh installs it)")?;
        child
            .stdin
            .take()
            .expect("stdin was piped above")
            .write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft on {} failed: {}\nscript:\n{script}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Proc {
    /// Starts `command` with stdin closed and stdout/stderr in `<dir>/<label>.*`.
    pub fn spawn(mut command: Command, label: &str, dir: &Path) -> Result<Self> {
        let stdout = unique_path(dir, label, "out");
        let stderr = stdout.with_extension("err");
        command
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {label}: {command:?}"))?;
        Ok(Self {
            label: label.to_owned(),
            child,
            status: None,
            stdout,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited (reaping it), `None` while it runs.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Sends `signal` if the process has not been reaped yet (so the PID is still
    /// ours, even as a zombie); a no-op after it exited.
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if self.try_status()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.pid())?;
        // SAFETY: kill(2) has no memory-safety preconditions; the PID is our
        // unreaped child, so it cannot name another process.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("kill -{signal} {} ({pid})", self.label));
        }
        Ok(())
    }

    /// Waits up to `deadline` for the process to exit by itself.
    pub fn wait_exit(&mut self, deadline: Duration) -> Result<ExitStatus> {
        let what = format!("{} (pid {}) to exit", self.label, self.pid());
        wait_for(deadline, &what, || match self.try_status() {
            Ok(Some(st)) => Probe::Ready(st),
            Ok(None) => Probe::Pending(format!("still running; stderr: {}", self.stderr_tail())),
            Err(e) => Probe::Fail(e),
        })
    }

    /// SIGKILL now and reap: a crash, as far as its peers can tell.
    pub fn kill_hard(&mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGKILL)?;
        let st = self.child.wait()?;
        self.status = Some(st);
        Ok(st)
    }

    /// SIGTERM, up to [`TERM_GRACE`] to exit, then SIGKILL; returns once reaped.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if let Some(st) = self.try_status()? {
                return Ok(st);
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} ignored SIGTERM for {TERM_GRACE:?}: SIGKILL", self.label);
        self.kill_hard()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The last lines of its stderr, for failure messages.
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr(), 5)
    }

    pub fn label(&self) -> &str {
        &self.label
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("cannot stop {} (pid {}): {e:#}", self.label, self.pid());
        }
        // The test harness shows this only when the test fails.
        let stderr = self.stderr();
        if !stderr.trim().is_empty() || thread::panicking() {
            eprintln!(
                "--- {} (pid {}) exited {:?}; last stderr:\n{}",
                self.label,
                self.pid(),
                self.status,
                tail(&stderr, 20)
            );
        }
    }
}

/// A per-lab /24 in 10.64.0.0–10.191.255.0 from the PID and the lab counter, so
/// parallel labs (in one process or several) read differently in logs and
/// captures. Isolation does not depend on it: each lab is its own L2 segment.
fn subnet_for(pid: u32, counter: u32) -> [u8; 3] {
    let idx = u64::from(pid) * 16 + u64::from(counter);
    // Both values are reduced below 256 first, so the casts cannot truncate.
    [10, (64 + (idx >> 8) % 128) as u8, (idx % 256) as u8]
}

/// `<dir>/<label>.<ext>`, or with `-2`, `-3`... if a process with the same label
/// already logged there.
fn unique_path(dir: &Path, label: &str, ext: &str) -> PathBuf {
    let mut path = dir.join(format!("{label}.{ext}"));
    let mut n = 2;
    while path.exists() {
        path = dir.join(format!("{label}-{n}.{ext}"));
        n += 1;
    }
    path
}

/// SIGKILLs the processes still running in `ns` (all were started by this lab),
/// so that removing its name also frees the namespace and its links.
fn kill_processes_in(ns: &str) {
    let Ok(out) = cmd("ip", ["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<libc::pid_t>() {
            eprintln!("lab: namespace {ns} still had process {pid}: SIGKILL");
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Removes namespaces left by earlier test processes that were killed before
/// their `Drop` ran (their PID, encoded in the name, no longer exists).
fn remove_stale_namespaces() {
    let Ok(out) = cmd("ip", ["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = stale_owner(name) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("lab: removing stale namespace {name} of dead test process {pid}");
        let _ = cmd("ip", ["netns", "del", name]).output();
    }
}

/// The PID encoded in a lab namespace name (`mft<pid>x...`), if it is one.
fn stale_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, _) = rest.split_once('x')?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_encode_their_owner() {
        assert_eq!(stale_owner("mft1234x0n1"), Some(1234));
        assert_eq!(stale_owner("mft1234x10sw"), Some(1234));
        assert_eq!(stale_owner("mfc1234a"), None);
        assert_eq!(stale_owner("mftx0n1"), None);
    }

    #[test]
    fn subnets_differ_between_labs_and_processes() {
        assert_ne!(subnet_for(100, 0), subnet_for(100, 1));
        assert_ne!(subnet_for(100, 0), subnet_for(101, 0));
        for pid in [1, 4_194_304, u32::MAX] {
            let [a, b, _] = subnet_for(pid, 15);
            assert_eq!(a, 10);
            assert!((64..192).contains(&b));
        }
    }
}
