//! The primary's connection driver: one QUIC connection to the secondary, one
//! ordered bidirectional stream, and the [`Replicator`] state machine fed from
//! it. A [`Link`] lives as long as its connection; reconnecting makes a new one.
//!
//! Owns the runtime thread and the three small tasks around the core: the writer
//! (takes submitted ops, numbers them, sends them in batches), the reader
//! (decodes acks and completes the waiting callers) and the timer (stall
//! timeout). A dead secondary is noticed by QUIC (idle timeout = the peer
//! timeout, with keepalives), a stalled one by the core ([`Link::stalled`]).
//! Makes no replication decision of its own: what to send is the overlay's,
//! when an op is done is the core's.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Sender;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, info_span, warn, Instrument};

use super::tls::{client_config, Identity, PinnedPeer, TlsError};
use super::{client_bind, transport, FrameReader, HANDSHAKE_TIMEOUT};
use crate::latency::{self, Class, Stage};
use crate::proto::generation::{GenerationId, History};
use crate::proto::path::RelPath;
use crate::proto::stream::{Completion, Replicator};
use crate::proto::wire::{
    Decoded, Frame, Hello, Op, Seq, MAX_FRAME, MAX_SUSPECTS, PROTOCOL_VERSION,
};

/// Why the primary could not start replicating.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Building the TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No UDP socket could be bound.
    #[error("cannot open a UDP socket: {0}")]
    Socket(io::Error),
    /// Nothing answered in time.
    #[error("the secondary at {addr} did not answer within {secs} s: check that `mirrorfs serve` runs there, listens on that address, and that UDP port {port} is open")]
    Unreachable {
        /// The peer address.
        addr: SocketAddr,
        /// The wait, seconds.
        secs: f64,
        /// The UDP port.
        port: u16,
    },
    /// The QUIC/TLS handshake failed (wrong certificate on either side, …).
    #[error(
        "the secondary at {addr} refused the connection or could not be authenticated: {reason}"
    )]
    Handshake {
        /// The peer address.
        addr: SocketAddr,
        /// What quinn/rustls reported.
        reason: String,
    },
    /// The secondary answered the hello with a refusal.
    #[error("the secondary at {addr} refused us: {reason}")]
    Refused {
        /// The peer address.
        addr: SocketAddr,
        /// Its reason.
        reason: String,
    },
    /// The secondary is not who the pinned certificate says, or speaks another
    /// protocol version.
    #[error("{0}")]
    Mismatch(String),
    /// The runtime thread could not start.
    #[error("cannot start the replication thread: {0}")]
    Thread(io::Error),
}

/// Everything the primary needs to reach its secondary.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The secondary's `mirrorfs serve` address.
    pub peer: SocketAddr,
    /// This node's identity.
    pub identity: Arc<Identity>,
    /// The secondary's pinned certificate.
    pub pinned: PinnedPeer,
    /// Silence after which the peer is lost when nothing is asked of it
    /// (QUIC idle timeout, with keepalives), and after which it shows as
    /// stalled when ops are in flight and it reports no progress.
    pub peer_timeout: Duration,
    /// No progress at all (no frame of any kind) for this long while ops are
    /// in flight: the peer is lost, although reachable (a hung disk). At
    /// least `peer_timeout` (a shorter one counts as `peer_timeout`);
    /// `mount --stall-timeout`, by default [`DEFAULT_STALL_TIMEOUT`].
    pub stall_timeout: Duration,
}

/// The default [`LinkConfig::stall_timeout`].
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What the secondary's hello told: its history and suspect directories.
type PeerHello = (Vec<u64>, Vec<RelPath>);

struct Submission {
    op: Op,
    done: Sender<Completion>,
    /// When it was queued (for [`latency`]).
    at: Instant,
}

/// A caller waiting for an op's answer: its channel, and the op's class and
/// the moment it was encoded (for [`latency`]).
type Waiter = (Sender<Completion>, Class, Instant);

/// Counters shown by status and logs.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Ops submitted.
    pub ops: AtomicU64,
    /// Payload bytes submitted.
    pub bytes: AtomicU64,
}

#[derive(Debug, Default)]
struct Shared {
    lost: AtomicBool,
    reason: Mutex<Option<String>>,
    lost_cv: std::sync::Condvar,
    in_flight: AtomicU64,
    stats: LinkStats,
}

/// One connection to the secondary.
#[derive(Debug)]
pub struct Link {
    tx: mpsc::UnboundedSender<Submission>,
    shared: Arc<Shared>,
    /// The stream core, shared with the driver (for [`Link::stalled`]).
    core: Arc<Mutex<Replicator>>,
    /// The secondary's generation history as its hello said.
    peer_history: History,
    /// Directories the secondary may hold unreplicated changes in.
    peer_suspects: Vec<RelPath>,
}

impl Link {
    /// Connects to the secondary, exchanges hellos (ours carries `history`),
    /// and starts the driver thread. Returns once the stream is ready, or
    /// fails after [`HANDSHAKE_TIMEOUT`].
    pub fn connect(cfg: &LinkConfig, history: &History) -> Result<Self, ConnectError> {
        Self::connect_within(cfg, history, HANDSHAKE_TIMEOUT)
    }

    /// [`Link::connect`], giving up on a peer that does not answer within
    /// `within` (one that answered has [`HANDSHAKE_TIMEOUT`] to finish the
    /// handshake). Reconnection attempts: short ones, each starting the
    /// handshake's retransmissions afresh, find a returning peer sooner than
    /// long ones, whose retransmissions back off.
    pub fn connect_within(
        cfg: &LinkConfig,
        history: &History,
        within: Duration,
    ) -> Result<Self, ConnectError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let core = Arc::new(Mutex::new(Replicator::new(
            cfg.peer_timeout,
            cfg.stall_timeout,
        )));
        let c = core.clone();
        let cfg = cfg.clone();
        let ids: Vec<u64> = history.ids().iter().map(|g| g.0).collect();
        thread::Builder::new()
            .name("mirrorfs-link".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ConnectError::Thread(e)));
                        return;
                    }
                };
                let span = info_span!("link", peer = %cfg.peer);
                rt.block_on(drive(cfg, ids, within, rx, s, c, ready_tx).instrument(span));
            })
            .map_err(ConnectError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok((peer, suspects))) => Ok(Self {
                tx,
                shared,
                core,
                peer_history: History::from_ids(peer.into_iter().map(GenerationId).collect()),
                peer_suspects: suspects,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConnectError::Thread(io::Error::other(
                "the replication thread ended during start-up",
            ))),
        }
    }

    /// The secondary's generation history at connection time.
    pub fn peer_history(&self) -> &History {
        &self.peer_history
    }

    /// Directories the secondary may hold unreplicated changes in.
    pub fn peer_suspects(&self) -> &[RelPath] {
        &self.peer_suspects
    }

    /// Sends `op` behind everything submitted before; the receiver gets its
    /// completion (`EIO` if the connection is lost first).
    pub fn submit(&self, op: Op) -> crossbeam_channel::Receiver<Completion> {
        self.shared.stats.ops.fetch_add(1, Ordering::Relaxed);
        self.shared
            .stats
            .bytes
            .fetch_add(op.payload_len() as u64, Ordering::Relaxed);
        let (done, rx) = crossbeam_channel::bounded(1);
        let at = Instant::now();
        if let Err(e) = self.tx.send(Submission { op, done, at }) {
            let _ = e.0.done.send(Err(libc::EIO));
        }
        rx
    }

    /// Why the connection is lost, if it is.
    pub fn lost(&self) -> Option<String> {
        self.shared
            .reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits up to `timeout` for the connection to be lost; true if it is.
    pub fn wait_lost(&self, timeout: Duration) -> bool {
        let r = self.shared.reason.lock().unwrap_or_else(|e| e.into_inner());
        let (r, _) = self
            .shared
            .lost_cv
            .wait_timeout_while(r, timeout, |r| r.is_none())
            .unwrap_or_else(|e| e.into_inner());
        r.is_some()
    }

    /// How long the secondary has made no progress while ops wait for it,
    /// once that is the peer timeout or more (`None` while it makes progress
    /// or has nothing to do): reachable, but stalled (e.g. its disk hangs).
    /// It is lost once this reaches the stall timeout.
    pub fn stalled(&self) -> Option<Duration> {
        self.core
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stalled(Instant::now())
    }

    /// Ops sent and not yet completed.
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Counters.
    pub fn stats(&self) -> &LinkStats {
        &self.shared.stats
    }
}

/// Connects, then runs the writer, reader and timer until the peer is lost and
/// every caller has been answered.
async fn drive(
    cfg: LinkConfig,
    history: Vec<u64>,
    within: Duration,
    mut rx: mpsc::UnboundedReceiver<Submission>,
    shared: Arc<Shared>,
    core: Arc<Mutex<Replicator>>,
    ready: std::sync::mpsc::Sender<Result<PeerHello, ConnectError>>,
) {
    let (endpoint, conn, mut send, mut recv, peer_history, leftover) =
        match handshake(&cfg, history, within).await {
            Ok(x) => x,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
    info!(peer_node = %cfg.pinned.name, "connected to the secondary");
    let _ = ready.send(Ok(peer_history));

    let waiters: Arc<Mutex<HashMap<Seq, Waiter>>> = Arc::default();
    let wake_timer = Arc::new(Notify::new());
    let lose = {
        let core = core.clone();
        let waiters = waiters.clone();
        let shared = shared.clone();
        let conn = conn.clone();
        move |reason: String| {
            let mut c = core.lock().unwrap_or_else(|e| e.into_inner());
            c.handle_lost(reason.clone());
            {
                let mut r = shared.reason.lock().unwrap_or_else(|e| e.into_inner());
                if r.is_none() {
                    // Once, whoever noticed first (the core's timer included).
                    warn!(%reason, "connection to the secondary lost");
                    conn.close(1u32.into(), b"peer lost");
                    *r = Some(reason);
                    shared.lost.store(true, Ordering::Release);
                    shared.lost_cv.notify_all();
                }
            }
            // Only now the waiters' EIO: a caller that gets it must find the
            // link lost (the op's outcome is unknown, not refused), or under
            // `--on-peer-loss hold` the application would get EIO instead of
            // a held write (seen under load: a stalled secondary lost).
            complete(&mut c, &waiters, &shared);
        }
    };

    let writer = {
        let core = core.clone();
        let waiters = waiters.clone();
        let shared = shared.clone();
        let wake_timer = wake_timer.clone();
        let lose = lose.clone();
        async move {
            // Frames go out as chunks: the small ones encoded together in
            // `buf`, a large write's data as its own chunk, not copied.
            let mut buf = Vec::with_capacity(1 << 20);
            let mut chunks: Vec<Bytes> = Vec::new();
            while let Some(first) = rx.recv().await {
                buf.clear();
                chunks.clear();
                let mut queued = 0;
                let mut next = Some(first);
                {
                    let mut c = core.lock().unwrap_or_else(|e| e.into_inner());
                    let mut w = waiters.lock().unwrap_or_else(|e| e.into_inner());
                    let now = Instant::now();
                    while let Some(sub) = next.take() {
                        match c.submit(now, &sub.op) {
                            Ok(seq) => {
                                let class = Class::of(&sub.op);
                                latency::record(Stage::ToWire, class, sub.at, now);
                                if let Some(data) = Frame::encode_op_split(seq, sub.op, &mut buf) {
                                    queued += buf.len() + data.len();
                                    chunks.push(Bytes::copy_from_slice(&buf));
                                    chunks.push(Bytes::from(data));
                                    buf.clear();
                                }
                                w.insert(seq, (sub.done, class, now));
                                shared.in_flight.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                let _ = sub.done.send(Err(libc::EIO));
                            }
                        }
                        if queued + buf.len() < (1 << 20) {
                            next = rx.try_recv().ok();
                        }
                    }
                }
                wake_timer.notify_one();
                if !buf.is_empty() {
                    chunks.push(Bytes::copy_from_slice(&buf));
                }
                if chunks.is_empty() {
                    continue;
                }
                if let Err(e) = send.write_all_chunks(&mut chunks).await {
                    lose(format!("sending to the secondary failed: {e}"));
                }
            }
        }
    };

    let reader = {
        let core = core.clone();
        let waiters = waiters.clone();
        let shared = shared.clone();
        let lose = lose.clone();
        async move {
            let mut buf: Vec<u8> = leftover;
            let mut chunk = vec![0u8; 64 << 10];
            loop {
                match recv.read(&mut chunk).await {
                    Ok(Some(n)) => buf.extend_from_slice(&chunk[..n]),
                    Ok(None) => return lose("the secondary closed the stream".into()),
                    Err(e) => return lose(format!("the connection to the secondary ended: {e}")),
                }
                let mut used = 0;
                let now = Instant::now();
                let mut c = core.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    match Frame::decode(&buf[used..]) {
                        Ok(Decoded::Incomplete) => break,
                        Ok(Decoded::Frame(Frame::Refused { reason }, _)) => {
                            drop(c);
                            return lose(format!("the secondary refused: {reason}"));
                        }
                        Ok(Decoded::Frame(f, len)) => {
                            used += len;
                            if let Err(v) = c.handle_frame(now, &f) {
                                drop(c);
                                return lose(format!("protocol violation by the secondary: {v}"));
                            }
                        }
                        Err(e) => {
                            drop(c);
                            return lose(format!("malformed frame from the secondary: {e}"));
                        }
                    }
                }
                complete(&mut c, &waiters, &shared);
                drop(c);
                buf.drain(..used);
            }
        }
    };

    let timer = {
        let core = core.clone();
        let lose = lose.clone();
        async move {
            // Whether the current stall was logged.
            let mut warned = false;
            loop {
                let next = {
                    let c = core.lock().unwrap_or_else(|e| e.into_inner());
                    if c.lost().is_some() {
                        return;
                    }
                    let now = Instant::now();
                    match c.stalled(now) {
                        Some(quiet) if !warned => {
                            warn!(
                                secs = quiet.as_secs_f64(),
                                in_flight = c.in_flight(),
                                "the secondary is stalled: reachable, but no progress with operations waiting (a hung disk?); it is lost after --stall-timeout"
                            );
                            warned = true;
                        }
                        None if warned => {
                            info!("the secondary makes progress again");
                            warned = false;
                        }
                        _ => {}
                    }
                    if warned {
                        c.poll_timeout()
                    } else {
                        c.poll_stall().or(c.poll_timeout())
                    }
                };
                match next {
                    Some(d) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(d.into()) => {
                                let mut c = core.lock().unwrap_or_else(|e| e.into_inner());
                                c.handle_timeout(Instant::now());
                                if let Some(reason) = c.lost().map(str::to_owned) {
                                    drop(c);
                                    lose(reason);
                                    return;
                                }
                            }
                            _ = wake_timer.notified() => {}
                        }
                    }
                    None => wake_timer.notified().await,
                }
            }
        }
    };

    // The writer ends when every Link is dropped (unmount); the reader and timer
    // end when the peer is lost. Either way, every waiting caller is answered.
    tokio::select! {
        _ = writer => debug!("all submitters gone"),
        _ = async { tokio::join!(reader, timer) } => {}
    }
    lose("mirrorfs is shutting down".into());
    conn.close(0u32.into(), b"bye");
    endpoint.wait_idle().await;
}

/// Delivers every completed op to its waiting caller.
fn complete(core: &mut Replicator, waiters: &Mutex<HashMap<Seq, Waiter>>, shared: &Shared) {
    let mut w = waiters.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    while let Some((seq, outcome)) = core.poll_completion() {
        if let Some((done, class, sent)) = w.remove(&seq) {
            shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            latency::record(Stage::Wire, class, sent, now);
            latency::LAST_COMPLETION.set(now);
            let _ = done.send(outcome);
        }
    }
}

/// QUIC connect, open the stream, exchange and check hellos.
async fn handshake(
    cfg: &LinkConfig,
    history: Vec<u64>,
    within: Duration,
) -> Result<
    (
        quinn::Endpoint,
        quinn::Connection,
        quinn::SendStream,
        quinn::RecvStream,
        PeerHello,
        Vec<u8>,
    ),
    ConnectError,
> {
    let mut client = client_config(&cfg.identity, &cfg.pinned)?;
    client.transport_config(Arc::new(transport(cfg.peer_timeout)));
    let mut endpoint =
        quinn::Endpoint::client(client_bind(cfg.peer)).map_err(ConnectError::Socket)?;
    endpoint.set_default_client_config(client);
    let addr = cfg.peer;
    let unreachable = || ConnectError::Unreachable {
        addr,
        secs: within.as_secs_f64(),
        port: addr.port(),
    };
    let handshake_err = |e: &dyn std::fmt::Display| ConnectError::Handshake {
        addr,
        reason: e.to_string(),
    };
    let mut connecting = endpoint
        .connect(addr, &cfg.pinned.name)
        .map_err(|e| handshake_err(&e))?;
    // `within` is for the secondary's first answer (its handshake data); a
    // secondary that answered has the rest of the handshake to finish it,
    // so short attempts (reconnecting) do not give up on a slow one.
    match tokio::time::timeout(within, connecting.handshake_data()).await {
        Err(_) | Ok(Err(quinn::ConnectionError::TimedOut)) => return Err(unreachable()),
        Ok(Err(e)) => return Err(handshake_err(&e)),
        Ok(Ok(_)) => {}
    }
    let conn = match tokio::time::timeout(within.max(HANDSHAKE_TIMEOUT), connecting).await {
        Err(_) => return Err(unreachable()),
        Ok(Err(quinn::ConnectionError::TimedOut)) => return Err(unreachable()),
        Ok(Err(e)) => return Err(handshake_err(&e)),
        Ok(Ok(c)) => c,
    };
    // TLS 1.3: the server checks our certificate after the client considers the
    // handshake done, so a refusal shows up as the connection's close reason.
    let closed = |e: &dyn std::fmt::Display| {
        match conn.close_reason() {
        Some(reason) => ConnectError::Handshake {
            addr,
            reason: format!(
                "{reason} (if the secondary refused our certificate: its --peer-cert must be this node's certificate {})",
                cfg.identity.name
            ),
        },
        None => handshake_err(e),
    }
    };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| closed(&e))?;
    let mut hello = Vec::new();
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        node: cfg.identity.name.clone(),
        peer: cfg.pinned.name.clone(),
        history,
        peer_timeout_ms: u32::try_from(cfg.peer_timeout.as_millis()).unwrap_or(u32::MAX),
    })
    .encode(&mut hello);
    send.write_all(&hello).await.map_err(|e| closed(&e))?;
    let mut reader = FrameReader::default();
    let reply = tokio::time::timeout(
        within.max(HANDSHAKE_TIMEOUT),
        reader.next(&mut recv, HELLO_LIMIT),
    )
    .await
    .map_err(|_| unreachable())?
    .map_err(|e| closed(&e))?;
    let peer_history = match reply {
        Frame::Hello(h) => {
            if h.version != PROTOCOL_VERSION {
                return Err(ConnectError::Mismatch(format!(
                    "protocol version mismatch: this primary ({}) speaks version {PROTOCOL_VERSION}, the secondary {} at {addr} speaks version {}: run the same mirrorfs version on both nodes",
                    cfg.identity.name, h.node, h.version
                )));
            }
            if h.node != cfg.pinned.name || h.peer != cfg.identity.name {
                return Err(ConnectError::Mismatch(format!(
                    "identity mismatch: we are {} expecting {}, the secondary at {addr} says it is {} expecting {}: check --cert/--peer-cert on both nodes",
                    cfg.identity.name, cfg.pinned.name, h.node, h.peer
                )));
            }
            h.history
        }
        Frame::Refused { reason } => return Err(ConnectError::Refused { addr, reason }),
        other => {
            warn!(?other, "unexpected first frame");
            return Err(handshake_err(&"the secondary did not answer with a hello"));
        }
    };
    let suspects = read_suspects(&mut reader, &mut recv)
        .await
        .map_err(|e| closed(&e))?;
    Ok((
        endpoint,
        conn,
        send,
        recv,
        (peer_history, suspects),
        reader.into_buffer(),
    ))
}

/// Collects the secondary's suspect directories, sent after its hello in
/// pages; more than [`MAX_SUSPECTS`] become the root alone ("compare
/// everything"), as the secondary itself reports them beyond that.
async fn read_suspects(
    reader: &mut FrameReader,
    recv: &mut quinn::RecvStream,
) -> Result<Vec<RelPath>, String> {
    let mut all: Vec<RelPath> = Vec::new();
    let mut overflow = false;
    loop {
        let page = tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next(recv, MAX_FRAME))
            .await
            .map_err(|_| "the secondary stopped sending its suspect directories".to_string())??;
        let Frame::Suspects { paths, last } = page else {
            return Err("the secondary sent no suspect directories after its hello".into());
        };
        if !overflow && all.len() + paths.len() > MAX_SUSPECTS {
            overflow = true;
            all = Vec::new();
        }
        if !overflow {
            all.extend(paths);
        }
        if last {
            return Ok(if overflow { vec![RelPath::root()] } else { all });
        }
    }
}

/// Most bytes a hello may take.
pub(crate) const HELLO_LIMIT: usize = 16 << 10;
