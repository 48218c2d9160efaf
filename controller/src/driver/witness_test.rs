//! The witness over real QUIC on loopback, driven by the nodes' [`Net`]
//! transport, and its state file.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mirrorfs::net::tls::{keygen, load_identity, load_peer, Identity, PinnedPeer};
use pretty_assertions::assert_eq;
use tokio::sync::oneshot;

use super::*;
use crate::cluster::msg::VERSION;
use crate::driver::net::tests::{
    collect_until, free_port, lo, module, node, subscribe, DEADLINE, MODULE,
};
use crate::driver::net::{Net, NetEvent};

/// A witness running on its own thread; stopped (and joined) on drop, so a
/// failing test leaves nothing behind.
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), WitnessError>>>,
}

impl Running {
    fn start(cfg: WitnessConfig) -> Result<Self, WitnessError> {
        let (stop, stopped) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            run_reporting(
                cfg,
                async {
                    let _ = stopped.await;
                },
                move |addr| {
                    let _ = bound_tx.send(addr);
                },
            )
        });
        match bound_rx.recv_timeout(DEADLINE) {
            Ok(addr) => Ok(Self {
                addr,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e),
                other => panic!("the witness neither listened nor failed: {other:?}"),
            },
        }
    }

    fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let r = t.join().expect("witness thread");
            r.expect("witness run");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !thread::panicking() {
            self.shutdown();
        } else if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn config(dir: &Path, listen: SocketAddr, nodes: &[&str]) -> WitnessConfig {
    WitnessConfig {
        listen,
        key: dir.join("witness.key"),
        cert: dir.join("witness.crt"),
        peers: nodes.iter().map(|n| dir.join(format!("{n}.crt"))).collect(),
        state: dir.join("state").join("witness.json"),
    }
}

fn report(node: &str, peer: &str, seq: u64, want_lease: bool) -> Report {
    Report {
        version: VERSION,
        module: MODULE.into(),
        node: node.into(),
        peer: peer.into(),
        seq,
        primary: want_lease,
        in_sync: false,
        want_lease,
        release: false,
        lease_ms: 200,
        timeout_ms: 300,
    }
}

fn answers(events: &[NetEvent]) -> Vec<&Answer> {
    events
        .iter()
        .filter_map(|e| match e {
            NetEvent::Answer { module, answer } if module == MODULE => Some(answer),
            _ => None,
        })
        .collect()
}

/// Starts a node's `Net` whose module has the witness at `witness`.
fn start_node(
    dir: &Path,
    me: &str,
    peer: &PinnedPeer,
    (local, remote): (IpAddr, IpAddr),
    port: u16,
    witness: (SocketAddr, PinnedPeer),
) -> (Net, Receiver<NetEvent>) {
    let (id, _) = node_loaded(dir, me);
    let mut m = module(me, peer, vec![local], vec![remote], port);
    m.witness = Some(witness);
    let (tx, rx) = crossbeam_channel::unbounded();
    (
        Net::start(id, vec![m], Vec::new(), tx).expect("Net::start"),
        rx,
    )
}

/// Loads an identity generated before.
fn node_loaded(dir: &Path, name: &str) -> (Identity, PinnedPeer) {
    let (key, cert) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.crt")),
    );
    (
        load_identity(&key, &cert).expect("identity"),
        load_peer(&cert).expect("peer"),
    )
}

#[test]
fn reports_get_answers_the_state_survives_a_restart_and_no_node_speaks_for_another() {
    subscribe();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let (_, pin1) = node(dir, "node1");
    let (_, pin2) = node(dir, "node2");
    let (_, wpin) = node(dir, "witness");
    let cfg = config(dir, SocketAddr::new(lo(1), 0), &["node1", "node2"]);
    let witness = Running::start(cfg.clone()).expect("witness");
    let waddr = witness.addr;
    let port = free_port(&[lo(1), lo(3)]);
    let (net1, rx1) = start_node(
        dir,
        "node1",
        &pin2,
        (lo(1), lo(3)),
        port,
        (waddr, wpin.clone()),
    );
    let (net2, rx2) = start_node(
        dir,
        "node2",
        &pin1,
        (lo(3), lo(1)),
        port,
        (waddr, wpin.clone()),
    );

    tracing::info!("--- node1 asks for the lease until the witness's quiet time is over");
    let mut seq = 0;
    let [at1] = collect_until(
        "a grant to node1",
        [&rx1],
        || {
            seq += 1;
            net1.send_report(MODULE, &report("node1", "node2", seq, true));
        },
        |[at1]| {
            answers(at1)
                .iter()
                .any(|a| matches!(a.lease, LeaseAnswer::Granted { .. }))
        },
    );
    let granted = answers(&at1)
        .into_iter()
        .find(|a| matches!(a.lease, LeaseAnswer::Granted { .. }))
        .expect("granted")
        .clone();
    assert_eq!(granted.lease, LeaseAnswer::Granted { ms: 200 });
    assert_eq!(granted.holder.as_deref(), Some("node1"));
    assert!(!granted.behind);
    // The grant marked node2 behind, on disk before the answer left.
    let saved: Persisted =
        serde_json::from_slice(&fs::read(&cfg.state).expect("state file")).expect("state JSON");
    assert_eq!(
        saved.behind,
        BTreeMap::from([(MODULE.into(), "node2".into())])
    );

    tracing::info!("--- node1 sends a report naming node2: dropped");
    let forged = 1_000_000;
    let mut seq = 2_000_000;
    let [at1] = collect_until(
        "answers to node1's own reports after the forged one",
        [&rx1],
        || {
            net1.send_report(MODULE, &report("node2", "node1", forged, false));
            seq += 1;
            net1.send_report(MODULE, &report("node1", "node2", seq, false));
        },
        |[at1]| answers(at1).iter().filter(|a| a.seq > 2_000_000).count() >= 5,
    );
    assert!(
        answers(&at1).iter().all(|a| a.seq != forged),
        "a report naming another node was answered: {at1:#?}"
    );
    // And the forged report changed nothing: node2 is still behind.
    assert!(answers(&at1).iter().all(|a| !a.behind));

    tracing::info!("--- the witness restarts on the same address and reads its state");
    witness.stop();
    let witness = Running::start(WitnessConfig {
        listen: waddr,
        ..cfg.clone()
    })
    .expect("restarted witness");
    let mut seq = 0;
    let [at2] = collect_until(
        "a final refusal to node2, whose data is behind",
        [&rx2],
        || {
            seq += 1;
            net2.send_report(MODULE, &report("node2", "node1", seq, true));
        },
        |[at2]| {
            answers(at2)
                .iter()
                .any(|a| matches!(a.lease, LeaseAnswer::Refused { retry: false, .. }))
        },
    );
    let refused = answers(&at2)
        .into_iter()
        .find(|a| matches!(a.lease, LeaseAnswer::Refused { retry: false, .. }))
        .expect("refused")
        .clone();
    assert!(refused.behind, "{refused:?}");
    let LeaseAnswer::Refused { reason, .. } = &refused.lease else {
        unreachable!("matched above")
    };
    assert!(reason.contains("node2's data is behind"), "{reason}");

    net1.stop();
    net2.stop();
    witness.stop();
}

#[test]
fn a_node_not_listed_gets_no_answer() {
    subscribe();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    node(dir, "node1");
    let (_, pin2) = node(dir, "node2");
    let (_, wpin) = node(dir, "witness");
    // The witness knows node2 only.
    let witness =
        Running::start(config(dir, SocketAddr::new(lo(1), 0), &["node2"])).expect("witness");
    let port = free_port(&[lo(1)]);
    let (net1, rx1) = start_node(
        dir,
        "node1",
        &pin2,
        (lo(1), lo(3)),
        port,
        (witness.addr, wpin),
    );
    let mut seq = 0;
    let [at1] = collect_until(
        "node1 to see the witness refuse it",
        [&rx1],
        || {
            seq += 1;
            net1.send_report(MODULE, &report("node1", "node2", seq, true));
        },
        |[at1]| {
            at1.iter().any(
                |e| matches!(e, NetEvent::Problem { text, .. } if text.starts_with("witness:")),
            )
        },
    );
    assert!(answers(&at1).is_empty(), "{at1:#?}");
    net1.stop();
    witness.stop();
}

#[test]
fn start_fails_on_a_corrupt_state_file_naming_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    keygen(dir, "witness").expect("keygen");
    keygen(dir, "node1").expect("keygen");
    let cfg = config(dir, SocketAddr::new(lo(1), 0), &["node1"]);
    fs::create_dir_all(cfg.state.parent().expect("parent")).expect("mkdir");
    fs::write(&cfg.state, b"{\"behind\": 3").expect("write");

    let err = Running::start(cfg.clone()).err().expect("must fail");

    assert!(matches!(err, WitnessError::StateCorrupt { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&cfg.state.display().to_string()), "{msg}");
    assert!(msg.contains("restore it from a backup"), "{msg}");
}

#[test]
fn start_refuses_a_node_listed_twice_or_none() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    keygen(dir, "witness").expect("keygen");
    keygen(dir, "node1").expect("keygen");
    let copy = dir.join("copy.crt");
    fs::copy(dir.join("node1.crt"), &copy).expect("copy");
    let mut cfg = config(dir, SocketAddr::new(lo(1), 0), &["node1"]);
    cfg.peers.push(copy.clone());

    let err = Running::start(cfg.clone()).err().expect("must fail");
    assert!(
        matches!(&err, WitnessError::DuplicateNode { name, second, .. } if name == "node1" && *second == copy),
        "{err:?}"
    );

    cfg.peers.clear();
    let err = Running::start(cfg).err().expect("must fail");
    assert!(matches!(err, WitnessError::NoPeers), "{err:?}");
}

#[test]
fn the_state_file_is_replaced_whole_and_a_missing_one_is_empty() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("w.json");
    assert_eq!(load_state(&path).expect("missing"), Persisted::default());
    let state = Persisted {
        behind: BTreeMap::from([("web".into(), "node2".into())]),
    };

    save_state(&path, &state).expect("save");

    assert_eq!(load_state(&path).expect("load"), state);
    let names: Vec<_> = fs::read_dir(tmp.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("w.json")]);
}

#[test]
fn no_answer_leaves_until_the_state_is_saved() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A regular file where the state's directory should be: writes fail
    // (even for root).
    let blocker = tmp.path().join("blocker");
    fs::write(&blocker, b"").expect("write");
    let t0 = Instant::now();
    let mut core = Core::new(t0, Persisted::default(), blocker.join("w.json"));
    let after_quiet = t0 + Duration::from_secs(1);

    // The grant marks node2 behind; it cannot be saved: no answer.
    assert_eq!(
        core.handle(after_quiet, &report("node1", "node2", 1, true)),
        None
    );
    // Still unsaved: the next report is not answered either, though it
    // changes nothing by itself.
    assert_eq!(
        core.handle(after_quiet, &report("node1", "node2", 2, false)),
        None
    );

    // The directory comes back: the pending state is written first.
    fs::remove_file(&blocker).expect("rm");
    let answer = core
        .handle(after_quiet, &report("node1", "node2", 3, true))
        .expect("answered once saved");
    assert_eq!(answer.lease, LeaseAnswer::Granted { ms: 200 });
    assert_eq!(
        load_state(&blocker.join("w.json")).expect("saved").behind,
        BTreeMap::from([(MODULE.into(), "node2".into())])
    );
}

#[test]
fn warnings_are_throttled_and_count_what_they_held_back() {
    let t0 = Instant::now();
    let mut t = Throttle::default();
    assert_eq!(t.allow(t0), Some(0));
    assert_eq!(t.allow(t0 + Duration::from_secs(1)), None);
    assert_eq!(t.allow(t0 + Duration::from_secs(2)), None);
    assert_eq!(t.allow(t0 + WARN_REPEAT), Some(2));
}

#[test]
fn a_witness_on_ipv6_answers() {
    subscribe();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let (_, pin1) = node(dir, "node1");
    node(dir, "node2");
    let (_, wpin) = node(dir, "witness");
    let v6: IpAddr = "::1".parse().expect("literal");
    let witness =
        Running::start(config(dir, SocketAddr::new(v6, 0), &["node1", "node2"])).expect("witness");
    // node2 sorts after node1, so it only waits for node1 (absent here).
    let port = free_port(&[v6]);
    let (net2, rx2) = start_node(dir, "node2", &pin1, (v6, v6), port, (witness.addr, wpin));
    let mut seq = 0;
    let [at2] = collect_until(
        "an answer over IPv6",
        [&rx2],
        || {
            seq += 1;
            net2.send_report(MODULE, &report("node2", "node1", seq, false));
        },
        |[at2]| !answers(at2).is_empty(),
    );
    let answer = answers(&at2)[0];
    assert_eq!(answer.lease, LeaseAnswer::NotAsked);
    assert_eq!(answer.module, MODULE);
    net2.stop();
    witness.stop();
}
