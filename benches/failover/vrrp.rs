//! The baseline: keepalived (Debian's) moving a virtual IP by VRRP between
//! two namespaces, each serving a page with `python3 -m http.server`, and a
//! client namespace, all on a bridge in a fourth namespace. Names
//! (`fbk<pid>a`, `b`, `c` for the client, `s` for the switch) and addresses
//! (10.78.0.0/24, VIP 10.78.0.100) are the bench's own; nothing touches the
//! machine's network or another namespace.
//!
//! keepalived runs in the foreground in the node's namespace (`-n`, VRRP
//! only, its own config, pid files and log in the scratch directory), never as
//! a system service. Node a: `state MASTER`, priority 100; node b: `BACKUP`,
//! priority 50; `advert_int 1` (the default): b takes over after the master
//! down interval, 3 × 1 s + (256 − 50)/256 s ≈ 3.8 s of silence.
//!
//! The guard stops every process in its namespaces and deletes them on drop,
//! also while unwinding from a panic or a stop signal.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::lab::Scratch;
use crate::common::sys::netns_pids;
use crate::common::sys::{self, Proc};
use crate::lab::kill_all;
use crate::probe;

/// The baseline's virtual IP.
pub(crate) const VIP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 100);
const NODE_ADDRS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 78, 0, 1), Ipv4Addr::new(10, 78, 0, 2)];
const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 10);
const PRIORITIES: [u8; 2] = [100, 50];
const TAGS: [&str; 2] = ["a", "b"];

/// The keepalived lab.
pub(crate) struct VrrpLab {
    keepalived: PathBuf,
    python: PathBuf,
    dir: PathBuf,
    /// `fbk<pid>a`, `fbk<pid>b`.
    nodes: [String; 2],
    pub(crate) client_ns: String,
    switch_ns: String,
    /// keepalived and the HTTP server of each node, while they run.
    procs: [Vec<Proc>; 2],
    created: Vec<String>,
}

impl VrrpLab {
    /// Builds the namespaces and the bridge and writes the configurations
    /// (nothing runs yet).
    pub(crate) fn create(scratch: &Scratch, keepalived: PathBuf, python: PathBuf) -> Self {
        let tag = format!("fbk{}", std::process::id());
        let mut lab = Self {
            keepalived,
            python,
            dir: scratch.dir("keepalived"),
            nodes: TAGS.map(|t| format!("{tag}{t}")),
            client_ns: format!("{tag}c"),
            switch_ns: format!("{tag}s"),
            procs: [Vec::new(), Vec::new()],
            created: Vec::new(),
        };
        let hosts: Vec<(String, Ipv4Addr, &str)> = vec![
            (lab.nodes[0].clone(), NODE_ADDRS[0], "a"),
            (lab.nodes[1].clone(), NODE_ADDRS[1], "b"),
            (lab.client_ns.clone(), CLIENT_ADDR, "c"),
        ];
        for ns in [lab.switch_ns.clone()]
            .into_iter()
            .chain(hosts.iter().map(|h| h.0.clone()))
        {
            sys::run(Command::new("ip").args(["netns", "add", &ns]));
            lab.created.push(ns.clone());
            sys::run(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]));
        }
        let sw = lab.switch_ns.clone();
        sys::run(Command::new("ip").args(["-n", &sw, "link", "add", "br0", "type", "bridge"]));
        sys::run(Command::new("ip").args(["-n", &sw, "link", "set", "br0", "up"]));
        for (ns, addr, t) in &hosts {
            // Both ends are created inside namespaces: nothing appears on the machine's side.
            let port = format!("p{t}");
            sys::run(Command::new("ip").args([
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                ns,
            ]));
            sys::run(
                Command::new("ip").args(["-n", &sw, "link", "set", &port, "master", "br0", "up"]),
            );
            let cidr = format!("{addr}/24");
            sys::run(Command::new("ip").args(["-n", ns, "addr", "add", &cidr, "dev", "eth0"]));
            sys::run(Command::new("ip").args(["-n", ns, "link", "set", "eth0", "up"]));
        }
        for (i, tag) in TAGS.iter().enumerate() {
            let www = lab.dir.join(format!("www-{tag}"));
            fs::create_dir_all(&www).unwrap_or_else(|e| panic!("mkdir {}: {e}", www.display()));
            write(&www.join("index.html"), &format!("node {tag}\n"));
            write(&lab.conf(i), &keepalived_conf(i));
        }
        lab
    }

    /// The VIP's HTTP address.
    pub(crate) fn vip(&self) -> SocketAddr {
        SocketAddr::from((VIP, 80))
    }

    /// Starts node `i` as a rebooted machine would come back: the VIP a
    /// killed keepalived left on its interface removed, then the HTTP server
    /// (waited for) and keepalived.
    pub(crate) fn start_node(&mut self, i: usize) {
        let ns = self.nodes[i].clone();
        let vip = format!("{VIP}/24");
        if self.holds_vip(i) {
            sys::run(Command::new("ip").args(["-n", &ns, "addr", "del", &vip, "dev", "eth0"]));
        }
        for p in self.procs[i].iter_mut() {
            p.stop();
        }
        self.procs[i].clear();
        let t = TAGS[i];
        let www = self.dir.join(format!("www-{t}"));
        let mut http = sys::command_in(Some(&ns), &self.python);
        http.args([
            "-m",
            "http.server",
            "80",
            "--bind",
            "0.0.0.0",
            "--directory",
        ])
        .arg(&www);
        let http = Proc::spawn(
            "http.server",
            &mut http,
            &self.dir.join(format!("http-{t}.log")),
        );
        self.procs[i].push(http);
        let addr = SocketAddr::from((NODE_ADDRS[i], 80));
        let end = Instant::now() + Duration::from_secs(20);
        while !self
            .client_get(addr)
            .is_ok_and(|b| b == format!("node {t}\n"))
        {
            self.procs[i][0].check_alive();
            if Instant::now() > end {
                panic!("python3 -m http.server on node {t} does not answer within 20 s");
            }
            sys::nap(Duration::from_millis(50));
        }
        for f in ["pid", "vrrp.pid"] {
            let _ = fs::remove_file(self.dir.join(format!("keepalived-{t}.{f}")));
        }
        let mut ka = sys::command_in(Some(&ns), &self.keepalived);
        ka.args(["-n", "-l", "-D", "-G", "-P", "-f"])
            .arg(self.conf(i))
            .arg("-p")
            .arg(self.dir.join(format!("keepalived-{t}.pid")))
            .arg("-r")
            .arg(self.dir.join(format!("keepalived-{t}.vrrp.pid")));
        let log = self.dir.join(format!("keepalived-{t}.log"));
        self.procs[i].push(Proc::spawn("keepalived", &mut ka, &log));
    }

    /// Waits until node a is the master (it alone holds the VIP) and the
    /// client gets node a's page through the VIP 10 times in a row.
    pub(crate) fn wait_a_master(&mut self, limit: Duration) -> Result<(), String> {
        let end = Instant::now() + limit;
        let mut good = 0;
        loop {
            for p in self.procs.iter_mut().flatten() {
                if p.exited().is_some() {
                    return Err(format!(
                        "a keepalived or http.server exited; its log ends:\n{}",
                        p.log_tail()
                    ));
                }
            }
            let held = [self.holds_vip(0), self.holds_vip(1)];
            let page = self.client_get(self.vip());
            if held == [true, false] && page.as_deref() == Ok("node a\n") {
                good += 1;
                if good >= 10 {
                    return Ok(());
                }
            } else {
                good = 0;
            }
            if Instant::now() > end {
                return Err(format!(
                    "node a did not become the VRRP master within {} s: VIP on a {}, on b {}, the client got {page:?}",
                    limit.as_secs(),
                    held[0],
                    held[1]
                ));
            }
            sys::nap(Duration::from_millis(50));
        }
    }

    /// SIGKILLs every process in node `i`'s namespace; returns how many.
    pub(crate) fn kill_node(&mut self, i: usize) -> usize {
        let n = kill_all(&netns_pids(&self.nodes[i]));
        // Reap ours (they are gone now).
        for p in self.procs[i].iter_mut() {
            p.wait_exit(Duration::from_secs(5));
        }
        n
    }

    /// Whether node `i`'s interface has the VIP.
    pub(crate) fn holds_vip(&self, i: usize) -> bool {
        Command::new("ip")
            .args(["-n", &self.nodes[i], "-o", "addr", "show", "dev", "eth0"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {VIP}/")))
            .unwrap_or(false)
    }

    /// The body of a GET of `addr` from the client namespace, if it answered 200.
    pub(crate) fn client_get(&self, addr: SocketAddr) -> Result<String, String> {
        let r = sys::in_netns(&self.client_ns, move || {
            probe::get(addr, "/", Duration::from_secs(1))
        })?;
        if r.status == 200 {
            Ok(String::from_utf8_lossy(&r.body).into_owned())
        } else {
            Err(format!("status {}", r.status))
        }
    }

    /// The last lines of node `i`'s keepalived log.
    pub(crate) fn keepalived_log_tail(&self, i: usize) -> String {
        sys::log_tail(&self.dir.join(format!("keepalived-{}.log", TAGS[i])), 8)
    }

    fn conf(&self, i: usize) -> PathBuf {
        self.dir.join(format!("keepalived-{}.conf", TAGS[i]))
    }
}

impl Drop for VrrpLab {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            p.stop();
        }
        // Anything else still in our namespaces (nothing, normally) goes too:
        // a namespace outlives `ip netns del` while a process is in it.
        for ns in &self.created {
            kill_all(&netns_pids(ns));
        }
        for ns in self.created.drain(..).rev() {
            sys::run_quietly(Command::new("ip").args(["netns", "del", &ns]));
        }
    }
}

/// keepalived's configuration for node `i`.
fn keepalived_conf(i: usize) -> String {
    let state = if i == 0 { "MASTER" } else { "BACKUP" };
    format!(
        "# The failover benchmark's baseline, node {tag}: VRRP only, advert_int 1 (the default).\n\
         global_defs {{\n    router_id fbk_{tag}\n}}\n\
         vrrp_instance fb {{\n    state {state}\n    interface eth0\n    virtual_router_id 78\n    \
         priority {prio}\n    advert_int 1\n    virtual_ipaddress {{\n        {VIP}/24 dev eth0\n    }}\n}}\n",
        tag = TAGS[i],
        prio = PRIORITIES[i],
    )
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
