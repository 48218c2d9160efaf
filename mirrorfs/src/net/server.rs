//! `mirrorfs serve`: the secondary's QUIC server.
//!
//! Owns the listening endpoint and one connection at a time from the pinned
//! primary: checks the hello, decodes frames (checked before parsed), feeds the
//! [`Receiver`] core, hands each op to the apply thread (`apply_thread`: the
//! only place that touches the disk, so that this runtime keeps answering
//! QUIC keepalives and reporting progress during a long op), runs fsyncs on
//! the blocking pool so the stream keeps flowing, and sends back what the
//! core queues. A malformed frame, a hostile path or a protocol violation ends that
//! connection with a `Refused` frame and a log line, never the server. A newer
//! connection from the pinned primary replaces an older one (a restarted
//! primary must not wait for the old connection to time out). With
//! `--control`, a control socket reports the secondary's state
//! ([`ServeState`], which the apply thread keeps up to date).

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, info_span, warn, Instrument};

use super::apply_thread::{self, Answer, ApplyThread};
use super::client::HELLO_LIMIT;
use super::serve_state::ServeState;
use super::tls::{server_config, Identity, PinnedPeer, TlsError};
use super::{transport, FrameReader, HANDSHAKE_TIMEOUT};
use crate::ctl::server::ControlServer;
use crate::latency::{self, Class, Stage};
use crate::meta::{DirLock, LockError, Meta};
use crate::proto::stream::Receiver;
use crate::proto::wire::{Decoded, Frame, Hello, Seq, PROTOCOL_VERSION};
use crate::replica::{Applied, Applier};
use crate::sys;

/// Why `serve` could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The replica root is missing or not a directory.
    #[error("replica root {path}: {source}: create it (mkdir -p) or fix --root")]
    Root {
        /// The root.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The listening socket.
    #[error("cannot listen on UDP {addr}: {source}: is another mirrorfs serve running, or is the address not local?")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another mirrorfs process works on the replica root.
    #[error("--root: {0}")]
    Lock(#[from] LockError),
    /// The control socket.
    #[error("--control {path}: {source}")]
    Control {
        /// The socket's path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Configuration of `mirrorfs serve`.
#[derive(Debug)]
pub struct ServeConfig {
    /// The replica root.
    pub root: PathBuf,
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// This node's identity.
    pub identity: Identity,
    /// The primary's pinned certificate.
    pub pinned: PinnedPeer,
    /// Idle timeout of the connection (the primary's peer timeout); an op
    /// busy on the disk for longer shows as stalled.
    pub idle_timeout: Duration,
    /// The control socket to answer on (`--control`), if any.
    pub control: Option<PathBuf>,
}

/// Counters of a serve process.
#[derive(Debug, Default)]
pub struct ServeStats {
    /// Ops applied.
    pub applied: AtomicU64,
    /// Ops that failed.
    pub failed: AtomicU64,
    /// Connections closed for bad input.
    pub rejected: AtomicU64,
}

/// Runs the server until `shutdown` completes.
pub async fn run(cfg: ServeConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    Server::bind(cfg)?.run(shutdown).await;
    Ok(())
}

/// A bound, not yet serving, secondary (tests bind port 0 and ask the address).
#[derive(Debug)]
pub struct Server {
    cfg: ServeConfig,
    endpoint: quinn::Endpoint,
    state: Arc<ServeState>,
    control: Option<ControlServer>,
    /// The root, held while this serve runs (no second serve, nor a mount,
    /// on it).
    _lock: DirLock,
}

impl Server {
    /// Checks the root and the TLS files, binds the UDP socket and the
    /// control socket. Must be called inside a tokio runtime. The process
    /// umask should be 0 (modes arrive exactly as the primary applied them);
    /// setting it is the caller's, as it is process-wide.
    pub fn bind(cfg: ServeConfig) -> Result<Self, ServeError> {
        sys::warn_umask();
        // Check the root now, so a typo fails at start, not at the first op.
        let root_err = |source| ServeError::Root {
            path: cfg.root.clone(),
            source,
        };
        // Before anything in the root is read or written.
        let lock = Meta::open(&cfg.root).map_err(root_err)?.lock("serve")?;
        let applier = Applier::open(&cfg.root).map_err(root_err)?;
        let history = applier.history().map_err(root_err)?;
        let inconsistent = Meta::open(&cfg.root)
            .and_then(|m| m.inconsistent())
            .map_err(root_err)?;
        if let Some(i) = &inconsistent {
            warn!(since = i.since_unix, from = %i.from, "this replica is marked inconsistent: a resync into it has not finished; the primary's next resync completes it");
        }
        let state = Arc::new(ServeState::new(
            &cfg.pinned.name,
            cfg.idle_timeout,
            history,
            inconsistent.is_some(),
        ));
        match std::fs::File::open(&cfg.root).and_then(|d| sys::mount_flags(d.as_fd())) {
            Ok(flags) => {
                if let Some(advice) = mount_advice(flags) {
                    warn!(root = %cfg.root.display(), "{advice}");
                }
            }
            Err(e) => {
                warn!(root = %cfg.root.display(), error = %e, "cannot read the replica file system's mount flags")
            }
        }
        let mut server = server_config(&cfg.identity, &cfg.pinned)?;
        server.transport_config(Arc::new(transport(cfg.idle_timeout)));
        let endpoint =
            quinn::Endpoint::server(server, cfg.listen).map_err(|source| ServeError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let control = match &cfg.control {
            Some(path) => Some(crate::ctl::server::serve(path, state.clone()).map_err(
                |source| ServeError::Control {
                    path: path.clone(),
                    source,
                },
            )?),
            None => None,
        };
        Ok(Self {
            cfg,
            endpoint,
            state,
            control,
            _lock: lock,
        })
    }

    /// What the control socket reports (tests read it directly).
    pub fn state(&self) -> Arc<ServeState> {
        self.state.clone()
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        // `_lock` is held until the serve ends.
        let Self {
            cfg,
            endpoint,
            state,
            control,
            _lock,
        } = self;
        info!(listen = %cfg.listen, root = %cfg.root.display(), primary = %cfg.pinned.name, "serving");
        let stats = Arc::new(ServeStats::default());
        let mut applier = match Applier::open(&cfg.root) {
            Ok(a) => a,
            Err(e) => {
                error!(root = %cfg.root.display(), error = %e, "cannot open the replica root");
                return;
            }
        };
        // Named in the inconsistent marker a BeginResync leaves.
        applier.set_primary(&cfg.pinned.name);
        let apply = match ApplyThread::start(applier, stats.clone(), state.clone()) {
            Ok(a) => a,
            Err(e) => {
                error!(error = %e, "cannot start the apply thread");
                return;
            }
        };
        let cfg = Arc::new(cfg);
        // Each connection that passes the hello becomes the current one; older
        // handlers see the change and stop, and the apply thread applies none
        // of their ops any more. Authentication comes first, so no stranger
        // can push the primary off.
        let current = Arc::new(watch::channel(0u64).0);
        let mut generation = 0u64;
        tokio::pin!(shutdown);
        loop {
            let incoming = tokio::select! {
                i = endpoint.accept() => i,
                _ = &mut shutdown => break,
            };
            let Some(incoming) = incoming else { break };
            generation += 1;
            let (cfg, stats, current, apply, state) = (
                cfg.clone(),
                stats.clone(),
                current.clone(),
                apply.clone(),
                state.clone(),
            );
            let remote = incoming.remote_address();
            let span = info_span!("conn", %remote, n = generation);
            tokio::spawn(
                async move {
                    match incoming.await {
                        Ok(conn) => {
                            let r =
                                serve_connection(&cfg, &state, conn, generation, current, &apply)
                                    .await;
                            apply.detach(generation);
                            if let Err(reason) = &r {
                                stats.rejected.fetch_add(1, Ordering::Relaxed);
                                warn!(%reason, "connection closed");
                            }
                            state.disconnected(generation, r.err());
                        }
                        // Wrong certificate and the like: rustls/quinn say why.
                        Err(e) => {
                            warn!(error = %e, "handshake refused");
                            state.error(format!("a handshake from {remote} was refused: {e}"));
                        }
                    }
                }
                .instrument(span),
            );
        }
        info!("shutting down");
        endpoint.close(0u32.into(), b"shutdown");
        tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle())
            .await
            .ok();
        drop(control);
    }
}

/// Serves one authenticated connection until it ends or a newer one replaces
/// it. `Err` is the reason it was closed for bad input. Never touches the
/// disk: ops go to the apply thread, outcomes come back from it.
async fn serve_connection(
    cfg: &ServeConfig,
    state: &ServeState,
    conn: quinn::Connection,
    generation: u64,
    current_tx: Arc<watch::Sender<u64>>,
    apply: &ApplyThread,
) -> Result<(), String> {
    let (mut send, mut recv) = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| "no stream opened".to_string())?
        .map_err(|e| e.to_string())?;
    let mut reader = FrameReader::default();
    let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next(&mut recv, HELLO_LIMIT))
        .await
        .map_err(|_| "no hello received".to_string())??;
    let refusal = match &hello {
        Frame::Hello(h) if h.version != PROTOCOL_VERSION => Some(format!(
            "protocol version mismatch: the primary {} speaks version {}, this secondary ({}) speaks version {PROTOCOL_VERSION}: run the same mirrorfs version on both nodes",
            h.node, h.version, cfg.identity.name
        )),
        Frame::Hello(h) if h.node != cfg.pinned.name || h.peer != cfg.identity.name => Some(format!(
            "identity mismatch: the primary says it is {} expecting {}, but this secondary is {} and pins {}: check --cert/--peer-cert on both nodes",
            h.node, h.peer, cfg.identity.name, cfg.pinned.name
        )),
        Frame::Hello(_) => None,
        _ => Some("the first frame must be a hello".to_string()),
    };
    if let Some(reason) = refusal {
        refuse(&conn, &mut send, &reason).await;
        return Err(reason);
    }
    let Frame::Hello(hello) = hello else {
        unreachable!("refused above")
    };
    // From here on, this connection is the primary's: no op of an older one
    // is applied any more, and the older handlers stop.
    apply.take_over(generation);
    current_tx.send_replace(generation);
    let mut current = current_tx.subscribe();
    let (answers_tx, mut answers) = mpsc::unbounded_channel();
    let attached = tokio::time::timeout(HANDSHAKE_TIMEOUT, apply.attach(generation, answers_tx))
        .await
        .map_err(|_| ())
        .and_then(|a| a.ok_or(()));
    let (history, suspects) = match attached {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            let reason = format!("cannot read the replica's metadata: {e}");
            refuse(&conn, &mut send, &reason).await;
            return Err(reason);
        }
        Err(()) => {
            let reason = format!(
                "the replica's file system does not answer within {} s (its disk may hang): \
                 check the secondary's storage",
                HANDSHAKE_TIMEOUT.as_secs()
            );
            refuse(&conn, &mut send, &reason).await;
            return Err(reason);
        }
    };
    // Before the hello goes out: the primary sends no op before it has it,
    // so the status counts each op of this connection as the current one's.
    state.connected(generation, conn.remote_address());
    let mut out = Vec::new();
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        node: cfg.identity.name.clone(),
        peer: cfg.pinned.name.clone(),
        history,
        peer_timeout_ms: u32::try_from(cfg.idle_timeout.as_millis()).unwrap_or(u32::MAX),
    })
    .encode(&mut out);
    send.write_all(&out).await.map_err(|e| e.to_string())?;
    // Any number of them, in pages that each fit in a frame.
    for page in Frame::suspect_pages(&suspects) {
        out.clear();
        page.encode(&mut out);
        send.write_all(&out).await.map_err(|e| e.to_string())?;
    }
    info!(primary = %cfg.pinned.name, "primary connected");

    // Progress is reported a few times within the shorter of both sides'
    // peer timeouts, so that a working secondary never looks stalled.
    let timeout = Duration::from_millis(u64::from(hello.peer_timeout_ms)).min(cfg.idle_timeout);
    let mut tick = tokio::time::interval((timeout / 4).max(Duration::from_millis(20)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let prefetch = apply.prefetch();
    let mut core = Receiver::new();
    let (synced_tx, mut synced_rx) = mpsc::unbounded_channel::<Synced>();
    // Answers ready to go out since the last write: (class, decoded, ready).
    let mut ready: Vec<(Class, Instant, Instant)> = Vec::new();
    let mut buf: Vec<u8> = reader.into_buffer();
    // What QUIC received, as it holds it (not copied out first).
    let mut chunks = vec![Bytes::new(); 256];
    loop {
        let full = apply.queue_full();
        let mut read = None;
        tokio::select! {
            r = recv.read_chunks(&mut chunks), if !full => match r {
                Ok(Some(n)) => read = Some(n),
                Ok(None) => { info!("the primary closed the stream"); return Ok(()); }
                Err(e) => { info!(error = %e, "the primary went away"); return Ok(()); }
            },
            _ = apply.drained(), if full => {}
            Some(a) = answers.recv() => {
                handle_answer(&mut core, a, &synced_tx, &mut ready);
                // Every outcome ready now goes into one batch of answers.
                while let Ok(a) = answers.try_recv() {
                    handle_answer(&mut core, a, &synced_tx, &mut ready);
                }
            }
            Some(s) = synced_rx.recv() => {
                core.handle_synced(s.seq, s.errno);
                ready.push((Class::Sync, s.decoded, Instant::now()));
            }
            _ = tick.tick() => core.handle_tick(apply.work()),
            _ = current.changed() => {
                if *current.borrow() != generation {
                    info!("a newer connection from the primary replaces this one");
                    conn.close(2u32.into(), b"replaced by a newer connection");
                    return Ok(());
                }
            }
        }
        if let Some(n) = read {
            for c in &mut chunks[..n] {
                buf.extend_from_slice(&std::mem::take(c));
            }
            // Decode every complete frame and queue its op. The checksum
            // requests among them get read-ahead hints, so their cold reads
            // overlap instead of queueing behind each other. A malformed
            // frame is refused after the frames before it are queued, as if
            // they had come alone.
            let mut used = 0;
            let decoded = Instant::now();
            loop {
                match Frame::decode(&buf[used..]) {
                    Ok(Decoded::Incomplete) => break,
                    Ok(Decoded::Frame(Frame::Op { seq, op }, len)) => {
                        used += len;
                        if let Err(v) = core.handle_op(seq) {
                            let reason = format!("protocol violation by the primary: {v}");
                            refuse(&conn, &mut send, &reason).await;
                            return Err(reason);
                        }
                        if let Some(job) = prefetch.job(&op) {
                            tokio::task::spawn_blocking(job);
                        }
                        apply.apply(generation, seq, op, decoded);
                    }
                    Ok(Decoded::Frame(..)) => {
                        let reason = "only operations may follow the hello".to_string();
                        refuse(&conn, &mut send, &reason).await;
                        return Err(reason);
                    }
                    Err(e) => {
                        let reason = format!("malformed frame from the primary: {e}");
                        error!(%reason, "closing the connection; nothing of this frame was applied");
                        refuse(&conn, &mut send, &reason).await;
                        return Err(reason);
                    }
                }
            }
            buf.drain(..used);
        }
        if !apply.is_current(generation) {
            // Replaced: the watch above says so too, but nothing more of
            // this connection is answered meanwhile.
            continue;
        }
        core.handle_idle();
        out.clear();
        while let Some(f) = core.poll_transmit() {
            f.encode(&mut out);
        }
        if !out.is_empty() {
            if let Err(e) = send.write_all(&out).await {
                debug!(error = %e, "cannot answer the primary");
                return Ok(());
            }
            let sent = Instant::now();
            for (class, decoded, at) in ready.drain(..) {
                latency::record(Stage::Ack, class, at, sent);
                latency::record(Stage::ServeTotal, class, decoded, sent);
            }
        }
    }
}

/// An fsync done on the blocking pool.
struct Synced {
    seq: Seq,
    errno: i32,
    /// When the op's frame was decoded (for [`latency`]).
    decoded: Instant,
}

/// Feeds one outcome from the apply thread to the core; an fsync the apply
/// thread left to do goes to the blocking pool: while it runs, the stream
/// keeps flowing and other writers' fsyncs run beside it (syncs always run
/// on the apply thread serialised 4 writers to the pace of one; it runs one
/// itself only when nothing is queued behind it). The op stays busy (for the
/// stall report) until its sync is done.
///
/// `ready` collects the answers that go out with the next write (for
/// [`latency`]; an fsync's once it is done).
fn handle_answer(
    core: &mut Receiver,
    a: Answer,
    synced: &mpsc::UnboundedSender<Synced>,
    ready: &mut Vec<(Class, Instant, Instant)>,
) {
    let (class, decoded, finished) = a.timing;
    let now = Instant::now();
    latency::record(Stage::Back, class, finished, now);
    match a.result {
        Ok(Applied::Done) => {
            core.handle_applied(a.seq, a.durable, Ok(()));
            if let Some(errno) = a.synced {
                core.handle_synced(a.seq, errno);
            }
        }
        Ok(Applied::Reply(payload)) => {
            core.handle_reply(a.seq, payload);
            core.handle_applied(a.seq, a.durable, Ok(()));
        }
        Ok(Applied::Sync { fd, how }) => {
            core.handle_applied(a.seq, true, Ok(()));
            let (tx, seq, busy) = (synced.clone(), a.seq, a.busy);
            tokio::task::spawn_blocking(move || {
                let errno = apply_thread::sync(fd.as_fd(), how, class);
                drop(busy);
                let _ = tx.send(Synced {
                    seq,
                    errno,
                    decoded,
                });
            });
            return;
        }
        Err(errno) => core.handle_applied(a.seq, a.durable, Err(errno)),
    }
    ready.push((class, decoded, now));
}

/// What to tell the operator when the replica's file system is mounted
/// without `nodev` or `nosuid` (`flags`: its `statvfs` mount flags). The
/// primary's device nodes, setuid bits and file capabilities are replicated
/// as metadata (POSIX fidelity); only those two mount options keep them from
/// acting on this node.
pub fn mount_advice(flags: u64) -> Option<String> {
    let missing: Vec<&str> = [(libc::ST_NODEV, "nodev"), (libc::ST_NOSUID, "nosuid")]
        .into_iter()
        .filter(|(bit, _)| flags & bit == 0)
        .map(|(_, name)| name)
        .collect();
    if missing.is_empty() {
        return None;
    }
    Some(format!(
        "the replica's file system is mounted without {}: device nodes, setuid/setgid bits and \
         file capabilities the primary creates are replicated as metadata and would work on this \
         node; mount the replica's file system with nodev,nosuid (e.g. `mount -o \
         remount,nodev,nosuid MOUNTPOINT`, and in /etc/fstab)",
        missing.join(",")
    ))
}

/// Sends a refusal and closes the connection.
async fn refuse(conn: &quinn::Connection, send: &mut quinn::SendStream, reason: &str) {
    let mut out = Vec::new();
    Frame::Refused {
        reason: reason.to_string(),
    }
    .encode(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(1), send.write_all(&out)).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    conn.close(3u32.into(), b"refused");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_names_the_missing_mount_options_and_the_fix() {
        assert_eq!(mount_advice(libc::ST_NODEV | libc::ST_NOSUID), None);
        let both = mount_advice(0).unwrap();
        assert!(both.contains("without nodev,nosuid:"), "{both}");
        assert!(
            both.contains("mount the replica's file system with nodev,nosuid"),
            "{both}"
        );
        let one = mount_advice(libc::ST_NODEV).unwrap();
        assert!(one.contains("without nosuid:"), "{one}");
    }

    /// A durability op the apply thread synced itself is answered `Synced`
    /// with the sync's errno, as one synced on the blocking pool is; nothing
    /// goes to the pool.
    #[test]
    fn a_sync_done_on_the_apply_thread_is_answered_with_its_errno() {
        let (pool, mut pool_rx) = mpsc::unbounded_channel();
        let mut core = Receiver::new();
        let mut ready = Vec::new();
        let now = Instant::now();
        for (seq, errno) in [(Seq(1), 0), (Seq(2), libc::EIO)] {
            core.handle_op(seq).unwrap();
            let answer = Answer {
                seq,
                durable: true,
                result: Ok(Applied::Done),
                busy: None,
                synced: Some(errno),
                timing: (Class::Sync, now, now),
            };
            handle_answer(&mut core, answer, &pool, &mut ready);
        }
        core.handle_idle();
        let frames: Vec<Frame> = std::iter::from_fn(|| core.poll_transmit()).collect();
        assert!(
            frames.contains(&Frame::Synced {
                seq: Seq(1),
                errno: 0
            }),
            "{frames:?}"
        );
        assert!(
            frames.contains(&Frame::Synced {
                seq: Seq(2),
                errno: libc::EIO
            }),
            "{frames:?}"
        );
        assert_eq!(ready.len(), 2, "both answers go out with the next write");
        assert!(pool_rx.try_recv().is_err(), "nothing was left to sync");
    }
}
