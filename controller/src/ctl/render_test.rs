//! The text of `mirrorfarm state`, compared with golden files under
//! `testdata/` (a change of the text shows as a diff there; regenerate them
//! with `MIRRORFARM_BLESS=1 cargo test -p controller --lib ctl::render`, then
//! read the diff), and the small formatters' edges.

use std::path::Path;

use pretty_assertions::assert_eq;

use super::*;
use crate::ctl::state::{
    FailoverStatus, FarmMemberStatus, FarmStatus, NetworkStatus, Resync, TransitionStatus,
};

/// 2025-12-05 08:42:02 UTC.
const T: f64 = 1_764_924_122.0;

/// A primary with everything nominal.
fn prim() -> ModuleStatus {
    ModuleStatus {
        module: "apache".into(),
        node: "node1".into(),
        peer: "node2".into(),
        state: "PRIM".into(),
        ready: true,
        reason: "the secondary is connected and in sync".into(),
        since_unix: T,
        step: None,
        in_sync: Some(true),
        resync: None,
        peer_state: Some("SECOND".into()),
        peer_ready: Some(true),
        peer_reachable: true,
        networks: vec![
            NetworkStatus {
                addr: "10.77.0.2".into(),
                heard_secs_ago: Some(0.21),
                rtt_ms: None,
            },
            NetworkStatus {
                addr: "10.78.0.2".into(),
                heard_secs_ago: Some(0.3),
                rtt_ms: None,
            },
        ],
        witness: Some(WitnessStatus {
            addr: "10.77.0.3:7430".into(),
            reachable: true,
            lease_secs_left: Some(2.46),
            refused: None,
        }),
        vip: Some("10.77.0.100/24 on eth0".into()),
        dirs: vec![
            DirStatus {
                mount: "/srv/apache-mirror/htdocs".into(),
                backing: "/var/lib/apache-mirror/htdocs".into(),
                role: Some("PRIM".into()),
                generation: Some("00000000000000ab".into()),
                consistent: Some(true),
                dirty_bytes: None,
                ops_in_flight: None,
            },
            DirStatus {
                mount: "/srv/apache-mirror/uploads".into(),
                backing: "/var/lib/apache-mirror/uploads".into(),
                role: Some("PRIM".into()),
                generation: Some("00000000000000ac".into()),
                consistent: Some(true),
                dirty_bytes: None,
                ops_in_flight: None,
            },
        ],
        last_transition: Some(TransitionStatus {
            from: "WAIT".into(),
            to: "PRIM".into(),
            reason: "this node has the newest data".into(),
            at_unix: T,
        }),
        last_failover: None,
        config_mismatch: false,
        farm: None,
    }
}

/// A secondary being resynchronised, in a transition, with a network down,
/// a witness that refuses, a directory left inconsistent and a module file
/// that differs on the peer.
fn resyncing() -> ModuleStatus {
    ModuleStatus {
        module: "files".into(),
        node: "node2".into(),
        peer: "node1".into(),
        state: "SECOND".into(),
        ready: false,
        reason: "receiving the changes made while it was away".into(),
        since_unix: T + 3723.0,
        step: Some("mirrorfs serve: resync".into()),
        in_sync: None,
        resync: Some(Resync {
            files_done: 120,
            files_left: 280,
            bytes_sent: 12_884_901,
            eta_secs: Some(65.2),
        }),
        peer_state: Some("PRIM".into()),
        peer_ready: Some(false),
        peer_reachable: true,
        networks: vec![
            NetworkStatus {
                addr: "10.77.0.1".into(),
                heard_secs_ago: Some(0.05),
                rtt_ms: None,
            },
            NetworkStatus {
                addr: "10.78.0.1".into(),
                heard_secs_ago: None,
                rtt_ms: None,
            },
        ],
        witness: Some(WitnessStatus {
            addr: "10.77.0.3:7430".into(),
            reachable: false,
            lease_secs_left: None,
            refused: Some("the lease is held by node1 for 2.9 s".into()),
        }),
        vip: None,
        dirs: vec![DirStatus {
            mount: "/srv/files".into(),
            backing: "/var/lib/files".into(),
            role: Some("SECOND".into()),
            generation: None,
            consistent: Some(false),
            dirty_bytes: None,
            ops_in_flight: None,
        }],
        last_transition: Some(TransitionStatus {
            from: "WAIT".into(),
            to: "SECOND".into(),
            reason: "node1 is primary with newer data".into(),
            at_unix: T + 3723.0,
        }),
        last_failover: Some(FailoverStatus {
            to: "node1".into(),
            cause: "node2 lost on every network for 1.5 s".into(),
            at_unix: T - 86_400.0,
        }),
        config_mismatch: true,
        farm: None,
    }
}

/// Waiting, the peer gone, no witness, nothing known of the data.
fn waiting() -> ModuleStatus {
    ModuleStatus {
        module: "db".into(),
        node: "node1".into(),
        peer: "node2".into(),
        state: "WAIT".into(),
        ready: true,
        reason: "waiting for node2 to compare data (or `mirrorfarm prim db`)".into(),
        since_unix: T - 59.0,
        step: None,
        in_sync: None,
        resync: None,
        peer_state: None,
        peer_ready: None,
        peer_reachable: false,
        networks: vec![NetworkStatus {
            addr: "10.77.0.2".into(),
            heard_secs_ago: None,
            rtt_ms: None,
        }],
        witness: None,
        vip: None,
        dirs: vec![DirStatus {
            mount: "/srv/db".into(),
            backing: "/var/lib/db".into(),
            role: None,
            generation: None,
            consistent: None,
            dirty_bytes: None,
            ops_in_flight: None,
        }],
        last_transition: None,
        last_failover: None,
        config_mismatch: false,
        farm: None,
    }
}

/// A farm node serving its share, one member lost.
fn farm_up() -> ModuleStatus {
    let member = |name: &str, state: Option<&str>, heard, share, in_view| FarmMemberStatus {
        name: name.into(),
        weight: 1,
        state: state.map(Into::into),
        heard_secs_ago: heard,
        share,
        in_view,
        flood_from: Some(Vec::new()),
    };
    ModuleStatus {
        module: "web".into(),
        node: "farm1".into(),
        peer: "farm2, farm3".into(),
        state: "UP".into(),
        ready: true,
        reason: "serving 128 of 256 buckets".into(),
        since_unix: T - 12.0,
        step: None,
        in_sync: None,
        resync: None,
        peer_state: None,
        peer_ready: None,
        peer_reachable: true,
        networks: Vec::new(),
        witness: None,
        vip: Some("10.78.0.100/24 on eth0".into()),
        dirs: Vec::new(),
        last_transition: Some(TransitionStatus {
            from: "WAIT".into(),
            to: "UP".into(),
            reason: "serving 128 of 256 buckets".into(),
            at_unix: T - 12.0,
        }),
        last_failover: None,
        config_mismatch: false,
        farm: Some(FarmStatus {
            vips: vec!["10.78.0.100/24 on eth0".into()],
            vip_held: true,
            rule: "Address".into(),
            share: Some(128),
            buckets: Some("{0-63, 128-191}".into()),
            target: 128,
            members: vec![
                member("farm1", Some("UP"), None, Some(128), true),
                member("farm2", Some("UP"), Some(4.2), Some(85), false),
                member("farm3", Some("UP"), Some(0.1), Some(128), true),
            ],
            flood_problems: vec![
                "frames to the virtual MAC sent by farm3 do not reach farm1".into()
            ],
            flood_tested: true,
        }),
    }
}

#[test]
fn the_block_and_row_of_a_farm_node() {
    golden("state_farm.txt", &farm_up().render_text());
    let state = State::new("farm1", vec![farm_up()]);
    golden("state_farm_table.txt", &state.render_table());
}

/// Compares `got` with `testdata/NAME`, or writes it there when
/// `MIRRORFARM_BLESS` is set.
fn golden(name: &str, got: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/ctl/testdata")
        .join(name);
    if std::env::var_os("MIRRORFARM_BLESS").is_some() {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (MIRRORFARM_BLESS=1 writes it)", path.display()));
    assert_eq!(got, want, "{} differs", path.display());
}

#[test]
fn the_table_of_every_module() {
    let mut unreachable = prim();
    unreachable.module = "web".into();
    unreachable.state = "ALONE".into();
    unreachable.reason = "node2 lost; writing under the witness's lease".into();
    unreachable.in_sync = Some(false);
    unreachable.peer_reachable = false;
    let mut second = resyncing();
    second.node = "node1".into();
    second.peer = "node2".into();
    let state = State::new("node1", vec![prim(), second, waiting(), unreachable]);
    golden("state_table.txt", &state.render_text());
}

#[test]
fn the_block_of_a_primary_in_sync() {
    let state = State::new("node1", vec![prim()]);
    golden("state_prim.txt", &state.render_text());
}

#[test]
fn the_block_of_a_secondary_in_resync() {
    golden("state_resync.txt", &resyncing().render_text());
}

#[test]
fn the_block_of_a_module_waiting_for_its_peer() {
    golden("state_wait.txt", &waiting().render_text());
}

#[test]
fn a_node_without_modules_says_where_they_go() {
    assert_eq!(
        State::new("node1", vec![]).render_text(),
        "node1: no modules: put module files (NAME.ron) in the node's modules directory; `mirrorfarm check` validates them\n"
    );
}

#[test]
fn durations_sizes_times_and_percentages() {
    let cases = [
        (0.0, "0.0 s"),
        (2.46, "2.5 s"),
        (59.9, "59.9 s"),
        (65.2, "1m05s"),
        (3599.0, "59m59s"),
        (3600.0, "1h00m"),
        (7380.0, "2h03m"),
        (90_000.0, "1d01h"),
        (-1.0, "? s"),
        (f64::NAN, "? s"),
    ];
    for (s, want) in cases {
        assert_eq!(secs(s), want, "{s}");
    }
    let cases = [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (12_884_901, "12.3 MiB"),
        (5 << 40, "5.0 TiB"),
        (u64::MAX, "16384.0 PiB"),
    ];
    for (n, want) in cases {
        assert_eq!(bytes(n), want, "{n}");
    }
    assert_eq!(utc(T + 0.9), "2025-12-05 08:42:02 UTC");
    assert_eq!(utc(-1.0), "an unknown time");
    assert_eq!(utc(f64::INFINITY), "an unknown time");
    assert_eq!(percent(0, 0), None);
    assert_eq!(percent(1, 3), Some(33));
    assert_eq!(percent(u64::MAX, u64::MAX), Some(100));
}
