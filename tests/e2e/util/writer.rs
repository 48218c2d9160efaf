//! The application of the resync and fault tests: a thread that rewrites one
//! of [`Writer::FILES`] files in its dir with [`Writer::WRITE_SIZE`] bytes and
//! fsyncs it, in a loop, until told to stop. The first error ends it and is
//! kept. Write `i` goes to `w{i % FILES}` and holds `pseudo_random(i, ..)`, so
//! after `n` acknowledged writes every file's content is known exactly
//! ([`Writer::expect_last_writes`]).
//!
//! Owns: its thread and the files in its dir. Dropping it tells the thread to
//! stop; one stuck in the file system is released when the fixture unmounts.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::{pseudo_random, wait_for, write_synced, Probe};

/// How long a write may take, and the writer to reach a count, before it
/// counts as a hang.
const DEADLINE: Duration = Duration::from_secs(300);

pub struct Writer {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    slowest_us: Arc<AtomicU64>,
    done: mpsc::Receiver<Result<u64>>,
}

impl Writer {
    pub const WRITE_SIZE: u64 = 8192;
    pub const FILES: u64 = 50;
    /// Pause between writes: a steady application, not a flood that would
    /// drown the resync's bytes on the wire.
    const PACE: Duration = Duration::from_millis(10);

    /// Creates `dir` and starts writing in it.
    pub fn start(dir: PathBuf) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let slowest_us = Arc::new(AtomicU64::new(0));
        let (tx, done) = mpsc::channel();
        let (s, w, l) = (stop.clone(), writes.clone(), slowest_us.clone());
        thread::Builder::new()
            .name("writer".into())
            .spawn(move || {
                let _ = tx.send(Self::run(&dir, &s, &w, &l));
            })?;
        Ok(Self {
            stop,
            writes,
            slowest_us,
            done,
        })
    }

    fn run(dir: &Path, stop: &AtomicBool, writes: &AtomicU64, slowest: &AtomicU64) -> Result<u64> {
        fs::create_dir(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let path = dir.join(format!("w{}", i % Self::FILES));
            let t = Instant::now();
            write_synced(&path, &pseudo_random(i, Self::WRITE_SIZE as usize))
                .with_context(|| format!("write + fsync #{i} of {}", path.display()))?;
            let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
            slowest.fetch_max(us, Ordering::Relaxed);
            i += 1;
            writes.store(i, Ordering::Relaxed);
            thread::sleep(Self::PACE);
        }
        Ok(i)
    }

    /// Writes acknowledged so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// The slowest write + fsync so far.
    pub fn slowest(&self) -> Duration {
        Duration::from_micros(self.slowest_us.load(Ordering::Relaxed))
    }

    /// Fails if the writer has stopped (with its error, if it had one).
    pub fn check_running(&self) -> Result<()> {
        match self.done.try_recv() {
            Err(mpsc::TryRecvError::Empty) => Ok(()),
            Ok(Ok(n)) => bail!("the writer stopped by itself after {n} writes"),
            Ok(Err(e)) => Err(e.context("the application saw an error")),
            Err(mpsc::TryRecvError::Disconnected) => bail!("the writer thread panicked"),
        }
    }

    /// Waits until `n` writes have been acknowledged, failing early if the
    /// writer stops.
    pub fn wait_writes(&self, n: u64, what: &str) -> Result<()> {
        wait_for(DEADLINE, what, || {
            if let Err(e) = self.check_running() {
                return Probe::Fail(e);
            }
            match self.writes() {
                done if done >= n => Probe::Ready(()),
                done => Probe::Pending(format!("{done} of {n} writes acknowledged")),
            }
        })
    }

    /// Stops the writer and returns how many writes it made, or its error.
    pub fn finish(&self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.done.recv_timeout(DEADLINE) {
            Ok(r) => r.context("the application saw an error"),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(anyhow!(
                "the writer did not stop within {DEADLINE:?}: a write hangs"
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the writer thread panicked"),
        }
    }

    /// After a writer that wrote in `dir`'s counterpart stopped with `writes`
    /// acknowledged writes, each of its files in `dir` holds the last write
    /// that went to it: nothing acknowledged is lost or stale.
    pub fn expect_last_writes(dir: &Path, writes: u64) -> Result<()> {
        for k in 0..writes.min(Self::FILES) {
            // The last i < writes with i % FILES == k.
            let i = k + (writes - 1 - k) / Self::FILES * Self::FILES;
            let path = dir.join(format!("w{k}"));
            let got = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            ensure!(
                got == pseudo_random(i, Self::WRITE_SIZE as usize),
                "{} does not hold acknowledged write #{i} (of {writes}), the last one to it",
                path.display()
            );
        }
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // A writer stuck in the file system is released when the fixture
        // unmounts; one between writes stops here.
        self.stop.store(true, Ordering::Relaxed);
    }
}
