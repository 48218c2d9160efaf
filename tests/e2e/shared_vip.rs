//! Issue 9: the farm packet filter — three farm nodes and a client on one
//! bridge, every node holding the same VIP behind the virtual MAC, each
//! accepting only the clients hashed into its buckets.
//!
//! Each node runs the real filter (`filter::nft::install`), the real ARP
//! responder and a tiny TCP server (a thread in the node's namespace) that
//! answers every connection with the node's name, then echoes lines. The client
//! connects from 50 addresses with kernel-chosen source ports, except where a
//! test counts how connections spread (fixed ports in a fixed subnet there).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use filter::arp::{self, ArpResponder};
use filter::ruleset::{vmac, FarmFilter, Proto, Rule};
use filter::{nft, BucketSet, Installed};

use crate::util::lab::{Lab, Node};
use crate::util::{cmd, run_ok, wait_for, Probe};

const PORT: u16 = 8080;
const MODULE: &str = "shared";
const SEED: u32 = 0x6d66_0001;
const CLIENTS: u8 = 50;
/// The farm lab's /24.
const SUBNET: [u8; 3] = [10, 250, 9];
/// The first of `connect_many`'s fixed source ports.
const FIRST_PORT: u16 = 30000;
/// Bound on one client connection (connect, read the name).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[test]
fn shared_vip_by_address_and_port_spreads_evenly() -> Result<()> {
    let farm = Farm::start(Rule::ByAddressAndPort)?;
    // Fixed addresses and ports, the hash's seed fixed too: the same 1000
    // connections land in the same buckets in every run, so the spread is a
    // property of the filter, not of the ports a run was given (with
    // kernel-chosen ports and per-run addresses a node's share strayed past
    // any fixed bound in some runs: 283 of 1000 once).
    const N: usize = 1000;
    let counts = farm.connect_many(N)?;
    let expected = N as f64 / 3.0;
    for (node, n) in &counts {
        let off = (*n as f64 - expected).abs() / expected;
        ensure!(off <= 0.15, "{node} got {n} of {N}: {counts:?}");
    }
    farm.assert_one_accept_per_connection(N)?;
    Ok(())
}

#[test]
fn shared_vip_by_address_is_sticky_and_rebalances_without_breaking_connections() -> Result<()> {
    let farm = Farm::start(Rule::ByAddress)?;
    let vmac_text = arp::format_mac(farm.vmac);

    // (c) one client address always reaches the same node.
    let mut owner_of = BTreeMap::new();
    for round in 0..3 {
        for i in 0..CLIENTS {
            let src = farm.client_ip(i);
            let got = farm.connect_once(src)?;
            let first = owner_of.entry(src).or_insert_with(|| got.clone());
            ensure!(
                *first == got,
                "round {round}: {src} reached {got}, before {first}"
            );
        }
    }
    farm.assert_one_accept_per_connection(3 * usize::from(CLIENTS))?;
    let neigh = run_ok(&mut cmd(
        "ip",
        [
            "-n",
            &farm.client().ns,
            "neigh",
            "show",
            &farm.vip.to_string(),
        ],
    ))?;
    let neigh = String::from_utf8_lossy(&neigh.stdout);
    ensure!(
        neigh.contains(&vmac_text),
        "client's VIP entry is not the virtual MAC: {neigh}"
    );

    // (d) a long-lived connection on node A; A's buckets all move to B.
    let src = farm.client_ip(0);
    let mut long = farm.connect(src)?;
    let a = farm.index_of(&long.node)?;
    let b = (a + 1) % 3;
    long.ping("before")?;
    let moved = farm.owned[a];
    let mut owned = farm.owned;
    owned[a] = BucketSet::empty();
    owned[b] = owned[b].union(&moved);
    // Release on the old owner first, then take on the new one.
    farm.nodes[a].installed()?.set_owned(&owned[a])?;
    farm.nodes[b].installed()?.set_owned(&owned[b])?;
    let accepted_on_a = farm.nodes[a].server.accepted();
    for i in 0..20 {
        long.ping(&format!("after {i}"))?;
    }
    let new = farm.connect_once(src)?;
    ensure!(
        new == farm.nodes[b].node.name,
        "new connection from {src} went to {new}"
    );
    ensure!(
        farm.nodes[a].server.accepted() == accepted_on_a,
        "A accepted a new connection"
    );
    long.ping("still")?;
    drop(long);

    // A hostile or short ARP frame is ignored; the responders keep answering.
    send_hostile_arp(farm.client())?;
    run_ok(&mut cmd(
        "ip",
        ["-n", &farm.client().ns, "neigh", "flush", "dev", "eth0"],
    ))?;
    farm.connect_once(farm.client_ip(1))?;

    // (e) remove leaves no table and restores the sysctl.
    let mut farm = farm;
    for n in &mut farm.nodes {
        n.installed.take().context("installed")?.remove()?;
        let tables = n.node.ruleset()?;
        ensure!(
            !tables.contains("mirrorfarm_"),
            "{}: tables left:\n{tables}",
            n.node.name
        );
        let now = arp_announce(&n.node)?;
        ensure!(
            now == n.arp_announce_before,
            "{}: arp_announce {now}",
            n.node.name
        );
    }
    Ok(())
}

/// Three farm nodes and a client on one lab; cleans up in `Drop` (filters,
/// responders, servers; then the lab's namespaces).
struct Farm {
    // Field order is drop order: the nodes' filters and threads first, the lab last.
    nodes: Vec<FarmNode>,
    owned: [BucketSet; 3],
    vip: Ipv4Addr,
    vmac: [u8; 6],
    lab: Lab,
}

struct FarmNode {
    node: Node,
    installed: Option<Installed>,
    _responder: ArpResponder,
    server: Server,
    arp_announce_before: String,
}

impl FarmNode {
    fn installed(&self) -> Result<&Installed> {
        self.installed
            .as_ref()
            .with_context(|| format!("{}: the filter was removed", self.node.name))
    }
}

impl Farm {
    fn start(rule: Rule) -> Result<Self> {
        // A fixed subnet: the client's addresses, hashed by the filter, are
        // then the same in every run (each lab is its own L2 segment, so
        // parallel labs with the same subnet do not meet).
        let lab = Lab::builder()
            .subnet(SUBNET)
            .node("f1")
            .node("f2")
            .node("f3")
            .node("client")
            .build()?;
        let net = lab.node("f1").ip.octets();
        let vip = Ipv4Addr::new(net[0], net[1], net[2], 200);
        let vmac = vmac(MODULE, vip);
        // An even 3-way split of the 256 buckets.
        let owned = [
            (0..=85).collect(),
            (86..=170).collect(),
            (171..=255).collect(),
        ];
        let mut nodes = Vec::new();
        for (i, name) in ["f1", "f2", "f3"].into_iter().enumerate() {
            let node = lab.node(name).clone();
            run_ok(&mut cmd(
                "ip",
                [
                    "-n",
                    &node.ns,
                    "addr",
                    "add",
                    &format!("{vip}/24"),
                    "dev",
                    "eth0",
                ],
            ))?;
            let arp_announce_before = arp_announce(&node)?;
            let f = FarmFilter {
                module: MODULE.into(),
                interface: "eth0".into(),
                vips: vec![vip],
                ports: vec![(Proto::Tcp, PORT)],
                rule,
                vmac,
                seed: SEED,
                owned: owned[i],
            };
            let (installed, responder) = in_netns(&node.ns, || -> Result<_> {
                let installed = nft::install(&f)?;
                let responder = ArpResponder::start("eth0", &[vip], vmac)?;
                arp::announce_virtual("eth0", vip, vmac)?;
                Ok((installed, responder))
            })?;
            ensure!(arp_announce(&node)? == "2", "{name}: arp_announce not set");
            let server = Server::start(&node)?;
            nodes.push(FarmNode {
                node,
                installed: Some(installed),
                _responder: responder,
                server,
                arp_announce_before,
            });
        }
        let client = lab.node("client");
        for i in 0..CLIENTS {
            let ip = Ipv4Addr::new(net[0], net[1], net[2], 100 + i);
            run_ok(&mut cmd(
                "ip",
                [
                    "-n",
                    &client.ns,
                    "addr",
                    "add",
                    &format!("{ip}/24"),
                    "dev",
                    "eth0",
                ],
            ))?;
        }
        let farm = Self {
            nodes,
            owned,
            vip,
            vmac,
            lab,
        };
        // The first connection also waits for the client's addresses to be usable.
        wait_for(
            Duration::from_secs(10),
            "a first connection to the VIP",
            || match farm.connect_once(farm.client_ip(0)) {
                Ok(_) => Probe::Ready(()),
                Err(e) => Probe::Pending(format!("{e:#}")),
            },
        )?;
        farm.reset_counts();
        Ok(farm)
    }

    fn client(&self) -> &Node {
        self.lab.node("client")
    }

    fn client_ip(&self, i: u8) -> Ipv4Addr {
        let net = self.vip.octets();
        Ipv4Addr::new(net[0], net[1], net[2], 100 + i)
    }

    fn index_of(&self, name: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.node.name == name)
            .with_context(|| format!("no farm node {name}"))
    }

    fn reset_counts(&self) {
        for n in &self.nodes {
            n.server.accepted.store(0, Ordering::Relaxed);
        }
    }

    /// One connection from `src` (kernel-chosen source port), in the client's
    /// namespace: returns it with the name of the node that answered.
    fn connect(&self, src: Ipv4Addr) -> Result<Conn> {
        let vip = self.vip;
        in_netns(&self.client().ns, move || Conn::open(src, 0, vip))
    }

    fn connect_once(&self, src: Ipv4Addr) -> Result<String> {
        Ok(self.connect(src)?.node)
    }

    /// `n` connections round-robin over the client addresses, the k-th round
    /// from source port [`FIRST_PORT`] + k; answers per node.
    fn connect_many(&self, n: usize) -> Result<BTreeMap<String, usize>> {
        let vip = self.vip;
        let srcs: Vec<Ipv4Addr> = (0..CLIENTS).map(|i| self.client_ip(i)).collect();
        in_netns(&self.client().ns, move || {
            let mut counts = BTreeMap::new();
            for k in 0..n {
                let round = u16::try_from(k / srcs.len()).context("too many connections")?;
                let conn = Conn::open(srcs[k % srcs.len()], FIRST_PORT + round, vip)
                    .with_context(|| format!("connection {k}"))?;
                *counts.entry(conn.node).or_insert(0) += 1;
            }
            Ok(counts)
        })
    }

    /// (a) no connection was accepted twice: the servers together accepted
    /// exactly as many connections as the client made.
    fn assert_one_accept_per_connection(&self, made: usize) -> Result<()> {
        let total = || -> u64 { self.nodes.iter().map(|n| n.server.accepted()).sum() };
        wait_for(Duration::from_secs(5), "the servers' accept counts", || {
            let t = total();
            if t as usize >= made {
                Probe::Ready(())
            } else {
                Probe::Pending(format!("{t} accepted of {made}"))
            }
        })?;
        ensure!(
            total() as usize == made,
            "{} accepts for {made} connections",
            total()
        );
        Ok(())
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        // Removal (and the responders' stop) while the namespaces still exist.
        for n in &mut self.nodes {
            if let Some(i) = n.installed.take() {
                if let Err(e) = i.remove() {
                    eprintln!("{}: cannot remove the filter: {e}", n.node.name);
                }
            }
        }
    }
}

/// A client connection and the node that answered it.
struct Conn {
    node: String,
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Binds `src` and `port` (0: the kernel chooses), connects to the VIP and
    /// reads the node's name. Runs in the caller's namespace.
    fn open(src: Ipv4Addr, port: u16, vip: Ipv4Addr) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let stream = rt.block_on(async {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(SocketAddr::from((src, port)))
                .with_context(|| format!("binding {src}:{port}"))?;
            let s = tokio::time::timeout(CONNECT_TIMEOUT, sock.connect((vip, PORT).into()))
                .await
                .with_context(|| format!("connect from {src} timed out"))?
                .with_context(|| format!("connect from {src}"))?;
            anyhow::Ok(s.into_std()?)
        })?;
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        let mut reader = BufReader::new(stream);
        let mut node = String::new();
        reader
            .read_line(&mut node)
            .with_context(|| format!("reading the node's name from {src}"))?;
        if !node.ends_with('\n') {
            bail!("connection from {src} closed before the node's name: {node:?}");
        }
        node.pop();
        Ok(Self { node, reader })
    }

    /// Sends a line and expects it back: the connection works both ways.
    fn ping(&mut self, text: &str) -> Result<()> {
        self.reader
            .get_mut()
            .write_all(format!("{text}\n").as_bytes())?;
        let mut back = String::new();
        self.reader
            .read_line(&mut back)
            .with_context(|| format!("echo of {text:?} from {}", self.node))?;
        ensure!(
            back == format!("{text}\n"),
            "echo of {text:?} from {}: {back:?}",
            self.node
        );
        Ok(())
    }
}

/// A TCP server on `0.0.0.0:PORT` in a node's namespace: writes the node's
/// name, then echoes lines. Stops (and joins its threads) on drop.
struct Server {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(node: &Node) -> Result<Self> {
        let name = node.name.clone();
        let listener = in_netns(&node.ns, || TcpListener::bind(("0.0.0.0", PORT)))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (stop2, accepted2) = (Arc::clone(&stop), Arc::clone(&accepted));
        let thread = thread::Builder::new()
            .name(format!("srv-{name}"))
            .spawn(move || serve(&listener, &name, &stop2, &accepted2))?;
        Ok(Self {
            stop,
            accepted,
            thread: Some(thread),
        })
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: &TcpListener, name: &str, stop: &AtomicBool, accepted: &AtomicU64) {
    thread::scope(|s| {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    s.spawn(move || {
                        let _ = answer(stream, name, stop);
                    });
                }
                // Nonblocking accept: poll the stop flag between attempts.
                Err(_) => thread::sleep(Duration::from_millis(2)),
            }
        }
    });
}

fn answer(stream: TcpStream, name: &str, stop: &AtomicBool) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut w = stream.try_clone()?;
    w.write_all(format!("{name}\n").as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) if line.ends_with('\n') => {
                w.write_all(line.as_bytes())?;
                line.clear();
            }
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs `f` on a thread that first joins `/run/netns/<ns>` (namespaces are per
/// thread); the caller's thread stays where it is. Sockets made inside stay
/// in that namespace.
fn in_netns<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> R {
    let path = format!("/run/netns/{ns}");
    thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns(2) on an open namespace file; it changes only this
            // scoped thread, which ends with the closure.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn arp_announce(node: &Node) -> Result<String> {
    let out = run_ok(&mut node.command(["sysctl", "-n", "net.ipv4.conf.eth0.arp_announce"]))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// From the client, raw frames a responder must ignore: a truncated ARP
/// request, a request with a bogus hardware length, an empty ARP payload.
fn send_hostile_arp(client: &Node) -> Result<()> {
    in_netns(&client.ns, || -> Result<()> {
        // SAFETY: plain socket(2), checked below before it is owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(0x0806u16.to_be()),
            )
        };
        ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: fd is fresh and owned by nobody else.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new("eth0")?;
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = 0x0806u16.to_be();
        to.sll_ifindex = i32::try_from(ifindex)?;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&arp::BROADCAST);
        let mut head = vec![0xff; 6];
        head.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
        let mut truncated = head.clone();
        truncated.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 0x02, 0]);
        let mut bad_len = head.clone();
        bad_len.extend_from_slice(&[0, 1, 8, 0, 200, 4, 0, 1]);
        bad_len.resize(60, 0xee);
        for frame in [truncated, bad_len, head] {
            // SAFETY: frame and to are valid for the lengths given.
            let n = unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const to).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            ensure!(n >= 0, "sendto: {}", std::io::Error::last_os_error());
        }
        Ok(())
    })
}
