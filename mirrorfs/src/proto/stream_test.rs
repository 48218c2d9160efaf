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
    let mut r = Replicator::new(Duration::from_secs(5));
    for _ in 0..3 {
        r.submit(t0, &write()).unwrap();
    }
    r.handle_frame(&Frame::Failed {
        seq: Seq(2),
        errno: libc::ENOSPC,
    })
    .unwrap();
    r.handle_frame(&Frame::Ack { upto: Seq(2) }).unwrap();
    assert_eq!(
        drain(&mut r),
        vec![(Seq(1), Ok(vec![])), (Seq(2), Err(libc::ENOSPC))]
    );
    assert_eq!(r.in_flight(), 1);
}

#[test]
fn fsync_completes_only_when_synced() {
    let t0 = Instant::now();
    let mut r = Replicator::new(Duration::from_secs(5));
    r.submit(t0, &write()).unwrap();
    r.submit(t0, &fsync()).unwrap();
    r.submit(t0, &write()).unwrap();
    r.handle_frame(&Frame::Ack { upto: Seq(3) }).unwrap();
    assert_eq!(
        drain(&mut r),
        vec![(Seq(1), Ok(vec![])), (Seq(3), Ok(vec![]))]
    );
    r.handle_frame(&Frame::Synced {
        seq: Seq(2),
        errno: 0,
    })
    .unwrap();
    assert_eq!(drain(&mut r), vec![(Seq(2), Ok(vec![]))]);
    assert_eq!(r.in_flight(), 0);
}

#[test]
fn peer_timeout_fails_everything_in_flight_with_eio() {
    let t0 = Instant::now();
    let mut r = Replicator::new(Duration::from_secs(5));
    r.submit(t0, &write()).unwrap();
    r.submit(t0 + Duration::from_secs(1), &fsync()).unwrap();
    assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    r.handle_timeout(t0 + Duration::from_secs(4));
    assert_eq!(drain(&mut r), vec![]);
    r.handle_timeout(t0 + Duration::from_secs(5));
    assert_eq!(
        drain(&mut r),
        vec![(Seq(1), Err(libc::EIO)), (Seq(2), Err(libc::EIO))]
    );
    assert!(r.lost().unwrap().contains("--peer-timeout"));
    assert!(r.submit(t0, &write()).is_err());
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn protocol_violations_are_reported() {
    let t0 = Instant::now();
    let mut r = Replicator::new(Duration::from_secs(5));
    r.submit(t0, &write()).unwrap();
    assert_eq!(
        r.handle_frame(&Frame::Ack { upto: Seq(2) }),
        Err(Violation::AckBeyondSent { upto: 2, sent: 1 })
    );
    assert_eq!(
        r.handle_frame(&Frame::Synced {
            seq: Seq(1),
            errno: 0
        }),
        Err(Violation::Unexpected {
            what: "sync report",
            seq: 1
        })
    );
    assert_eq!(
        r.handle_frame(&Frame::Failed {
            seq: Seq(1),
            errno: 0
        }),
        Err(Violation::ZeroErrno(1))
    );
    r.handle_frame(&Frame::Ack { upto: Seq(1) }).unwrap();
    assert_eq!(
        r.handle_frame(&Frame::Ack { upto: Seq(0) }),
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
        let mut tx = Replicator::new(Duration::from_secs(5));
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
            tx.handle_frame(&f).unwrap();
        }
        let mut got = drain(&mut tx);
        got.sort_by_key(|(s, _)| *s);
        prop_assert_eq!(got, expected);
        prop_assert_eq!(tx.in_flight(), 0);
    }
}
