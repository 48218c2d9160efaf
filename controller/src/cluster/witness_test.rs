use std::time::{Duration, Instant};

use pretty_assertions::assert_eq;

use super::*;

const L: u64 = 3000;
const T: u64 = 1000;

fn report(node: &str, peer: &str, seq: u64, primary: bool, in_sync: bool, want: bool) -> Report {
    Report {
        version: VERSION,
        module: "m".into(),
        node: node.into(),
        peer: peer.into(),
        seq,
        primary,
        in_sync,
        want_lease: want,
        release: false,
        lease_ms: L,
        timeout_ms: T,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A witness that has run past its quiet time.
fn running() -> (Witness, Instant) {
    let t0 = Instant::now();
    (Witness::new(t0, Persisted::default()), t0 + ms(L + 100))
}

#[test]
fn a_restarted_witness_grants_nothing_for_a_lease_length() {
    let t0 = Instant::now();
    let mut w = Witness::new(t0, Persisted::default());
    let a = w.handle_report(t0 + ms(100), &report("n1", "n2", 1, true, false, true));
    assert!(
        matches!(a.lease, LeaseAnswer::Refused { ref reason, .. } if reason.contains("restarted")),
        "{a:?}"
    );
    let a = w.handle_report(
        t0 + ms(L + L / 50 + 1),
        &report("n1", "n2", 2, true, false, true),
    );
    assert_eq!(a.lease, LeaseAnswer::Granted { ms: L });
}

#[test]
fn the_primary_is_preferred_while_it_reports() {
    let (mut w, now) = running();
    w.handle_report(now, &report("n1", "n2", 1, true, true, false));
    let a = w.handle_report(now + ms(10), &report("n2", "n1", 1, false, false, true));
    assert!(
        matches!(a.lease, LeaseAnswer::Refused { ref reason, .. } if reason.contains("n1 is primary")),
        "{a:?}"
    );
    let a = w.handle_report(now + ms(20), &report("n1", "n2", 2, true, false, true));
    assert_eq!(a.lease, LeaseAnswer::Granted { ms: L });
    // n2 is now behind: n1 writes alone.
    assert_eq!(
        w.poll_persist(),
        Some(Persisted {
            behind: [("m".to_string(), "n2".to_string())].into()
        })
    );
}

#[test]
fn a_silent_primary_loses_the_preference_after_timeout_and_margin() {
    let (mut w, now) = running();
    w.handle_report(now, &report("n1", "n2", 1, true, true, false));
    let a = w.handle_report(now + ms(T + 19), &report("n2", "n1", 1, false, false, true));
    assert!(matches!(a.lease, LeaseAnswer::Refused { .. }), "{a:?}");
    let a = w.handle_report(now + ms(T + 21), &report("n2", "n1", 2, false, false, true));
    assert_eq!(a.lease, LeaseAnswer::Granted { ms: L });
}

#[test]
fn a_lease_is_exclusive_until_it_surely_ended_and_renewable_by_its_holder() {
    let (mut w, now) = running();
    assert_eq!(
        w.handle_report(now, &report("n1", "n2", 1, true, false, true))
            .lease,
        LeaseAnswer::Granted { ms: L }
    );
    // The holder stops asking (in sync again): the lease still runs out.
    w.handle_report(now + ms(10), &report("n1", "n2", 2, true, true, false));
    let a = w.handle_report(now + ms(L + 59), &report("n2", "n1", 1, false, false, true));
    assert!(
        matches!(a.lease, LeaseAnswer::Refused { ref reason, .. } if reason.contains("holds the lease")),
        "{a:?}"
    );
    // Past the lease, n2 is still refused: n1 may have written alone.
    let a = w.handle_report(now + ms(L + 61), &report("n2", "n1", 2, false, false, true));
    assert!(
        matches!(a.lease, LeaseAnswer::Refused { ref reason, .. } if reason.contains("n2's data is behind")),
        "{a:?}"
    );
    // The holder renews.
    assert_eq!(
        w.handle_report(now + ms(L + 100), &report("n1", "n2", 3, true, false, true))
            .lease,
        LeaseAnswer::Granted { ms: L }
    );
}

#[test]
fn a_node_behind_is_refused_until_the_nodes_are_in_sync() {
    let t0 = Instant::now();
    let persisted = Persisted {
        behind: [("m".to_string(), "n2".to_string())].into(),
    };
    let mut w = Witness::new(t0, persisted);
    let now = t0 + ms(L + 100);
    let a = w.handle_report(now, &report("n2", "n1", 1, false, false, true));
    assert!(
        matches!(a.lease, LeaseAnswer::Refused { ref reason, .. } if reason.contains("n2's data is behind")),
        "{a:?}"
    );
    w.handle_report(now + ms(1), &report("n1", "n2", 1, true, true, false));
    assert_eq!(w.poll_persist(), Some(Persisted::default()));
}

#[test]
fn in_sync_clears_behind_only_once_the_lease_ended() {
    let (mut w, now) = running();
    w.handle_report(now, &report("n1", "n2", 1, true, false, true));
    assert!(w.poll_persist().is_some(), "n2 marked behind");
    // Connected again, but the grant may still let n1 go alone.
    w.handle_report(now + ms(100), &report("n1", "n2", 2, true, true, false));
    assert_eq!(w.poll_persist(), None);
    w.handle_report(now + ms(L + 61), &report("n1", "n2", 3, true, true, false));
    assert_eq!(w.poll_persist(), Some(Persisted::default()));
}

#[test]
fn refusals_after_in_sync() {
    let t0 = Instant::now();
    let persisted = Persisted {
        behind: [("m".to_string(), "n2".to_string())].into(),
    };
    let mut w = Witness::new(t0, persisted);
    let now = t0 + ms(L + 100);
    w.handle_report(now + ms(1), &report("n1", "n2", 1, true, true, false));
    assert_eq!(w.poll_persist(), Some(Persisted::default()));
    // n1 is primary and reports: still refused, for that reason now.
    let a = w.handle_report(now + ms(2), &report("n2", "n1", 2, false, false, true));
    assert!(
        matches!(a.lease, LeaseAnswer::Refused { ref reason, .. } if reason.contains("n1 is primary"))
    );
}

/// Found in the lab: a restarted daemon adopted its (peerless) mounts and
/// reported itself primary for a moment; the holder's renewal was refused
/// ("node1 is primary"), it stepped down, and the two flapped.
#[test]
fn the_holder_renews_whatever_the_other_reports() {
    let (mut w, now) = running();
    assert_eq!(
        w.handle_report(now, &report("n2", "n1", 1, false, false, true))
            .lease,
        LeaseAnswer::Granted { ms: L }
    );
    w.handle_report(now + ms(10), &report("n1", "n2", 1, true, false, false));
    assert_eq!(
        w.handle_report(now + ms(20), &report("n2", "n1", 2, true, false, true))
            .lease,
        LeaseAnswer::Granted { ms: L }
    );
}

/// Found by the failover benchmark: each node counts its own reports, so a
/// grant's seq says nothing of the other node's; the new primary's in-sync
/// report must clear "behind" once no lease runs, whatever its seq.
#[test]
fn in_sync_clears_behind_whatever_the_other_nodes_seqs() {
    let (mut w, now) = running();
    w.handle_report(now, &report("n1", "n2", 1_000_000, true, false, true));
    assert!(w.poll_persist().is_some(), "n2 behind");
    // n2 is later primary and in sync (a swap), with smaller seqs.
    w.handle_report(now + ms(L + 100), &report("n2", "n1", 5, true, true, false));
    assert_eq!(w.poll_persist(), Some(Persisted::default()));
}
