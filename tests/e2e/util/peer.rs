//! A primary played by the test: a QUIC client holding node1's pinned
//! certificate that speaks the wire format frame by frame (hostile frames, or
//! single ops such as `BeginResync`), against a `Server` run in-process.
//! While ops are pending the server may send `Frame::Progress` between its
//! answers: callers that wait for an answer skip those.
//!
//! Owns: its endpoint and connection; nothing on disk.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mirrorfs::net::{tls, transport};
use mirrorfs::proto::path::RelPath;
use mirrorfs::proto::wire::{Decoded, Frame, Hello, Op, Seq, PROTOCOL_VERSION};

/// How long a handshake or an answer may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// node1, connected to a server that pins it (keys in `keys/`).
pub struct Peer {
    _endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: Vec<u8>,
}

impl Peer {
    /// Connects with node1's identity and completes the hello exchange.
    pub async fn connect(keys: &Path, addr: SocketAddr) -> Self {
        let mut p = Self::connect_with(
            keys,
            addr,
            Hello {
                version: PROTOCOL_VERSION,
                node: "node1".into(),
                peer: "node2".into(),
                history: vec![],
                peer_timeout_ms: 5000,
            },
        )
        .await;
        match p.next().await {
            Some(Frame::Hello(h)) => assert_eq!(h.node, "node2"),
            other => panic!("expected the server's hello, got {other:?}"),
        }
        p.suspects().await;
        p
    }

    /// Reads the suspect directories the server sends after its hello.
    pub async fn suspects(&mut self) -> Vec<RelPath> {
        let mut all = Vec::new();
        loop {
            match self.next().await {
                Some(Frame::Suspects { paths, last }) => {
                    all.extend(paths);
                    if last {
                        return all;
                    }
                }
                other => panic!("expected the server's suspect directories, got {other:?}"),
            }
        }
    }

    /// Connects with node1's certificate and sends `hello`, whatever it says.
    pub async fn connect_with(keys: &Path, addr: SocketAddr, hello: Hello) -> Self {
        let id = tls::load_identity(&keys.join("node1.key"), &keys.join("node1.crt")).unwrap();
        let pinned = tls::load_peer(&keys.join("node2.crt")).unwrap();
        let mut cfg = tls::client_config(&id, &pinned).unwrap();
        cfg.transport_config(Arc::new(transport(Duration::from_secs(5))));
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(cfg);
        let conn = tokio::time::timeout(TIMEOUT, endpoint.connect(addr, "node2").unwrap())
            .await
            .expect("handshake in time")
            .expect("pinned handshake");
        let (mut send, recv) = conn.open_bi().await.unwrap();
        let mut bytes = Vec::new();
        Frame::Hello(hello).encode(&mut bytes);
        send.write_all(&bytes).await.unwrap();
        Self {
            _endpoint: endpoint,
            conn,
            send,
            recv,
            buf: Vec::new(),
        }
    }

    /// The next frame from the server, or `None` once the stream ends.
    pub async fn next(&mut self) -> Option<Frame> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Decoded::Frame(f, len) = Frame::decode(&self.buf).expect("server frames decode")
            {
                self.buf.drain(..len);
                return Some(f);
            }
            match tokio::time::timeout(TIMEOUT, self.recv.read(&mut chunk))
                .await
                .expect("the server answers in time")
            {
                Ok(Some(n)) => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        // The server may already have closed; that is an answer too.
        let _ = self.send.write_all(bytes).await;
    }

    pub async fn send_op(&mut self, seq: u64, op: Op) {
        let mut b = Vec::new();
        Frame::Op { seq: Seq(seq), op }.encode(&mut b);
        self.send_raw(&b).await;
    }
}
