//! The simulation's sweeps: the one place that takes a real instant, as the
//! origin of virtual time (sans-IO code takes its clock as an input).

use std::time::Instant;

use super::harness::{self, Sim};
use crate::proto::primary::AckMode;

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("MIRRORFS_SIM_SEED") {
        return vec![s.parse().expect("MIRRORFS_SIM_SEED is a number")];
    }
    let n: u64 = std::env::var("MIRRORFS_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    (1..=n).collect()
}

/// Runs one seed; on a violation, panics with the seed and the trace's tail.
fn run(seed: u64, ack: AckMode) -> Sim {
    let mut sim = Sim::new(seed, Instant::now(), ack);
    if let Err(v) = sim.run() {
        panic!(
            "simulation seed {seed}, --ack={ack} ({}): {v}\nreproduce with MIRRORFS_SIM_SEED={seed}\nlast steps:\n{}",
            sim.describe(),
            sim.trace_tail(
                std::env::var("MIRRORFS_SIM_TAIL")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(60)
            )
        );
    }
    sim
}

#[test]
fn the_primarys_decisions_keep_every_acknowledged_write() {
    let mut stats = harness::Stats::default();
    for seed in seeds() {
        stats.add(&run(seed, AckMode::EachOp).stats);
    }
    eprintln!("{stats:?}");
    // The sweep must really exercise the interleavings it is about.
    if std::env::var("MIRRORFS_SIM_SEED").is_err() {
        assert!(stats.unreplicated_acks > 0, "{stats:?}");
        assert!(stats.held > 0 && stats.released_by_grant > 0, "{stats:?}");
        assert!(stats.role_changed_mid_op > 0, "{stats:?}");
        assert!(
            stats.refused > 0 && stats.resyncs_completed > 0,
            "{stats:?}"
        );
        assert!(stats.syncs_carried > 0, "{stats:?}");
        assert!(stats.writes_carried_by_a_visit > 0, "{stats:?}");
        assert!(
            stats.copies_as_data > 0 && stats.copies_as_ranges > 0,
            "{stats:?}"
        );
        assert!(stats.persist_failures > 0 && stats.fenced > 0, "{stats:?}");
    }
}

#[test]
fn issue_10_7_on_sync_keeps_every_write_acknowledged_by_a_sync_and_a_prefix() {
    let mut stats = harness::Stats::default();
    for seed in seeds() {
        stats.add(&run(seed, AckMode::OnSync).stats);
    }
    eprintln!("{stats:?}");
    if std::env::var("MIRRORFS_SIM_SEED").is_err() {
        assert!(
            stats.early_answers > 0 && stats.syncs_acked > 0,
            "{stats:?}"
        );
        assert!(stats.syncs_waited > 0, "{stats:?}");
        assert!(stats.syncs_told > 0, "{stats:?}");
        assert!(stats.back_pressure > 0, "{stats:?}");
        assert!(stats.held > 0 && stats.released_by_grant > 0, "{stats:?}");
        assert!(
            stats.refused > 0 && stats.resyncs_completed > 0,
            "{stats:?}"
        );
        assert!(stats.persist_failures > 0 && stats.fenced > 0, "{stats:?}");
    }
}

#[test]
fn a_seed_replays_the_same_trace() {
    for ack in [AckMode::EachOp, AckMode::OnSync] {
        let a = run(7, ack);
        let b = run(7, ack);
        assert_eq!(a.trace, b.trace);
        assert!(
            a.trace.len() > 500,
            "--ack={ack}: {} entries",
            a.trace.len()
        );
    }
}
