//! A node's heartbeat and witness links: the QUIC transport that carries
//! [`Beat`]s between the two nodes of each module, on every heartbeat network,
//! and [`Report`]s to the module's witness with its [`Answer`]s back.
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
//! Who dials: on each network the node whose name sorts first dials the
//! other's address (re-dialling every interval while the link is down); the
//! other accepts. Both ends present their node certificate and accept only the
//! pinned peer's (mutual TLS, `mirrorfs::net::tls`), so a stranger can neither
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

use crate::cluster::msg::{self, Answer, Beat, Report, MAX_MESSAGE};

/// The ALPN of the heartbeat connections between the two nodes of a module.
pub const ALPN_HEARTBEAT: &[u8] = b"mirrorfarm-hb/1";

/// The ALPN of the connections from a node to the witness.
pub const ALPN_WITNESS: &[u8] = b"mirrorfarm-witness/1";

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
    /// disk, logging or the application. Returns once every endpoint is
    /// bound, or the first error.
    pub fn start(
        id: Identity,
        modules: Vec<NetModule>,
        events: Sender<NetEvent>,
    ) -> Result<Self, NetError> {
        let prepared = modules
            .into_iter()
            .map(|m| Prepared::new(&id, m))
            .collect::<Result<Vec<_>, _>>()?;
        let mut names = BTreeSet::new();
        for p in &prepared {
            if !names.insert(p.m.module.clone()) {
                return Err(config_err(
                    &p.m.module,
                    "the module is listed twice: give each module file a distinct name".into(),
                ));
            }
        }
        let shared = Arc::new(Shared {
            modules: prepared
                .iter()
                .map(|p| (p.m.module.clone(), p.slots.clone()))
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
                rt.block_on(drive(prepared, events, ready_tx, stop_rx));
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
    /// TEMPORARY until the farm links land: farm beats are not carried yet.
    pub fn send_farm_beat(&self, _module: &str, _beat: &msg::FarmBeat) {}

    pub fn stop(self) {
        self.inner.stop_and_join();
    }
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("modules", &self.inner.shared.modules.keys())
            .finish_non_exhaustive()
    }
}

/// QUIC transport settings of a heartbeat or witness link: datagrams on, no
/// streams, keep-alives every `interval`, and an idle timeout long enough
/// that QUIC never judges liveness before the cores do (max(3 × `timeout`,
/// 3 s)). `interval: None`: no keep-alives (the witness; the nodes send them).
pub fn transport(interval: Option<Duration>, timeout: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    let idle = (timeout * 3).max(Duration::from_secs(3));
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

/// What the sending handle reads.
struct Shared {
    modules: BTreeMap<String, ModuleSlots>,
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

/// A module checked and with its TLS configurations built (on the caller's
/// thread, so that certificate errors come back from [`Net::start`]).
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
        if id.name != m.me {
            return bad(format!(
                "this node is {:?} in the module but its certificate's name (CN) is {:?}: use \
                 this node's own key and certificate, or fix the node's name",
                m.me, id.name
            ));
        }
        if m.peer.name == m.me {
            return bad(format!(
                "the peer's certificate is this node's own ({:?}): pin the other node's \
                 certificate",
                m.me
            ));
        }
        if m.local.is_empty() || m.local.len() != m.remote.len() {
            return bad(format!(
                "{} local and {} peer heartbeat addresses: list one address per heartbeat network \
                 for each node, in the same order",
                m.local.len(),
                m.remote.len()
            ));
        }
        for (k, (l, r)) in m.local.iter().zip(&m.remote).enumerate() {
            if l.is_ipv4() != r.is_ipv4() {
                return bad(format!(
                    "network {k}: this node's address {l} and the peer's {r} are not of the same \
                     IP version: use addresses of the same network"
                ));
            }
        }
        if let Some((addr, _)) = &m.witness {
            if addr.is_ipv4() != m.local[0].is_ipv4() {
                return bad(format!(
                    "the witness {addr} and this node's first heartbeat address {} are not of \
                     the same IP version: reach the witness over the first heartbeat network",
                    m.local[0]
                ));
            }
        }
        if m.interval.is_zero() || m.timeout <= m.interval {
            return bad(format!(
                "heartbeat interval {:?} and timeout {:?}: the timeout must be longer than a \
                 non-zero interval",
                m.interval, m.timeout
            ));
        }
        let tls = |source| NetError::Tls {
            module: module.clone(),
            source: Box::new(source),
        };
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

/// What a link carries in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Beats from the peer, on heartbeat network `network`.
    Peer { network: usize },
    /// Answers from the witness.
    Witness,
}

/// One link: an endpoint, the one peer it talks to, and its connection slot.
struct Link {
    module: String,
    /// This node's name.
    me: String,
    kind: Kind,
    /// The peer node or the witness.
    peer: PinnedPeer,
    /// Where to dial.
    remote: SocketAddr,
    endpoint: quinn::Endpoint,
    slot: Slot,
    events: Sender<NetEvent>,
    interval: Duration,
    problems: Mutex<RateLimit>,
    /// Set when the transport stops: problems are no longer reported.
    stopping: watch::Receiver<bool>,
    span: Span,
}

/// The transport thread's body: binds everything, reports readiness, runs
/// the links until told to stop, then closes the endpoints.
async fn drive(
    modules: Vec<Prepared>,
    events: Sender<NetEvent>,
    ready: std::sync::mpsc::Sender<Result<(), NetError>>,
    stop: oneshot::Receiver<()>,
) {
    let (stopping_tx, stopping) = watch::channel(false);
    let mut links = Vec::new();
    for p in modules {
        match bind_module(p, &events, &stopping) {
            Ok(mut l) => links.append(&mut l),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        }
    }
    for link in &links {
        let dials = match link.kind {
            Kind::Peer { .. } => {
                tokio::spawn(accept_loop(link.clone()));
                // The node whose name sorts first dials.
                link.me < link.peer.name
            }
            Kind::Witness => true,
        };
        if dials {
            tokio::spawn(dial_loop(link.clone()));
        }
    }
    let _ = ready.send(Ok(()));
    info!(links = links.len(), "heartbeat transport running");
    // A dropped handle (the daemon gone) stops the transport too.
    let _ = stop.await;
    let _ = stopping_tx.send(true);
    for link in &links {
        link.endpoint.close(0u32.into(), b"stopping");
    }
    // One bound for all: the peers' acknowledgements of the closes come
    // concurrently anyway.
    let idle = async {
        for link in &links {
            link.endpoint.wait_idle().await;
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, idle).await;
    info!("heartbeat transport stopped");
}

/// Binds one module's endpoints: one per heartbeat network on
/// `local[k]:port` (a server that also dials), and the witness client.
fn bind_module(
    p: Prepared,
    events: &Sender<NetEvent>,
    stopping: &watch::Receiver<bool>,
) -> Result<Vec<Arc<Link>>, NetError> {
    let Prepared {
        m,
        server,
        client,
        witness_client,
        slots,
    } = p;
    let span = info_span!("net", node = %m.me, module = %m.module);
    let mut links = Vec::new();
    for (network, (local, remote)) in m.local.iter().zip(&m.remote).enumerate() {
        let addr = SocketAddr::new(*local, m.port);
        let mut endpoint = quinn::Endpoint::server(server.clone(), addr).map_err(|source| {
            match source.kind() {
                io::ErrorKind::AddrNotAvailable => NetError::AddressNotHere {
                    module: m.module.clone(),
                    network,
                    addr,
                },
                io::ErrorKind::AddrInUse => NetError::PortInUse {
                    module: m.module.clone(),
                    network,
                    addr,
                },
                _ => NetError::Bind {
                    module: m.module.clone(),
                    addr,
                    source,
                },
            }
        })?;
        endpoint.set_default_client_config(client.clone());
        links.push(Arc::new(Link {
            module: m.module.clone(),
            me: m.me.clone(),
            kind: Kind::Peer { network },
            peer: m.peer.clone(),
            remote: SocketAddr::new(*remote, m.port),
            endpoint,
            slot: slots.links[network].clone(),
            events: events.clone(),
            interval: m.interval,
            problems: Mutex::default(),
            stopping: stopping.clone(),
            span: info_span!(parent: &span, "link", network),
        }));
    }
    if let (Some((addr, pin)), Some(client), Some(slot)) =
        (&m.witness, witness_client, &slots.witness)
    {
        let bind = SocketAddr::new(m.local[0], 0);
        let mut endpoint = quinn::Endpoint::client(bind).map_err(|source| NetError::Bind {
            module: m.module.clone(),
            addr: bind,
            source,
        })?;
        endpoint.set_default_client_config(client);
        links.push(Arc::new(Link {
            module: m.module.clone(),
            me: m.me.clone(),
            kind: Kind::Witness,
            peer: pin.clone(),
            remote: *addr,
            endpoint,
            slot: slot.clone(),
            events: events.clone(),
            interval: m.interval,
            problems: Mutex::default(),
            stopping: stopping.clone(),
            span: info_span!(parent: &span, "witness", addr = %addr),
        }));
    }
    Ok(links)
}

/// Accepts connections on a heartbeat endpoint: each one that completes the
/// handshake with the pinned peer's certificate becomes the link's connection.
async fn accept_loop(link: Arc<Link>) {
    let span = link.span.clone();
    let mut stopping = link.stopping.clone();
    async move {
        loop {
            let incoming = tokio::select! {
                i = link.endpoint.accept() => i,
                _ = stopping.changed() => break,
            };
            let Some(incoming) = incoming else { break };
            let from = incoming.remote_address();
            let link = link.clone();
            tokio::spawn(
                async move {
                    match incoming.await {
                        // The TLS config accepts only the pinned peer; this
                        // checks it again, at no cost, before any message.
                        Ok(conn) if connected_peer(&conn, &[&link.peer]).is_some() => {
                            link.install(conn);
                        }
                        Ok(conn) => {
                            conn.close(1u32.into(), b"not the pinned peer");
                            link.problem(
                                "refused",
                                format!(
                                    "{}: refused a connection from {from}: it is not {}",
                                    link.what(),
                                    link.peer.name
                                ),
                            );
                        }
                        Err(e) => link.problem(
                            "refused",
                            format!("{}: refused a connection from {from}: {e}", link.what()),
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

/// Dials the link's peer (or witness) every interval while the link is down.
async fn dial_loop(link: Arc<Link>) {
    let span = link.span.clone();
    let mut stopping = link.stopping.clone();
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
            let connecting = match link.endpoint.connect(link.remote, &link.peer.name) {
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
    /// "heartbeat network K" or "witness", to start messages with.
    fn what(&self) -> String {
        match self.kind {
            Kind::Peer { network } => format!("heartbeat network {network}"),
            Kind::Witness => "witness".into(),
        }
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
        debug!(remote = %conn.remote_address(), "connected");
        tokio::spawn(self.clone().read(conn).instrument(Span::current()));
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
                        lock(&self.problems).reset();
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
        match self.kind {
            Kind::Peer { network } => match msg::decode::<Beat>(bytes) {
                Ok(beat) if beat.module == self.module && beat.from == self.peer.name => {
                    self.emit(NetEvent::Beat {
                        module: self.module.clone(),
                        network,
                        beat,
                    });
                    true
                }
                Ok(beat) => {
                    self.problem(
                        "foreign",
                        format!(
                            "{}: dropped a beat for module {:?} from {:?}: this link carries \
                             module {:?} from {:?}; give each module its own heartbeat_port on \
                             both nodes",
                            self.what(),
                            beat.module,
                            beat.from,
                            self.module,
                            self.peer.name
                        ),
                    );
                    false
                }
                Err(e) => {
                    self.problem(
                        "malformed",
                        format!(
                            "{}: dropped a beat from {}: {e}",
                            self.what(),
                            self.peer.name
                        ),
                    );
                    false
                }
            },
            Kind::Witness => match msg::decode::<Answer>(bytes) {
                Ok(answer) if answer.module == self.module => {
                    self.emit(NetEvent::Answer {
                        module: self.module.clone(),
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
                            self.module
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

/// Locks a mutex, ignoring poisoning: the slots hold plain handles that a
/// panicking holder cannot leave half-changed.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
#[path = "net_test.rs"]
pub(crate) mod tests;
