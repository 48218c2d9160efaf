//! The heartbeat transport over real QUIC on loopback: 127.0.0.1 to
//! 127.0.0.5 are all loopback addresses on Linux, so two nodes on two
//! "networks" each get their own addresses on one machine. Helpers here are
//! shared with the witness tests.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Receiver;
use mirrorfs::net::tls::{keygen, load_identity, load_peer, Identity, PinnedPeer};

use super::*;
use crate::cluster::msg::VERSION;
use crate::cluster::state::ModuleState;

pub(crate) const MODULE: &str = "web";

/// How long any one wait in these tests may take.
pub(crate) const DEADLINE: Duration = Duration::from_secs(15);

pub(crate) fn subscribe() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
}

/// A node identity and its pinned certificate, generated in `dir`.
pub(crate) fn node(dir: &Path, name: &str) -> (Identity, PinnedPeer) {
    let (key, cert) = keygen(dir, name).expect("keygen");
    (
        load_identity(&key, &cert).expect("load_identity"),
        load_peer(&cert).expect("load_peer"),
    )
}

pub(crate) fn lo(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A high UDP port free on every one of `addrs` right now (tests run in
/// parallel: start from a pseudo-random place).
pub(crate) fn free_port(addrs: &[IpAddr]) -> u16 {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for i in 0..500u32 {
        let port = 20_000 + ((seed.wrapping_add(i.wrapping_mul(7919))) % 40_000) as u16;
        let free = addrs
            .iter()
            .all(|ip| UdpSocket::bind(SocketAddr::new(*ip, port)).is_ok());
        if free {
            return port;
        }
    }
    panic!("no free UDP port found on {addrs:?}");
}

/// A module between `me` and `peer`, with short timings.
pub(crate) fn module(
    me: &str,
    peer: &PinnedPeer,
    local: Vec<IpAddr>,
    remote: Vec<IpAddr>,
    port: u16,
) -> NetModule {
    NetModule {
        module: MODULE.into(),
        me: me.into(),
        peer: peer.clone(),
        local,
        remote,
        port,
        witness: None,
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(300),
    }
}

pub(crate) fn beat(from: &str, seq: u64) -> Beat {
    Beat {
        version: VERSION,
        module: MODULE.into(),
        from: from.into(),
        incarnation: 7,
        seq,
        echo: None,
        echo_held_us: 0,
        digest: 42,
        state: ModuleState::Wait,
        ready: true,
        primary: false,
        in_sync: false,
        serving: false,
        handover: false,
        swap_requested: false,
        knows: Vec::new(),
        behind: false,
        roots: Vec::new(),
    }
}

/// Starts a `Net` with its own event channel.
pub(crate) fn start(id: Identity, m: NetModule) -> (Net, Receiver<NetEvent>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let net = Net::start(id, vec![m], Vec::new(), tx).expect("Net::start");
    (net, rx)
}

/// Calls `tick` every 20 ms and collects the events of each of `rxs` until
/// `done` holds for what was collected (one list per receiver); fails after
/// [`DEADLINE`] with what came.
pub(crate) fn collect_until<const N: usize>(
    what: &str,
    rxs: [&Receiver<NetEvent>; N],
    mut tick: impl FnMut(),
    mut done: impl FnMut(&[Vec<NetEvent>; N]) -> bool,
) -> [Vec<NetEvent>; N] {
    let start = Instant::now();
    let mut seen = std::array::from_fn(|_| Vec::new());
    loop {
        tick();
        thread::sleep(Duration::from_millis(20));
        for (rx, seen) in rxs.iter().zip(seen.iter_mut()) {
            seen.extend(rx.try_iter());
        }
        if done(&seen) {
            return seen;
        }
        if start.elapsed() > DEADLINE {
            panic!("timed out waiting for {what}; events seen: {seen:#?}");
        }
    }
}

/// Keeps calling `tick` for `d` and returns the events that came.
pub(crate) fn collect_for(
    d: Duration,
    rx: &Receiver<NetEvent>,
    mut tick: impl FnMut(),
) -> Vec<NetEvent> {
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < d {
        tick();
        thread::sleep(Duration::from_millis(20));
        seen.extend(rx.try_iter());
    }
    seen
}

/// The networks beats from `from` came in on.
fn networks_from(events: &[NetEvent], from: &str) -> BTreeSet<usize> {
    events
        .iter()
        .filter_map(|e| match e {
            NetEvent::Beat {
                module,
                network,
                beat,
            } if module == MODULE && beat.from == from => Some(*network),
            _ => None,
        })
        .collect()
}

fn problems(events: &[NetEvent]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            NetEvent::Problem { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn beats_cross_both_networks_each_way_with_the_network_index() {
    subscribe();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (id1, pin1) = node(tmp.path(), "node1");
    let (id2, pin2) = node(tmp.path(), "node2");
    let port = free_port(&[lo(1), lo(2), lo(3), lo(4)]);
    let (net1, rx1) = start(
        id1,
        module("node1", &pin2, vec![lo(1), lo(2)], vec![lo(3), lo(4)], port),
    );
    let (net2, rx2) = start(
        id2,
        module("node2", &pin1, vec![lo(3), lo(4)], vec![lo(1), lo(2)], port),
    );

    let mut seq = 0;
    let send = || {
        seq += 1;
        net1.send_beat(MODULE, &beat("node1", seq));
        net2.send_beat(MODULE, &beat("node2", seq));
    };
    let [at1, at2] = collect_until(
        "beats on both networks, both ways",
        [&rx1, &rx2],
        send,
        |[at1, at2]| {
            networks_from(at2, "node1").len() == 2 && networks_from(at1, "node2").len() == 2
        },
    );

    assert_eq!(networks_from(&at2, "node1"), BTreeSet::from([0, 1]));
    assert_eq!(networks_from(&at1, "node2"), BTreeSet::from([0, 1]));
    // Beats arrive as sent, and nothing but the peer's.
    for e in at1.iter().chain(&at2) {
        if let NetEvent::Beat { beat: b, .. } = e {
            assert_eq!(b, &beat(&b.from, b.seq));
        }
    }
    net1.stop();
    net2.stop();
}

#[test]
fn a_network_that_is_down_carries_nothing_and_says_so() {
    subscribe();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (id1, pin1) = node(tmp.path(), "node1");
    let (id2, pin2) = node(tmp.path(), "node2");
    let port = free_port(&[lo(1), lo(2), lo(3), lo(4), lo(5)]);
    // node1 dials network 1 at 127.0.0.5, where nobody listens.
    let (net1, rx1) = start(
        id1,
        module("node1", &pin2, vec![lo(1), lo(2)], vec![lo(3), lo(5)], port),
    );
    let (net2, rx2) = start(
        id2,
        module("node2", &pin1, vec![lo(3), lo(4)], vec![lo(1), lo(2)], port),
    );

    let mut seq = 0;
    let [at1, at2] = collect_until(
        "beats on network 0 and a problem on network 1",
        [&rx1, &rx2],
        || {
            seq += 1;
            net1.send_beat(MODULE, &beat("node1", seq));
            net2.send_beat(MODULE, &beat("node2", seq));
        },
        |[at1, at2]| {
            !networks_from(at1, "node2").is_empty()
                && !networks_from(at2, "node1").is_empty()
                && problems(at1)
                    .iter()
                    .any(|p| p.contains("heartbeat network 1"))
        },
    );

    assert_eq!(networks_from(&at1, "node2"), BTreeSet::from([0]));
    assert_eq!(networks_from(&at2, "node1"), BTreeSet::from([0]));
    let problem = problems(&at1)
        .into_iter()
        .find(|p| p.contains("heartbeat network 1"))
        .expect("a problem on network 1");
    assert!(problem.contains("127.0.0.5"), "{problem}");
    // Rate-limited: one line per kind, not one per re-dial.
    let network1 = problems(&at1)
        .iter()
        .filter(|p| p.contains("heartbeat network 1"))
        .count();
    assert_eq!(network1, 1, "{:?}", problems(&at1));
    net1.stop();
    net2.stop();
}

#[test]
fn a_stranger_dialling_in_is_refused_and_gets_no_beat_in() {
    subscribe();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, pin1) = node(tmp.path(), "node1");
    let (id2, pin2) = node(tmp.path(), "node2");
    // "node0" sorts before node2, so it dials; it pins node2's real
    // certificate, so only node2 can refuse it.
    let (stranger, _) = node(tmp.path(), "node0");
    let port = free_port(&[lo(1), lo(3)]);
    let (net2, rx2) = start(id2, module("node2", &pin1, vec![lo(3)], vec![lo(1)], port));
    let (bad, bad_rx) = start(
        stranger,
        module("node0", &pin2, vec![lo(1)], vec![lo(3)], port),
    );

    // Forged beats: from node1, for the module.
    let mut seq = 0;
    let mut forge = || {
        seq += 1;
        bad.send_beat(MODULE, &beat("node1", seq));
    };
    let [mut at2, _] = collect_until(
        "node2 to refuse the stranger",
        [&rx2, &bad_rx],
        &mut forge,
        |[at2, at_bad]| !problems(at2).is_empty() && !problems(at_bad).is_empty(),
    );
    // Keep forging a while: nothing may get through.
    at2.extend(collect_for(Duration::from_millis(500), &rx2, forge));

    let refused = problems(&at2)[0];
    assert!(
        refused.contains("refused a connection from 127.0.0.1"),
        "{refused}"
    );
    assert!(refused.contains("CN=node0"), "{refused}");
    assert!(networks_from(&at2, "node1").is_empty(), "{at2:?}");
    assert!(
        at2.iter().all(|e| matches!(e, NetEvent::Problem { .. })),
        "{at2:?}"
    );
    bad.stop();
    net2.stop();
}

#[test]
fn a_stranger_at_the_peers_address_gets_nothing_and_gives_nothing() {
    subscribe();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (id1, pin1) = node(tmp.path(), "node1");
    let (_, pin2) = node(tmp.path(), "node2");
    // "node3" sorts after node1, so it waits for node1's dial; it pins
    // node1's real certificate, so only node1 can refuse it.
    let (stranger, _) = node(tmp.path(), "node3");
    let port = free_port(&[lo(1), lo(3)]);
    let (net1, rx1) = start(id1, module("node1", &pin2, vec![lo(1)], vec![lo(3)], port));
    let (bad, bad_rx) = start(
        stranger,
        module("node3", &pin1, vec![lo(3)], vec![lo(1)], port),
    );

    let mut seq = 0;
    let mut send = || {
        seq += 1;
        net1.send_beat(MODULE, &beat("node1", seq));
        bad.send_beat(MODULE, &beat("node2", seq));
    };
    let [mut at1] = collect_until(
        "node1 to refuse the stranger's certificate",
        [&rx1],
        &mut send,
        |[at1]| !problems(at1).is_empty(),
    );
    at1.extend(collect_for(Duration::from_millis(500), &rx1, &mut send));

    let refused = problems(&at1)[0];
    assert!(
        refused.contains("cannot connect to node2 at 127.0.0.3"),
        "{refused}"
    );
    assert!(refused.contains("CN=node3"), "{refused}");
    assert!(networks_from(&at1, "node2").is_empty(), "{at1:?}");
    let at_bad: Vec<_> = bad_rx.try_iter().collect();
    assert!(networks_from(&at_bad, "node1").is_empty(), "{at_bad:?}");
    bad.stop();
    net1.stop();
}

#[test]
fn start_fails_naming_an_address_not_on_this_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (id1, _) = node(tmp.path(), "node1");
    let (_, pin2) = node(tmp.path(), "node2");
    // 192.0.2.0/24 is TEST-NET-1: never on a machine.
    let not_here: IpAddr = "192.0.2.77".parse().expect("literal");
    let (tx, _rx) = crossbeam_channel::unbounded();
    let m = module(
        "node1",
        &pin2,
        vec![lo(1), not_here],
        vec![lo(3), lo(4)],
        40_123,
    );

    let err = Net::start(id1, vec![m], Vec::new(), tx).expect_err("must fail");

    assert!(
        matches!(&err, NetError::AddressNotHere { network: 1, addr, .. } if addr.ip() == not_here),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("192.0.2.77:40123"), "{msg}");
    assert!(msg.contains("not on this node"), "{msg}");
    assert!(msg.contains("module web"), "{msg}");
}

#[test]
fn start_fails_naming_a_port_in_use() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (id1, _) = node(tmp.path(), "node1");
    let (_, pin2) = node(tmp.path(), "node2");
    let taken = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let (tx, _rx) = crossbeam_channel::unbounded();
    let m = module("node1", &pin2, vec![lo(1)], vec![lo(3)], port);

    let err = Net::start(id1, vec![m], Vec::new(), tx).expect_err("must fail");

    assert!(matches!(&err, NetError::PortInUse { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(msg.contains("heartbeat_port"), "{msg}");
}

#[test]
fn start_refuses_settings_that_do_not_fit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, pin1) = node(tmp.path(), "node1");
    let (_, pin2) = node(tmp.path(), "node2");
    type Change<'a> = Box<dyn Fn(&mut NetModule) + 'a>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|m| m.remote.push(lo(9))), "1 local and 2 peer"),
        (
            Box::new(|m| m.me = "node9".into()),
            "its certificate's name",
        ),
        (Box::new(|m| m.peer = pin1.clone()), "this node's own"),
        (
            Box::new(|m| m.remote = vec!["::1".parse().expect("literal")]),
            "same IP version",
        ),
        (
            Box::new(|m| m.timeout = m.interval),
            "longer than a non-zero interval",
        ),
    ];
    for (change, expect) in cases {
        let id = load_identity(&tmp.path().join("node1.key"), &tmp.path().join("node1.crt"))
            .expect("identity");
        let mut m = module("node1", &pin2, vec![lo(1)], vec![lo(3)], 1);
        change(&mut m);
        let (tx, _rx) = crossbeam_channel::unbounded();
        let err = Net::start(id, vec![m], Vec::new(), tx).expect_err("must fail");
        assert!(matches!(err, NetError::Config { .. }), "{err:?}");
        assert!(
            err.to_string().contains(expect),
            "{err} (expected {expect:?})"
        );
    }
}

#[test]
fn problems_are_reported_once_per_kind_until_the_link_works() {
    let t0 = Instant::now();
    let mut r = RateLimit::default();
    assert!(r.allow("connect", t0));
    assert!(!r.allow("connect", t0 + Duration::from_secs(1)));
    assert!(r.allow("lost", t0 + Duration::from_secs(1)));
    assert!(r.allow("connect", t0 + PROBLEM_REPEAT));
    r.reset();
    assert!(r.allow("connect", t0 + PROBLEM_REPEAT));
}

#[test]
fn the_transport_thread_runs_at_real_time_priority() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: SCHED_FIFO needs root");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (id1, _) = node(tmp.path(), "node1");
    let (_, pin2) = node(tmp.path(), "node2");
    let port = free_port(&[lo(1)]);
    let (net, _rx) = start(id1, module("node1", &pin2, vec![lo(1)], vec![lo(3)], port));

    // Every transport thread of this process (other tests run some too).
    let mut policies = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("tasks") {
        let task = task.expect("task").path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim() != "mirrorfarm-net" {
            continue;
        }
        let Some(tid) = task
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid out-pointer for the call.
        let got = unsafe { libc::sched_getparam(tid, &mut param) };
        // SAFETY: no pointers.
        let policy = unsafe { libc::sched_getscheduler(tid) };
        if got == 0 && policy >= 0 {
            policies.push((policy, param.sched_priority));
        }
    }
    net.stop();

    assert!(!policies.is_empty(), "no mirrorfarm-net thread found");
    assert!(
        policies
            .iter()
            .all(|p| *p == (libc::SCHED_FIFO, RT_PRIORITY)),
        "{policies:?}"
    );
}

// --- Farm modules: N members, each beating to every other.

const FARM: &str = "shop";

/// Member `k`'s addresses: 127.0.0.k on network 0, 127.0.1.k on network 1.
fn farm_addrs(k: u8) -> Vec<IpAddr> {
    vec![lo(k), IpAddr::V4(Ipv4Addr::new(127, 0, 1, k))]
}

/// The farm module as member `me` (at `farm_addrs(me_k)`) sees it, with
/// `peers` (name, certificate, k) and short timings.
fn farm(me: &str, me_k: u8, peers: &[(&str, &PinnedPeer, u8)], port: u16) -> NetFarm {
    NetFarm {
        module: FARM.into(),
        me: me.into(),
        peers: peers
            .iter()
            .map(|(name, cert, k)| FarmPeer {
                name: (*name).into(),
                cert: (*cert).clone(),
                addrs: farm_addrs(*k),
            })
            .collect(),
        local: farm_addrs(me_k),
        port,
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(300),
    }
}

fn farm_beat(from: &str, seq: u64) -> FarmBeat {
    FarmBeat {
        version: VERSION,
        module: FARM.into(),
        from: from.into(),
        incarnation: 7,
        seq,
        echo: vec![("node1".into(), 3)],
        silent_ms: Vec::new(),
        view: vec![from.into()],
        eligible: true,
        state: crate::cluster::farm::FarmState::Stop,
        applied: filter::buckets::BucketSet::full(),
        claim: filter::buckets::BucketSet::empty(),
        flood: Vec::new(),
    }
}

/// Starts a `Net` with one farm module and its own event channel.
fn start_farm(id: Identity, f: NetFarm) -> (Net, Receiver<NetEvent>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let net = Net::start(id, Vec::new(), vec![f], tx).expect("Net::start");
    (net, rx)
}

/// Loads the identity `node` generated in `dir` again (a restarted node).
fn reload(dir: &Path, name: &str) -> Identity {
    load_identity(
        &dir.join(format!("{name}.key")),
        &dir.join(format!("{name}.crt")),
    )
    .expect("load_identity")
}

/// The networks farm beats from `from` with `seq` at least `min_seq` came in
/// on.
fn farm_networks_from(events: &[NetEvent], from: &str, min_seq: u64) -> BTreeSet<usize> {
    events
        .iter()
        .filter_map(|e| match e {
            NetEvent::FarmBeat {
                module,
                network,
                beat,
            } if module == FARM && beat.from == from && beat.seq >= min_seq => Some(*network),
            _ => None,
        })
        .collect()
}

#[test]
fn farm_beats_reach_every_member_on_both_networks_attributed_to_their_sender() {
    subscribe();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (id1, pin1) = node(tmp.path(), "node1");
    let (id2, pin2) = node(tmp.path(), "node2");
    let (id3, pin3) = node(tmp.path(), "node3");
    let all: Vec<IpAddr> = (1..=3).flat_map(farm_addrs).collect();
    let port = free_port(&all);
    let (net1, rx1) = start_farm(
        id1,
        farm(
            "node1",
            1,
            &[("node2", &pin2, 2), ("node3", &pin3, 3)],
            port,
        ),
    );
    let (net2, rx2) = start_farm(
        id2,
        farm(
            "node2",
            2,
            &[("node1", &pin1, 1), ("node3", &pin3, 3)],
            port,
        ),
    );
    let (net3, rx3) = start_farm(
        id3,
        farm(
            "node3",
            3,
            &[("node1", &pin1, 1), ("node2", &pin2, 2)],
            port,
        ),
    );
    let names = ["node1", "node2", "node3"];

    let mut seq = 0;
    let send = || {
        seq += 1;
        net1.send_farm_beat(FARM, &farm_beat("node1", seq));
        net2.send_farm_beat(FARM, &farm_beat("node2", seq));
        net3.send_farm_beat(FARM, &farm_beat("node3", seq));
    };
    let seen = collect_until(
        "farm beats from every other member on both networks, at every member",
        [&rx1, &rx2, &rx3],
        send,
        |seen| {
            seen.iter().zip(names).all(|(at, me)| {
                names
                    .iter()
                    .filter(|n| **n != me)
                    .all(|n| farm_networks_from(at, n, 0).len() == 2)
            })
        },
    );

    for (at, me) in seen.iter().zip(names) {
        for other in names.iter().filter(|n| **n != me) {
            assert_eq!(
                farm_networks_from(at, other, 0),
                BTreeSet::from([0, 1]),
                "at {me} from {other}"
            );
        }
        // Beats arrive as sent, only from the others, and nothing else comes.
        for e in at {
            match e {
                NetEvent::FarmBeat { module, beat, .. } => {
                    assert_eq!(module, FARM);
                    assert_ne!(beat.from, me);
                    assert_eq!(beat, &farm_beat(&beat.from, beat.seq));
                }
                other => panic!("at {me}: unexpected {other:?}"),
            }
        }
    }
    net1.stop();
    net2.stop();
    net3.stop();
}

#[test]
fn a_farm_beat_whose_sender_lies_is_dropped_with_a_problem() {
    subscribe();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (id1, pin1) = node(tmp.path(), "node1");
    let (id2, pin2) = node(tmp.path(), "node2");
    let (_, pin3) = node(tmp.path(), "node3");
    let all: Vec<IpAddr> = (1..=3).flat_map(farm_addrs).collect();
    let port = free_port(&all);
    // node3 is a member but does not run: node2 claims to be it.
    let (net1, rx1) = start_farm(
        id1,
        farm(
            "node1",
            1,
            &[("node2", &pin2, 2), ("node3", &pin3, 3)],
            port,
        ),
    );
    let (net2, _rx2) = start_farm(
        id2,
        farm(
            "node2",
            2,
            &[("node1", &pin1, 1), ("node3", &pin3, 3)],
            port,
        ),
    );

    let mut seq = 0;
    let mut send = || {
        seq += 1;
        net2.send_farm_beat(FARM, &farm_beat("node3", seq));
        net2.send_farm_beat(FARM, &farm_beat("node2", seq));
    };
    let lies = |events: &[NetEvent]| {
        problems(events)
            .into_iter()
            .filter(|p| p.contains("dropped a beat") && p.contains("from \"node3\""))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let [mut at1] = collect_until(
        "node1 to drop node2's lies and take its true beats",
        [&rx1],
        &mut send,
        |[at1]| !lies(at1).is_empty() && farm_networks_from(at1, "node2", 0).len() == 2,
    );
    at1.extend(collect_for(Duration::from_millis(300), &rx1, &mut send));

    assert!(farm_networks_from(&at1, "node3", 0).is_empty(), "{at1:?}");
    let lie = &lies(&at1)[0];
    assert!(lie.starts_with("farm network "), "{lie}");
    assert!(lie.contains("from \"node2\""), "{lie}");
    assert!(lie.contains("beats under its own name"), "{lie}");
    // Rate-limited: per network, at most one line before the connection's
    // first good beat and one after it, not one per lie.
    assert!(lies(&at1).len() <= 4, "{:?}", lies(&at1));
    net1.stop();
    net2.stop();
}

#[test]
fn a_stranger_certificate_cannot_join_a_farm() {
    subscribe();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, pin1) = node(tmp.path(), "node1");
    let (id2, pin2) = node(tmp.path(), "node2");
    // A node that calls itself node1 but has another key: it sorts first,
    // so it dials node2, and pins node2's real certificate, so only node2
    // can refuse it.
    let other = tmp.path().join("stranger");
    std::fs::create_dir(&other).expect("mkdir");
    let (stranger, _) = node(&other, "node1");
    let all: Vec<IpAddr> = (1..=2).flat_map(farm_addrs).collect();
    let port = free_port(&all);
    let (net2, rx2) = start_farm(id2, farm("node2", 2, &[("node1", &pin1, 1)], port));
    let (bad, _bad_rx) = start_farm(stranger, farm("node1", 1, &[("node2", &pin2, 2)], port));

    let mut seq = 0;
    let mut forge = || {
        seq += 1;
        bad.send_farm_beat(FARM, &farm_beat("node1", seq));
    };
    let [mut at2] = collect_until(
        "node2 to refuse the stranger",
        [&rx2],
        &mut forge,
        |[at2]| !problems(at2).is_empty(),
    );
    // Keep forging a while: nothing may get through.
    at2.extend(collect_for(Duration::from_millis(500), &rx2, forge));

    let refused = problems(&at2)[0];
    assert!(refused.starts_with("farm network "), "{refused}");
    assert!(
        refused.contains("refused a connection from 127.0."),
        "{refused}"
    );
    assert!(
        at2.iter().all(|e| matches!(e, NetEvent::Problem { .. })),
        "{at2:?}"
    );
    bad.stop();
    net2.stop();
}

#[test]
fn a_farm_member_that_restarts_is_reconnected() {
    subscribe();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (id1, pin1) = node(tmp.path(), "node1");
    let (id2, pin2) = node(tmp.path(), "node2");
    let all: Vec<IpAddr> = (1..=2).flat_map(farm_addrs).collect();
    let port = free_port(&all);
    let f1 = farm("node1", 1, &[("node2", &pin2, 2)], port);
    let f2 = farm("node2", 2, &[("node1", &pin1, 1)], port);
    let (mut net1, mut rx1) = start_farm(id1, f1.clone());
    let (mut net2, mut rx2) = start_farm(id2, f2.clone());

    let mut seq = 0;
    // Each round: beats flow both ways on both networks, then one member
    // restarts (node2 accepts node1's dial; node1 dials node2).
    for (round, restart) in ["node2", "node1", "none"].into_iter().enumerate() {
        let from_seq = seq + 1;
        collect_until(
            &format!("farm beats both ways on both networks (round {round})"),
            [&rx1, &rx2],
            || {
                seq += 1;
                net1.send_farm_beat(FARM, &farm_beat("node1", seq));
                net2.send_farm_beat(FARM, &farm_beat("node2", seq));
            },
            |[at1, at2]| {
                farm_networks_from(at1, "node2", from_seq).len() == 2
                    && farm_networks_from(at2, "node1", from_seq).len() == 2
            },
        );
        match restart {
            "node2" => {
                net2.stop();
                (net2, rx2) = start_farm(reload(tmp.path(), "node2"), f2.clone());
            }
            "node1" => {
                net1.stop();
                (net1, rx1) = start_farm(reload(tmp.path(), "node1"), f1.clone());
            }
            _ => {}
        }
    }
    net1.stop();
    net2.stop();
}

#[test]
fn start_refuses_farm_settings_that_do_not_fit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    node(tmp.path(), "node1");
    let (_, pin2) = node(tmp.path(), "node2");
    let (_, pin3) = node(tmp.path(), "node3");
    type Change<'a> = Box<dyn Fn(&mut NetFarm) + 'a>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|f| f.peers.clear()), "a farm has 2 to 64 nodes"),
        (
            Box::new(|f| f.peers[1].name = "node2".into()),
            "its certificate's name",
        ),
        (
            Box::new(|f| {
                let mut again = f.peers[0].clone();
                again.addrs = farm_addrs(9);
                f.peers.push(again);
            }),
            "listed twice",
        ),
        (
            Box::new(|f| f.peers[0].addrs.truncate(1)),
            "2 local and 1 member \"node2\" heartbeat addresses",
        ),
        (
            Box::new(|f| f.me = "node9".into()),
            "its certificate's name",
        ),
        (
            Box::new(|f| f.interval = Duration::ZERO),
            "longer than a non-zero interval",
        ),
    ];
    for (change, expect) in cases {
        let mut f = farm("node1", 1, &[("node2", &pin2, 2), ("node3", &pin3, 3)], 1);
        change(&mut f);
        let (tx, _rx) = crossbeam_channel::unbounded();
        let err = Net::start(reload(tmp.path(), "node1"), Vec::new(), vec![f], tx)
            .expect_err("must fail");
        assert!(matches!(err, NetError::Config { .. }), "{err:?}");
        assert!(err.to_string().contains("module shop"), "{err}");
        assert!(
            err.to_string().contains(expect),
            "{err} (expected {expect:?})"
        );
    }
    // A farm and a mirror module may not share a name.
    let (tx, _rx) = crossbeam_channel::unbounded();
    let mut f = farm("node1", 1, &[("node2", &pin2, 2)], 1);
    f.module = MODULE.into();
    let m = module("node1", &pin2, vec![lo(1)], vec![lo(3)], 2);
    let err = Net::start(reload(tmp.path(), "node1"), vec![m], vec![f], tx).expect_err("twice");
    assert!(err.to_string().contains("listed twice"), "{err}");
}

#[test]
fn start_fails_naming_a_farm_port_in_use() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (id1, _) = node(tmp.path(), "node1");
    let (_, pin2) = node(tmp.path(), "node2");
    let taken = UdpSocket::bind(SocketAddr::new(farm_addrs(1)[1], 0)).expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let (tx, _rx) = crossbeam_channel::unbounded();
    let f = farm("node1", 1, &[("node2", &pin2, 2)], port);

    let err = Net::start(id1, Vec::new(), vec![f], tx).expect_err("must fail");

    assert!(
        matches!(&err, NetError::PortInUse { network: 1, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("module shop"), "{msg}");
    assert!(msg.contains(&format!("127.0.1.1:{port}")), "{msg}");
}
