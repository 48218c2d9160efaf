use super::*;

const T: Duration = Duration::from_millis(1000);

#[test]
fn lost_only_when_every_network_is_silent() {
    let t0 = Instant::now();
    let mut l = PeerLink::new(2, T, 1);
    let (s, _, _) = l.send(t0);
    l.receive(t0, 0, 7, 1, Some(s), Duration::ZERO);
    l.receive(
        t0 + Duration::from_millis(800),
        1,
        7,
        2,
        Some(s),
        Duration::ZERO,
    );
    assert!(
        l.up(t0 + Duration::from_millis(1500)),
        "network 1 still heard"
    );
    assert!(
        !l.up(t0 + Duration::from_millis(1801)),
        "both silent past the timeout"
    );
}

#[test]
fn back_only_once_the_link_works_both_ways() {
    let t0 = Instant::now();
    let mut l = PeerLink::new(1, T, 1);
    assert!(l.receive(t0, 0, 7, 1, None, Duration::ZERO));
    assert!(!l.up(t0), "no echo yet: the peer has not heard us");
    let (s, _, _) = l.send(t0);
    l.receive(
        t0 + Duration::from_millis(1),
        0,
        7,
        2,
        Some(s),
        Duration::ZERO,
    );
    assert!(l.up(t0 + Duration::from_millis(1)));
}

#[test]
fn confirmation_counts_from_when_our_beat_left() {
    let t0 = Instant::now();
    let mut l = PeerLink::new(1, T, 1);
    let (s, _, _) = l.send(t0);
    // The echo arrives late; the peer's timer started no earlier than t0.
    l.receive(
        t0 + Duration::from_millis(900),
        0,
        7,
        1,
        Some(s),
        Duration::ZERO,
    );
    assert!(l.confirmed(t0 + Duration::from_millis(970)));
    assert!(!l.confirmed(t0 + T - margin(T)));
}

#[test]
fn duplicates_across_networks_are_not_fresh() {
    let t0 = Instant::now();
    let mut l = PeerLink::new(2, T, 1);
    assert!(l.receive(t0, 0, 7, 5, None, Duration::ZERO));
    assert!(!l.receive(t0, 1, 7, 5, None, Duration::ZERO));
    assert!(!l.receive(t0, 1, 7, 4, None, Duration::ZERO));
    assert!(l.receive(t0, 1, 7, 6, None, Duration::ZERO));
}

#[test]
fn the_round_trip_leaves_out_the_time_the_peer_held_our_beat() {
    let t0 = Instant::now();
    let mut l = PeerLink::new(2, T, 1);
    let (s, _, _) = l.send(t0);
    // The peer got it at once but answered 80 ms later, in its next beat.
    l.receive(
        t0 + Duration::from_millis(100),
        1,
        7,
        1,
        Some(s),
        Duration::from_millis(80),
    );
    assert_eq!(l.rtt(), &[None, Some(Duration::from_millis(20))]);
}
