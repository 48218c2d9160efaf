//! Finding and losing the peer across the heartbeat networks. No I/O.
//!
//! The peer is lost only when every network has been silent for the
//! timeout. Beyond "heard lately", the link tracks when the peer last
//! *confirmed* hearing us: each beat echoes the newest sequence number it
//! received, and the time we sent that beat bounds from below when the peer
//! last heard us. A primary keeps the virtual IP on the peer's account only
//! until `sent + timeout − margin`: the peer cannot decide we are gone before
//! `sent + timeout`. Hysteresis: after a loss the peer counts as back only
//! once a beat confirms the link works both ways again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::margin;

/// How many sent beats are remembered for their echoes.
const SENT_KEPT: usize = 64;

/// The link to the peer of one module.
#[derive(Debug)]
pub struct PeerLink {
    timeout: Duration,
    /// Per network, when a beat last arrived.
    heard: Vec<Option<Instant>>,
    /// Our beats' sequence numbers and when they left.
    sent: VecDeque<(u64, Instant)>,
    next_seq: u64,
    /// The peer's incarnation and the newest of its beats received, and
    /// when it came.
    peer_seq: Option<(u64, u64)>,
    peer_seq_at: Option<Instant>,
    /// Per network, the last round trip measured.
    rtt: Vec<Option<Duration>>,
    /// Until when the peer surely counts us as alive.
    confirmed_until: Option<Instant>,
    up: bool,
}

impl PeerLink {
    /// A link over `networks` networks with the heartbeat `timeout`, whose
    /// first beat carries `first_seq`. A restarted daemon must start above
    /// every number its previous incarnation sent, so that a stale echo
    /// never confirms a new beat: derive it from the start time.
    pub fn new(networks: usize, timeout: Duration, first_seq: u64) -> Self {
        Self {
            timeout,
            heard: vec![None; networks.max(1)],
            sent: VecDeque::new(),
            next_seq: first_seq.max(1),
            peer_seq: None,
            peer_seq_at: None,
            rtt: vec![None; networks.max(1)],
            confirmed_until: None,
            up: false,
        }
    }

    /// Records a beat sent at `now`; returns its sequence number, the echo
    /// to put in it and how long ago the echoed beat arrived (so that the
    /// peer can take that time out of the round trip it measures).
    pub fn send(&mut self, now: Instant) -> (u64, Option<u64>, Duration) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sent.push_back((seq, now));
        while self.sent.len() > SENT_KEPT {
            self.sent.pop_front();
        }
        let held = self
            .peer_seq_at
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        (seq, self.peer_seq.map(|(_, s)| s), held)
    }

    /// Per network, the last round trip measured (None: none yet).
    pub fn rtt(&self) -> &[Option<Duration>] {
        &self.rtt
    }

    /// The sequence number the next beat sent will carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// A beat `seq` of the peer's `incarnation` (echoing `echo`) arrived on
    /// `network` at `now`. Returns true if the beat is new (not a duplicate
    /// from another network, nor older than one seen; a new incarnation, a
    /// restarted peer, counts from its first beat).
    pub fn receive(
        &mut self,
        now: Instant,
        network: usize,
        incarnation: u64,
        seq: u64,
        echo: Option<u64>,
        echo_held: Duration,
    ) -> bool {
        if let Some(h) = self.heard.get_mut(network) {
            *h = Some(now);
        }
        if let Some(e) = echo {
            if let Some(&(_, at)) = self.sent.iter().find(|(s, _)| *s == e) {
                if let Some(r) = self.rtt.get_mut(network) {
                    *r = Some(now.saturating_duration_since(at).saturating_sub(echo_held));
                }
                let until = at + self.timeout - margin(self.timeout);
                if self.confirmed_until.is_none_or(|c| until > c) {
                    self.confirmed_until = Some(until);
                }
                self.up = true;
            }
        }
        let fresh = self
            .peer_seq
            .is_none_or(|(i, p)| i != incarnation || seq > p);
        if fresh {
            self.peer_seq = Some((incarnation, seq));
            self.peer_seq_at = Some(now);
        }
        fresh
    }

    /// Whether the peer counts as present at `now`: a beat came within the
    /// timeout on some network (after a loss, only once one confirmed the
    /// link both ways).
    pub fn up(&mut self, now: Instant) -> bool {
        if self.up && !self.heard_within(now, self.timeout) {
            self.up = false;
        }
        self.up
    }

    /// Whether no beat came on any network within the timeout: the peer is
    /// gone (what a takeover waits for; beats heard one way only count).
    pub fn silent(&self, now: Instant) -> bool {
        !self.heard_within(now, self.timeout)
    }

    /// Until when the peer surely counts us as alive (None: never confirmed).
    pub fn confirmed_until(&self) -> Option<Instant> {
        self.confirmed_until
    }

    /// Whether the peer surely still counts us as alive at `now`.
    pub fn confirmed(&self, now: Instant) -> bool {
        self.confirmed_until.is_some_and(|c| now < c)
    }

    /// Per network, how long ago a beat arrived (None: never).
    pub fn silence(&self, now: Instant) -> Vec<Option<Duration>> {
        self.heard
            .iter()
            .map(|h| h.map(|t| now.saturating_duration_since(t)))
            .collect()
    }

    /// When [`up`](Self::up) may next change by itself.
    pub fn deadline(&self) -> Option<Instant> {
        if !self.up {
            return None;
        }
        self.heard.iter().flatten().max().map(|t| *t + self.timeout)
    }

    fn heard_within(&self, now: Instant, d: Duration) -> bool {
        self.heard
            .iter()
            .flatten()
            .any(|t| now.saturating_duration_since(*t) < d)
    }
}

#[cfg(test)]
#[path = "link_test.rs"]
mod tests;
