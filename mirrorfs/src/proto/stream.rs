//! The ordered operation stream, sans-IO: [`Replicator`] on the primary and
//! [`Receiver`] on the secondary.
//!
//! The primary gives every mutating operation the next sequence number and sends
//! it at once: many operations are in flight together (pipelined), so independent
//! writers do not wait for each other's round trips. The secondary applies them in
//! sequence order and answers with one cumulative [`Frame::Ack`] per batch, a
//! [`Frame::Failed`] before it for each op that failed, and a [`Frame::Synced`] for
//! each durability op (fsync) once it is durable, which may come later than the
//! ack covering its position. The primary completes an op, and so releases the
//! application's call, only from those frames.
//!
//! Liveness is decided by progress, not by how long one op takes: a secondary
//! that works on a long op (removing a large tree, a checksum pass) says so
//! with [`Frame::Progress`] a few times per peer timeout. With ops in flight
//! and no frame of any kind from the secondary for the peer timeout, the
//! stream is *stalled* ([`Replicator::stalled`]: the secondary is reachable
//! but does nothing, e.g. a hung disk); after the stall timeout it is lost.
//! A dead secondary or a broken network is the transport's to notice (its idle
//! timeout is the peer timeout) and comes in as [`Replicator::handle_lost`].
//! Once lost, every op in flight completes with `EIO` and the stream stays lost.
//!
//! No I/O: time comes in as `now`, frames come in and go out as values.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::wire::{Frame, Op, Seq};

/// The outcome of one op as the secondary reports it: `Ok`, or its errno.
pub type Outcome = Result<(), i32>;

/// A completed op: its answer (empty for most ops), or the errno.
pub type Completion = Result<Vec<u8>, i32>;

/// The peer broke the protocol; the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// An ack for an operation that was never sent.
    #[error("ack up to {upto} but only {sent} operations were sent")]
    AckBeyondSent {
        /// The acked position.
        upto: u64,
        /// The last sequence number sent.
        sent: u64,
    },
    /// A cumulative ack went backwards.
    #[error("ack went back from {prev} to {upto}")]
    AckBackwards {
        /// The previous ack.
        prev: u64,
        /// The new, lower ack.
        upto: u64,
    },
    /// A result for an op that is not in flight (or not of that kind).
    #[error("{what} for operation {seq}, which is not awaiting one")]
    Unexpected {
        /// Which frame.
        what: &'static str,
        /// Its sequence number.
        seq: u64,
    },
    /// An op out of sequence.
    #[error("operation {got} arrived where {expected} was expected")]
    OutOfOrder {
        /// The expected sequence number.
        expected: u64,
        /// The one received.
        got: u64,
    },
    /// A frame that has no place at this point of the conversation.
    #[error("unexpected {0} frame on an established stream")]
    UnexpectedFrame(&'static str),
    /// A failure report with errno 0.
    #[error("failure report for operation {0} carries no error number")]
    ZeroErrno(u64),
}

#[derive(Debug)]
struct InFlight {
    /// Completed by `Synced` rather than by the cumulative ack.
    durable: bool,
    /// When it was sent: the silence before it does not count against it.
    sent: Instant,
    /// Set by a `Failed` frame before the ack that covers it.
    failed: Option<i32>,
    /// Set by a `Data` frame before the ack that covers it.
    data: Vec<u8>,
}

/// The primary's end of the stream.
#[derive(Debug)]
pub struct Replicator {
    /// Last sequence number handed out.
    last: Seq,
    /// Highest cumulative ack received.
    acked: Seq,
    in_flight: BTreeMap<Seq, InFlight>,
    completions: VecDeque<(Seq, Completion)>,
    /// Silence (with ops in flight) after which the secondary is stalled.
    peer_timeout: Duration,
    /// Silence (with ops in flight) after which it is lost.
    stall_timeout: Duration,
    /// When the last frame of any kind came from the secondary.
    heard: Option<Instant>,
    lost: Option<String>,
}

impl Replicator {
    /// A stream that shows the secondary stalled after `peer_timeout` and
    /// loses it after `stall_timeout` (at least `peer_timeout`) without any
    /// frame from it while ops are in flight.
    pub fn new(peer_timeout: Duration, stall_timeout: Duration) -> Self {
        Self {
            last: Seq(0),
            acked: Seq(0),
            in_flight: BTreeMap::new(),
            completions: VecDeque::new(),
            peer_timeout,
            stall_timeout: stall_timeout.max(peer_timeout),
            heard: None,
            lost: None,
        }
    }

    /// Assigns the next sequence number to `op`, to be sent as
    /// `Frame::Op { seq, op }`. Fails with the reason once the stream is lost.
    pub fn submit(&mut self, now: Instant, op: &Op) -> Result<Seq, String> {
        if let Some(reason) = &self.lost {
            return Err(reason.clone());
        }
        self.last = Seq(self.last.0 + 1);
        self.in_flight.insert(
            self.last,
            InFlight {
                durable: op.is_durability(),
                sent: now,
                failed: None,
                data: Vec::new(),
            },
        );
        Ok(self.last)
    }

    /// Feeds a frame from the secondary, received at `now`. Every frame,
    /// whatever it says, is a sign of progress.
    pub fn handle_frame(&mut self, now: Instant, frame: &Frame) -> Result<(), Violation> {
        self.heard = Some(self.heard.map_or(now, |h| h.max(now)));
        match *frame {
            Frame::Progress { .. } => Ok(()),
            Frame::Ack { upto } => self.handle_ack(upto),
            Frame::Failed { seq, errno } => {
                if errno == 0 {
                    return Err(Violation::ZeroErrno(seq.0));
                }
                match self.in_flight.get_mut(&seq) {
                    Some(f) if seq > self.acked && f.failed.is_none() => {
                        f.failed = Some(errno);
                        Ok(())
                    }
                    _ => Err(Violation::Unexpected {
                        what: "failure report",
                        seq: seq.0,
                    }),
                }
            }
            Frame::Data { seq, ref payload } => match self.in_flight.get_mut(&seq) {
                Some(f) if seq > self.acked && f.data.is_empty() && !f.durable => {
                    f.data = payload.clone();
                    Ok(())
                }
                _ => Err(Violation::Unexpected {
                    what: "answer",
                    seq: seq.0,
                }),
            },
            Frame::Synced { seq, errno } => match self.in_flight.get(&seq) {
                Some(f) if f.durable => {
                    let failed = f.failed;
                    self.in_flight.remove(&seq);
                    let outcome = match (failed, errno) {
                        (Some(e), _) => Err(e),
                        (None, 0) => Ok(Vec::new()),
                        (None, e) => Err(e),
                    };
                    self.completions.push_back((seq, outcome));
                    Ok(())
                }
                _ => Err(Violation::Unexpected {
                    what: "sync report",
                    seq: seq.0,
                }),
            },
            Frame::Hello(_) => Err(Violation::UnexpectedFrame("hello")),
            Frame::Suspects { .. } => Err(Violation::UnexpectedFrame("suspects")),
            Frame::Refused { .. } => Err(Violation::UnexpectedFrame("refused")),
            Frame::Op { .. } => Err(Violation::UnexpectedFrame("operation")),
        }
    }

    fn handle_ack(&mut self, upto: Seq) -> Result<(), Violation> {
        if upto > self.last {
            return Err(Violation::AckBeyondSent {
                upto: upto.0,
                sent: self.last.0,
            });
        }
        if upto < self.acked {
            return Err(Violation::AckBackwards {
                prev: self.acked.0,
                upto: upto.0,
            });
        }
        let from = Seq(self.acked.0 + 1);
        self.acked = upto;
        let covered: Vec<Seq> = self.in_flight.range(from..=upto).map(|(s, _)| *s).collect();
        for seq in covered {
            let f = &self.in_flight[&seq];
            if f.durable && f.failed.is_none() {
                continue; // completed by its Synced frame
            }
            let f = self.in_flight.remove(&seq).expect("seq came from the map");
            let outcome = match f.failed {
                Some(e) => Err(e),
                None => Ok(f.data),
            };
            self.completions.push_back((seq, outcome));
        }
        Ok(())
    }

    /// The next completed op, in the order results arrived.
    pub fn poll_completion(&mut self) -> Option<(Seq, Completion)> {
        self.completions.pop_front()
    }

    /// Since when the secondary has been silent with ops in flight: the later
    /// of its last frame and the sending of the oldest op in flight (silence
    /// while nothing was asked of it counts for nothing). `None` when no op
    /// is in flight or the stream is lost.
    fn quiet_since(&self) -> Option<Instant> {
        if self.lost.is_some() {
            return None;
        }
        let oldest = self.in_flight.values().map(|f| f.sent).min()?;
        Some(self.heard.map_or(oldest, |h| h.max(oldest)))
    }

    /// How long the secondary has made no progress with ops in flight, once
    /// that is the peer timeout or more: it is reachable (the transport
    /// would have said otherwise) but applies nothing, e.g. its disk hangs.
    /// `None` while it makes progress, or has nothing to do.
    pub fn stalled(&self, now: Instant) -> Option<Duration> {
        let quiet = now.saturating_duration_since(self.quiet_since()?);
        (quiet >= self.peer_timeout).then_some(quiet)
    }

    /// When the current silence, if it lasts, makes the secondary stalled
    /// (for drivers that report the moment it begins).
    pub fn poll_stall(&self) -> Option<Instant> {
        self.quiet_since().map(|t| t + self.peer_timeout)
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called: when
    /// the current silence reaches the stall timeout.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.quiet_since().map(|t| t + self.stall_timeout)
    }

    /// Declares the peer lost if it made no progress for the stall timeout
    /// while ops were in flight.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(deadline) = self.poll_timeout() {
            if now >= deadline {
                self.handle_lost(format!(
                    "the secondary made no progress for {:.1} s with operations waiting \
                     (--stall-timeout): is its disk hanging?",
                    self.stall_timeout.as_secs_f64()
                ));
            }
        }
    }

    /// The transport is gone: every op in flight fails with `EIO`, and so does
    /// every later submit.
    pub fn handle_lost(&mut self, reason: String) {
        if self.lost.is_some() {
            return;
        }
        for (seq, _) in std::mem::take(&mut self.in_flight) {
            self.completions.push_back((seq, Err(libc::EIO)));
        }
        self.lost = Some(reason);
    }

    /// Why the stream is lost, if it is.
    pub fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }

    /// Operations sent and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The last sequence number handed out.
    pub fn last_seq(&self) -> Seq {
        self.last
    }
}

/// The secondary's end of the stream: checks the order and decides what to send
/// back.
#[derive(Debug, Default)]
pub struct Receiver {
    /// Last op received (and handed to the applier).
    received: Seq,
    /// Last op applied.
    applied: Seq,
    /// `applied` moved since the last ack was queued.
    ack_due: bool,
    /// Durability ops applied but not yet durable.
    syncing: BTreeSet<Seq>,
    /// The applier's work counter at the last progress report.
    reported_work: u64,
    outbox: VecDeque<Frame>,
}

impl Receiver {
    /// A receiver expecting sequence number 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks that `seq` is the next op; the caller applies it only if so.
    pub fn handle_op(&mut self, seq: Seq) -> Result<(), Violation> {
        if seq.0 != self.received.0 + 1 {
            return Err(Violation::OutOfOrder {
                expected: self.received.0 + 1,
                got: seq.0,
            });
        }
        self.received = seq;
        Ok(())
    }

    /// The op `seq` was applied with `outcome`. For a durability op an `Ok`
    /// means "dispatched": its [`handle_synced`](Self::handle_synced) follows.
    pub fn handle_applied(&mut self, seq: Seq, durable: bool, outcome: Outcome) {
        debug_assert_eq!(seq, Seq(self.applied.0 + 1), "ops are applied in order");
        match (durable, outcome) {
            (true, Ok(())) => {
                self.syncing.insert(seq);
            }
            (true, Err(errno)) => self.outbox.push_back(Frame::Synced { seq, errno }),
            (false, Ok(())) => {}
            (false, Err(errno)) => self.outbox.push_back(Frame::Failed { seq, errno }),
        }
        self.applied = seq;
        self.ack_due = true;
    }

    /// The durability op `seq` finished (`errno` 0: durable).
    pub fn handle_synced(&mut self, seq: Seq, errno: i32) {
        if self.syncing.remove(&seq) {
            self.outbox.push_back(Frame::Synced { seq, errno });
        }
    }

    /// No more ops are waiting to be applied right now: queue the cumulative ack.
    pub fn handle_idle(&mut self) {
        if self.ack_due {
            self.outbox.push_back(Frame::Ack { upto: self.applied });
            self.ack_due = false;
        }
    }

    /// The op `seq`, about to be reported applied, answered with `payload`.
    pub fn handle_reply(&mut self, seq: Seq, payload: Vec<u8>) {
        self.outbox.push_back(Frame::Data { seq, payload });
    }

    /// The periodic progress check (a fraction of the primary's peer
    /// timeout apart), with the applier's work counter: queues a
    /// [`Frame::Progress`] if ops received are not all answered yet and the
    /// applier worked since the last report. Nothing when it did not (a
    /// hung disk must look stalled) or when nothing is pending.
    pub fn handle_tick(&mut self, work: u64) {
        let pending = self.received > self.applied || !self.syncing.is_empty();
        if pending && work != self.reported_work {
            self.outbox.push_back(Frame::Progress { work });
        }
        self.reported_work = work;
    }

    /// The next frame to send to the primary.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.outbox.pop_front()
    }

    /// Durability ops still waiting for their fsync.
    pub fn syncing(&self) -> usize {
        self.syncing.len()
    }
}

#[cfg(test)]
#[path = "stream_test.rs"]
mod tests;
