//! Exact-output tests of the op stream, and a seeded simulation of primary and
//! secondary over a link that delays and reorders nothing (QUIC streams are
//! ordered) but batches arbitrarily.

use std::time::{Duration, Instant};

use pretty_assertions::assert_eq;
use proptest::prelude::*;

use super::*;
use crate::proto::path::RelPath;
use crate::proto::wire::{HandleId, Target};

fn write() -> Op {
    Op::Write {
        target: Target::Handle(HandleId(1)),
        offset: 0,
        data: vec![1],
    }
}

fn fsync() -> Op {
    Op::Fsync {
        target: Target::Path(RelPath::root()),
        datasync: false,
    }
}

fn drain(r: &mut Replicator) -> Vec<(Seq, Completion)> {
    std::iter::from_fn(|| r.poll_completion()).collect()
}

#[test]
fn cumulative_ack_completes_everything_it_covers() {
    let t0 = Instant::now();
    let mut r = Replicator::new(Duration::from_secs(5), Duration::from_secs(30));
    for _ in 0..3 {
        r.submit(t0, &write()).unwrap();
    }
    r.handle_frame(
        t0,
        &Frame::Failed {
            seq: Seq(2),
            errno: libc::ENOSPC,
        },
    )
    .unwrap();
    r.handle_frame(t0, &Frame::Ack { upto: Seq(2) }).unwrap();
    assert_eq!(
        drain(&mut r),
        vec![(Seq(1), Ok(vec![])), (Seq(2), Err(libc::ENOSPC))]
    );
    assert_eq!(r.in_flight(), 1);
}

#[test]
fn fsync_completes_only_when_synced() {
    let t0 = Instant::now();
    let mut r = Replicator::new(Duration::from_secs(5), Duration::from_secs(30));
    r.submit(t0, &write()).unwrap();
    r.submit(t0, &fsync()).unwrap();
    r.submit(t0, &write()).unwrap();
    r.handle_frame(t0, &Frame::Ack { upto: Seq(3) }).unwrap();
    assert_eq!(
        drain(&mut r),
        vec![(Seq(1), Ok(vec![])), (Seq(3), Ok(vec![]))]
    );
    r.handle_frame(
        t0,
        &Frame::Synced {
            seq: Seq(2),
            errno: 0,
        },
    )
    .unwrap();
    assert_eq!(drain(&mut r), vec![(Seq(2), Ok(vec![]))]);
    assert_eq!(r.in_flight(), 0);
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Issue 7, item 6: silence with ops in flight is first "stalled" (from the
/// peer timeout on, with how long), and only after the stall timeout lost:
/// every op in flight then fails with EIO, and so does every later submit.
#[test]
fn silence_is_stalled_after_the_peer_timeout_and_lost_after_the_stall_timeout() {
    let t0 = Instant::now();
    let mut r = Replicator::new(secs(1.0), secs(10.0));
    r.submit(t0, &write()).unwrap();
    r.submit(t0 + secs(0.5), &fsync()).unwrap();
    assert_eq!(r.poll_stall(), Some(t0 + secs(1.0)));
    assert_eq!(r.stalled(t0 + secs(0.9)), None);
    assert_eq!(r.stalled(t0 + secs(1.0)), Some(secs(1.0)));
    assert_eq!(r.stalled(t0 + secs(7.5)), Some(secs(7.5)));
    assert_eq!(r.poll_timeout(), Some(t0 + secs(10.0)));
    r.handle_timeout(t0 + secs(9.9));
    assert_eq!(drain(&mut r), vec![]);
    assert_eq!(r.lost(), None);
    r.handle_timeout(t0 + secs(10.0));
    assert_eq!(
        drain(&mut r),
        vec![(Seq(1), Err(libc::EIO)), (Seq(2), Err(libc::EIO))]
    );
    assert!(
        r.lost().unwrap().contains("--stall-timeout"),
        "{:?}",
        r.lost()
    );
    assert!(r.submit(t0, &write()).is_err());
    assert_eq!(r.poll_timeout(), None);
    assert_eq!(r.stalled(t0 + secs(11.0)), None);
}

/// Issue 7, item 6: a secondary that works on one long op (a Remove of a
/// large tree) sends progress frames: however long the op takes, it is
/// neither stalled nor lost, and the op completes with its outcome.
#[test]
fn progress_keeps_a_working_secondary_neither_stalled_nor_lost() {
    let t0 = Instant::now();
    let mut r = Replicator::new(secs(1.0), secs(3.0));
    r.submit(t0, &write()).unwrap();
    let mut now = t0;
    for work in 1..=240 {
        now = t0 + secs(0.25 * work as f64);
        r.handle_frame(now, &Frame::Progress { work }).unwrap();
        r.handle_timeout(now + secs(0.2));
        assert_eq!(r.stalled(now + secs(0.2)), None, "at {work}");
        assert_eq!(r.lost(), None);
    }
    assert_eq!(r.poll_timeout(), Some(now + secs(3.0)));
    r.handle_frame(now, &Frame::Ack { upto: Seq(1) }).unwrap();
    assert_eq!(drain(&mut r), vec![(Seq(1), Ok(vec![]))]);
    assert_eq!(r.poll_timeout(), None);
}

/// Issue 7, item 6: a long fsync (answered by Synced after the ack) no
/// longer counts against the peer timeout: the secondary shows stalled
/// while it syncs, is not lost before the stall timeout, and the fsync
/// completes with its outcome.
#[test]
fn a_long_fsync_is_stalled_not_lost_within_the_stall_timeout() {
    let t0 = Instant::now();
    let mut r = Replicator::new(secs(1.0), secs(30.0));
    r.submit(t0, &write()).unwrap();
    r.submit(t0, &fsync()).unwrap();
    r.handle_frame(t0 + secs(0.1), &Frame::Ack { upto: Seq(2) })
        .unwrap();
    assert_eq!(drain(&mut r), vec![(Seq(1), Ok(vec![]))]);
    r.handle_timeout(t0 + secs(20.0));
    assert_eq!(r.lost(), None);
    assert_eq!(r.stalled(t0 + secs(20.1)), Some(secs(20.0)));
    r.handle_frame(
        t0 + secs(20.1),
        &Frame::Synced {
            seq: Seq(2),
            errno: 0,
        },
    )
    .unwrap();
    assert_eq!(drain(&mut r), vec![(Seq(2), Ok(vec![]))]);
    assert_eq!(r.stalled(t0 + secs(25.0)), None);
}

/// Silence while nothing is asked counts for nothing: an op sent after a
/// long idle time is not stalled at once, and with nothing in flight the
/// secondary is never stalled nor lost (the transport watches it then).
#[test]
fn idle_silence_counts_for_nothing() {
    let t0 = Instant::now();
    let mut r = Replicator::new(secs(1.0), secs(3.0));
    r.submit(t0, &write()).unwrap();
    r.handle_frame(t0, &Frame::Ack { upto: Seq(1) }).unwrap();
    drain(&mut r);
    assert_eq!(r.poll_timeout(), None);
    r.handle_timeout(t0 + secs(100.0));
    assert_eq!(r.stalled(t0 + secs(100.0)), None);
    r.submit(t0 + secs(100.0), &write()).unwrap();
    assert_eq!(r.stalled(t0 + secs(100.9)), None);
    assert_eq!(r.stalled(t0 + secs(101.0)), Some(secs(1.0)));
    assert_eq!(r.poll_timeout(), Some(t0 + secs(103.0)));
    assert_eq!(r.lost(), None);
}

/// The stall timeout is never shorter than the peer timeout.
#[test]
fn a_stall_timeout_below_the_peer_timeout_counts_as_the_peer_timeout() {
    let t0 = Instant::now();
    let mut r = Replicator::new(secs(2.0), secs(1.0));
    r.submit(t0, &write()).unwrap();
    assert_eq!(r.poll_timeout(), Some(t0 + secs(2.0)));
}

/// The secondary reports progress only while it has ops received and not
/// yet answered and its applier worked since the last report.
#[test]
fn receiver_reports_progress_only_while_working_on_pending_ops() {
    let mut rx = Receiver::new();
    let out = |rx: &mut Receiver| std::iter::from_fn(|| rx.poll_transmit()).collect::<Vec<_>>();
    rx.handle_tick(5);
    assert_eq!(out(&mut rx), vec![], "nothing pending");
    rx.handle_op(Seq(1)).unwrap();
    rx.handle_tick(5);
    assert_eq!(out(&mut rx), vec![], "pending but no work done");
    rx.handle_tick(9);
    assert_eq!(out(&mut rx), vec![Frame::Progress { work: 9 }]);
    rx.handle_tick(9);
    assert_eq!(out(&mut rx), vec![], "no work since the last report");
    rx.handle_applied(Seq(1), true, Ok(()));
    rx.handle_idle();
    rx.handle_tick(10);
    assert_eq!(
        out(&mut rx),
        vec![Frame::Ack { upto: Seq(1) }, Frame::Progress { work: 10 }],
        "an fsync still running is pending"
    );
    rx.handle_synced(Seq(1), 0);
    rx.handle_tick(11);
    assert_eq!(
        out(&mut rx),
        vec![Frame::Synced {
            seq: Seq(1),
            errno: 0
        }]
    );
}

#[test]
fn protocol_violations_are_reported() {
    let t0 = Instant::now();
    let mut r = Replicator::new(Duration::from_secs(5), Duration::from_secs(30));
    r.submit(t0, &write()).unwrap();
    assert_eq!(
        r.handle_frame(t0, &Frame::Ack { upto: Seq(2) }),
        Err(Violation::AckBeyondSent { upto: 2, sent: 1 })
    );
    assert_eq!(
        r.handle_frame(
            t0,
            &Frame::Synced {
                seq: Seq(1),
                errno: 0
            }
        ),
        Err(Violation::Unexpected {
            what: "sync report",
            seq: 1
        })
    );
    assert_eq!(
        r.handle_frame(
            t0,
            &Frame::Failed {
                seq: Seq(1),
                errno: 0
            }
        ),
        Err(Violation::ZeroErrno(1))
    );
    r.handle_frame(t0, &Frame::Ack { upto: Seq(1) }).unwrap();
    assert_eq!(
        r.handle_frame(t0, &Frame::Ack { upto: Seq(0) }),
        Err(Violation::AckBackwards { prev: 1, upto: 0 })
    );
}

#[test]
fn receiver_queues_failures_before_the_ack_and_syncs_later() {
    let mut rx = Receiver::new();
    rx.handle_op(Seq(1)).unwrap();
    rx.handle_applied(Seq(1), false, Ok(()));
    rx.handle_op(Seq(2)).unwrap();
    rx.handle_applied(Seq(2), false, Err(libc::EEXIST));
    rx.handle_op(Seq(3)).unwrap();
    rx.handle_applied(Seq(3), true, Ok(()));
    rx.handle_idle();
    rx.handle_synced(Seq(3), 0);
    let out: Vec<Frame> = std::iter::from_fn(|| rx.poll_transmit()).collect();
    assert_eq!(
        out,
        vec![
            Frame::Failed {
                seq: Seq(2),
                errno: libc::EEXIST
            },
            Frame::Ack { upto: Seq(3) },
            Frame::Synced {
                seq: Seq(3),
                errno: 0
            },
        ]
    );
    assert_eq!(
        rx.handle_op(Seq(5)),
        Err(Violation::OutOfOrder {
            expected: 4,
            got: 5
        })
    );
}

proptest! {
    /// Random op mixes, random failures and random batching: every op completes
    /// exactly once, with the outcome the secondary reported.
    #[test]
    fn every_op_completes_once_with_the_secondarys_outcome(
        ops in prop::collection::vec((any::<bool>(), 0..4i32, 1..4usize), 1..60),
    ) {
        let t0 = Instant::now();
        let mut tx = Replicator::new(Duration::from_secs(5), Duration::from_secs(30));
        let mut rx = Receiver::new();
        let mut expected = Vec::new();
        let mut pending_syncs = Vec::new();
        let mut batch = 0;
        for (durable, fail, batch_len) in ops {
            let op = if durable { fsync() } else { write() };
            let seq = tx.submit(t0, &op).unwrap();
            rx.handle_op(seq).unwrap();
            // errno 0 means success; durable successes complete at sync time.
            let outcome = if fail == 0 { Err(libc::EIO) } else { Ok(()) };
            rx.handle_applied(seq, durable, outcome);
            if durable && outcome.is_ok() {
                pending_syncs.push(seq);
            }
            expected.push((seq, outcome.map(|()| Vec::new())));
            batch += 1;
            if batch >= batch_len {
                rx.handle_idle();
                batch = 0;
            }
        }
        rx.handle_idle();
        for seq in pending_syncs {
            rx.handle_synced(seq, 0);
        }
        while let Some(f) = rx.poll_transmit() {
            tx.handle_frame(t0, &f).unwrap();
        }
        let mut got = drain(&mut tx);
        got.sort_by_key(|(s, _)| *s);
        prop_assert_eq!(got, expected);
        prop_assert_eq!(tx.in_flight(), 0);
    }
}
