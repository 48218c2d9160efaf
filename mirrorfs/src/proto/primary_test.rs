//! [`Primary`] in known states, one event, exact outcomes. The regression
//! tests of issue 7's findings are named `issue_7_*`.

use pretty_assertions::assert_eq;

use super::*;
use crate::proto::pace::MAX_PAUSE;

fn p(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}

fn core(mode: OnPeerLoss) -> (Primary, Instant) {
    let now = Instant::now();
    let cfg = Config {
        on_peer_loss: mode,
        hold_timeout: Duration::from_secs(10),
        full: false,
        seed: 42,
        me: "node1".into(),
        peer: "node2".into(),
        ack: AckMode::EachOp,
        bound: Bound::default(),
        longest_pause: Duration::from_millis(8),
    };
    let mut c = Primary::new(
        cfg,
        now,
        History::from_ids(vec![GenerationId(1)]),
        DirtySet::default(),
    );
    c.handle_start(now, false);
    assert_eq!(c.take_durable(), None);
    (c, now)
}

/// Connected and in sync with a secondary at generation 1.
fn in_sync(mode: OnPeerLoss) -> (Primary, Instant, u64) {
    let (mut c, now) = core(mode);
    let e = reconnect(&mut c, now);
    assert_eq!(c.role(), Role::Prim);
    drain(&mut c);
    (c, now, e)
}

/// A connection comes up to a secondary at generation 1: its epoch.
fn reconnect(c: &mut Primary, now: Instant) -> u64 {
    c.handle_link_up(
        now,
        &History::from_ids(vec![GenerationId(1)]),
        &[],
        BTreeSet::new(),
    )
    .unwrap()
}

fn drain(c: &mut Primary) -> Vec<Action> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

fn write(path: &str) -> Touched {
    Touched {
        paths: vec![p(path)],
        data: Some((0, 10)),
        ..Touched::default()
    }
}

/// Commits what the last event staged; returns it.
fn durable(c: &mut Primary) -> Durable {
    let d = c.take_durable().unwrap_or_default();
    c.commit();
    d
}

#[test]
fn issue_7_an_op_begun_in_prim_and_submitted_after_the_loss_is_recorded_not_dropped() {
    // Finding 1: an op begun in PRIM (only activity recorded) and submitted
    // after the role became ALONE was acknowledged, neither sent nor marked.
    let (mut c, now, e) = in_sync(OnPeerLoss::Alone);
    let b = c.handle_begin(now, write("f")).unwrap();
    assert_eq!(b.epoch, Some(e));
    assert!(b.record_activity);
    assert_eq!(c.take_durable(), None, "in sync: nothing recorded first");
    c.handle_link_lost(now, e, "gone".into());
    let going_alone = durable(&mut c);
    assert!(
        going_alone.history.is_some(),
        "going ALONE: a new generation"
    );
    assert_eq!(c.role(), Role::Alone);
    assert_eq!(
        c.handle_submit(now, b.op),
        None,
        "not sent on another connection"
    );
    assert_eq!(
        c.handle_outcome(now, b.op, OpResult::NotSent, None),
        Verdict::Ack
    );
    let d = durable(&mut c);
    assert_eq!(
        d.marks.range,
        Some((p("f"), 0, 10)),
        "recorded before acknowledged"
    );
    assert_eq!(
        d.history, None,
        "already in a generation the secondary lacks"
    );
    assert!(c.dirty().contains(&p("f")));
}

#[test]
fn issue_7_an_op_begun_on_one_connection_is_never_sent_on_the_next() {
    let (mut c, now, e) = in_sync(OnPeerLoss::Fail);
    let b = c.handle_begin(now, write("f")).unwrap();
    c.handle_link_lost(now, e, "gone".into());
    let e2 = reconnect(&mut c, now);
    assert_ne!(e, e2);
    assert_eq!(c.handle_submit(now, b.op), None);
    assert_eq!(
        c.handle_outcome(now, b.op, OpResult::NotSent, None),
        Verdict::Fail(libc::EIO),
        "fail mode: not replicated means not acknowledged"
    );
    assert_eq!(durable(&mut c).marks.range, Some((p("f"), 0, 10)));
    assert_eq!(c.role(), Role::Resync, "the new connection resyncs it");
}

#[test]
fn issue_7_a_refusal_after_set_generation_is_sent_starts_a_new_generation() {
    // Finding 4: after SetGeneration and before the resync completes, the
    // secondary already holds our generation.
    let (mut c, now) = core(OnPeerLoss::Alone);
    let old = History::from_ids(vec![GenerationId(9)]);
    let e = c.handle_link_up(now, &old, &[], BTreeSet::new());
    assert!(e.is_err(), "split brain: refused");
    let mut c = in_sync(OnPeerLoss::Alone).0;
    let now = Instant::now();
    // A failed op makes a resync; the walk visits its path.
    let b = c.handle_begin(now, write("f")).unwrap();
    let e = c.handle_submit(now, b.op).unwrap();
    assert_eq!(
        c.handle_outcome(now, b.op, OpResult::Refused(libc::ENOSPC), None),
        Verdict::Ack
    );
    let d = durable(&mut c);
    assert!(
        d.history.is_some(),
        "acknowledged while the secondary shares generation 1"
    );
    assert!(matches!(
        drain(&mut c)[..],
        [Action::BeginResync { .. }, ..]
    ));
    let job = c.next_job(now).unwrap();
    c.handle_job_done(&job);
    let ids = c
        .handle_generation_sent(e)
        .expect("walk idle, nothing in flight");
    assert_eq!(ids.len(), 2);
    // Before the resync is confirmed, a live op is refused.
    let b = c.handle_begin(now, write("g")).unwrap();
    assert_eq!(c.handle_submit(now, b.op), Some(e));
    assert_eq!(
        c.handle_outcome(now, b.op, OpResult::Refused(libc::ENOSPC), None),
        Verdict::Ack
    );
    let d = durable(&mut c);
    assert!(
        d.history.is_some(),
        "the secondary may hold our generation once SetGeneration is sent: a new one"
    );
    assert!(
        !c.handle_resync_complete(now, e),
        "g is pending: not in sync"
    );
}

#[test]
fn issue_10_7_a_refused_fsync_after_set_generation_makes_the_resync_conclude_again() {
    // Found by the on-sync simulation (a barrier the secondary could not
    // flush), in each-op mode too: an fsync touches no path; refused after
    // the resync's SetGeneration was sent, it was acknowledged alone in a
    // new generation, nothing became pending, and the resync completed:
    // the secondary kept the older generation, marked inconsistent by the
    // BeginResync that followed, and no resync ever ran again.
    let (mut c, now, e) = in_sync(OnPeerLoss::Alone);
    let w = c.handle_begin(now, write("f")).unwrap();
    c.handle_submit(now, w.op);
    c.handle_outcome(now, w.op, OpResult::Refused(libc::ENOSPC), None);
    durable(&mut c);
    drain(&mut c);
    while let Some(j) = c.next_job(now) {
        c.handle_job_done(&j);
    }
    let sent = c.handle_generation_sent(e).unwrap();
    let s = c.handle_begin(now, Touched::default()).unwrap();
    c.handle_submit(now, s.op);
    assert_eq!(
        c.handle_outcome(now, s.op, OpResult::Refused(libc::EIO), None),
        Verdict::Ack
    );
    assert!(durable(&mut c).history.is_some(), "a new generation");
    assert!(matches!(drain(&mut c)[..], [Action::BeginResync { .. }]));
    assert!(
        !c.handle_resync_complete(now, e),
        "the secondary adopted an older generation"
    );
    let again = c.handle_generation_sent(e).expect("concluded again");
    assert_ne!(again, sent);
    assert!(c.handle_resync_complete(now, e));
    durable(&mut c);
    assert_eq!(c.role(), Role::Prim);
}

#[test]
fn issue_7_a_copied_range_whose_source_the_resync_still_has_to_visit_carries_its_data() {
    // Finding 2: copy_file_range during RESYNC copied on the secondary from
    // a source that may still be stale there.
    let (mut c, now, e) = in_sync(OnPeerLoss::Fail);
    let b = c.handle_begin(now, write("src")).unwrap();
    c.handle_submit(now, b.op);
    c.handle_outcome(now, b.op, OpResult::Refused(libc::ENOSPC), None);
    durable(&mut c);
    assert_eq!(c.role(), Role::Resync);
    let copy = Touched {
        paths: vec![p("dst")],
        data: Some((0, 10)),
        reads: vec![p("src")],
        ..Touched::default()
    };
    let b = c.handle_begin(now, copy.clone()).unwrap();
    assert!(!b.source_clean, "src is still to visit: send the bytes");
    durable(&mut c);
    assert_eq!(c.handle_submit(now, b.op), Some(e));
    // Once src is visited, a copy may be a copy again.
    let mut visited = Vec::new();
    while let Some(j) = c.next_job(now) {
        visited.push(j.path.clone());
        c.handle_job_done(&j);
    }
    assert!(visited.contains(&p("src")), "{visited:?}");
    let b2 = c.handle_begin(now, copy).unwrap();
    assert!(b2.source_clean);
}

#[test]
fn issue_7_ops_sent_behind_a_refused_one_on_the_same_path_are_not_acknowledged_as_replicated() {
    let (mut c, now, e) = in_sync(OnPeerLoss::Fail);
    let a = c.handle_begin(now, write("x")).unwrap();
    assert_eq!(c.handle_submit(now, a.op), Some(e));
    let rename = Touched {
        paths: vec![p("x"), p("y")],
        rename: Some((p("x"), p("y"))),
        ..Touched::default()
    };
    let b = c.handle_begin(now, rename).unwrap();
    assert_eq!(c.handle_submit(now, b.op), Some(e));
    let other = c.handle_begin(now, write("z")).unwrap();
    assert_eq!(c.handle_submit(now, other.op), Some(e));
    assert_eq!(
        c.handle_outcome(now, a.op, OpResult::Refused(libc::ENOSPC), None),
        Verdict::Fail(libc::ENOSPC)
    );
    durable(&mut c);
    // The secondary renamed its old x: y is wrong there.
    assert_eq!(
        c.handle_outcome(now, b.op, OpResult::Applied, None),
        Verdict::Fail(libc::EIO)
    );
    let d = durable(&mut c);
    assert_eq!(d.marks.trees, vec![p("x"), p("y")]);
    assert_eq!(
        c.handle_outcome(now, other.op, OpResult::Applied, None),
        Verdict::Ack
    );
}

#[test]
fn set_generation_waits_until_nothing_is_in_flight() {
    let (mut c, now, e) = in_sync(OnPeerLoss::Alone);
    let a = c.handle_begin(now, write("x")).unwrap();
    c.handle_submit(now, a.op);
    c.handle_outcome(now, a.op, OpResult::Refused(libc::ENOSPC), None);
    durable(&mut c);
    let job = c.next_job(now).unwrap();
    c.handle_job_done(&job);
    let b = c.handle_begin(now, write("y")).unwrap();
    assert_eq!(c.handle_submit(now, b.op), Some(e));
    assert_eq!(c.handle_generation_sent(e), None, "y is in flight");
    assert_eq!(
        c.handle_outcome(now, b.op, OpResult::Applied, None),
        Verdict::Ack
    );
    assert!(c.handle_generation_sent(e).is_some());
    assert!(c.handle_resync_complete(now, e));
    assert!(durable(&mut c).clear_dirty);
    assert_eq!(c.role(), Role::Prim);
    assert!(c.snapshot(now).in_sync);
}

#[test]
fn hold_waits_for_the_controller_alone_releases_and_runs_out() {
    let (mut c, now, e) = in_sync(OnPeerLoss::Hold);
    c.handle_link_lost(now, e, "gone".into());
    assert_eq!(c.take_durable(), None, "no grant: no new generation yet");
    assert_eq!(c.role(), Role::Hold);
    let b = c.handle_begin(now, write("f")).unwrap();
    assert_eq!(b.epoch, None);
    assert!(
        durable(&mut c).marks.range.is_some(),
        "recorded before applied"
    );
    assert_eq!(c.handle_submit(now, b.op), None);
    assert_eq!(
        c.handle_outcome(now, b.op, OpResult::NotSent, None),
        Verdict::Hold
    );
    durable(&mut c);
    assert_eq!(c.held(), 1);
    let t = now + Duration::from_secs(1);
    c.handle_alone(t, Duration::from_secs(3)).unwrap();
    let d = c.take_durable().unwrap();
    assert!(
        d.history.is_some(),
        "acknowledged alone: a new generation first"
    );
    assert!(
        drain(&mut c)
            .iter()
            .all(|a| !matches!(a, Action::Release(..))),
        "not before it is durable"
    );
    c.commit();
    let acts = drain(&mut c);
    assert!(
        acts.contains(&Action::Release(b.op, Verdict::Ack)),
        "{acts:?}"
    );
    assert_eq!(c.role(), Role::Alone);
    assert_eq!(c.poll_timeout(), Some(t + Duration::from_secs(3)));
    // The grant runs out unrenewed: HOLD again, by itself.
    c.handle_tick(t + Duration::from_secs(3));
    assert_eq!(c.role(), Role::Hold);
    let b = c
        .handle_begin(t + Duration::from_secs(4), write("g"))
        .unwrap();
    durable(&mut c);
    let now2 = t + Duration::from_secs(4);
    c.handle_submit(now2, b.op);
    assert_eq!(
        c.handle_outcome(now2, b.op, OpResult::NotSent, None),
        Verdict::Hold
    );
    durable(&mut c);
    // fence: held ops fail, new ones are refused.
    c.handle_fence(now2, "fenced by the controller");
    assert!(drain(&mut c).contains(&Action::Release(b.op, Verdict::Fail(libc::EIO))));
    assert_eq!(c.role(), Role::Fenced);
    assert_eq!(c.handle_begin(now2, write("h")), Err(libc::EIO));
    assert!(c.handle_alone(now2, Duration::from_secs(1)).is_err());
    c.handle_unfence(now2);
    assert_eq!(c.role(), Role::Hold);
}

#[test]
fn a_grant_ends_with_the_loss_it_was_for() {
    let (mut c, now, e) = in_sync(OnPeerLoss::Hold);
    c.handle_link_lost(now, e, "gone".into());
    c.handle_alone(now, Duration::from_secs(120)).unwrap();
    durable(&mut c);
    assert_eq!(c.role(), Role::Alone);
    let e2 = reconnect(&mut c, now);
    c.handle_link_lost(now, e2, "gone again".into());
    assert_eq!(c.role(), Role::Hold, "a new loss needs a new order");
    // One given while connected counts for the next loss.
    let e3 = reconnect(&mut c, now);
    c.handle_alone(now, Duration::from_secs(5)).unwrap();
    c.handle_link_lost(now, e3, "gone".into());
    assert_eq!(c.role(), Role::Alone);
}

#[test]
fn a_hold_that_lasts_too_long_fences() {
    let (mut c, now, e) = in_sync(OnPeerLoss::Hold);
    c.handle_link_lost(now, e, "gone".into());
    let b = c.handle_begin(now, write("f")).unwrap();
    durable(&mut c);
    c.handle_submit(now, b.op);
    assert_eq!(
        c.handle_outcome(now, b.op, OpResult::NotSent, None),
        Verdict::Hold
    );
    durable(&mut c);
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(10)));
    c.handle_tick(now + Duration::from_secs(10));
    assert_eq!(c.role(), Role::Fenced);
    assert!(drain(&mut c).contains(&Action::Release(b.op, Verdict::Fail(libc::EIO))));
    assert!(c
        .snapshot(now)
        .last_error
        .unwrap()
        .contains("--hold-timeout"));
}

#[test]
fn held_ops_are_acknowledged_when_the_resync_that_brings_them_over_completes() {
    let (mut c, now, e) = in_sync(OnPeerLoss::Hold);
    c.handle_link_lost(now, e, "gone".into());
    let b = c.handle_begin(now, write("f")).unwrap();
    durable(&mut c);
    c.handle_submit(now, b.op);
    assert_eq!(
        c.handle_outcome(now, b.op, OpResult::NotSent, None),
        Verdict::Hold
    );
    durable(&mut c);
    let e2 = reconnect(&mut c, now);
    assert_eq!(c.role(), Role::Resync);
    let job = c.next_job(now).unwrap();
    c.handle_job_done(&job);
    c.handle_generation_sent(e2).unwrap();
    assert!(c.handle_resync_complete(now, e2));
    durable(&mut c);
    assert!(drain(&mut c).contains(&Action::Release(b.op, Verdict::Ack)));
    assert_eq!(c.role(), Role::Prim);
}

#[test]
fn alone_is_an_order_for_mounts_under_a_controller_only() {
    let (mut c, now, _) = in_sync(OnPeerLoss::Fail);
    let e = c.handle_alone(now, Duration::from_secs(5)).unwrap_err();
    assert!(e.contains("--on-peer-loss=hold"), "{e}");
    let (mut c, now, _) = in_sync(OnPeerLoss::Hold);
    c.handle_alone(now, Duration::from_secs(5)).unwrap();
    assert_eq!(c.take_durable(), None, "connected: nothing to do yet");
    assert_eq!(c.role(), Role::Prim);
}

#[test]
fn a_record_that_cannot_be_made_durable_refuses_the_op_and_keeps_nothing() {
    let (mut c, now) = core(OnPeerLoss::Alone);
    c.handle_start(now, true);
    durable(&mut c);
    let b = c.handle_begin(now, write("f")).unwrap();
    assert!(c.take_durable().is_some());
    c.abort(Some(b.op), false);
    assert!(c.dirty().is_empty());
    assert!(c.volatile().is_empty());
    let b = c.handle_begin(now, write("f")).unwrap();
    assert!(c.take_durable().is_some(), "recorded again next time");
    c.commit();
    assert_eq!(c.handle_submit(now, b.op), None);
}

/// Lost, granted `alone 120`, `files` written ALONE (acknowledged), then
/// the secondary back at generation 1: in RESYNC, on the returned epoch.
fn granted_then_back(files: &[&str]) -> (Primary, Instant, u64) {
    let (mut c, now, e) = in_sync(OnPeerLoss::Hold);
    c.handle_link_lost(now, e, "gone".into());
    c.handle_alone(now, Duration::from_secs(120)).unwrap();
    durable(&mut c);
    for f in files {
        let b = c.handle_begin(now, write(f)).unwrap();
        durable(&mut c);
        c.handle_submit(now, b.op);
        assert_eq!(
            c.handle_outcome(now, b.op, OpResult::NotSent, None),
            Verdict::Ack
        );
        durable(&mut c);
    }
    let e2 = reconnect(&mut c, now);
    assert_eq!(c.role(), Role::Resync);
    drain(&mut c);
    (c, now, e2)
}

#[test]
fn ci_stop_13_a_refusal_during_the_resync_is_carried_by_it_not_failed() {
    // CI, stop 13: granted ALONE, the mount created w47; back in RESYNC, the
    // application rewrote w47 before the walk had brought it over, the
    // secondary refused the open (ENOENT) and the application saw ENOENT,
    // though the change was recorded and the walk carries it.
    let (mut c, now, e2) = granted_then_back(&["w47"]);
    let b = c.handle_begin(now, write("w47")).unwrap();
    durable(&mut c);
    assert_eq!(c.handle_submit(now, b.op), Some(e2));
    assert_eq!(
        c.handle_outcome(now, b.op, OpResult::Refused(libc::ENOENT), None),
        Verdict::Ack,
        "recorded, and the walk brings it over"
    );
    let d = durable(&mut c);
    assert_eq!(
        d.history, None,
        "the secondary lacks our generation already"
    );
    assert!(c.dirty().contains(&p("w47")));
    while let Some(j) = c.next_job(now) {
        c.handle_job_done(&j);
    }
    c.handle_generation_sent(e2).unwrap();
    assert!(c.handle_resync_complete(now, e2));
    durable(&mut c);
    assert_eq!(c.role(), Role::Prim);
}

#[test]
fn during_a_resync_only_a_refusal_for_lack_of_a_path_still_to_visit_is_carried() {
    let (mut c, now, e) = in_sync(OnPeerLoss::Fail);
    let a = c.handle_begin(now, write("x")).unwrap();
    c.handle_submit(now, a.op);
    assert_eq!(
        c.handle_outcome(now, a.op, OpResult::Refused(libc::ENOSPC), None),
        Verdict::Fail(libc::ENOSPC),
        "in sync: the secondary's error, nothing acknowledged alone"
    );
    durable(&mut c);
    assert_eq!(c.role(), Role::Resync);
    drain(&mut c);
    // y is clean: the secondary's refusal is its failure.
    let b = c.handle_begin(now, write("y")).unwrap();
    durable(&mut c);
    assert_eq!(c.handle_submit(now, b.op), Some(e));
    assert_eq!(
        c.handle_outcome(now, b.op, OpResult::Refused(libc::ENOENT), None),
        Verdict::Fail(libc::ENOENT)
    );
    durable(&mut c);
    // x is still to visit: a full disk there is still a failure...
    let b = c.handle_begin(now, write("x")).unwrap();
    durable(&mut c);
    assert_eq!(c.handle_submit(now, b.op), Some(e));
    assert_eq!(
        c.handle_outcome(now, b.op, OpResult::Refused(libc::ENOSPC), None),
        Verdict::Fail(libc::ENOSPC)
    );
    durable(&mut c);
    // ... but its lack of x is what the walk repairs.
    let b = c.handle_begin(now, write("x")).unwrap();
    durable(&mut c);
    assert_eq!(c.handle_submit(now, b.op), Some(e));
    assert_eq!(
        c.handle_outcome(now, b.op, OpResult::Refused(libc::EBADF), None),
        Verdict::Ack
    );
    let d = durable(&mut c);
    assert!(
        d.history.is_some(),
        "the secondary may still share generation 1: acknowledged in a new one"
    );
    assert!(c.dirty().contains(&p("x")));
}

#[test]
fn ci_2026_12_06_a_handle_op_refused_for_a_handle_whose_open_was_carried_is_carried_too() {
    // CI again, same test: the open of w28 was refused (ENOENT, carried),
    // then the walk visited w28, then the application's fsync on the handle
    // was refused (EBADF: the secondary never had the handle). w28 was not
    // pending any more, so the fsync was failed with EBADF.
    let (mut c, now, e2) = granted_then_back(&["w28"]);
    let open = c.handle_begin(now, write("w28")).unwrap();
    durable(&mut c);
    assert_eq!(c.handle_submit(now, open.op), Some(e2));
    assert_eq!(
        c.handle_outcome(now, open.op, OpResult::Refused(libc::ENOENT), None),
        Verdict::Ack
    );
    durable(&mut c);
    // The walk brings w28 over...
    while let Some(j) = c.next_job(now) {
        c.handle_job_done(&j);
    }
    // ... and only then is the fsync on the handle begun.
    let fsync = Touched {
        paths: vec![p("w28")],
        ..Touched::default()
    };
    let b = c.handle_begin(now, fsync).unwrap();
    durable(&mut c);
    assert_eq!(c.handle_submit(now, b.op), Some(e2));
    assert_eq!(
        c.handle_outcome(now, b.op, OpResult::Refused(libc::EBADF), None),
        Verdict::Ack,
        "the handle is missing there because its open was carried"
    );
    durable(&mut c);
    assert!(c.dirty().contains(&p("w28")), "visited again");
}

#[test]
fn ci_2026_12_07_an_fsync_by_path_of_a_file_the_walk_still_brings_over_is_carried() {
    // CI, same test again: granted ALONE, the mount rewrote w40; back in
    // RESYNC, before the walk had brought w40 over, the application opened
    // it (O_TRUNC), wrote and fsynced. The writes were refused (ENOENT) and
    // carried, but the fsync (which names the file by its path and changes
    // nothing, so touches no path) was failed with ENOENT: the application
    // saw its fsync fail during a resync that brought w40 over anyway.
    let (mut c, now, e2) = granted_then_back(&["w40", "w41"]);
    let fsync_of = |f: &str| Touched {
        synced: Some(p(f)),
        ..fsync()
    };
    let b = c.handle_begin(now, fsync_of("w40")).unwrap();
    durable(&mut c);
    assert_eq!(c.handle_submit(now, b.op), Some(e2));
    assert_eq!(
        c.handle_outcome(now, b.op, OpResult::Refused(libc::ENOENT), None),
        Verdict::Ack,
        "the walk brings w40 over"
    );
    durable(&mut c);
    // The same while a worker visits w41 (the fsync may reach the secondary
    // before the worker's ops do).
    let j = c.next_job(now).unwrap();
    assert_eq!(j.path, p("w40"));
    c.handle_job_done(&j);
    let j = c.next_job(now).unwrap();
    assert_eq!(j.path, p("w41"));
    let b = c.handle_begin(now, fsync_of("w41")).unwrap();
    durable(&mut c);
    assert_eq!(c.handle_submit(now, b.op), Some(e2));
    assert_eq!(
        c.handle_outcome(now, b.op, OpResult::Refused(libc::ENOENT), None),
        Verdict::Ack,
        "the worker brings w41 over"
    );
    durable(&mut c);
    c.handle_job_done(&j);
    // Once visited, the secondary holds w40: lacking it is its failure.
    let b = c.handle_begin(now, fsync_of("w40")).unwrap();
    durable(&mut c);
    assert_eq!(c.handle_submit(now, b.op), Some(e2));
    assert_eq!(
        c.handle_outcome(now, b.op, OpResult::Refused(libc::ENOENT), None),
        Verdict::Fail(libc::ENOENT)
    );
}

#[test]
fn ci_2026_12_08_a_write_sent_before_the_copy_of_the_worker_visiting_its_file_is_carried() {
    // Found running the e2e tests two at a time: a worker had taken f1630
    // (in flight) but not yet sent its copy when the application wrote into
    // f1630. The write reached the secondary first, was refused (ENOENT: no
    // file there yet) and failed, though the copy, read after the write,
    // brought it over.
    let (mut c, now, e2) = granted_then_back(&["f1630"]);
    let j = c.next_job(now).unwrap();
    assert_eq!(j.path, p("f1630"));
    let b = c.handle_begin(now, write("f1630")).unwrap();
    assert_eq!(
        durable(&mut c),
        Durable::default(),
        "a busy file is not marked"
    );
    assert_eq!(c.handle_submit(now, b.op), Some(e2));
    assert_eq!(
        c.handle_outcome(now, b.op, OpResult::Refused(libc::ENOENT), None),
        Verdict::Ack,
        "the worker's copy brings the write over"
    );
    durable(&mut c);
    c.handle_job_done(&j);
    assert!(c.dirty().contains(&p("f1630")));
    assert_eq!(
        c.next_job(now).map(|j| j.path),
        Some(p("f1630")),
        "refused: visited again"
    );
}

#[test]
fn an_op_begun_under_a_grant_is_acknowledged_after_the_secondary_is_back_while_the_grant_runs() {
    // Found with the test above: a write begun ALONE under `alone 120`, in
    // flight as the secondary came back, concluded NotSent after the link
    // was up. The core had dropped the grant at the link's start, so the
    // write waited for the whole resync (1.4 s for 2000 small files; as
    // long as a large resync takes), though the controller's grant ran.
    let (mut c, now, e) = in_sync(OnPeerLoss::Hold);
    c.handle_link_lost(now, e, "gone".into());
    c.handle_alone(now, Duration::from_secs(120)).unwrap();
    durable(&mut c);
    let begun = |c: &mut Primary, f: &str| {
        let b = c.handle_begin(now, write(f)).unwrap();
        durable(c);
        assert_eq!(b.epoch, None);
        b.op
    };
    let back = |c: &mut Primary| {
        let e = reconnect(c, now);
        assert_eq!(c.role(), Role::Resync);
        drain(c);
        e
    };
    let (a, b) = (begun(&mut c, "a"), begun(&mut c, "b"));
    let e2 = back(&mut c);
    assert_eq!(c.handle_submit(now, a), None, "begun without a link");
    assert_eq!(
        c.handle_outcome(now, a, OpResult::NotSent, None),
        Verdict::Ack,
        "the grant the controller gave runs for 120 s"
    );
    durable(&mut c);
    assert!(c.dirty().contains(&p("a")));
    // Lost again: the grant was for the loss that ended.
    c.handle_link_lost(now, e2, "gone again".into());
    assert_eq!(c.role(), Role::Hold);
    c.handle_submit(now, b);
    assert_eq!(
        c.handle_outcome(now, b, OpResult::NotSent, None),
        Verdict::Hold
    );
    durable(&mut c);
    c.handle_alone(now, Duration::from_secs(120)).unwrap();
    durable(&mut c);
    assert!(drain(&mut c).contains(&Action::Release(b, Verdict::Ack)));
    let d = begun(&mut c, "d");
    back(&mut c);
    // While connected, the controller's newest order is its promise.
    c.handle_alone(now, Duration::from_secs(1)).unwrap();
    durable(&mut c);
    let later = now + Duration::from_secs(2);
    c.handle_submit(later, d);
    assert_eq!(
        c.handle_outcome(later, d, OpResult::NotSent, None),
        Verdict::Hold,
        "past the grant: the resync's end acknowledges it"
    );
}

// ---- issue 10 item 7: --ack=on-sync ------------------------------------------

fn core_with(mode: OnPeerLoss, ack: AckMode, bound: Bound) -> (Primary, Instant, u64) {
    let now = Instant::now();
    let cfg = Config {
        on_peer_loss: mode,
        hold_timeout: Duration::from_secs(10),
        full: false,
        seed: 42,
        me: "node1".into(),
        peer: "node2".into(),
        ack,
        bound,
        longest_pause: Duration::from_millis(8),
    };
    let gen1 = History::from_ids(vec![GenerationId(1)]);
    let mut c = Primary::new(cfg, now, gen1.clone(), DirtySet::default());
    c.handle_start(now, false);
    let e = c.handle_link_up(now, &gen1, &[], BTreeSet::new()).unwrap();
    drain(&mut c);
    (c, now, e)
}

/// Connected and in sync, `--ack=on-sync`.
fn on_sync(mode: OnPeerLoss) -> (Primary, Instant, u64) {
    core_with(mode, AckMode::OnSync, Bound::default())
}

/// An fsync (no path: the overlay names the file in the op itself).
fn fsync() -> Touched {
    Touched {
        sync: true,
        ..Touched::default()
    }
}

/// Begins and submits `t` (nothing recorded first: connected, in sync);
/// returns its id.
fn sent(c: &mut Primary, now: Instant, e: u64, t: Touched) -> OpId {
    let b = c.handle_begin(now, t).unwrap();
    durable(c);
    assert_eq!(c.handle_submit(now, b.op), Some(e));
    durable(c);
    b.op
}

/// The outcome of `op`, once what it staged is durable.
fn outcome(c: &mut Primary, now: Instant, op: OpId, r: OpResult) -> Verdict {
    let v = c.handle_outcome(now, op, r, None);
    durable(c);
    v
}

#[test]
fn issue_10_7_on_sync_answers_a_write_when_submitted_and_a_sync_op_after_a_barrier() {
    let (mut c, now, e) = on_sync(OnPeerLoss::Fail);
    let b = c.handle_begin(now, write("f")).unwrap();
    assert!(!b.barrier, "a write is no sync op");
    durable(&mut c);
    assert_eq!(c.handle_submit(now, b.op), Some(e));
    assert!(!c.early(b.op), "not before what it staged is durable");
    durable(&mut c);
    assert!(c.early(b.op), "answered at once");
    assert_eq!(c.early_in_flight(), (1, OP_COST + 10));
    let s = c.handle_begin(now, fsync()).unwrap();
    assert!(s.barrier, "a sync op ends with a barrier");
    durable(&mut c);
    assert_eq!(c.handle_submit(now, s.op), Some(e));
    assert!(!c.early(s.op), "a sync op waits for its outcome");
    assert_eq!(outcome(&mut c, now, b.op, OpResult::Applied), Verdict::Ack);
    assert_eq!(c.early_in_flight(), (0, 0));
    assert_eq!(outcome(&mut c, now, s.op, OpResult::Applied), Verdict::Ack);
    assert_eq!(drain(&mut c), vec![]);
    assert!(c.snapshot(now).in_sync);
}

#[test]
fn issue_10_7_an_op_whose_submission_could_not_be_recorded_is_not_answered_early() {
    // Found by the simulation: the metadata disk failed at the submission,
    // so the op was not sent and concluded NotSent, held (hold mode) as an
    // early op, whose release nobody gets: the application waited forever.
    let (mut c, now, e) = on_sync(OnPeerLoss::Hold);
    let w = sent(&mut c, now, e, Touched::paths(vec![p("d")]));
    let b = c.handle_begin(now, write("d/f")).unwrap();
    durable(&mut c);
    outcome(&mut c, now, w, OpResult::Refused(libc::ENOSPC));
    assert_eq!(c.role(), Role::Resync, "d is now to visit");
    assert_eq!(c.handle_submit(now, b.op), Some(e));
    assert!(c.take_durable().is_some(), "carried: recorded first");
    c.abort(None, true);
    assert!(!c.early(b.op), "not sent: answered with its verdict");
    assert_eq!(outcome(&mut c, now, b.op, OpResult::NotSent), Verdict::Hold);
    c.handle_alone(now, Duration::from_secs(5)).unwrap();
    durable(&mut c);
    while let Some(j) = c.next_job(now) {
        c.handle_job_done(&j);
    }
    assert!(c.handle_generation_sent(e).is_some());
    assert!(c.handle_resync_complete(now, e));
    durable(&mut c);
    assert!(drain(&mut c).contains(&Action::Release(b.op, Verdict::Ack)));
}

#[test]
fn issue_10_7_each_op_answers_nothing_early_and_sends_no_barrier() {
    let (mut c, now, e) = core_with(OnPeerLoss::Fail, AckMode::EachOp, Bound::default());
    let s = c.handle_begin(now, fsync()).unwrap();
    assert!(!s.barrier);
    durable(&mut c);
    c.handle_submit(now, s.op);
    let w = sent(&mut c, now, e, write("f"));
    assert!(!c.early(w));
    assert_eq!(c.early_in_flight(), (0, 0));
    assert!(c.room_for(&write("g")));
}

#[test]
fn issue_10_7_a_sync_op_waits_for_the_early_answered_ops_before_it() {
    let (mut c, now, e) = on_sync(OnPeerLoss::Fail);
    let w = sent(&mut c, now, e, write("f"));
    let s = sent(&mut c, now, e, fsync());
    // The barrier's answer overtook the conclusion of the write's.
    assert_eq!(outcome(&mut c, now, s, OpResult::Applied), Verdict::Hold);
    assert_eq!(drain(&mut c), vec![]);
    assert_eq!(c.held(), 0, "not held for the controller");
    assert_eq!(outcome(&mut c, now, w, OpResult::Applied), Verdict::Ack);
    assert_eq!(drain(&mut c), vec![Action::Release(s, Verdict::Ack)]);
    // And with a refused write: the sync op fails with its error.
    let w = sent(&mut c, now, e, write("g"));
    let s = sent(&mut c, now, e, fsync());
    assert_eq!(outcome(&mut c, now, s, OpResult::Applied), Verdict::Hold);
    outcome(&mut c, now, w, OpResult::Refused(libc::ENOSPC));
    assert!(drain(&mut c).contains(&Action::Release(s, Verdict::Fail(libc::ENOSPC))));
}

#[test]
fn issue_10_7_a_refused_early_op_fails_the_next_sync_with_fail_and_hold_and_is_acked_alone() {
    for (mode, expect) in [
        (OnPeerLoss::Fail, Verdict::Fail(libc::ENOSPC)),
        (OnPeerLoss::Hold, Verdict::Fail(libc::ENOSPC)),
        (OnPeerLoss::Alone, Verdict::Ack),
    ] {
        let (mut c, now, e) = on_sync(mode);
        let w = sent(&mut c, now, e, write("f"));
        let v = c.handle_outcome(now, w, OpResult::Refused(libc::ENOSPC), None);
        let d = durable(&mut c);
        assert_eq!(v, expect, "{mode:?}: what each-op would have answered");
        assert_eq!(
            d.marks.range,
            Some((p("f"), 0, 10)),
            "{mode:?}: recorded dirty as each-op records it"
        );
        assert_eq!(
            d.history.is_some(),
            mode == OnPeerLoss::Alone,
            "{mode:?}: acknowledged without the secondary only in a new generation"
        );
        let s = sent(&mut c, now, e, fsync());
        assert_eq!(
            outcome(&mut c, now, s, OpResult::Applied),
            expect,
            "{mode:?}: the sync op after it"
        );
        // Told once: the next sync op is answered for what follows.
        let s = sent(&mut c, now, e, fsync());
        assert_eq!(
            outcome(&mut c, now, s, OpResult::Applied),
            Verdict::Ack,
            "{mode:?}"
        );
    }
}

#[test]
fn issue_10_7_every_sync_op_begun_before_a_failure_was_told_reports_it() {
    let (mut c, now, e) = on_sync(OnPeerLoss::Fail);
    let w = sent(&mut c, now, e, write("f"));
    let s1 = sent(&mut c, now, e, fsync());
    let s2 = sent(&mut c, now, e, fsync());
    outcome(&mut c, now, w, OpResult::Refused(libc::EDQUOT));
    let s3 = sent(&mut c, now, e, fsync());
    assert_eq!(
        outcome(&mut c, now, s2, OpResult::Applied),
        Verdict::Fail(libc::EDQUOT)
    );
    let s4 = sent(&mut c, now, e, fsync());
    assert_eq!(
        outcome(&mut c, now, s1, OpResult::Applied),
        Verdict::Fail(libc::EDQUOT),
        "concurrent with s2: learns it too"
    );
    assert_eq!(
        outcome(&mut c, now, s3, OpResult::Applied),
        Verdict::Fail(libc::EDQUOT),
        "begun before s2 reported it"
    );
    assert_eq!(
        outcome(&mut c, now, s4, OpResult::Applied),
        Verdict::Ack,
        "begun after the application was told"
    );
}

#[test]
fn issue_10_7_an_early_op_lost_with_the_connection_fails_holds_or_is_acked_per_mode() {
    // fail: the sync op after the loss is refused (LOST), and tells it.
    let (mut c, now, e) = on_sync(OnPeerLoss::Fail);
    let w = sent(&mut c, now, e, write("f"));
    let s = sent(&mut c, now, e, fsync());
    c.handle_link_lost(now, e, "gone".into());
    durable(&mut c);
    assert_eq!(
        outcome(&mut c, now, w, OpResult::Lost),
        Verdict::Fail(libc::EIO)
    );
    assert!(c.dirty().contains(&p("f")), "recorded for the resync");
    assert_eq!(
        outcome(&mut c, now, s, OpResult::Lost),
        Verdict::Fail(libc::EIO)
    );
    assert_eq!(
        c.handle_begin(now, fsync()).map(|b| b.op),
        Err(libc::EIO),
        "LOST: refused"
    );

    // hold: the early op is held; a sync op after it waits with it, and
    // gets the controller's decision.
    for (grant, expect) in [(true, Verdict::Ack), (false, Verdict::Fail(libc::EIO))] {
        let (mut c, now, e) = on_sync(OnPeerLoss::Hold);
        let w = sent(&mut c, now, e, write("f"));
        c.handle_link_lost(now, e, "gone".into());
        durable(&mut c);
        assert_eq!(outcome(&mut c, now, w, OpResult::Lost), Verdict::Hold);
        assert_eq!(c.held(), 1);
        let s = c.handle_begin(now, fsync()).unwrap();
        assert!(!s.barrier, "not sent: no barrier");
        durable(&mut c);
        assert_eq!(c.handle_submit(now, s.op), None);
        assert_eq!(outcome(&mut c, now, s.op, OpResult::NotSent), Verdict::Hold);
        if grant {
            c.handle_alone(now, Duration::from_secs(5)).unwrap();
        } else {
            c.handle_fence(now, "fenced");
        }
        durable(&mut c);
        let acts = drain(&mut c);
        let releases: Vec<&Action> = acts
            .iter()
            .filter(|a| matches!(a, Action::Release(..)))
            .collect();
        assert_eq!(
            releases,
            vec![&Action::Release(s.op, expect)],
            "grant {grant}: only the sync op is answered (the write was, long ago)"
        );
        assert_eq!(c.held(), 0);
    }

    // alone: acknowledged in a new generation, as each-op would.
    let (mut c, now, e) = on_sync(OnPeerLoss::Alone);
    let w = sent(&mut c, now, e, write("f"));
    c.handle_link_lost(now, e, "gone".into());
    assert!(durable(&mut c).history.is_some());
    assert_eq!(outcome(&mut c, now, w, OpResult::Lost), Verdict::Ack);
    let s = c.handle_begin(now, fsync()).unwrap();
    durable(&mut c);
    assert_eq!(c.handle_submit(now, s.op), None);
    assert_eq!(outcome(&mut c, now, s.op, OpResult::NotSent), Verdict::Ack);
}

#[test]
fn issue_10_7_a_sync_refused_while_lost_tells_the_failures_before_it() {
    let (mut c, now, e) = on_sync(OnPeerLoss::Fail);
    let w = sent(&mut c, now, e, write("f"));
    c.handle_link_lost(now, e, "gone".into());
    durable(&mut c);
    outcome(&mut c, now, w, OpResult::Lost);
    assert_eq!(c.handle_begin(now, fsync()), Err(libc::EIO));
    let gen1 = History::from_ids(vec![GenerationId(1)]);
    let e2 = c.handle_link_up(now, &gen1, &[], BTreeSet::new()).unwrap();
    drain(&mut c);
    let s = sent(&mut c, now, e2, fsync());
    assert_eq!(
        outcome(&mut c, now, s, OpResult::Applied),
        Verdict::Ack,
        "the application was told by the refused fsync"
    );
}

#[test]
fn issue_10_7_a_completed_resync_covers_what_early_ops_failed_to_bring_over() {
    let (mut c, now, e) = on_sync(OnPeerLoss::Fail);
    let w = sent(&mut c, now, e, write("f"));
    outcome(&mut c, now, w, OpResult::Refused(libc::ENOSPC));
    assert_eq!(c.role(), Role::Resync);
    while let Some(j) = c.next_job(now) {
        c.handle_job_done(&j);
    }
    assert!(c.handle_generation_sent(e).is_some());
    assert!(c.handle_resync_complete(now, e));
    durable(&mut c);
    let s = sent(&mut c, now, e, fsync());
    assert_eq!(
        outcome(&mut c, now, s, OpResult::Applied),
        Verdict::Ack,
        "the secondary holds everything before the barrier"
    );
}

#[test]
fn issue_10_7_an_early_op_whose_record_cannot_be_made_durable_fails_the_next_sync() {
    let (mut c, now, e) = on_sync(OnPeerLoss::Alone);
    let w = sent(&mut c, now, e, write("f"));
    let s = sent(&mut c, now, e, fsync());
    assert_eq!(outcome(&mut c, now, s, OpResult::Applied), Verdict::Hold);
    // Refused: acknowledged alone, once the dirty record is written...
    assert_eq!(
        c.handle_outcome(now, w, OpResult::Refused(libc::ENOSPC), None),
        Verdict::Ack
    );
    assert!(c.take_durable().is_some());
    // ... which fails: the driver answers EIO (nobody: answered early).
    c.abort(Some(w), true);
    assert_eq!(
        drain(&mut c)
            .into_iter()
            .filter(|a| matches!(a, Action::Release(..)))
            .collect::<Vec<_>>(),
        vec![Action::Release(s, Verdict::Fail(libc::EIO))]
    );
    assert!(c.volatile().contains(&p("f")), "still resynced");
}

#[test]
fn issue_10_7_at_most_the_bound_of_early_ops_await_the_secondary() {
    let bound = Bound {
        ops: 2,
        bytes: 3 * (OP_COST + 10),
    };
    let (mut c, now, e) = core_with(OnPeerLoss::Fail, AckMode::OnSync, bound);
    let a = sent(&mut c, now, e, write("a"));
    assert!(c.room_for(&write("b")));
    let b = sent(&mut c, now, e, write("b"));
    assert!(c.early(a) && c.early(b));
    assert!(!c.room_for(&write("c")), "two ops await the secondary");
    assert!(c.room_for(&fsync()), "a sync op is never held back");
    // The driver's bounded wait ran out: sent, but answered late.
    let x = sent(&mut c, now, e, write("c"));
    assert!(!c.early(x));
    assert_eq!(c.early_in_flight(), (2, 2 * (OP_COST + 10)));
    outcome(&mut c, now, a, OpResult::Applied);
    assert!(c.room_for(&write("c")));
    // Bytes: a large write does not fit beside b...
    let big = Touched {
        paths: vec![p("big")],
        data: Some((0, 1 << 20)),
        ..Touched::default()
    };
    assert!(!c.room_for(&big));
    outcome(&mut c, now, b, OpResult::Applied);
    outcome(&mut c, now, x, OpResult::Applied);
    // ... but alone, any op may go.
    assert!(c.room_for(&big));
    assert_eq!(c.early_in_flight(), (0, 0));
}

#[test]
fn issue_10_7_the_activity_log_keeps_the_oldest_op_in_flight() {
    let (mut c, now, e) = on_sync(OnPeerLoss::Fail);
    assert_eq!(c.oldest_in_flight(), None);
    let a = sent(&mut c, now, e, write("a"));
    let b = sent(&mut c, now, e, write("b"));
    assert_eq!(c.oldest_in_flight(), Some(a));
    assert!(c.next_op() > b);
    outcome(&mut c, now, a, OpResult::Applied);
    assert_eq!(c.oldest_in_flight(), Some(b));
}

/// An ALONE mount (`--on-peer-loss alone`) that made `changes` while its
/// secondary was away, and whose secondary just returned (the resync about
/// to start).
fn made_apart(changes: impl IntoIterator<Item = Touched>) -> (Primary, Instant) {
    let (mut c, now, e) = in_sync(OnPeerLoss::Alone);
    apart_and_back(&mut c, now, e, changes);
    (c, now)
}

/// `c` (an `--on-peer-loss=alone` mount, in sync on `e`) loses the
/// secondary, makes `changes` while apart and gets it back: the new epoch.
fn apart_and_back(
    c: &mut Primary,
    now: Instant,
    e: u64,
    changes: impl IntoIterator<Item = Touched>,
) -> u64 {
    c.handle_link_lost(now, e, "gone".into());
    durable(c);
    for t in changes {
        let b = c.handle_begin(now, t).unwrap();
        durable(c);
        assert_eq!(c.handle_submit(now, b.op), None);
        c.handle_outcome(now, b.op, OpResult::NotSent, None);
        durable(c);
    }
    reconnect(c, now)
}

#[test]
fn renames_made_apart_are_replayed_before_the_visits_that_race_with_them() {
    // Found by e2e renames_while_alone_move_instead_of_copying, flaky under
    // load in both ack modes: with several workers, the visit of the
    // rotated `log` (rewritten) ran before `log.1` was moved from it, and
    // the listing of the renamed `e` removed `e/f1` before `moved-f1` was
    // moved out of it: 4 to 16 MiB sent again instead of renamed.
    let rename = |a: &str, b: &str| Touched {
        paths: vec![p(a), p(b)],
        rename: Some((p(a), p(b))),
        ..Touched::default()
    };
    let (mut c, now) = made_apart([
        rename("log", "log.1"),
        Touched::paths(vec![p("log")]),
        rename("d", "e"),
        rename("e/f1", "moved-f1"),
    ]);
    drain(&mut c);
    let later = now + Duration::from_secs(1);
    let mut done: Vec<String> = Vec::new();
    let mut guard = 0;
    while !c.walk_idle() {
        guard += 1;
        assert!(guard < 100, "the walk does not end");
        let mut batch = Vec::new();
        while let Some(j) = c.next_job(later) {
            batch.push(j);
        }
        let names: Vec<String> = batch.iter().map(|j| j.path.to_string()).collect();
        for (path, after) in [("log", "log.1"), ("e", "moved-f1"), ("d", "e")] {
            assert!(
                !names.iter().any(|n| n == path) || done.iter().any(|n| n == after),
                "{path} handed out before {after} was visited: batch {names:?}, done {done:?}"
            );
        }
        assert!(!batch.is_empty(), "nothing to hand out, nothing in flight");
        for j in batch {
            done.push(j.path.to_string());
            c.handle_job_done(&j);
        }
    }
    // A cycle (a swap through a third name) still ends.
    let (mut c, now) = made_apart([rename("a", "t"), rename("b", "a"), rename("t", "b")]);
    let mut guard = 0;
    while let Some(j) = c.next_job(now + Duration::from_secs(1)) {
        guard += 1;
        assert!(guard < 100, "the walk does not end");
        c.handle_job_done(&j);
    }
    assert!(c.walk_idle());
}

const US: Duration = Duration::from_micros(1);

/// An application write on `epoch`, acknowledged after `took`.
fn app_write(c: &mut Primary, now: Instant, epoch: u64, took: Duration) -> Verdict {
    let op = sent(c, now, epoch, write("app"));
    let verdict = c.handle_outcome(now, op, OpResult::Applied, Some(took));
    durable(c);
    verdict
}

/// A core whose pace learnt its yardstick (500 in-sync writes of 200 µs,
/// no resync turn to wait for), then apart and back: RESYNC on the
/// returned epoch.
fn resyncing_with_a_yardstick() -> (Primary, Instant, u64) {
    let (mut c, now, e) = in_sync(OnPeerLoss::Alone);
    for _ in 0..500 {
        assert_eq!(app_write(&mut c, now, e, US * 200), Verdict::Ack);
    }
    assert_eq!(c.resync_turn(now), None, "in sync: no turns to wait for");
    let e2 = apart_and_back(&mut c, now, e, [write("apart")]);
    assert_eq!(c.role(), Role::Resync);
    drain(&mut c);
    (c, now, e2)
}

#[test]
fn issue_10_6_resync_turns_go_one_at_a_time_a_pause_apart_while_the_application_writes() {
    // A piece or path from each of the workers busy when the application
    // woke each delayed one of its ops: its p99 during a resync was twice
    // the in-sync one, though each worker paused between its own pieces.
    let (mut c, mut now, e2) = resyncing_with_a_yardstick();
    // Fast ops during the resync: no pause, every worker goes at once.
    for _ in 0..3 {
        app_write(&mut c, now, e2, US * 200);
        assert_eq!(c.resync_turn(now), None);
        assert_eq!(c.resync_turn(now), None);
    }
    // Slow ones: turns go a pause apart, whoever asks.
    for _ in 0..3 {
        app_write(&mut c, now, e2, US * 2000);
    }
    let pause = c.resync_pause(now);
    assert!(pause > Duration::ZERO, "slow ops make a pause");
    assert_eq!(c.resync_turn(now), None, "the first worker goes");
    assert_eq!(c.resync_turn(now), Some(pause), "the second waits a pause");
    now += pause / 2;
    assert_eq!(c.resync_turn(now), Some(pause / 2), "... the rest of it");
    now += pause / 2;
    assert_eq!(c.resync_turn(now), None, "then goes");
    assert_eq!(c.resync_turn(now), Some(pause));
    // The application idle: no pause, no waiting.
    now += RESYNC_YIELD;
    assert_eq!(c.resync_turn(now), None);
    assert_eq!(c.resync_turn(now), None);
}

#[test]
fn issue_10_6_a_suffering_application_still_leaves_the_resync_its_floor() {
    // Every op of a writer that never stops was slow during the resync (on
    // one disk, any resync write slows an fsync): the pause grew to 50 ms
    // between 32 KiB turns, and a 40 MiB resync took over a minute in CI.
    // A burst of ops has the resync yield as far as the pace asks for
    // FLOOR_AFTER; past that, turns come at least every longest pause (from
    // --resync-min-rate), however slow the application's ops.
    let (mut c, mut now, e2) = resyncing_with_a_yardstick();
    let longest = c.cfg.longest_pause;
    assert!(longest > Duration::ZERO && longest < MAX_PAUSE);
    // A slow op every millisecond; the resync takes every turn it may.
    let burst = |c: &mut Primary, now: &mut Instant, how_long: Duration| {
        let (start, mut turns) = (*now, Vec::new());
        while *now < start + how_long {
            app_write(c, *now, e2, US * 5000);
            if c.resync_turn(*now).is_none() {
                turns.push(now.saturating_duration_since(start));
            }
            *now += Duration::from_millis(1);
        }
        turns
    };
    let widest = |turns: &[Duration], from: Duration| {
        turns
            .windows(2)
            .filter(|w| w[0] >= from)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap()
    };
    let turns = burst(&mut c, &mut now, FLOOR_AFTER + Duration::from_secs(2));
    assert_eq!(
        widest(&turns, Duration::from_secs(2)),
        MAX_PAUSE,
        "within the grace, the resync yields as far as the pace asks"
    );
    let after = widest(&turns, FLOOR_AFTER);
    assert!(
        after <= longest + Duration::from_millis(1),
        "past the grace, turns {after:?} apart; the floor's pause is {longest:?}"
    );
    // A break: the next burst has its grace again.
    now += RESYNC_YIELD;
    let turns = burst(&mut c, &mut now, Duration::from_secs(3));
    assert_eq!(widest(&turns, Duration::from_secs(2)), MAX_PAUSE);
}
