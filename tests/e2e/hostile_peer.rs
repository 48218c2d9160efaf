//! Issue 2 ("mirrorfs: the synchronous replicating filesystem"): a hostile peer.
//!
//! A client holding the pinned certificate but sending `../` paths, absolute
//! paths, garbage, oversized and unknown frames, or valid ops aimed through
//! symlinks that point out of the replica: nothing outside the root changes,
//! every bad frame ends its connection with a `Refused` frame naming the
//! problem, and the real `mirrorfs serve` server keeps serving good clients.
//! Real QUIC with mutual TLS on loopback, the server in-process.

use std::fs;
use std::path::Path;
use std::time::Duration;

use mirrorfs::net::server::{ServeConfig, Server};
use mirrorfs::net::tls;
use mirrorfs::proto::path::RelPath;
use mirrorfs::proto::wire::{Frame, Hello, Op, Seq, Target, PROTOCOL_VERSION};

use crate::util::peer::{Peer, TIMEOUT};

/// An op frame (seq 1) whose single path field holds `path` unchecked.
fn raw_op(opcode: u8, path: &[u8]) -> Vec<u8> {
    let mut body = vec![3u8]; // frame tag: Op
    body.extend_from_slice(&1u64.to_be_bytes());
    body.push(opcode);
    body.extend_from_slice(&(path.len() as u16).to_be_bytes());
    body.extend_from_slice(path);
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn rel(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let data = fs::read(e.path()).unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), data)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn hostile_frames_touch_nothing_outside_the_root_and_the_server_keeps_serving() {
    let dir = tempfile::Builder::new()
        .prefix("mfs-hostile")
        .tempdir_in("/var/tmp")
        .unwrap();
    let (root, outside, keys) = (
        dir.path().join("replica"),
        dir.path().join("outside"),
        dir.path().join("keys"),
    );
    fs::create_dir(&root).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"do not touch").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), root.join("secret-link")).unwrap();
    tls::keygen(&keys, "node1").unwrap();
    tls::keygen(&keys, "node2").unwrap();
    let before = snapshot(&outside);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = Server::bind(ServeConfig {
            root: root.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            identity: tls::load_identity(&keys.join("node2.key"), &keys.join("node2.crt")).unwrap(),
            pinned: tls::load_peer(&keys.join("node1.crt")).unwrap(),
            idle_timeout: Duration::from_secs(5),
            control: None,
        })
        .unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let srv = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));

        // 1. Frames that must be refused, each on its own connection.
        let oversized = ((8u32 << 20) + 1).to_be_bytes().to_vec();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("dot-dot path", raw_op(6, b"../outside/secret"), "'..'"),
            ("absolute path", raw_op(6, b"/etc/passwd"), "absolute"),
            ("NUL in path", raw_op(6, b"a\0b"), "NUL"),
            (
                "unknown op code",
                raw_op(99, b"x"),
                "unknown operation code 99",
            ),
            (
                "garbage",
                vec![0, 0, 0, 5, 0xde, 0xad, 0xbe, 0xef, 0],
                "unknown frame type",
            ),
            ("oversized frame", oversized, "exceeds the limit"),
        ];
        for (what, bytes, want) in cases {
            let mut p = Peer::connect(&keys, addr).await;
            p.send_raw(&bytes).await;
            match p.next().await {
                Some(Frame::Refused { reason }) => {
                    assert!(
                        reason.contains(want),
                        "{what}: refusal {reason:?} lacks {want:?}"
                    )
                }
                other => panic!("{what}: expected a refusal, got {other:?}"),
            }
            assert!(
                p.next().await.is_none(),
                "{what}: the connection stays open"
            );
            drop(p.conn);
        }

        // 1b. A hello with another protocol version or identity is refused
        //     with both sides' values named.
        for (hello, want) in [
            (
                Hello {
                    version: 99,
                    node: "node1".into(),
                    peer: "node2".into(),
                    history: vec![],
                    suspects: vec![],
                },
                [
                    "protocol version mismatch".to_owned(),
                    "version 99".to_owned(),
                    format!("version {PROTOCOL_VERSION}"),
                ],
            ),
            (
                Hello {
                    version: PROTOCOL_VERSION,
                    node: "impostor".into(),
                    peer: "node9".into(),
                    history: vec![],
                    suspects: vec![],
                },
                [
                    "identity mismatch".to_owned(),
                    "impostor".to_owned(),
                    "node9".to_owned(),
                ],
            ),
        ] {
            let mut p = Peer::connect_with(&keys, addr, hello).await;
            match p.next().await {
                Some(Frame::Refused { reason }) => {
                    for w in want {
                        assert!(reason.contains(&w), "refusal {reason:?} lacks {w:?}");
                    }
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }

        // 2. Valid frames aimed through symlinks: each op fails, the
        //    connection stays up, nothing outside changes.
        let mut p = Peer::connect(&keys, addr).await;
        let traps = [
            Op::Create {
                path: rel("escape/planted"),
                mode: 0o644,
                uid: 0,
                gid: 0,
                handle: None,
                flags: 0,
            },
            Op::Unlink {
                path: rel("escape/secret"),
            },
            Op::Write {
                target: Target::Path(rel("secret-link")),
                offset: 0,
                data: b"pwned".to_vec(),
            },
            Op::Truncate {
                target: Target::Path(rel("secret-link")),
                size: 0,
            },
            Op::Chmod {
                target: Target::Path(rel("escape/secret")),
                mode: 0o777,
            },
            Op::Rename {
                from: rel("escape/secret"),
                to: rel("stolen"),
                flags: 0,
            },
        ];
        let n = traps.len() as u64;
        for (i, op) in traps.into_iter().enumerate() {
            p.send_op(i as u64 + 1, op).await;
        }
        let mut failed = 0;
        while failed < n {
            match p.next().await {
                Some(Frame::Failed { errno, .. }) => {
                    assert!(
                        errno == libc::ELOOP || errno == libc::ENOENT,
                        "errno {errno}"
                    );
                    failed += 1;
                }
                Some(Frame::Ack { .. }) => {}
                other => panic!("expected failures for every trap, got {other:?}"),
            }
        }
        // 3. The same connection still applies good ops.
        p.send_op(
            n + 1,
            Op::Mkdir {
                path: rel("good"),
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
        )
        .await;
        loop {
            match p.next().await {
                Some(Frame::Ack { upto }) if upto == Seq(n + 1) => break,
                Some(Frame::Ack { .. }) => {}
                other => panic!("expected the ack of the good op, got {other:?}"),
            }
        }
        assert!(root.join("good").is_dir());
        let _ = stop.send(());
        tokio::time::timeout(TIMEOUT, srv)
            .await
            .expect("server stops")
            .unwrap();
    });
    assert_eq!(
        snapshot(&outside),
        before,
        "something outside the root changed"
    );
    assert!(!root.join("stolen").exists());
}
