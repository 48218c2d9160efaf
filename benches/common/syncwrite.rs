//! The sync-write workload both benchmarks measure: 4 KiB writes at random
//! 4 KiB-aligned offsets of a preallocated 64 MiB file, each followed by
//! fdatasync, for a fixed time; one writer per file, all started together.
//! The latency-bound path of a replicating mount.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use super::rng::Rng;
use super::sys;

/// Size of each file written to; preallocate it (a sparse file would also
/// measure block allocation).
pub(crate) const FILE_SIZE: u64 = 64 << 20;
/// Size and alignment of each write.
pub(crate) const BLOCK: usize = 4096;

/// Result of a run.
pub(crate) struct SyncWrites {
    /// Writes per second over all writers.
    pub(crate) iops: f64,
    /// Latency percentiles of the write+fdatasync pairs over all writers
    /// (NaN if there were none).
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) writes: usize,
}

/// One writer per file of `files` for `dur`; writer `k`'s offsets come from
/// `seed + k`, so they are the same on every target.
pub(crate) fn run(files: &[PathBuf], dur: Duration, seed: u64) -> Result<SyncWrites, String> {
    let barrier = Barrier::new(files.len() + 1);
    let (results, elapsed) = thread::scope(|s| {
        let workers: Vec<_> = files
            .iter()
            .zip(seed..)
            .map(|(path, seed)| {
                let barrier = &barrier;
                s.spawn(move || writer(path, seed, dur, barrier))
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let results: Vec<_> = workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect();
        (results, start.elapsed())
    });
    sys::check_interrupt();
    let mut lat = Vec::new();
    for r in results {
        lat.extend(r?);
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    Ok(SyncWrites {
        iops: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        writes: lat.len(),
    })
}

/// One writer; it always meets the others at the barrier (even when its open
/// failed), so that none of them waits forever. Latencies in nanoseconds.
fn writer(path: &Path, seed: u64, dur: Duration, barrier: &Barrier) -> Result<Vec<u64>, String> {
    let opened = OpenOptions::new().write(true).open(path);
    barrier.wait();
    let f = opened.map_err(|e| format!("open {}: {e}", path.display()))?;
    let blocks = FILE_SIZE / BLOCK as u64;
    let mut rng = Rng(seed);
    let mut buf = vec![0u8; BLOCK];
    rng.fill(&mut buf);
    let mut lat = Vec::with_capacity(1 << 16);
    let end = Instant::now() + dur;
    let mut n = 0u64;
    while Instant::now() < end && !sys::interrupted() {
        let off = (rng.next() % blocks) * BLOCK as u64;
        // Every write differs from the last one.
        buf[..8].copy_from_slice(&n.to_le_bytes());
        let t = Instant::now();
        f.write_all_at(&buf, off)
            .map_err(|e| format!("pwrite {} at {off}: {e}", path.display()))?;
        f.sync_data()
            .map_err(|e| format!("fdatasync {}: {e}", path.display()))?;
        lat.push(t.elapsed().as_nanos() as u64);
        n += 1;
    }
    Ok(lat)
}
