//! `mirrorfarm witness`: the third vote of every two-node mirror module, run
//! on a third machine. It grants one lease per module at a time
//! ([`crate::cluster::witness`] decides; this is its driver).
//!
//! Owns: the witness's QUIC endpoint (mutual TLS: only the listed nodes'
//! certificates are accepted), reading [`Report`]s from each node's
//! datagrams, answering them, and the state file (which node's data is
//! behind, per module), written atomically and durably *before* the answer
//! that depends on it leaves. Must not: decide anything itself, or let a node
//! speak for another (a report must name the node whose certificate the
//! connection presented).
//!
//! Everything runs on one current-thread runtime: the reports of all
//! connections are handled one at a time, state file write included, so the
//! file always holds the newest state and answers leave in the order the
//! core gave them.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mirrorfs::net::tls::{
    connected_peer, load_identity, load_peer, server_config_for, PinnedPeer, TlsError,
};
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::cluster::msg::{self, Answer, LeaseAnswer, Report};
use crate::cluster::witness::{Persisted, Witness};
use crate::driver::net::{transport, ALPN_WITNESS};

/// The witness's settings (`mirrorfarm witness` flags).
#[derive(Debug, Clone)]
pub struct WitnessConfig {
    /// The UDP address to listen on.
    pub listen: SocketAddr,
    /// The witness's private key.
    pub key: PathBuf,
    /// The witness's certificate (the nodes pin it).
    pub cert: PathBuf,
    /// The certificate of every node that may report (each one's CN is its name).
    pub peers: Vec<PathBuf>,
    /// The state file (JSON): which node's data is behind, per module.
    pub state: PathBuf,
}

/// Why the witness could not start. Each message names the file or address
/// and the fix.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The witness's identity or a node certificate cannot be used.
    #[error(transparent)]
    Tls(#[from] Box<TlsError>),
    /// No node certificate was given.
    #[error(
        "no node certificates: list the certificate of every node that reports to this witness"
    )]
    NoPeers,
    /// Two certificates name the same node.
    #[error(
        "{} and {} are both certificates of node {name}: list each node's certificate once",
        first.display(),
        second.display()
    )]
    DuplicateNode {
        /// The node name (CN).
        name: String,
        /// The first certificate.
        first: PathBuf,
        /// The second certificate.
        second: PathBuf,
    },
    /// A node certificate is the witness's own name.
    #[error(
        "{} names node {name}, which is the witness's own name: list the nodes' certificates, \
         not the witness's",
        path.display()
    )]
    SelfPinned {
        /// The name.
        name: String,
        /// The certificate.
        path: PathBuf,
    },
    /// The state file exists but cannot be read.
    #[error(
        "cannot read the witness state {}: {source}; check the path and that this user may read it",
        path.display()
    )]
    StateRead {
        /// The state file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The state file is not a witness state.
    #[error(
        "the witness state {} is not valid ({why}): restore it from a backup; remove it only if \
         every module's nodes are known to hold the same data (it records whose data is behind, \
         and without it the witness could give the service to that node)",
        path.display()
    )]
    StateCorrupt {
        /// The state file.
        path: PathBuf,
        /// The parser's complaint.
        why: String,
    },
    /// The state file (or its directory) cannot be written.
    #[error(
        "cannot write the witness state {}: {source}; check that its directory is writable and \
         the file system not full or read-only",
        path.display()
    )]
    StateWrite {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The listening socket cannot be opened.
    #[error(
        "cannot listen on {addr}: {source}; check that the address is on this machine and that \
         the port is free (`ss -ulpn`)"
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The runtime could not start.
    #[error("cannot start the witness runtime: {0}; check `ulimit -u` and free memory")]
    Runtime(#[source] io::Error),
}

/// Runs the witness until `shutdown` completes: loads the identity, the
/// node certificates and the state, listens, and answers reports.
pub fn run(cfg: WitnessConfig, shutdown: impl Future<Output = ()>) -> Result<(), WitnessError> {
    run_reporting(cfg, shutdown, |_| {})
}

/// The idle timeout base of the witness's connections: long, as the nodes'
/// own (shorter) settings are the ones QUIC uses (the smaller side wins).
const IDLE_BASE: Duration = Duration::from_secs(20);

/// How long closing the endpoint may take at shutdown.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The same warning (a refused handshake, a bad report on a connection, a
/// failing state write) is logged at most this often.
const WARN_REPEAT: Duration = Duration::from_secs(10);

/// [`run`], calling `bound` with the listening address once it listens
/// (tests listen on port 0).
fn run_reporting(
    cfg: WitnessConfig,
    shutdown: impl Future<Output = ()>,
    bound: impl FnOnce(SocketAddr),
) -> Result<(), WitnessError> {
    let id = load_identity(&cfg.key, &cfg.cert).map_err(Box::new)?;
    if cfg.peers.is_empty() {
        return Err(WitnessError::NoPeers);
    }
    let mut peers: Vec<PinnedPeer> = Vec::new();
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in &cfg.peers {
        let peer = load_peer(path).map_err(Box::new)?;
        if peer.name == id.name {
            return Err(WitnessError::SelfPinned {
                name: peer.name,
                path: path.clone(),
            });
        }
        if let Some(first) = files.insert(peer.name.clone(), path.clone()) {
            return Err(WitnessError::DuplicateNode {
                name: peer.name,
                first,
                second: path.clone(),
            });
        }
        peers.push(peer);
    }
    let persisted = load_state(&cfg.state)?;
    // Write it back now: an unwritable state file fails the start, not the
    // first grant.
    save_state(&cfg.state, &persisted)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WitnessError::Runtime)?;
    let refs: Vec<&PinnedPeer> = peers.iter().collect();
    let mut server = server_config_for(&id, &refs, ALPN_WITNESS).map_err(Box::new)?;
    server.transport_config(Arc::new(transport(None, IDLE_BASE)));
    let span = info_span!("witness", name = %id.name);
    rt.block_on(
        async move {
            let endpoint = quinn::Endpoint::server(server, cfg.listen).map_err(|source| {
                WitnessError::Listen {
                    addr: cfg.listen,
                    source,
                }
            })?;
            let addr = endpoint.local_addr().unwrap_or(cfg.listen);
            info!(
                listen = %addr,
                nodes = ?files.keys().collect::<Vec<_>>(),
                state = %cfg.state.display(),
                behind = ?persisted.behind,
                "witness running"
            );
            let core = Arc::new(Mutex::new(Core::new(
                Instant::now(),
                persisted,
                cfg.state.clone(),
            )));
            bound(addr);
            serve(&endpoint, Arc::new(peers), core, shutdown).await;
            info!("witness stopping");
            endpoint.close(0u32.into(), b"witness stopping");
            let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
            Ok(())
        }
        .instrument(span),
    )
}

/// Accepts the nodes' connections until `shutdown`.
async fn serve(
    endpoint: &quinn::Endpoint,
    peers: Arc<Vec<PinnedPeer>>,
    core: Arc<Mutex<Core>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let refused = Arc::new(Mutex::new(Throttle::default()));
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = &mut shutdown => break,
        };
        let Some(incoming) = incoming else { break };
        let remote = incoming.remote_address();
        tokio::spawn(
            connection(incoming, peers.clone(), core.clone(), refused.clone())
                .instrument(info_span!("conn", %remote)),
        );
    }
}

/// Serves one node's connection: each report in, its answer out.
async fn connection(
    incoming: quinn::Incoming,
    peers: Arc<Vec<PinnedPeer>>,
    core: Arc<Mutex<Core>>,
    refused: Arc<Mutex<Throttle>>,
) {
    let conn = match incoming.await {
        Ok(conn) => conn,
        // Wrong certificate, wrong ALPN, ...: rustls and quinn say which.
        Err(e) => {
            if let Some(suppressed) = lock(&refused).allow(Instant::now()) {
                warn!(error = %e, suppressed, "handshake refused");
            }
            return;
        }
    };
    let refs: Vec<&PinnedPeer> = peers.iter().collect();
    let Some(node) = connected_peer(&conn, &refs).map(|p| p.name.clone()) else {
        // Unreachable with the pinned TLS config; checked all the same.
        conn.close(1u32.into(), b"not a listed node");
        return;
    };
    info!(%node, "node connected");
    let mut bad = Throttle::default();
    let reason = loop {
        let bytes = match conn.read_datagram().await {
            Ok(b) => b,
            Err(e) => break e,
        };
        let report = match msg::decode::<Report>(&bytes) {
            Ok(r) => r,
            Err(e) => {
                if let Some(suppressed) = bad.allow(Instant::now()) {
                    warn!(%node, error = %e, suppressed, "dropped a report");
                }
                continue;
            }
        };
        if report.node != node {
            if let Some(suppressed) = bad.allow(Instant::now()) {
                warn!(
                    %node,
                    named = %report.node,
                    module = %report.module,
                    suppressed,
                    "dropped a report naming another node: a node must not speak for another"
                );
            }
            continue;
        }
        let answer = lock(&core).handle(Instant::now(), &report);
        if let Some(answer) = answer {
            if let Err(e) = conn.send_datagram(msg::encode(&answer).into()) {
                debug!(%node, error = %e, "answer not sent");
            }
        }
    };
    info!(%node, %reason, "node disconnected");
}

/// The witness core with its state file and its log of outcomes. No I/O
/// but the state file; time comes in.
struct Core {
    witness: Witness,
    path: PathBuf,
    /// A state the core handed out that is not on disk yet (a write
    /// failed): written before any further answer.
    unsaved: Option<Persisted>,
    /// (module, node) → the last outcome logged.
    logged: BTreeMap<(String, String), Outcome>,
    save_errors: Throttle,
}

/// What became of a node's lease request, as far as the log cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    NotAsked,
    Granted,
    Refused { retry: bool },
}

impl Core {
    fn new(now: Instant, persisted: Persisted, path: PathBuf) -> Self {
        Self {
            witness: Witness::new(now, persisted),
            path,
            unsaved: None,
            logged: BTreeMap::new(),
            save_errors: Throttle::default(),
        }
    }

    /// Answers a report received at `now`, after persisting what changed.
    /// None: the state could not be written, so no answer may leave (a
    /// grant whose mark is not durable would not survive a restart).
    fn handle(&mut self, now: Instant, r: &Report) -> Option<Answer> {
        let answer = self.witness.handle_report(now, r);
        if let Some(p) = self.witness.poll_persist() {
            self.unsaved = Some(p);
        }
        if let Some(p) = &self.unsaved {
            match save_state(&self.path, p) {
                Ok(()) => {
                    info!(behind = ?p.behind, "state saved");
                    self.unsaved = None;
                }
                Err(e) => {
                    if let Some(suppressed) = self.save_errors.allow(now) {
                        error!(error = %e, suppressed, "no answers until the state can be saved");
                    }
                    return None;
                }
            }
        }
        self.log_outcome(r, &answer);
        Some(answer)
    }

    /// Logs a node's lease outcome when it changes (not every renewal).
    fn log_outcome(&mut self, r: &Report, answer: &Answer) {
        let outcome = match &answer.lease {
            LeaseAnswer::NotAsked => Outcome::NotAsked,
            LeaseAnswer::Granted { .. } => Outcome::Granted,
            LeaseAnswer::Refused { retry, .. } => Outcome::Refused { retry: *retry },
        };
        let key = (r.module.clone(), r.node.clone());
        let before = self.logged.insert(key, outcome);
        if before == Some(outcome) {
            return;
        }
        let (module, node) = (&r.module, &r.node);
        match &answer.lease {
            LeaseAnswer::Granted { ms } => info!(%module, %node, ms, "lease granted"),
            LeaseAnswer::Refused { reason, .. } => {
                info!(%module, %node, %reason, "lease refused")
            }
            LeaseAnswer::NotAsked if before.is_some() => {
                info!(%module, %node, "no longer asks for the lease")
            }
            LeaseAnswer::NotAsked => debug!(%module, %node, "reports"),
        }
    }
}

/// Loads the state file; a missing file is the empty state.
fn load_state(path: &Path) -> Result<Persisted, WitnessError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| WitnessError::StateCorrupt {
            path: path.to_path_buf(),
            why: e.to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Persisted::default()),
        Err(source) => Err(WitnessError::StateRead {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes the state file atomically and durably: a temporary file beside
/// it, fsync, rename over it, fsync the directory.
fn save_state(path: &Path, state: &Persisted) -> Result<(), WitnessError> {
    let err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| WitnessError::StateWrite { path: p, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map_or_else(
        || "witness-state".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::create_dir_all(dir).map_err(err(dir))?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| err(path)(io::Error::other(e)))?;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err(&tmp))?;
    f.write_all(&json).map_err(err(&tmp))?;
    f.sync_all().map_err(err(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(err(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err(dir))?;
    Ok(())
}

/// Lets a warning through at most once per [`WARN_REPEAT`], counting the
/// ones it held back.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// Some(number held back since the last one) if a warning may be logged now.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(at) if now.saturating_duration_since(at) < WARN_REPEAT => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Locks a mutex, ignoring poisoning (a panicked report handler leaves the
/// core as consistent as any other stop would).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
#[path = "witness_test.rs"]
mod tests;
