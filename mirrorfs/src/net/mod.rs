//! The QUIC transport between the primary and the secondary: node identities and
//! pinned peers (`tls`), the primary's replication driver (`client`) and the
//! secondary's server (`server`, with what it reports in `serve_state`), and the
//! bare round trip the benchmarks compare against (`rtt`). Drivers only: what to send and when an op is
//! done is decided by `proto`.

mod apply_thread;
pub mod client;
pub mod rtt;
pub mod serve_state;
pub mod server;
pub mod tls;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::proto::wire::{Decoded, Frame};

/// How long connecting and the hello exchange may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// QUIC transport settings of the replication connection: a dead peer is noticed
/// within `peer_timeout` even when no op is in flight, and the windows are large
/// enough for many pipelined 1 MiB writes.
pub fn transport(peer_timeout: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    let idle = peer_timeout.max(Duration::from_millis(500));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    t.keep_alive_interval(Some(idle / 4));
    t.stream_receive_window(quinn::VarInt::from_u32(64 << 20));
    t.receive_window(quinn::VarInt::from_u32(128 << 20));
    t.send_window(128 << 20);
    t.max_concurrent_uni_streams(0u32.into());
    t.max_concurrent_bidi_streams(1u32.into());
    // Before the first RTT sample: the nodes of a cluster are close, and a
    // short guess makes the handshake's first retransmissions come within a
    // few hundred ms (the default, 333 ms, spaces them 1 s and more apart),
    // so a returning secondary is found soon after it listens.
    t.initial_rtt(Duration::from_millis(25));
    t
}

/// The local address a client endpoint binds to reach `peer`: any address
/// and port of the peer's family.
pub(crate) fn client_bind(peer: SocketAddr) -> SocketAddr {
    let any: IpAddr = if peer.is_ipv6() {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    SocketAddr::new(any, 0)
}

/// Reads whole frames from a stream, one at a time, keeping what follows a
/// frame for the next (the handshake reads a few frames, then hands the rest
/// of the buffer to the connection's main loop).
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// The next frame; `limit` bounds the bytes buffered for it (a hello is
    /// small: a peer sending more is refused before [`crate::proto::wire::MAX_FRAME`]).
    pub(crate) async fn next(
        &mut self,
        recv: &mut quinn::RecvStream,
        limit: usize,
    ) -> Result<Frame, String> {
        let mut chunk = [0u8; 16 << 10];
        loop {
            match Frame::decode(&self.buf) {
                Ok(Decoded::Frame(f, len)) => {
                    self.buf.drain(..len);
                    return Ok(f);
                }
                Ok(Decoded::Incomplete) => {}
                Err(e) => return Err(e.to_string()),
            }
            if self.buf.len() > limit {
                return Err(format!(
                    "frame larger than {limit} bytes during the handshake"
                ));
            }
            match recv.read(&mut chunk).await {
                Ok(Some(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(None) => return Err("the stream closed during the handshake".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// What was read beyond the frames returned.
    pub(crate) fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}
