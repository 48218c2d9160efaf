//! Deterministic simulation of the primary's decisions ([`Primary`]) with
//! everything around them modelled: application threads whose mutations are
//! begun, applied locally and submitted under one sequencer (three steps, so
//! that anything else may happen between them), the ordered link to a
//! secondary that applies ops, refuses some (ENOSPC) and answers, the resync
//! worker (visits, listings, `SetGeneration`), a controller that grants
//! `alone`, fences and unfences, the metadata disk (which may fail a write),
//! connection losses, secondary restarts and time.
//!
//! After every step the invariants in [`invariants`] are checked against the
//! [`oracle`] of what the application saw acknowledged: every acknowledged
//! change is on the secondary or durably recorded for the resync; "in sync"
//! only when the trees are equal; a secondary that shares the primary's
//! generation holds every acknowledged change; an unreplicated change is
//! acknowledged only as the configuration and the controller allow; the
//! generation history only grows. A safety phase with faults is followed by a
//! liveness phase without them, which must end in sync with equal trees.
//!
//! The seed comes from `MIRRORFS_SIM_SEED` (else a sweep of
//! `MIRRORFS_SIM_SEEDS`, 2000 by default); every failure prints the seed and
//! the trace's tail; one test runs a seed twice and compares traces.

mod harness;
mod invariants;
mod oracle;

use harness::Sim;

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
fn run(seed: u64) -> Sim {
    let mut sim = Sim::new(seed);
    if let Err(v) = sim.run() {
        panic!(
            "simulation seed {seed} ({}): {v}\nreproduce with MIRRORFS_SIM_SEED={seed}\nlast steps:\n{}",
            sim.describe(),
            sim.trace_tail(60)
        );
    }
    sim
}

#[test]
fn the_primarys_decisions_keep_every_acknowledged_write() {
    let mut stats = harness::Stats::default();
    for seed in seeds() {
        stats.add(&run(seed).stats);
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
        assert!(
            stats.copies_as_data > 0 && stats.copies_as_ranges > 0,
            "{stats:?}"
        );
        assert!(stats.persist_failures > 0 && stats.fenced > 0, "{stats:?}");
    }
}

#[test]
fn a_seed_replays_the_same_trace() {
    let a = run(7);
    let b = run(7);
    assert_eq!(a.trace, b.trace);
    assert!(a.trace.len() > 1000);
}
