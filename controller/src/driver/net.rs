//! A node's heartbeat and witness links: the QUIC transport that carries
//! [`Beat`]s between the two nodes of each mirror module and [`FarmBeat`]s
//! among the members of each farm module, on every heartbeat network, and
//! [`Report`]s to a mirror module's witness with its [`Answer`]s back.
//!
//! Owns: one dedicated OS thread running a current-thread tokio runtime at
//! real-time priority (so that heartbeats never wait behind disk, logging or
//! the application), one QUIC endpoint per module and network (bound to this
//! node's address on that network and the module's heartbeat port; it both
//! accepts and dials), one client endpoint per module towards its witness,
//! and the connections on them. Must not: decide anything. Every message is an
//! unreliable QUIC datagram (the cores expect loss and judge liveness from the
//! messages, not from QUIC); what arrives is decoded, checked for who sent it,
//! and handed to the daemon as a [`NetEvent`].
//!
//! A farm module has one endpoint per network too, shared by its links to
//! every other member (with its own ALPN, [`ALPN_FARM`]): the server accepts
//! any member's pinned certificate and the connection becomes the link of
//! the member whose certificate it presented; a beat must name that member
//! as its sender.
//!
//! Who dials: on each network, of each pair of nodes, the one whose name
//! sorts first dials the other's address (re-dialling every interval while
//! the link is down); the other accepts (a newer connection from the same
//! peer replaces the older). Both ends present their node certificate and
//! accept only the pinned peers' (mutual TLS, `mirrorfs::net::tls`), so a stranger can neither
//! send a beat nor receive one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use mirrorfs::net::tls::{
    client_config_for, connected_peer, server_config_for, Identity, PinnedPeer, TlsError,
};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, info_span, warn, Instrument, Span};

use crate::cluster::msg::{self, Answer, Beat, FarmBeat, Report, MAX_MESSAGE};

/// The ALPN of the heartbeat connections between the two nodes of a module.
pub const ALPN_HEARTBEAT: &[u8] = b"mirrorfarm-hb/1";

/// The ALPN of the connections from a node to the witness.
pub const ALPN_WITNESS: &[u8] = b"mirrorfarm-witness/1";

/// The ALPN of the heartbeat connections among the members of a farm module
/// (distinct from [`ALPN_HEARTBEAT`]: a farm endpoint never takes a mirror's
/// connection, nor the reverse).
pub const ALPN_FARM: &[u8] = b"mirrorfarm-farm/1";

/// The most nodes a farm module has.
pub const MAX_FARM_NODES: usize = 64;

/// The real-time priority of the transport thread (SCHED_FIFO).
const RT_PRIORITY: i32 = 10;

/// The same kind of link problem is reported again (as a [`NetEvent::Problem`])
/// at most this often while it lasts.
const PROBLEM_REPEAT: Duration = Duration::from_secs(60);

/// How long closing the endpoints may take at [`Net::stop`].
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// One module's links, as the daemon configures them.
#[derive(Debug, Clone)]
pub struct NetModule {
    /// The module's name (beats and answers carry it).
    pub module: String,
    /// This node's name (the CN of its certificate).
    pub me: String,
    /// The other node's certificate; its CN is its name.
    pub peer: PinnedPeer,
    /// This node's address on each heartbeat network.
    pub local: Vec<IpAddr>,
    /// The peer's address on each heartbeat network, in the same order.
    pub remote: Vec<IpAddr>,
    /// The module's heartbeat port (the same on both nodes).
    pub port: u16,
    /// The witness's address and certificate, if the module has one.
    pub witness: Option<(SocketAddr, PinnedPeer)>,
    /// The heartbeat interval: QUIC keep-alives and re-dials go at this pace.
    pub interval: Duration,
    /// The heartbeat timeout (the QUIC idle timeout is three times it).
    pub timeout: Duration,
}

/// One farm module's links, as the daemon configures them.
#[derive(Debug, Clone)]
pub struct NetFarm {
    /// The module's name (farm beats carry it).
    pub module: String,
    /// This node's name (the CN of its certificate).
    pub me: String,
    /// Every other member of the farm (1 to [`MAX_FARM_NODES`] - 1).
    pub peers: Vec<FarmPeer>,
    /// This node's address on each heartbeat network.
    pub local: Vec<IpAddr>,
    /// The module's heartbeat port (the same on all nodes).
    pub port: u16,
    /// The heartbeat interval: QUIC keep-alives and re-dials go at this pace.
    pub interval: Duration,
    /// The heartbeat timeout (the QUIC idle timeout is three times it).
    pub timeout: Duration,
}

/// Another member of a farm module.
#[derive(Debug, Clone)]
pub struct FarmPeer {
    /// Its node name (the CN of `cert`; its farm beats carry it).
    pub name: String,
    /// Its pinned certificate.
    pub cert: PinnedPeer,
    /// Its address on each heartbeat network, in the order of
    /// [`NetFarm::local`].
    pub addrs: Vec<IpAddr>,
}

/// What the transport hands to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// A beat from the module's peer arrived on heartbeat network `network`.
    Beat {
        /// The module.
        module: String,
        /// The index of the network (into [`NetModule::local`]).
        network: usize,
        /// The beat.
        beat: Beat,
    },
    /// A farm beat from a member arrived on heartbeat network `network`; its
    /// `from` is the member whose certificate the connection presented.
    FarmBeat {
        /// The farm module.
        module: String,
        /// The index of the network (into [`NetFarm::local`]).
        network: usize,
        /// The beat.
        beat: FarmBeat,
    },
    /// The witness answered a report.
    Answer {
        /// The module.
        module: String,
        /// The answer.
        answer: Answer,
    },
    /// A link problem worth a line in the module log (connect failed, peer
    /// refused, connection lost, ...), rate-limited.
    Problem {
        /// The module.
        module: String,
        /// What happened, for the operator.
        text: String,
    },
}

/// Why the transport could not start. Each message names the module, the
/// address or file involved, and the fix.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A module's heartbeat settings do not fit together.
    #[error("module {module}: {why}")]
    Config {
        /// The module.
        module: String,
        /// What is wrong and how to fix it.
        why: String,
    },
    /// The address of this node on a heartbeat network is not on this machine.
    #[error(
        "module {module}: cannot listen for heartbeats on {addr} (network {network}): the address \
         {ip} is not on this node; fix this node's `addrs` in the module file or add the address \
         to an interface (`ip addr`)",
        ip = addr.ip()
    )]
    AddressNotHere {
        /// The module.
        module: String,
        /// The index of the heartbeat network.
        network: usize,
        /// The address and port.
        addr: SocketAddr,
    },
    /// The heartbeat port is taken on that address.
    #[error(
        "module {module}: cannot listen for heartbeats on {addr} (network {network}): port {port} \
         is already in use there (another module or program); give this module another \
         `heartbeat_port` or stop the other user (`ss -ulpn`)",
        port = addr.port()
    )]
    PortInUse {
        /// The module.
        module: String,
        /// The index of the heartbeat network.
        network: usize,
        /// The address and port.
        addr: SocketAddr,
    },
    /// Any other failure to open a UDP socket.
    #[error(
        "module {module}: cannot open a UDP socket on {addr}: {source}; check the address and \
         port in the module file (ports below 1024 need root)"
    )]
    Bind {
        /// The module.
        module: String,
        /// The address and port.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// This node's identity or a pinned certificate cannot be used.
    #[error("module {module}: {source}")]
    Tls {
        /// The module.
        module: String,
        /// What is wrong with the identity or certificate (names the file and the fix).
        #[source]
        source: Box<TlsError>,
    },
    /// The transport thread or its runtime could not start.
    #[error(
        "cannot start the heartbeat thread: {0}; the system is out of threads or memory: check \
         `ulimit -u` and free memory"
    )]
    Thread(#[source] io::Error),
}

/// The running transport: a handle to its thread. Clones share it; sending
/// never blocks (a message for a link that is down is dropped, as a lost
/// datagram would be).
#[derive(Clone)]
pub struct Net {
    inner: Arc<Inner>,
}

impl Net {
    /// Starts the transport thread: a dedicated OS thread running a
    /// current-thread tokio runtime, raised to real-time priority (SCHED_FIFO
    /// 10; if refused, logs once and goes on), so heartbeats never wait behind
    /// disk, logging or the application. Returns once every endpoint of the
    /// mirror `modules` and the `farms` is bound, or the first error.
    pub fn start(
        id: Identity,
        modules: Vec<NetModule>,
        farms: Vec<NetFarm>,
        events: Sender<NetEvent>,
    ) -> Result<Self, NetError> {
        let modules = modules
            .into_iter()
            .map(|m| Prepared::new(&id, m))
            .collect::<Result<Vec<_>, _>>()?;
        let farms = farms
            .into_iter()
            .map(|f| PreparedFarm::new(&id, f))
            .collect::<Result<Vec<_>, _>>()?;
        // Events name the module only: one name, one module, of either kind.
        let mut names = BTreeSet::new();
        for name in modules
            .iter()
            .map(|p| &p.m.module)
            .chain(farms.iter().map(|p| &p.f.module))
        {
            if !names.insert(name.clone()) {
                return Err(config_err(
                    name,
                    "the module is listed twice: give each module file a distinct name".into(),
                ));
            }
        }
        let shared = Arc::new(Shared {
            modules: modules
                .iter()
                .map(|p| (p.m.module.clone(), p.slots.clone()))
                .collect(),
            farms: farms
                .iter()
                .map(|p| (p.f.module.clone(), p.slots.clone()))
                .collect(),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = thread::Builder::new()
            .name("mirrorfarm-net".into())
            .spawn(move || {
                raise_priority();
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(NetError::Thread(e)));
                        return;
                    }
                };
                rt.block_on(drive(modules, farms, events, ready_tx, stop_rx));
            })
            .map_err(NetError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                inner: Arc::new(Inner {
                    shared,
                    stop: Mutex::new(Some(stop_tx)),
                    thread: Mutex::new(Some(thread)),
                }),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(NetError::Thread(io::Error::other(
                    "the heartbeat thread ended during start-up",
                )))
            }
        }
    }

    /// Sends `beat` to the module's peer on every network whose link is up;
    /// never blocks.
    pub fn send_beat(&self, module: &str, beat: &Beat) {
        let Some(slots) = self.inner.shared.modules.get(module) else {
            warn!(
                module,
                "send_beat for a module the transport was not started with"
            );
            return;
        };
        let Some(bytes) = encode_checked(module, beat) else {
            return;
        };
        for (network, slot) in slots.links.iter().enumerate() {
            send_on(slot, &bytes, module, || format!("network {network}"));
        }
    }

    /// Sends `beat` to every member of the farm module connected on each
    /// network (one datagram per member and network); never blocks. A member
    /// whose link is down on a network misses the beat there.
    pub fn send_farm_beat(&self, module: &str, beat: &FarmBeat) {
        let Some(slots) = self.inner.shared.farms.get(module) else {
            warn!(
                module,
                "send_farm_beat for a farm module the transport was not started with"
            );
            return;
        };
        let Some(bytes) = encode_checked(module, beat) else {
            return;
        };
        for s in slots {
            send_on(&s.slot, &bytes, module, || {
                format!("farm network {} to {}", s.network, s.peer)
            });
        }
    }

    /// Sends `report` to the module's witness if its link is up; never blocks.
    pub fn send_report(&self, module: &str, report: &Report) {
        let Some(slots) = self.inner.shared.modules.get(module) else {
            warn!(
                module,
                "send_report for a module the transport was not started with"
            );
            return;
        };
        let Some(slot) = &slots.witness else {
            debug!(module, "the module has no witness: report not sent");
            return;
        };
        if let Some(bytes) = encode_checked(module, report) {
            send_on(slot, &bytes, module, || "the witness".into());
        }
    }

    /// Closes every endpoint and connection and joins the thread (clones of
    /// this handle can no longer send anything).
    pub fn stop(self) {
        self.inner.stop_and_join();
    }
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("modules", &self.inner.shared.modules.keys())
            .field("farms", &self.inner.shared.farms.keys())
            .finish_non_exhaustive()
    }
}

/// QUIC transport settings of a heartbeat or witness link: datagrams on, no
/// streams, keep-alives every `interval`, and an idle timeout long enough
/// that QUIC never judges liveness before the cores do (max(3 × `timeout`,
/// 3 s)). `interval: None`: no keep-alives (the witness; the nodes send them).
pub fn transport(interval: Option<Duration>, timeout: Duration) -> quinn::TransportConfig {
    transport_idle(interval, (timeout * 3).max(Duration::from_secs(3)))
}

/// The same with idle timeout `idle`. A farm link uses the heartbeat timeout
/// itself: of each pair only one member dials, so a member that restarts is
/// reached again only once the other side's old connection to its dead
/// process has timed out (with 3 × T, a rejoining member waited seconds for
/// the member that dials it; the core has counted it lost after T anyway).
pub fn transport_idle(interval: Option<Duration>, idle: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    t.keep_alive_interval(interval);
    t.datagram_receive_buffer_size(Some(64 * 1024));
    t.datagram_send_buffer_size(64 * 1024);
    t.max_concurrent_bidi_streams(0u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    // The nodes and the witness are close: a short first guess makes the
    // handshake's retransmissions come soon, so a returning peer is found
    // within an interval or two.
    t.initial_rtt(Duration::from_millis(25));
    t
}

/// The connection of one link, if it is up; shared by the sending handle
/// and the transport thread.
type Slot = Arc<Mutex<Option<quinn::Connection>>>;

/// One module's slots: one per heartbeat network, and the witness's.
#[derive(Clone)]
struct ModuleSlots {
    links: Vec<Slot>,
    witness: Option<Slot>,
}

/// The slot of one farm link: to one member on one network.
#[derive(Clone)]
struct FarmSlot {
    /// The member's name.
    peer: String,
    /// The index of the network (into [`NetFarm::local`]).
    network: usize,
    slot: Slot,
}

/// What the sending handle reads.
struct Shared {
    modules: BTreeMap<String, ModuleSlots>,
    /// Per farm module, its links (network by network, members in order).
    farms: BTreeMap<String, Vec<FarmSlot>>,
}

/// The thread and how to stop it; stopping happens once, by [`Net::stop`] or
/// when the last handle is dropped.
struct Inner {
    shared: Arc<Shared>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    fn stop_and_join(&self) {
        if let Some(stop) = lock(&self.stop).take() {
            let _ = stop.send(());
        }
        if let Some(thread) = lock(&self.thread).take() {
            if thread.join().is_err() {
                warn!("the heartbeat thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// A mirror module checked and with its TLS configurations built (on the
/// caller's thread, so that certificate errors come back from [`Net::start`]).
struct Prepared {
    m: NetModule,
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
    witness_client: Option<quinn::ClientConfig>,
    slots: ModuleSlots,
}

impl Prepared {
    fn new(id: &Identity, m: NetModule) -> Result<Self, NetError> {
        let module = m.module.clone();
        let bad = |why: String| Err(config_err(&module, why));
        check_me(id, &m.module, &m.me)?;
        if m.peer.name == m.me {
            return bad(format!(
                "the peer's certificate is this node's own ({:?}): pin the other node's \
                 certificate",
                m.me
            ));
        }
        check_addrs(&m.module, &m.local, &m.remote, "peer")?;
        if let Some((addr, _)) = &m.witness {
            if addr.is_ipv4() != m.local[0].is_ipv4() {
                return bad(format!(
                    "the witness {addr} and this node's first heartbeat address {} are not of \
                     the same IP version: reach the witness over the first heartbeat network",
                    m.local[0]
                ));
            }
        }
        check_timing(&m.module, m.interval, m.timeout)?;
        let tls = |source| tls_err(&module, source);
        let transport = Arc::new(transport(Some(m.interval), m.timeout));
        let mut server = server_config_for(id, &[&m.peer], ALPN_HEARTBEAT).map_err(tls)?;
        server.transport_config(transport.clone());
        let mut client = client_config_for(id, &m.peer, ALPN_HEARTBEAT).map_err(tls)?;
        client.transport_config(transport.clone());
        let witness_client = match &m.witness {
            Some((_, w)) => {
                let mut c = client_config_for(id, w, ALPN_WITNESS).map_err(tls)?;
                c.transport_config(transport);
                Some(c)
            }
            None => None,
        };
        let slots = ModuleSlots {
            links: m.local.iter().map(|_| Slot::default()).collect(),
            witness: m.witness.as_ref().map(|_| Slot::default()),
        };
        Ok(Self {
            m,
            server,
            client,
            witness_client,
            slots,
        })
    }
}

/// A farm module checked and with its TLS configurations built: one server
/// configuration accepting any member, one client configuration per member.
struct PreparedFarm {
    f: NetFarm,
    server: quinn::ServerConfig,
    /// One per member, in the order of [`NetFarm::peers`].
    clients: Vec<quinn::ClientConfig>,
    /// Network by network, members in order.
    slots: Vec<FarmSlot>,
}

impl PreparedFarm {
    fn new(id: &Identity, f: NetFarm) -> Result<Self, NetError> {
        let module = f.module.clone();
        let bad = |why: String| Err(config_err(&module, why));
        check_me(id, &f.module, &f.me)?;
        if f.peers.is_empty() || f.peers.len() >= MAX_FARM_NODES {
            return bad(format!(
                "{} other members: a farm has 2 to {MAX_FARM_NODES} nodes; list every other \
                 member (and only those) in the module file",
                f.peers.len()
            ));
        }
        let mut names = BTreeSet::from([f.me.as_str()]);
        for p in &f.peers {
            if p.cert.name != p.name {
                return bad(format!(
                    "member {:?}: its certificate's name (CN) is {:?}: pin that member's own \
                     certificate, or fix its name",
                    p.name, p.cert.name
                ));
            }
            if !names.insert(&p.name) {
                return bad(format!(
                    "member {:?} is listed twice (or is this node): list every other member once",
                    p.name
                ));
            }
            check_addrs(
                &f.module,
                &f.local,
                &p.addrs,
                &format!("member {:?}", p.name),
            )?;
        }
        check_timing(&f.module, f.interval, f.timeout)?;
        let tls = |source| tls_err(&module, source);
        let idle = f.timeout.max(Duration::from_secs(1));
        let transport = Arc::new(transport_idle(Some(f.interval), idle));
        let pins: Vec<&PinnedPeer> = f.peers.iter().map(|p| &p.cert).collect();
        let mut server = server_config_for(id, &pins, ALPN_FARM).map_err(tls)?;
        server.transport_config(transport.clone());
        let clients = f
            .peers
            .iter()
            .map(|p| {
                let mut c = client_config_for(id, &p.cert, ALPN_FARM).map_err(tls)?;
                c.transport_config(transport.clone());
                Ok(c)
            })
            .collect::<Result<Vec<_>, NetError>>()?;
        let slots = (0..f.local.len())
            .flat_map(|network| {
                f.peers.iter().map(move |p| FarmSlot {
                    peer: p.name.clone(),
                    network,
                    slot: Slot::default(),
                })
            })
            .collect();
        Ok(Self {
            f,
            server,
            clients,
            slots,
        })
    }
}

/// The module's node is this node (its certificate's CN).
fn check_me(id: &Identity, module: &str, me: &str) -> Result<(), NetError> {
    if id.name != me {
        return Err(config_err(
            module,
            format!(
                "this node is {me:?} in the module but its certificate's name (CN) is {:?}: use \
                 this node's own key and certificate, or fix the node's name",
                id.name
            ),
        ));
    }
    Ok(())
}

/// This node's and a peer's (`whose`) addresses: one per network, each pair
/// of the same IP version.
fn check_addrs(
    module: &str,
    local: &[IpAddr],
    remote: &[IpAddr],
    whose: &str,
) -> Result<(), NetError> {
    if local.is_empty() || local.len() != remote.len() {
        return Err(config_err(
            module,
            format!(
                "{} local and {} {whose} heartbeat addresses: list one address per heartbeat \
                 network for each node, in the same order",
                local.len(),
                remote.len()
            ),
        ));
    }
    for (k, (l, r)) in local.iter().zip(remote).enumerate() {
        if l.is_ipv4() != r.is_ipv4() {
            return Err(config_err(
                module,
                format!(
                    "network {k}: this node's address {l} and the {whose}'s {r} are not of the \
                     same IP version: use addresses of the same network"
                ),
            ));
        }
    }
    Ok(())
}

fn check_timing(module: &str, interval: Duration, timeout: Duration) -> Result<(), NetError> {
    if interval.is_zero() || timeout <= interval {
        return Err(config_err(
            module,
            format!(
                "heartbeat interval {interval:?} and timeout {timeout:?}: the timeout must be \
                 longer than a non-zero interval"
            ),
        ));
    }
    Ok(())
}

/// What a link carries in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Beats from the mirror peer, on heartbeat network `network`.
    Peer { network: usize },
    /// Farm beats from one member, on heartbeat network `network`.
    Farm { network: usize },
    /// Answers from the witness.
    Witness,
}

impl Kind {
    /// "heartbeat network K", "farm network K" or "witness", to start
    /// messages with.
    fn what(self) -> String {
        match self {
            Self::Peer { network } => format!("heartbeat network {network}"),
            Self::Farm { network } => format!("farm network {network}"),
            Self::Witness => "witness".into(),
        }
    }
}

/// Hands a module's events and rate-limited problems to the daemon.
struct Reporter {
    module: String,
    events: Sender<NetEvent>,
    problems: Mutex<RateLimit>,
    /// Set when the transport stops: problems are no longer reported.
    stopping: watch::Receiver<bool>,
}

/// One link: the one peer it talks to (over an endpoint it may share with
/// the module's other links on that network), and its connection slot.
struct Link {
    kind: Kind,
    /// The peer node or the witness.
    peer: PinnedPeer,
    /// Where to dial.
    remote: SocketAddr,
    endpoint: quinn::Endpoint,
    /// Pins `peer` (an endpoint serves several peers: no default client).
    client: quinn::ClientConfig,
    /// This end dials (and re-dials) the link; else it only accepts.
    dials: bool,
    slot: Slot,
    interval: Duration,
    report: Reporter,
    span: Span,
}

/// The accepting side of a heartbeat endpoint: each connection goes to the
/// link of the peer whose pinned certificate it presented.
struct Acceptor {
    endpoint: quinn::Endpoint,
    kind: Kind,
    /// Every link on the endpoint (one for a mirror, one per member for a
    /// farm).
    links: Vec<Arc<Link>>,
    report: Reporter,
    span: Span,
}

/// Everything bound for the modules: run by [`drive`].
#[derive(Default)]
struct Bound {
    acceptors: Vec<Arc<Acceptor>>,
    links: Vec<Arc<Link>>,
    endpoints: Vec<quinn::Endpoint>,
}

/// The transport thread's body: binds everything, reports readiness, runs
/// the links until told to stop, then closes the endpoints.
async fn drive(
    modules: Vec<Prepared>,
    farms: Vec<PreparedFarm>,
    events: Sender<NetEvent>,
    ready: std::sync::mpsc::Sender<Result<(), NetError>>,
    stop: oneshot::Receiver<()>,
) {
    let (stopping_tx, stopping) = watch::channel(false);
    let mut bound = Bound::default();
    let binding = modules
        .into_iter()
        .try_for_each(|p| bind_module(p, &events, &stopping, &mut bound))
        .and_then(|()| {
            farms
                .into_iter()
                .try_for_each(|p| bind_farm(p, &events, &stopping, &mut bound))
        });
    if let Err(e) = binding {
        let _ = ready.send(Err(e));
        return;
    }
    for acceptor in &bound.acceptors {
        tokio::spawn(accept_loop(acceptor.clone()));
    }
    for link in bound.links.iter().filter(|l| l.dials) {
        tokio::spawn(dial_loop(link.clone()));
    }
    let _ = ready.send(Ok(()));
    info!(links = bound.links.len(), "heartbeat transport running");
    // A dropped handle (the daemon gone) stops the transport too.
    let _ = stop.await;
    let _ = stopping_tx.send(true);
    for endpoint in &bound.endpoints {
        endpoint.close(0u32.into(), b"stopping");
    }
    // One bound for all: the peers' acknowledgements of the closes come
    // concurrently anyway.
    let idle = async {
        for endpoint in &bound.endpoints {
            endpoint.wait_idle().await;
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, idle).await;
    info!("heartbeat transport stopped");
}

/// Binds one mirror module's endpoints: one per heartbeat network on
/// `local[k]:port` (a server that also dials), and the witness client.
fn bind_module(
    p: Prepared,
    events: &Sender<NetEvent>,
    stopping: &watch::Receiver<bool>,
    bound: &mut Bound,
) -> Result<(), NetError> {
    let Prepared {
        m,
        server,
        client,
        witness_client,
        slots,
    } = p;
    let span = info_span!("net", node = %m.me, module = %m.module);
    let report = || Reporter::new(&m.module, events, stopping);
    for (network, (local, remote)) in m.local.iter().zip(&m.remote).enumerate() {
        let endpoint = bind_endpoint(
            &m.module,
            network,
            SocketAddr::new(*local, m.port),
            server.clone(),
        )?;
        let kind = Kind::Peer { network };
        let link_span = info_span!(parent: &span, "link", network);
        let link = Arc::new(Link {
            kind,
            peer: m.peer.clone(),
            remote: SocketAddr::new(*remote, m.port),
            endpoint: endpoint.clone(),
            client: client.clone(),
            // The node whose name sorts first dials.
            dials: m.me < m.peer.name,
            slot: slots.links[network].clone(),
            interval: m.interval,
            report: report(),
            span: link_span.clone(),
        });
        bound.acceptors.push(Arc::new(Acceptor {
            endpoint: endpoint.clone(),
            kind,
            links: vec![link.clone()],
            report: report(),
            span: link_span,
        }));
        bound.links.push(link);
        bound.endpoints.push(endpoint);
    }
    if let (Some((addr, pin)), Some(client), Some(slot)) =
        (&m.witness, witness_client, &slots.witness)
    {
        let bind = SocketAddr::new(m.local[0], 0);
        let endpoint = quinn::Endpoint::client(bind).map_err(|source| NetError::Bind {
            module: m.module.clone(),
            addr: bind,
            source,
        })?;
        bound.links.push(Arc::new(Link {
            kind: Kind::Witness,
            peer: pin.clone(),
            remote: *addr,
            endpoint: endpoint.clone(),
            client,
            dials: true,
            slot: slot.clone(),
            interval: m.interval,
            report: report(),
            span: info_span!(parent: &span, "witness", addr = %addr),
        }));
        bound.endpoints.push(endpoint);
    }
    Ok(())
}

/// Binds one farm module's endpoints: one per heartbeat network on
/// `local[k]:port`, each accepting every member and dialling those whose
/// names sort after this node's.
fn bind_farm(
    p: PreparedFarm,
    events: &Sender<NetEvent>,
    stopping: &watch::Receiver<bool>,
    bound: &mut Bound,
) -> Result<(), NetError> {
    let PreparedFarm {
        f,
        server,
        clients,
        slots,
    } = p;
    let span = info_span!("farm", node = %f.me, module = %f.module);
    let report = || Reporter::new(&f.module, events, stopping);
    let mut slots = slots.into_iter();
    for (network, local) in f.local.iter().enumerate() {
        let endpoint = bind_endpoint(
            &f.module,
            network,
            SocketAddr::new(*local, f.port),
            server.clone(),
        )?;
        let kind = Kind::Farm { network };
        let mut links = Vec::with_capacity(f.peers.len());
        for (peer, client) in f.peers.iter().zip(&clients) {
            // PreparedFarm::new made one slot per network and member, in
            // this order.
            let slot = slots.next().expect("one slot per network and member");
            debug_assert!(slot.network == network && slot.peer == peer.name);
            links.push(Arc::new(Link {
                kind,
                peer: peer.cert.clone(),
                remote: SocketAddr::new(peer.addrs[network], f.port),
                endpoint: endpoint.clone(),
                client: client.clone(),
                // Of each pair of members, the one whose name sorts first
                // dials.
                dials: f.me < peer.name,
                slot: slot.slot,
                interval: f.interval,
                report: report(),
                span: info_span!(parent: &span, "link", network, peer = %peer.name),
            }));
        }
        bound.acceptors.push(Arc::new(Acceptor {
            endpoint: endpoint.clone(),
            kind,
            links: links.clone(),
            report: report(),
            span: info_span!(parent: &span, "accept", network),
        }));
        bound.links.extend(links);
        bound.endpoints.push(endpoint);
    }
    Ok(())
}

/// Binds a heartbeat endpoint (a server that also dials) on `addr`, with
/// errors that say what to fix.
fn bind_endpoint(
    module: &str,
    network: usize,
    addr: SocketAddr,
    server: quinn::ServerConfig,
) -> Result<quinn::Endpoint, NetError> {
    quinn::Endpoint::server(server, addr).map_err(|source| match source.kind() {
        io::ErrorKind::AddrNotAvailable => NetError::AddressNotHere {
            module: module.to_owned(),
            network,
            addr,
        },
        io::ErrorKind::AddrInUse => NetError::PortInUse {
            module: module.to_owned(),
            network,
            addr,
        },
        _ => NetError::Bind {
            module: module.to_owned(),
            addr,
            source,
        },
    })
}

/// Accepts connections on a heartbeat endpoint: each one that completes the
/// handshake with a pinned peer's certificate becomes that peer's link's
/// connection (replacing an older one).
async fn accept_loop(acc: Arc<Acceptor>) {
    let span = acc.span.clone();
    let mut stopping = acc.report.stopping.clone();
    async move {
        loop {
            let incoming = tokio::select! {
                i = acc.endpoint.accept() => i,
                _ = stopping.changed() => break,
            };
            let Some(incoming) = incoming else { break };
            let from = incoming.remote_address();
            let acc = acc.clone();
            tokio::spawn(
                async move {
                    match incoming.await {
                        Ok(conn) => match acc.link_of(&conn) {
                            Some(link) => link.install(conn),
                            None => {
                                conn.close(1u32.into(), b"not a pinned peer");
                                acc.report.problem(
                                    "refused",
                                    format!(
                                        "{}: refused a connection from {from}: it is not {}",
                                        acc.kind.what(),
                                        acc.expected()
                                    ),
                                );
                            }
                        },
                        Err(e) => acc.report.problem(
                            "refused",
                            format!("{}: refused a connection from {from}: {e}", acc.kind.what()),
                        ),
                    }
                }
                .instrument(Span::current()),
            );
        }
    }
    .instrument(span)
    .await;
}

impl Acceptor {
    /// The link of the peer at the other end of `conn`. The TLS config
    /// accepts only pinned peers; this checks it again, at no cost, and
    /// finds which one.
    fn link_of(&self, conn: &quinn::Connection) -> Option<&Arc<Link>> {
        let pins: Vec<&PinnedPeer> = self.links.iter().map(|l| &l.peer).collect();
        let pin = connected_peer(conn, &pins)?;
        self.links
            .iter()
            .find(|l| l.peer.fingerprint == pin.fingerprint)
    }

    /// Who may connect, for messages: "node2" or "any of node2, node3".
    fn expected(&self) -> String {
        let names: Vec<&str> = self.links.iter().map(|l| l.peer.name.as_str()).collect();
        match names.as_slice() {
            [one] => (*one).to_owned(),
            many => format!("any of {}", many.join(", ")),
        }
    }
}

/// Dials the link's peer (or witness) every interval while the link is down.
async fn dial_loop(link: Arc<Link>) {
    let span = link.span.clone();
    let mut stopping = link.report.stopping.clone();
    // Each attempt restarts the handshake's retransmissions from a short
    // timer, so a returning peer is found soon after it listens again.
    let attempt = (link.interval * 2).max(Duration::from_millis(500));
    let mut tick = tokio::time::interval(link.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    async move {
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopping.changed() => break,
            }
            if link.is_up() {
                continue;
            }
            let connecting =
                match link
                    .endpoint
                    .connect_with(link.client.clone(), link.remote, &link.peer.name)
                {
                    Ok(c) => c,
                    Err(e) => {
                        link.problem(
                            "connect",
                            format!("{}: cannot dial {}: {e}", link.what(), link.remote),
                        );
                        continue;
                    }
                };
            let result = tokio::select! {
                r = tokio::time::timeout(attempt, connecting) => r,
                _ = stopping.changed() => break,
            };
            match result {
                Ok(Ok(conn)) => link.install(conn),
                Ok(Err(e)) => link.problem(
                    "connect",
                    format!(
                        "{}: cannot connect to {} at {}: {e}",
                        link.what(),
                        link.peer.name,
                        link.remote
                    ),
                ),
                Err(_) => link.problem(
                    "connect",
                    format!(
                        "{}: {} at {} does not answer (no handshake within {:.1} s): check that \
                         it runs and that UDP port {} is open between the two",
                        link.what(),
                        link.peer.name,
                        link.remote,
                        attempt.as_secs_f64(),
                        link.remote.port()
                    ),
                ),
            }
        }
    }
    .instrument(span)
    .await;
}

impl Link {
    /// "heartbeat network K", "farm network K" or "witness", to start
    /// messages with.
    fn what(&self) -> String {
        self.kind.what()
    }

    /// Whether the link has a live connection.
    fn is_up(&self) -> bool {
        lock(&self.slot)
            .as_ref()
            .is_some_and(|c| c.close_reason().is_none())
    }

    /// Makes `conn` the link's connection (closing an older one) and starts
    /// reading its datagrams.
    fn install(self: &Arc<Self>, conn: quinn::Connection) {
        let old = lock(&self.slot).replace(conn.clone());
        if let Some(old) = old {
            if old.stable_id() != conn.stable_id() {
                old.close(0u32.into(), b"replaced by a newer connection");
            }
        }
        debug!(parent: &self.span, remote = %conn.remote_address(), "connected");
        tokio::spawn(self.clone().read(conn).instrument(self.span.clone()));
    }

    /// Delivers the connection's datagrams until it closes, then clears the
    /// slot if the connection still held it.
    async fn read(self: Arc<Self>, conn: quinn::Connection) {
        let mut proven = false;
        let reason = loop {
            match conn.read_datagram().await {
                Ok(bytes) => {
                    if self.deliver(&bytes) && !proven {
                        proven = true;
                        // Only a connection that carried a good message
                        // ends a problem: a peer that accepts the handshake
                        // and then refuses our certificate would otherwise
                        // be reported every interval.
                        lock(&self.report.problems).reset();
                        info!(remote = %conn.remote_address(), "link up");
                    }
                }
                Err(e) => break e,
            }
        };
        let mine = {
            let mut slot = lock(&self.slot);
            let mine = slot
                .as_ref()
                .is_some_and(|c| c.stable_id() == conn.stable_id());
            if mine {
                *slot = None;
            }
            mine
        };
        if !mine {
            return;
        }
        // A TLS alert closes the connection at the transport level just
        // after our side thought the handshake done (TLS 1.3 checks the
        // client's certificate last).
        let refused = matches!(reason, quinn::ConnectionError::ConnectionClosed(_));
        let hint = if proven || !refused {
            String::new()
        } else {
            format!(
                " (if {} refused this node's certificate: it must pin this node's certificate)",
                self.peer.name
            )
        };
        self.problem(
            "lost",
            format!(
                "{}: connection to {} at {} closed: {reason}{hint}",
                self.what(),
                self.peer.name,
                conn.remote_address()
            ),
        );
    }

    /// Decodes and checks one datagram and hands it to the daemon. Returns
    /// whether it was a good message.
    fn deliver(&self, bytes: &[u8]) -> bool {
        let module = &self.report.module;
        match self.kind {
            Kind::Peer { network } => match msg::decode::<Beat>(bytes) {
                Ok(beat) if beat.module == *module && beat.from == self.peer.name => {
                    self.report.emit(NetEvent::Beat {
                        module: module.clone(),
                        network,
                        beat,
                    });
                    true
                }
                Ok(beat) => {
                    self.foreign(&beat.module, &beat.from);
                    false
                }
                Err(e) => {
                    self.malformed("a beat", e);
                    false
                }
            },
            Kind::Farm { network } => match msg::decode::<FarmBeat>(bytes) {
                Ok(beat) if beat.module == *module && beat.from == self.peer.name => {
                    self.report.emit(NetEvent::FarmBeat {
                        module: module.clone(),
                        network,
                        beat,
                    });
                    true
                }
                Ok(beat) => {
                    self.foreign(&beat.module, &beat.from);
                    false
                }
                Err(e) => {
                    self.malformed("a farm beat", e);
                    false
                }
            },
            Kind::Witness => match msg::decode::<Answer>(bytes) {
                Ok(answer) if answer.module == *module => {
                    self.report.emit(NetEvent::Answer {
                        module: module.clone(),
                        answer,
                    });
                    true
                }
                Ok(answer) => {
                    self.problem(
                        "foreign",
                        format!(
                            "{}: dropped an answer for module {:?} on the link of module {:?}",
                            self.what(),
                            answer.module,
                            module
                        ),
                    );
                    false
                }
                Err(e) => {
                    self.problem(
                        "malformed",
                        format!("{}: dropped an answer: {e}", self.what()),
                    );
                    false
                }
            },
        }
    }

    /// A beat that names another module or sender than the link's (whose
    /// sender TLS authenticated).
    fn foreign(&self, module: &str, from: &str) {
        let fix = if module == self.report.module {
            format!(
                "the connection presented {}'s certificate: a node beats under its own name \
                 only (check the node name and certificate on {})",
                self.peer.name, self.peer.name
            )
        } else {
            "give each module its own heartbeat_port on every node".to_owned()
        };
        self.problem(
            "foreign",
            format!(
                "{}: dropped a beat for module {module:?} from {from:?}: this link carries \
                 module {:?} from {:?}; {fix}",
                self.what(),
                self.report.module,
                self.peer.name
            ),
        );
    }

    fn malformed(&self, what: &str, e: msg::MsgError) {
        self.problem(
            "malformed",
            format!(
                "{}: dropped {what} from {}: {e}",
                self.what(),
                self.peer.name
            ),
        );
    }

    fn problem(&self, kind: &'static str, text: String) {
        self.report.problem(kind, text);
    }
}

impl Reporter {
    fn new(module: &str, events: &Sender<NetEvent>, stopping: &watch::Receiver<bool>) -> Self {
        Self {
            module: module.to_owned(),
            events: events.clone(),
            problems: Mutex::default(),
            stopping: stopping.clone(),
        }
    }

    /// Reports a problem of kind `kind`: logged, and sent to the daemon,
    /// unless the same kind was reported within [`PROBLEM_REPEAT`].
    fn problem(&self, kind: &'static str, text: String) {
        if *self.stopping.borrow() {
            debug!("{text}");
            return;
        }
        if !lock(&self.problems).allow(kind, Instant::now()) {
            debug!("{text}");
            return;
        }
        warn!("{text}");
        self.emit(NetEvent::Problem {
            module: self.module.clone(),
            text,
        });
    }

    fn emit(&self, event: NetEvent) {
        match self.events.try_send(event) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            // The daemon is behind: a lost beat is what the cores expect.
            Err(TrySendError::Full(e)) => debug!(event = ?e, "event queue full: dropped"),
        }
    }
}

/// Remembers when each kind of problem was last reported.
#[derive(Debug, Default)]
struct RateLimit {
    last: BTreeMap<&'static str, Instant>,
}

impl RateLimit {
    /// Whether a problem of `kind` may be reported at `now` (and notes it).
    fn allow(&mut self, kind: &'static str, now: Instant) -> bool {
        match self.last.get(kind) {
            Some(at) if now.saturating_duration_since(*at) < PROBLEM_REPEAT => false,
            _ => {
                self.last.insert(kind, now);
                true
            }
        }
    }

    /// The link works again: the next problem is news.
    fn reset(&mut self) {
        self.last.clear();
    }
}

/// Encodes a message, dropping (and logging) one too long for a datagram.
fn encode_checked<T: serde::Serialize>(module: &str, msg: &T) -> Option<Vec<u8>> {
    let bytes = msg::encode(msg);
    if bytes.len() > MAX_MESSAGE {
        warn!(
            module,
            len = bytes.len(),
            "message longer than {MAX_MESSAGE} bytes: not sent (the receiver would drop it)"
        );
        return None;
    }
    Some(bytes)
}

/// Sends one datagram on a link if it is up; drops it otherwise.
fn send_on(slot: &Slot, bytes: &[u8], module: &str, what: impl FnOnce() -> String) {
    // Clone the handle out: the send must not hold the slot's lock.
    let Some(conn) = lock(slot).clone() else {
        return;
    };
    if let Err(e) = conn.send_datagram(bytes.to_vec().into()) {
        debug!(module, "not sent on {}: {e}", what());
    }
}

/// Raises the calling thread to SCHED_FIFO [`RT_PRIORITY`]; logs once and goes
/// on if refused.
fn raise_priority() {
    let param = libc::sched_param {
        sched_priority: RT_PRIORITY,
    };
    // SAFETY: pid 0 is the calling thread (Linux schedules threads); `param`
    // is a valid sched_param that outlives the call.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        warn!(
            error = %io::Error::last_os_error(),
            "cannot raise the heartbeat thread to real-time priority (SCHED_FIFO {RT_PRIORITY}): \
             heartbeats may wait behind other work; run the daemon as root (or with CAP_SYS_NICE)"
        );
    }
}

fn config_err(module: &str, why: String) -> NetError {
    NetError::Config {
        module: module.to_owned(),
        why,
    }
}

fn tls_err(module: &str, source: TlsError) -> NetError {
    NetError::Tls {
        module: module.to_owned(),
        source: Box::new(source),
    }
}

/// Locks a mutex, ignoring poisoning: the slots hold plain handles that a
/// panicking holder cannot leave half-changed.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
#[path = "net_test.rs"]
pub(crate) mod tests;
