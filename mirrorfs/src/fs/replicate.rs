//! The overlay's view of replication: announce what a mutation touches
//! ([`Replicate::begin`]), submit its ops ([`Replicate::submit`]), and get a
//! [`Ticket`] whose answer comes now or later.
//!
//! The overlay calls `begin` and `submit` while it holds its sequencer lock,
//! with the local change between them, so the order of the stream is the
//! order in which the primary applied the ops. Waiting happens after the lock
//! is released, so many ops are in flight at once. An answer may be *held*
//! (the peer is lost and a controller decides): the ticket then parks the
//! caller's reply instead of blocking a thread on it.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::latency::{self, Class, Stage};
pub use crate::proto::primary::{OpId, OpResult, Touched};
use crate::proto::stream::Completion;
use crate::proto::wire::{HandleId, Op};

/// How the application's call is answered, now or later (possibly from
/// another thread): a FUSE reply, or a channel a waiting caller reads.
pub type Reply = Box<dyn FnOnce(io::Result<()>) + Send>;

/// A mutation admitted by [`Replicate::begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begun {
    /// Its id.
    pub op: OpId,
    /// The connection its ops go to (handles opened on another are unknown
    /// there: name the file by its path, or reopen it), or `None`: its ops
    /// are not sent.
    pub epoch: Option<u64>,
    /// The secondary holds what the op reads as we do (a copied range may be
    /// copied there; otherwise the op carries the bytes).
    pub source_clean: bool,
    /// A sync op of a `--ack=on-sync` mount: its ops end with
    /// [`Op::Barrier`], which stands for an [`Op::Fsync`] too.
    pub barrier: bool,
}

/// Something that ships ops to the secondary.
pub trait Replicate: Send + Sync {
    /// Before a mutation is applied locally: `Err` refuses it (nothing is
    /// applied); otherwise what must be recorded first is durable.
    fn begin(&self, touched: Touched) -> io::Result<Begun>;
    /// The local change failed: nothing is replicated.
    fn abandon(&self, begun: Begun);
    /// Queues the op's `ops` behind every op submitted before them (or not,
    /// if the connection changed since `begin`).
    fn submit(&self, begun: Begun, ops: Vec<Op>) -> Ticket;
    /// The op's ops are answered: decide what the application gets and
    /// answer `reply`, now or once a decision comes.
    fn conclude(&self, op: OpId, result: OpResult, took: Option<Duration>, reply: Reply);
    /// Closes a replicated handle on the secondary if it holds it (connection
    /// `epoch`); nobody waits for it.
    fn close(&self, handle: HandleId, epoch: u64);
}

/// The pending answer of a submitted mutation.
pub struct Ticket {
    op: OpId,
    state: State,
    repl: Option<Arc<dyn Replicate>>,
    /// When the application's call entered the overlay (for [`latency`]).
    started: Option<Instant>,
}

enum State {
    /// Nothing was sent: decided at once with this result.
    Now(OpResult),
    /// The answers of the ops sent; `lost` tells an EIO of a lost connection
    /// from one the secondary gave.
    Wait {
        rxs: Vec<Receiver<Completion>>,
        since: Instant,
        lost: Box<dyn Fn() -> bool + Send>,
        limit: Duration,
        /// The class of its last op, the op itself (for [`latency`]).
        class: Class,
    },
    /// Already answered (tests' replication acknowledges everything).
    Answered(io::Result<()>),
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("op", &self.op)
            .finish_non_exhaustive()
    }
}

impl Ticket {
    /// Nothing was sent for `op` (`result` says why).
    pub fn now(op: OpId, result: OpResult, repl: Arc<dyn Replicate>) -> Self {
        Self {
            op,
            state: State::Now(result),
            repl: Some(repl),
            started: None,
        }
    }

    /// `op`'s ops (the last of class `class`) were sent; their answers come
    /// on `rxs` (`limit` bounds the wait in case the driver itself is gone).
    pub fn sent(
        op: OpId,
        class: Class,
        rxs: Vec<Receiver<Completion>>,
        lost: Box<dyn Fn() -> bool + Send>,
        limit: Duration,
        repl: Arc<dyn Replicate>,
    ) -> Self {
        Self {
            op,
            state: State::Wait {
                rxs,
                since: Instant::now(),
                lost,
                limit,
                class,
            },
            repl: Some(repl),
            started: None,
        }
    }

    /// The application's call entered the overlay at `at`: the op's
    /// `local` and `total` stages are measured from there.
    pub fn started_at(&mut self, at: Instant) {
        self.started = Some(at);
    }

    /// An answer known already.
    pub fn answered(op: OpId, r: io::Result<()>) -> Self {
        Self {
            op,
            state: State::Answered(r),
            repl: None,
            started: None,
        }
    }

    /// Waits (on this thread) for the ops' answers, then has `reply`
    /// answered: at once, or later from another thread when the answer is
    /// held for a decision.
    pub fn finish(self, reply: Reply) {
        let mut timed = None;
        let (result, took) = match self.state {
            State::Answered(r) => return reply(r),
            State::Now(r) => (r, None),
            State::Wait {
                rxs,
                since,
                lost,
                limit,
                class,
            } => {
                let waits = Instant::now();
                let mut result = OpResult::Applied;
                for rx in rxs {
                    let r = rx.recv_timeout(limit).unwrap_or(Err(libc::EIO));
                    match (r, result) {
                        (Ok(_), _) | (Err(_), OpResult::Refused(_) | OpResult::Lost) => {}
                        (Err(libc::EIO), _) if lost() => result = OpResult::Lost,
                        (Err(e), _) => result = OpResult::Refused(e),
                    }
                }
                let woke = Instant::now();
                latency::record(Stage::LocalSync, class, since, waits);
                let answered = latency::LAST_COMPLETION
                    .get()
                    .map_or(waits, |c| c.max(waits));
                latency::record(Stage::Wake, class, answered, woke);
                if let Some(started) = self.started {
                    latency::record(Stage::Local, class, started, since);
                }
                timed = Some((class, woke));
                (result, Some(since.elapsed()))
            }
        };
        match self.repl {
            Some(repl) => repl.conclude(self.op, result, took, reply),
            None => reply(Err(io::Error::from_raw_os_error(libc::EIO))),
        }
        if let Some((class, woke)) = timed {
            let now = Instant::now();
            latency::record(Stage::Reply, class, woke, now);
            if let Some(started) = self.started {
                latency::record(Stage::Total, class, started, now);
            }
        }
    }

    /// [`finish`](Self::finish), blocking until the answer comes (for
    /// callers that are not FUSE handlers: tests, tools).
    pub fn wait(self) -> io::Result<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.finish(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        rx.recv()
            .unwrap_or_else(|_| Err(io::Error::from_raw_os_error(libc::EIO)))
    }
}

/// Replication that acknowledges everything at once: for unit tests of the
/// overlay, which check the ops it submits (and on which connection epoch,
/// 1 unless [`Recorder::set_epoch`] says otherwise; as an each-op mount
/// unless [`Recorder::set_on_sync`]).
#[derive(Debug, Default)]
pub struct Recorder {
    ops: std::sync::Mutex<Vec<(u64, Op)>>,
    next: std::sync::atomic::AtomicU64,
    /// The connection epoch ops begin on (0: the default, 1).
    epoch: std::sync::atomic::AtomicU64,
    /// Sync ops get a barrier (`--ack=on-sync`).
    on_sync: std::sync::atomic::AtomicBool,
}

impl Recorder {
    /// The ops submitted so far, in order (and forgets them).
    pub fn take(&self) -> Vec<Op> {
        self.take_with_epochs()
            .into_iter()
            .map(|(_, op)| op)
            .collect()
    }

    /// The ops submitted so far with the epoch each was sent on (and
    /// forgets them).
    pub fn take_with_epochs(&self) -> Vec<(u64, Op)> {
        std::mem::take(&mut *self.ops.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Sync ops ([`Touched::sync`]) end with a barrier from now on, as on a
    /// `--ack=on-sync` mount.
    pub fn set_on_sync(&self, on: bool) {
        self.on_sync.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ops begin on connection `epoch` from now on (a reconnect).
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch
            .store(epoch, std::sync::atomic::Ordering::Relaxed);
    }

    fn push(&self, epoch: u64, ops: impl IntoIterator<Item = Op>) {
        self.ops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(ops.into_iter().map(|op| (epoch, op)));
    }
}

impl Replicate for Recorder {
    fn begin(&self, touched: Touched) -> io::Result<Begun> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let epoch = self.epoch.load(std::sync::atomic::Ordering::Relaxed).max(1);
        Ok(Begun {
            op: OpId(n),
            epoch: Some(epoch),
            source_clean: true,
            barrier: touched.sync && self.on_sync.load(std::sync::atomic::Ordering::Relaxed),
        })
    }
    fn abandon(&self, _begun: Begun) {}
    fn submit(&self, begun: Begun, ops: Vec<Op>) -> Ticket {
        self.push(begun.epoch.unwrap_or(0), ops);
        Ticket::answered(begun.op, Ok(()))
    }
    fn conclude(&self, _op: OpId, _result: OpResult, _took: Option<Duration>, reply: Reply) {
        reply(Ok(()));
    }
    fn close(&self, handle: HandleId, epoch: u64) {
        self.push(epoch, [Op::Close { handle }]);
    }
}
