use std::time::{Duration, Instant};

use pretty_assertions::assert_eq;

use super::*;

fn cfg(me: &str, peer: &str, preferred: bool) -> CoreConfig {
    CoreConfig {
        module: "web".into(),
        me: me.into(),
        peer: peer.into(),
        preferred,
        dirs: 1,
        networks: 1,
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(1500),
        lease: Duration::from_millis(3000),
        witness: true,
        digest: 42,
        vip: true,
        scripts: ScriptSet {
            start_prim: true,
            stop_prim: true,
            ..ScriptSet::default()
        },
        incarnation: 1,
    }
}

/// The actions other than beats, reports and transitions.
fn steps(core: &mut ModuleCore) -> Vec<Action> {
    std::iter::from_fn(|| core.poll_action())
        .filter(|a| {
            !matches!(
                a,
                Action::Beat(_) | Action::Report(_) | Action::Transition(_)
            )
        })
        .collect()
}

/// The last beat and report among the pending actions.
fn last_beat_and_report(core: &mut ModuleCore) -> (Beat, Report) {
    let (mut b, mut r) = (None, None);
    while let Some(a) = core.poll_action() {
        match a {
            Action::Beat(x) => b = Some(x),
            Action::Report(x) => r = Some(x),
            _ => {}
        }
    }
    (b.expect("a beat"), r.expect("a report"))
}

/// The last report among the pending actions (the others are dropped).
fn last_report(core: &mut ModuleCore) -> Report {
    std::iter::from_fn(|| core.poll_action())
        .filter_map(|a| match a {
            Action::Report(r) => Some(r),
            _ => None,
        })
        .last()
        .expect("a report")
}

#[test]
fn a_started_node_reads_its_data_then_waits_for_its_peer() {
    let t0 = Instant::now();
    let mut c = ModuleCore::new(t0, cfg("n1", "n2", true));
    c.handle_adopt(t0, MirrorView::default(), true);
    assert_eq!(steps(&mut c), vec![Action::Run(Step::ReadRoots)]);
    c.handle_roots(
        t0,
        vec![RootInfo {
            history: vec!["a".into()],
            consistent: true,
        }],
    );
    c.handle_step_done(t0, Step::ReadRoots, Ok(()));
    assert_eq!(steps(&mut c), vec![]);
    let st = c.status(t0);
    assert_eq!((st.state, st.ready), (ModuleState::Wait, true));
    assert!(st.reason.contains("waiting for n2"), "{}", st.reason);
}

#[test]
fn the_operator_refused_with_reasons() {
    let t0 = Instant::now();
    let mut c = ModuleCore::new(t0, cfg("n1", "n2", true));
    c.handle_adopt(t0, MirrorView::default(), false);
    assert_eq!(
        c.handle_command(t0, Command::Swap),
        Err(Refused(
            "swap needs web PRIM (ready) on one node and SECOND on the other; it is STOP here"
                .into()
        ))
    );
    assert_eq!(
        c.handle_command(t0, Command::Stop),
        Err(Refused("web is already stopped here".into()))
    );
    assert!(c.handle_command(t0, Command::Start).is_ok());
    assert!(c.handle_command(t0, Command::Start).is_err());
}

#[test]
fn a_primary_that_loses_its_peer_writes_only_under_the_lease() {
    let t0 = Instant::now();
    let mut c = ModuleCore::new(t0, cfg("n1", "n2", true));
    let root = RootInfo {
        history: vec!["a".into()],
        consistent: true,
    };
    let connected = MountsView {
        all_up: true,
        connected: true,
        in_sync: true,
        fenced: false,
        roots: vec![root.clone()],
        resync: None,
    };
    c.handle_adopt(
        t0,
        MirrorView {
            mounts: Some(connected.clone()),
            serves: None,
        },
        true,
    );
    // A restarted daemon re-adds the VIP only once its peer, answering a
    // beat sent since, shows it follows this node as primary.
    let (beat, _) = last_beat_and_report(&mut c);
    assert_eq!(c.state(), ModuleState::Prim);
    let mut follower = beat.clone();
    follower.from = "n2".into();
    follower.seq = 1;
    follower.primary = false;
    follower.state = ModuleState::Second;
    follower.echo = Some(beat.seq - 1);
    c.handle_beat(t0 + Duration::from_millis(1), 0, follower.clone());
    assert_eq!(
        steps(&mut c),
        vec![],
        "an echo of a beat from before the mount"
    );
    follower.seq = 2;
    follower.echo = Some(beat.seq);
    c.handle_beat(t0 + Duration::from_millis(2), 0, follower);
    assert_eq!(steps(&mut c), vec![Action::Run(Step::AddVip)]);
    c.handle_step_done(t0, Step::AddVip, Ok(()));
    assert_eq!(c.state(), ModuleState::Prim);
    assert!(c.may_write(t0));
    // The peer's serve goes away: mirrorfs holds writes.
    let t1 = t0 + Duration::from_millis(50);
    let lost = MountsView {
        connected: false,
        in_sync: false,
        ..connected
    };
    c.handle_mirror(
        t1,
        MirrorView {
            mounts: Some(lost),
            serves: None,
        },
    );
    assert!(!c.may_write(t1), "no lease yet");
    let t2 = t0 + Duration::from_millis(100);
    c.handle_timeout(t2);
    let r = last_report(&mut c);
    assert!(r.want_lease && r.primary);
    let t3 = t2 + Duration::from_millis(5);
    c.handle_answer(
        t3,
        Answer {
            version: VERSION,
            module: "web".into(),
            seq: r.seq,
            lease: LeaseAnswer::Granted { ms: 3000 },
            holder: Some("n1".into()),
            behind: false,
        },
    );
    // Counted from when the report left, less the margin.
    let until = t2 + Duration::from_millis(3000 - 60);
    assert_eq!(steps(&mut c), vec![Action::Grant { until }]);
    assert_eq!(c.state(), ModuleState::Alone);
    assert!(c.may_write(t3));
    assert!(!c.may_write(t2 + Duration::from_millis(2940)));
}

/// Found in the lab: once the lease and the witness's confirmation had run
/// out, `poll_timeout` kept returning their (past) ends, and the daemon's
/// loop, at real-time priority, spun on a zero wait.
#[test]
fn poll_timeout_is_never_in_the_past_once_deadlines_expired() {
    let t0 = Instant::now();
    let mut c = ModuleCore::new(t0, cfg("n1", "n2", true));
    c.handle_adopt(t0, MirrorView::default(), true);
    let r = last_report(&mut c);
    c.handle_answer(
        t0 + Duration::from_millis(1),
        Answer {
            version: VERSION,
            module: "web".into(),
            seq: r.seq,
            lease: LeaseAnswer::Granted { ms: 3000 },
            holder: None,
            behind: false,
        },
    );
    // Long after everything expired, with nothing heard since.
    let later = t0 + Duration::from_secs(10);
    c.handle_timeout(later);
    while c.poll_action().is_some() {}
    assert!(
        c.poll_timeout() > later,
        "{:?} is not after now",
        c.poll_timeout().saturating_duration_since(t0)
    );
}
