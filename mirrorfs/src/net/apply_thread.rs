//! The secondary's apply thread: the one place where `serve` touches the
//! replica's disk.
//!
//! Owns the [`Applier`] and one thread that applies every op, in stream
//! order, for one connection at a time. The runtime thread only does network
//! I/O: it decodes frames and queues them here, and gets the outcomes back
//! through a channel, so a long op (removing a large tree, a checksum pass, a
//! slow disk) never delays QUIC keepalives or the progress reports that tell
//! the primary the secondary is working. A durability op's sync runs on this
//! thread when nothing is queued behind it (a lone writer's fsync: no op
//! waits for it, and its answer saves the hand-offs to the blocking pool and
//! back); otherwise beside, on the blocking pool (the thread hands back the
//! descriptor to sync), so that other writers' ops and fsyncs go on. The thread
//! also keeps the serve's [`ServeState`] (what its control socket reports) up
//! to date as it applies: the op busy on the disk (for the stall report, until
//! its fsync is done), the last op applied, a resync begun or finished, a
//! failed op.
//!
//! Takeover is exclusive: [`ApplyThread::take_over`] is called as soon as a
//! newer connection passed its hello, and from then on no op of an older
//! connection is applied, even one already queued; the thread then switches to
//! the newer connection, closing the older one's handles. The queue is bounded
//! in bytes ([`ApplyThread::queue_full`]): past the bound the runtime stops
//! reading the stream (QUIC flow control then holds the primary back) but
//! keeps answering.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{info_span, warn};

use super::serve_state::{Busy, ServeState};
use super::server::ServeStats;
use crate::latency::{self, Class, Stage};
use crate::proto::path::RelPath;
use crate::proto::wire::{Op, Seq};
use crate::replica::apply::Prefetch;
use crate::replica::{Applied, Applier, SyncHow};
use crate::sys;

/// Bytes of ops queued for the apply thread beyond which the runtime stops
/// reading the stream.
const MAX_QUEUED: usize = 64 << 20;

/// What the secondary's hello needs from the replica: its generation history
/// and its suspect directories.
pub(crate) type Attached = io::Result<(Vec<u64>, Vec<RelPath>)>;

/// The outcome of one op, for the connection that sent it.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The op.
    pub(crate) seq: Seq,
    /// A durability op (answered by `Synced`).
    pub(crate) durable: bool,
    /// What applying it gave, or its errno.
    pub(crate) result: Result<Applied, i32>,
    /// With [`Applied::Sync`]: the op stays busy (for the stall report)
    /// until its fsync is done, so whoever runs it drops this then.
    pub(crate) busy: Option<Busy>,
    /// A durability op synced on this thread already (its `result` is then
    /// [`Applied::Done`]): the sync's errno, 0 if durable.
    pub(crate) synced: Option<i32>,
    /// The op's class, when its frame was decoded and when its apply (and
    /// an inline sync) ended (for [`latency`]).
    pub(crate) timing: (Class, Instant, Instant),
}

enum Job {
    /// Connection `conn` passed its hello: switch to it.
    Attach {
        conn: u64,
        answers: mpsc::UnboundedSender<Answer>,
        reply: oneshot::Sender<Attached>,
    },
    /// One op of connection `conn`.
    Op {
        conn: u64,
        seq: Seq,
        op: Op,
        cost: usize,
        /// When its frame was decoded.
        decoded: Instant,
    },
    /// Connection `conn` ended: its handles go.
    Detach { conn: u64 },
}

#[derive(Debug)]
struct Shared {
    /// The newest connection that passed its hello: only its ops apply.
    current: AtomicU64,
    /// Bytes of ops queued and not yet applied (or skipped).
    queued: AtomicUsize,
    /// Told when the queue drops below [`MAX_QUEUED`].
    drained: Notify,
    /// The applier's work counter (see [`Applier::work`]).
    work: Arc<AtomicU64>,
}

/// A handle on the apply thread (cheap to clone; the thread ends once every
/// handle is dropped and the queue is done).
#[derive(Debug, Clone)]
pub(crate) struct ApplyThread {
    jobs: std_mpsc::Sender<Job>,
    shared: Arc<Shared>,
    prefetch: Prefetch,
}

impl ApplyThread {
    /// Starts the thread, which owns `applier` from now on and reports to
    /// `state`.
    pub(crate) fn start(
        applier: Applier,
        stats: Arc<ServeStats>,
        state: Arc<ServeState>,
    ) -> io::Result<Self> {
        let (jobs, rx) = std_mpsc::channel();
        let prefetch = applier.prefetch()?;
        let shared = Arc::new(Shared {
            current: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            drained: Notify::new(),
            work: applier.work(),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("mirrorfs-apply".into())
            .spawn(move || {
                let _span = info_span!("apply").entered();
                run(applier, &rx, &s, &stats, &state);
            })?;
        Ok(Self {
            jobs,
            shared,
            prefetch,
        })
    }

    /// Read-ahead hints beneath the same root (they run on the blocking pool).
    pub(crate) fn prefetch(&self) -> Prefetch {
        self.prefetch.clone()
    }

    /// A newer connection `conn` passed its hello: from now on, no op of an
    /// older one is applied (not even one already queued).
    pub(crate) fn take_over(&self, conn: u64) {
        self.shared.current.fetch_max(conn, Ordering::SeqCst);
    }

    /// True while `conn` is the newest connection.
    pub(crate) fn is_current(&self, conn: u64) -> bool {
        self.shared.current.load(Ordering::SeqCst) == conn
    }

    /// Switches the thread to `conn` (after everything queued before) and
    /// returns what its hello needs; `None` if the thread is gone.
    pub(crate) async fn attach(
        &self,
        conn: u64,
        answers: mpsc::UnboundedSender<Answer>,
    ) -> Option<Attached> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Attach {
                conn,
                answers,
                reply,
            })
            .ok()?;
        rx.await.ok()
    }

    /// Queues `op` (already checked to be next in `conn`'s stream; its frame
    /// decoded at `decoded`).
    pub(crate) fn apply(&self, conn: u64, seq: Seq, op: Op, decoded: Instant) {
        // What the op holds in memory, roughly.
        let cost = op.payload_len() + 256;
        self.shared.queued.fetch_add(cost, Ordering::Relaxed);
        if let Err(std_mpsc::SendError(Job::Op { cost, .. })) = self.jobs.send(Job::Op {
            conn,
            seq,
            op,
            cost,
            decoded,
        }) {
            self.shared.queued.fetch_sub(cost, Ordering::Relaxed);
        }
    }

    /// `conn` ended: its replicated handles are closed (if it is still the
    /// connection the thread serves).
    pub(crate) fn detach(&self, conn: u64) {
        let _ = self.jobs.send(Job::Detach { conn });
    }

    /// The applier's work counter (ops applied, entries removed, MiB read).
    pub(crate) fn work(&self) -> u64 {
        self.shared.work.load(Ordering::Relaxed)
    }

    /// True while the queue holds more than [`MAX_QUEUED`] bytes: stop
    /// reading until [`drained`](Self::drained).
    pub(crate) fn queue_full(&self) -> bool {
        self.shared.queued.load(Ordering::Relaxed) >= MAX_QUEUED
    }

    /// Resolves when the queue may have dropped below the bound.
    pub(crate) async fn drained(&self) {
        self.shared.drained.notified().await;
    }
}

/// Runs a durability op's sync (`how`) on `fd`, here or on the blocking pool;
/// returns its errno, 0 if durable (the sync's time goes to [`latency`]).
pub(crate) fn sync(fd: BorrowedFd<'_>, how: SyncHow, class: Class) -> i32 {
    let started = Instant::now();
    let errno = match how.run(fd) {
        Ok(()) => 0,
        Err(e) => sys::errno_of(&e),
    };
    latency::record(Stage::Fsync, class, started, Instant::now());
    errno
}

/// The thread's loop: applies queued ops of the connection it serves, in order.
fn run(
    mut applier: Applier,
    jobs: &std_mpsc::Receiver<Job>,
    shared: &Shared,
    stats: &ServeStats,
    state: &Arc<ServeState>,
) {
    // The connection served and where its answers go.
    let mut serving: Option<(u64, mpsc::UnboundedSender<Answer>)> = None;
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Attach {
                conn,
                answers,
                reply,
            } => {
                // The older connection's handles belong to a primary that is
                // gone or replaced.
                applier.close_all_handles();
                serving = Some((conn, answers));
                let attached = applier
                    .history()
                    .and_then(|h| Ok((h.ids().iter().map(|g| g.0).collect(), applier.suspects()?)));
                let _ = reply.send(attached);
            }
            Job::Detach { conn } => {
                if serving.as_ref().is_some_and(|(c, _)| *c == conn) {
                    applier.close_all_handles();
                    serving = None;
                }
            }
            Job::Op {
                conn,
                seq,
                op,
                cost,
                decoded,
            } => {
                let current = shared.current.load(Ordering::SeqCst);
                match &serving {
                    Some((c, answers)) if *c == conn && conn == current => {
                        let durable = op.is_durability();
                        let busy = state.busy();
                        let class = Class::of(&op);
                        let started = Instant::now();
                        latency::record(Stage::Queue, class, decoded, started);
                        let applied = applier.apply(&op);
                        let finished = Instant::now();
                        latency::record(Stage::Apply, class, started, finished);
                        state.applied(conn, seq, &op, applied.is_ok());
                        let result = applied.map_err(|e| {
                            stats.failed.fetch_add(1, Ordering::Relaxed);
                            warn!(seq = seq.0, op = op.name(), error = %e, "operation failed on the replica");
                            state.error(format!("{} failed on the replica: {e}", op.name()));
                            sys::errno_of(&e)
                        });
                        stats.applied.fetch_add(1, Ordering::Relaxed);
                        // Nothing queued behind this op but itself: its sync
                        // delays no other op, so it runs here.
                        let alone = shared.queued.load(Ordering::Relaxed) <= cost;
                        let (result, synced, busy) = match result {
                            Ok(Applied::Sync { fd, how }) if alone => {
                                let errno = sync(fd.as_fd(), how, class);
                                drop(busy);
                                (Ok(Applied::Done), Some(errno), None)
                            }
                            r @ Ok(Applied::Sync { .. }) => (r, None, Some(busy)),
                            r => (r, None, None),
                        };
                        let _ = answers.send(Answer {
                            seq,
                            durable,
                            result,
                            busy,
                            synced,
                            timing: (class, decoded, Instant::now()),
                        });
                    }
                    // A replaced connection's op: never applied.
                    _ => {}
                }
                let before = shared.queued.fetch_sub(cost, Ordering::Relaxed);
                if before >= MAX_QUEUED && before - cost < MAX_QUEUED {
                    shared.drained.notify_one();
                }
            }
        }
    }
}
