//! Work done ahead of the kernel's next request, on background threads.
//!
//! Owns those threads and their short queue. A cold tree walk through the mount
//! is a chain: the walker's thread waits for each `READDIRPLUS`, whose
//! lookups wait for the backing file system to read its directory and inode
//! blocks, while the kernel turns the previous answer into dentries and the
//! other CPU idles. [`Ahead`] lets the overlay look up the names a listing
//! will reach next while the kernel is busy with the last answer, so that
//! those blocks are in memory when the request for them comes. What runs
//! here only warms caches: the answers are still looked up, in order, by the
//! request itself. A job that finds the queue full is dropped, never
//! waited for.

use crossbeam_channel::{Sender, TrySendError};
use tracing::warn;

/// Jobs waiting at most; more are dropped.
const QUEUE: usize = 4;
/// Threads taking jobs from the queue (a caller may split its work in as
/// many parts).
pub(super) const THREADS: usize = 2;

type Job = Box<dyn FnOnce() + Send>;

/// The background threads' queue; they end when this is dropped.
#[derive(Debug)]
pub(super) struct Ahead {
    tx: Option<Sender<Job>>,
}

impl Ahead {
    /// Starts the threads. If none can be started, every job offered is
    /// dropped: lookups then only happen on the kernel's requests.
    pub(super) fn start() -> Self {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(QUEUE);
        let mut started = 0;
        for i in 0..THREADS {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("mirrorfs-ahead-{i}"))
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => warn!(error = %e, "cannot start a look-ahead thread"),
            }
        }
        Self {
            tx: (started > 0).then_some(tx),
        }
    }

    /// Queues `job` unless the queue is full (or no thread runs); true when
    /// it was queued.
    pub(super) fn offer(&self, job: impl FnOnce() + Send + 'static) -> bool {
        match &self.tx {
            Some(tx) => match tx.try_send(Box::new(job)) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            },
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{mpsc, Arc, Barrier};
    use std::time::Duration;

    use super::*;

    #[test]
    fn queued_jobs_run_and_a_full_queue_drops_without_waiting() {
        let ahead = Ahead::start();
        let gate = Arc::new(Barrier::new(THREADS + 1));
        let (done_tx, done_rx) = mpsc::channel();
        // One job per thread holds it until the test opens the gate.
        for _ in 0..THREADS {
            let (g, tx) = (gate.clone(), done_tx.clone());
            assert!(ahead.offer(move || {
                g.wait();
                tx.send(0).unwrap();
            }));
        }
        // Once the threads have taken those, exactly QUEUE more fit.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !ahead.tx.as_ref().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the threads never took their jobs"
            );
            std::thread::yield_now();
        }
        let mut queued = Vec::new();
        for i in 1..=QUEUE + 3 {
            let tx = done_tx.clone();
            queued.push(ahead.offer(move || tx.send(i).unwrap()));
        }
        assert_eq!(
            queued,
            (1..=QUEUE + 3).map(|i| i <= QUEUE).collect::<Vec<_>>(),
            "the first {QUEUE} are queued, the rest dropped at once"
        );
        gate.wait();
        let mut ran: Vec<usize> = (0..THREADS + QUEUE)
            .map(|_| done_rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        ran.sort_unstable();
        let mut want = vec![0; THREADS];
        want.extend(1..=QUEUE);
        assert_eq!(ran, want);
        drop(ahead);
        drop(done_tx);
        assert!(
            done_rx.recv_timeout(Duration::from_secs(10)).is_err(),
            "a dropped job never runs"
        );
    }
}
