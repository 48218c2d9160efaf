//! The overlay's view of replication: submit an op, get a [`Ticket`] to wait on.
//!
//! The overlay calls [`Replicate::submit`] while it holds its sequencer lock, so
//! the order of the stream is the order in which the primary applied the ops
//! locally. Waiting happens after the lock is released, so many ops are in
//! flight at once.

use std::io;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::proto::stream::Outcome;
use crate::proto::wire::Op;

/// Something that ships ops to the secondary.
pub trait Replicate: Send + Sync {
    /// Queues `op` behind every op submitted before it.
    fn submit(&self, op: Op) -> Ticket;
    /// `Err(EIO)` once the peer is lost, so that no new mutation is applied
    /// locally that could not be replicated.
    fn check(&self) -> io::Result<()>;
}

/// The pending outcome of a submitted op.
#[derive(Debug)]
pub enum Ticket {
    /// Already decided (e.g. refused because the peer is lost).
    Done(Outcome),
    /// Decided when the secondary answers; `limit` bounds the wait in case the
    /// driver itself is gone.
    Wait {
        /// Where the outcome arrives.
        rx: Receiver<Outcome>,
        /// Longest wait before giving up with `EIO`.
        limit: Duration,
    },
}

impl Ticket {
    /// Blocks until the secondary applied the op (or it failed).
    pub fn wait(self) -> io::Result<()> {
        let outcome = match self {
            Self::Done(o) => o,
            Self::Wait { rx, limit } => rx.recv_timeout(limit).unwrap_or(Err(libc::EIO)),
        };
        outcome.map_err(io::Error::from_raw_os_error)
    }
}

/// Replication that acknowledges everything at once: for unit tests of the
/// overlay, which check the ops it submits.
#[derive(Debug, Default)]
pub struct Recorder {
    ops: std::sync::Mutex<Vec<Op>>,
}

impl Recorder {
    /// The ops submitted so far, in order (and forgets them).
    pub fn take(&self) -> Vec<Op> {
        std::mem::take(&mut *self.ops.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Replicate for Recorder {
    fn submit(&self, op: Op) -> Ticket {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(op);
        Ticket::Done(Ok(()))
    }
    fn check(&self) -> io::Result<()> {
        Ok(())
    }
}
