//! The bare QUIC round trip, for the benchmarks: the floor under every
//! replicated op, measured with what replication uses (mutual TLS with the
//! node identities, [`transport`](super::transport), one bidirectional
//! stream, a current-thread runtime on each side) and nothing else: no
//! FUSE, no disk, no hand-off between threads.
//!
//! `mirrorfs rtt-serve` answers every message of `size` bytes with a 16-byte
//! one (what an ack is); `mirrorfs rtt` sends `count` messages one at a time
//! and prints the round trips. Its own ALPN, so neither end can be mistaken
//! for a replication peer. Owns nothing else; decides nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::tls::{client_config_for, server_config_for, Identity, PinnedPeer};
use super::{client_bind, transport, HANDSHAKE_TIMEOUT};

/// The ALPN of the round-trip tool.
const ALPN: &[u8] = b"mirrorfs-rtt/1";
/// The answer's size, bytes.
const ANSWER: usize = 16;
/// The largest message accepted.
pub const MAX_SIZE: usize = 16 << 20;

/// What `mirrorfs rtt` prints (one JSON line).
#[derive(Debug, Clone, Serialize)]
pub struct RttFigures {
    /// Bytes per message.
    pub size: usize,
    /// Round trips measured (after the warm-up).
    pub count: usize,
    /// Median, microseconds.
    pub p50_us: f64,
    /// 90th percentile, microseconds.
    pub p90_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// Mean, microseconds.
    pub mean_us: f64,
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))
}

/// Answers round trips on `listen` until killed, from the peer `pinned`
/// only.
pub fn serve(listen: SocketAddr, id: &Identity, pinned: &PinnedPeer) -> Result<(), String> {
    let mut cfg = server_config_for(id, &[pinned], ALPN).map_err(|e| e.to_string())?;
    cfg.transport_config(Arc::new(transport(HANDSHAKE_TIMEOUT)));
    runtime()?.block_on(async move {
        let endpoint = quinn::Endpoint::server(cfg, listen)
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                    return;
                };
                let mut buf = vec![0u8; 64 << 10];
                let answer = [0u8; ANSWER];
                loop {
                    let mut len = [0u8; 4];
                    if recv.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut left = u32::from_le_bytes(len) as usize;
                    if left > MAX_SIZE {
                        return;
                    }
                    while left > 0 {
                        let n = left.min(buf.len());
                        if recv.read_exact(&mut buf[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                    if send.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
        Ok(())
    })
}

/// Measures `count` round trips of `size`-byte messages to `peer` (after
/// `count / 10` of warm-up).
pub fn measure(
    peer: SocketAddr,
    id: &Identity,
    pinned: &PinnedPeer,
    size: usize,
    count: usize,
) -> Result<RttFigures, String> {
    if size > MAX_SIZE || count == 0 {
        return Err(format!(
            "--size must be at most {MAX_SIZE} and --count at least 1"
        ));
    }
    let mut cfg = client_config_for(id, pinned, ALPN).map_err(|e| e.to_string())?;
    cfg.transport_config(Arc::new(transport(HANDSHAKE_TIMEOUT)));
    let mut took: Vec<Duration> = runtime()?.block_on(async move {
        let mut endpoint = quinn::Endpoint::client(client_bind(peer))
            .map_err(|e| format!("cannot open a socket: {e}"))?;
        endpoint.set_default_client_config(cfg);
        let connecting = endpoint
            .connect(peer, &pinned.name)
            .map_err(|e| format!("cannot connect to {peer}: {e}"))?;
        let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("{peer} did not answer: is `mirrorfs rtt-serve` running?"))?
            .map_err(|e| format!("the handshake with {peer} failed: {e}"))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let mut msg = vec![0x5au8; size + 4];
        msg[..4].copy_from_slice(&(size as u32).to_le_bytes());
        let mut answer = [0u8; ANSWER];
        let warm = count / 10;
        let mut took = Vec::with_capacity(count);
        for i in 0..warm + count {
            let t0 = Instant::now();
            send.write_all(&msg).await.map_err(|e| e.to_string())?;
            tokio::time::timeout(HANDSHAKE_TIMEOUT, recv.read_exact(&mut answer))
                .await
                .map_err(|_| format!("{peer} stopped answering"))?
                .map_err(|e| e.to_string())?;
            if i >= warm {
                took.push(t0.elapsed());
            }
        }
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        Ok::<_, String>(took)
    })?;
    took.sort();
    let us = |d: Duration| (d.as_secs_f64() * 1e7).round() / 10.0;
    let at = |q: f64| us(took[((took.len() as f64 * q) as usize).min(took.len() - 1)]);
    let mean = took.iter().sum::<Duration>() / took.len() as u32;
    Ok(RttFigures {
        size,
        count,
        p50_us: at(0.5),
        p90_us: at(0.9),
        p99_us: at(0.99),
        mean_us: us(mean),
    })
}
