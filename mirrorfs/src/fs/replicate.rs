//! The overlay's view of replication: announce what a mutation touches, submit
//! its ops, get a [`Ticket`] to wait on.
//!
//! The overlay calls [`Replicate::begin`] before it applies a mutation locally
//! (so a mutation made while the peer is away is recorded durably first) and
//! [`Replicate::submit`] while it holds its sequencer lock, so the order of the
//! stream is the order in which the primary applied the ops. Waiting happens
//! after the lock is released, so many ops are in flight at once.

use std::io;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::proto::path::RelPath;
use crate::proto::stream::Completion;
use crate::proto::wire::Op;

/// What a mutation changes, announced before it is applied.
#[derive(Debug, Clone, Default)]
pub struct Touched {
    /// Paths whose content, metadata or existence may change.
    pub paths: Vec<RelPath>,
    /// For a rename: (from, to), so that state kept per path can follow it.
    pub rename: Option<(RelPath, RelPath)>,
    /// For a data write to the one path: the byte range `(offset, len)` it
    /// changes (nothing else about the file changes).
    pub data: Option<(u64, u64)>,
}

impl Touched {
    /// Touches these paths.
    pub fn paths(paths: Vec<RelPath>) -> Self {
        Self {
            paths,
            rename: None,
            data: None,
        }
    }
}

/// Something that ships ops to the secondary.
pub trait Replicate: Send + Sync {
    /// Before a mutation is applied locally: `Err(EIO)` refuses it (the peer is
    /// lost and mutations must fail); while the peer is away it records the
    /// touched paths durably, so none is forgotten by the resync.
    fn begin(&self, touched: &Touched) -> io::Result<()>;
    /// Queues `op` behind every op submitted before it.
    fn submit(&self, op: Op, touched: &Touched) -> Ticket;
    /// Identifies the current connection to the secondary: handles opened
    /// under another (or while none was up) are unknown to the secondary.
    fn epoch(&self) -> u64;
}

/// What to do when the secondary did not apply an op: given its errno, decide
/// the application's result (e.g. record the paths and succeed while ALONE).
pub type Fallback = Box<dyn FnOnce(i32) -> io::Result<()> + Send>;

/// The pending outcome of a submitted op.
pub struct Ticket {
    state: State,
    fallback: Option<Fallback>,
    /// Told how long the secondary took, when it applied the op.
    observer: Option<Observer>,
}

/// Receives the time from submission to acknowledgement of an op.
pub type Observer = Box<dyn FnOnce(Duration) + Send>;

enum State {
    Done(Completion),
    Wait {
        rx: Receiver<Completion>,
        limit: Duration,
        since: Instant,
    },
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").finish_non_exhaustive()
    }
}

impl Ticket {
    /// An outcome known already (no replication, or refused).
    pub fn done(c: Completion) -> Self {
        Self {
            state: State::Done(c),
            fallback: None,
            observer: None,
        }
    }

    /// An outcome the secondary will send; `limit` bounds the wait in case the
    /// driver itself is gone; `fallback` decides what a failure means.
    pub fn wait_for(rx: Receiver<Completion>, limit: Duration, fallback: Option<Fallback>) -> Self {
        Self {
            state: State::Wait {
                rx,
                limit,
                since: Instant::now(),
            },
            fallback,
            observer: None,
        }
    }

    /// Has `observer` told how long the op took, if the secondary applies it.
    pub fn observed(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Blocks until the secondary applied the op (or it failed); returns its
    /// answer (empty for most ops).
    pub fn wait(self) -> io::Result<Vec<u8>> {
        let outcome = match self.state {
            State::Done(o) => o,
            State::Wait { rx, limit, since } => {
                let o = rx.recv_timeout(limit).unwrap_or(Err(libc::EIO));
                if let (Ok(_), Some(observe)) = (&o, self.observer) {
                    observe(since.elapsed());
                }
                o
            }
        };
        match (outcome, self.fallback) {
            (Ok(data), _) => Ok(data),
            (Err(errno), Some(f)) => f(errno).map(|()| Vec::new()),
            (Err(errno), None) => Err(io::Error::from_raw_os_error(errno)),
        }
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
    fn begin(&self, _touched: &Touched) -> io::Result<()> {
        Ok(())
    }
    fn submit(&self, op: Op, _touched: &Touched) -> Ticket {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(op);
        Ticket::done(Ok(Vec::new()))
    }
    fn epoch(&self) -> u64 {
        1
    }
}
