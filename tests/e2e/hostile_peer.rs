//! Issue 2 ("mirrorfs: the synchronous replicating filesystem"): a hostile peer.
//!
//! A client holding the pinned certificate but sending `../` paths, absolute
//! paths, garbage, oversized and unknown frames, or valid ops aimed through
//! symlinks that point out of the replica: nothing outside the root changes,
//! every bad frame ends its connection with a `Refused` frame naming the
//! problem, and the real `mirrorfs serve` server keeps serving good clients.
//! Real QUIC with mutual TLS on loopback, the server in-process.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
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
                    peer_timeout_ms: 5000,
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
                    peer_timeout_ms: 5000,
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
                // Progress: the server reports work while ops are pending.
                Some(Frame::Ack { .. } | Frame::Progress { .. }) => {}
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
                Some(Frame::Ack { .. } | Frame::Progress { .. }) => {}
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

/// A loop device over a file of zeros: a real block device of this node,
/// detached on drop.
struct LoopDevice {
    dev: PathBuf,
}

impl LoopDevice {
    fn over(image: &Path) -> Self {
        fs::write(image, vec![0u8; 1 << 20]).unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(image)
            .output()
            .expect("losetup runs (util-linux)");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Self { dev }
    }

    /// Its first 64 KiB as the device reads them (its page cache included).
    fn head(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 64 << 10];
        fs::File::open(&self.dev)
            .unwrap()
            .read_exact(&mut buf)
            .unwrap();
        buf
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Issue 7, item 9 ("the peer's reach"): a peer holding the pinned
/// certificate makes a block device node of this node's disk (and a
/// character device) in the replica: the nodes are made (metadata is
/// replicated), but every data op through them (write, truncate, fallocate,
/// copy to and from, checksums, open of a handle, fsync) is refused with
/// EINVAL, and not one byte reaches the device.
#[test]
fn issue_07_device_nodes_are_metadata_never_a_way_to_this_nodes_disks() {
    let dir = tempfile::Builder::new()
        .prefix("mfs-hostile-dev")
        .tempdir_in("/var/tmp")
        .unwrap();
    let (root, keys) = (dir.path().join("replica"), dir.path().join("keys"));
    fs::create_dir(&root).unwrap();
    tls::keygen(&keys, "node1").unwrap();
    tls::keygen(&keys, "node2").unwrap();
    let disk = LoopDevice::over(&dir.path().join("disk.img"));
    let rdev = fs::metadata(&disk.dev).unwrap().rdev();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcomes = rt.block_on(async {
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
        let mut p = Peer::connect(&keys, addr).await;
        let blk = || Target::Path(rel("blk"));
        let chr = || Target::Path(rel("chr"));
        let reg = || Target::Path(rel("reg"));
        let ops = vec![
            Op::Mknod {
                path: rel("blk"),
                mode: libc::S_IFBLK | 0o600,
                rdev,
                uid: 0,
                gid: 0,
            },
            Op::Mknod {
                path: rel("chr"),
                mode: libc::S_IFCHR | 0o666,
                rdev: libc::makedev(1, 5), // /dev/zero
                uid: 0,
                gid: 0,
            },
            Op::Create {
                path: rel("reg"),
                mode: 0o644,
                uid: 0,
                gid: 0,
                handle: None,
                flags: 0,
            },
            Op::Write {
                target: reg(),
                offset: 0,
                data: b"regular".to_vec(),
            },
            Op::Write {
                target: blk(),
                offset: 0,
                data: b"pwned".to_vec(),
            },
            Op::Truncate {
                target: blk(),
                size: 0,
            },
            Op::Fallocate {
                target: blk(),
                mode: 0,
                offset: 0,
                len: 4096,
            },
            Op::CopyRange {
                src: reg(),
                src_offset: 0,
                dst: blk(),
                dst_offset: 0,
                len: 7,
            },
            Op::CopyRange {
                src: chr(),
                src_offset: 0,
                dst: reg(),
                dst_offset: 0,
                len: 4,
            },
            Op::Checksums {
                path: rel("blk"),
                block: 4096,
                first: 0,
                count: 1,
            },
            Op::Checksums {
                path: rel("chr"),
                block: 4096,
                first: 0,
                count: 1,
            },
            Op::Open {
                path: rel("blk"),
                handle: mirrorfs::proto::wire::HandleId(5),
                flags: 0,
            },
            Op::Fsync {
                target: blk(),
                datasync: false,
            },
        ];
        let n = ops.len() as u64;
        for (i, op) in ops.into_iter().enumerate() {
            p.send_op(i as u64 + 1, op).await;
        }
        // seq -> errno (0: applied), until every op is answered.
        let mut outcomes = BTreeMap::new();
        let mut acked = Seq(0);
        while acked < Seq(n) || !outcomes.contains_key(&n) {
            match p.next().await {
                Some(Frame::Failed { seq, errno }) | Some(Frame::Synced { seq, errno }) => {
                    outcomes.insert(seq.0, errno);
                }
                Some(Frame::Ack { upto }) => {
                    for s in acked.0 + 1..=upto.0 {
                        outcomes.entry(s).or_insert(0);
                    }
                    acked = upto;
                }
                Some(Frame::Data { .. } | Frame::Progress { .. }) => {}
                other => panic!("unexpected answer {other:?}"),
            }
        }
        let _ = stop.send(());
        tokio::time::timeout(TIMEOUT, srv)
            .await
            .expect("server stops")
            .unwrap();
        outcomes
    });
    let want: BTreeMap<u64, i32> = (1..=13)
        .map(|s| (s, if s <= 4 { 0 } else { libc::EINVAL }))
        .collect();
    assert_eq!(outcomes, want, "seq -> errno (0: applied)");
    assert!(
        disk.head().iter().all(|b| *b == 0),
        "the peer wrote this node's block device"
    );
    assert_eq!(fs::read(root.join("reg")).unwrap(), b"regular");
    let node = fs::symlink_metadata(root.join("blk")).unwrap();
    assert!(node.file_type().is_block_device() && node.rdev() == rdev);
}

/// Issue 7, item 8 ("an old connection may still apply buffered frames after
/// a newer one took over"): once a newer connection of the primary passed
/// its hello, no op of the older one is applied any more, not even one the
/// server had already received. The older connection sends a `Remove` of a
/// large tree and a `Mkdir` behind it; while the secondary works on the
/// removal (it says so with progress frames), a newer connection says hello:
/// the removal, begun before, completes; the `Mkdir` is never applied, and
/// the older connection gets no answer for it.
#[test]
fn issue_07_a_newer_connection_takes_over_exclusively() {
    let dir = tempfile::Builder::new()
        .prefix("mfs-takeover")
        .tempdir_in("/var/tmp")
        .unwrap();
    let (root, keys) = (dir.path().join("replica"), dir.path().join("keys"));
    for d in 0..100 {
        let sub = root.join("big").join(format!("d{d}"));
        fs::create_dir_all(&sub).unwrap();
        for f in 0..1000 {
            fs::File::create(sub.join(format!("f{f}"))).unwrap();
        }
    }
    tls::keygen(&keys, "node1").unwrap();
    tls::keygen(&keys, "node2").unwrap();
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
        let hello = Hello {
            version: PROTOCOL_VERSION,
            node: "node1".into(),
            peer: "node2".into(),
            history: vec![],
            peer_timeout_ms: 400,
        };
        let mut old = Peer::connect_with(&keys, addr, hello).await;
        assert!(matches!(old.next().await, Some(Frame::Hello(_))));
        old.suspects().await;
        let mut both = Vec::new();
        Frame::Op {
            seq: Seq(1),
            op: Op::Remove { path: rel("big") },
        }
        .encode(&mut both);
        Frame::Op {
            seq: Seq(2),
            op: Op::Mkdir {
                path: rel("late"),
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
        }
        .encode(&mut both);
        old.send_raw(&both).await;
        match old.next().await {
            Some(Frame::Progress { .. }) => {}
            other => panic!("expected progress during the removal, got {other:?}"),
        }
        // The newer connection's hello is answered once the apply thread
        // switched to it: after the removal, and after skipping the Mkdir.
        let mut new = Peer::connect(&keys, addr).await;
        assert!(
            !root.join("big").exists(),
            "the removal begun before did not complete"
        );
        assert!(
            !root.join("late").exists(),
            "an op of the replaced connection was applied after the takeover"
        );
        loop {
            match old.next().await {
                None => break,
                Some(Frame::Ack { upto }) => {
                    assert!(
                        upto < Seq(2),
                        "the replaced connection's op was acknowledged"
                    )
                }
                Some(_) => {}
            }
        }
        new.send_op(
            1,
            Op::Mkdir {
                path: rel("new"),
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
        )
        .await;
        loop {
            match new.next().await {
                Some(Frame::Ack { upto: Seq(1) }) => break,
                Some(Frame::Ack { .. } | Frame::Progress { .. }) => {}
                other => panic!("expected the ack of the newer connection's op, got {other:?}"),
            }
        }
        assert!(root.join("new").is_dir());
        let _ = stop.send(());
        tokio::time::timeout(TIMEOUT, srv)
            .await
            .expect("server stops")
            .unwrap();
    });
}
