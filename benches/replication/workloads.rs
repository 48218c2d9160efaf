//! The file-system workloads, in plain std/libc, each bounded in time: a
//! workload that reaches its deadline stops and reports what it did (with a
//! note), or, where a partial result would compare unequal work, fails.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use crate::sys;

/// Size of each random-write file.
pub(crate) const RANDWRITE_FILE: u64 = 64 << 20;
const BLOCK: usize = 4096;
const MIB: usize = 1 << 20;

/// Result of a random-write run.
pub(crate) struct RandWrite {
    pub(crate) iops: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
}

/// A throughput figure, with a note when the deadline cut it short.
pub(crate) struct Rate {
    pub(crate) per_sec: f64,
    pub(crate) cut: Option<String>,
}

/// Writes `path` fully (1 MiB writes of non-zero data) and fsyncs it, so the
/// measured writes overwrite allocated blocks: on a sparse file fdatasync would
/// also measure block allocation.
pub(crate) fn preallocate(path: &Path, size: u64, deadline: Instant) {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let buf = pattern(MIB, 0x5a);
    let mut done = 0u64;
    while done < size {
        sys::check_interrupt();
        if Instant::now() > deadline {
            panic!(
                "preallocating {} took too long ({done} of {size} bytes)",
                path.display()
            );
        }
        f.write_all(&buf)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        done += MIB as u64;
    }
    f.sync_all()
        .unwrap_or_else(|e| panic!("fsync {}: {e}", path.display()));
}

/// Each thread overwrites random 4 KiB blocks of its own file, with an
/// fdatasync after every write, for `dur`. IOPS over all threads, latency
/// percentiles of write+fdatasync pairs over all threads.
pub(crate) fn randwrite(files: &[PathBuf], dur: Duration) -> Result<RandWrite, String> {
    let barrier = Barrier::new(files.len() + 1);
    let (results, elapsed) = thread::scope(|s| {
        let workers: Vec<_> = files
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let barrier = &barrier;
                s.spawn(move || randwrite_worker(path, i as u64, dur, barrier))
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
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len().max(1)) - 1;
        lat.get(i).copied().unwrap_or(0) as f64 / 1000.0
    };
    Ok(RandWrite {
        iops: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    })
}

/// One writer; it always meets the others at the barrier (even when its open
/// failed), so that none of them waits forever.
fn randwrite_worker(
    path: &Path,
    seed: u64,
    dur: Duration,
    barrier: &Barrier,
) -> Result<Vec<u64>, String> {
    let opened = OpenOptions::new().write(true).open(path);
    barrier.wait();
    let f = opened.map_err(|e| format!("open {}: {e}", path.display()))?;
    let blocks = RANDWRITE_FILE / BLOCK as u64;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ (seed + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
    let mut buf = pattern(BLOCK, seed as u8);
    let mut lat = Vec::with_capacity(1 << 16);
    let end = Instant::now() + dur;
    let mut n = 0u64;
    while Instant::now() < end && !sys::interrupted() {
        let off = (rng.next() % blocks) * BLOCK as u64;
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

/// Writes `mib` MiB in 1 MiB writes to a new file, fsyncs it, and removes it.
/// MB/s (10^6 bytes) including the final fsync.
pub(crate) fn seqwrite(path: &Path, mib: u64, deadline: Instant) -> Result<Rate, String> {
    let buf = pattern(MIB, 0xa5);
    let err = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
    let start = Instant::now();
    let mut f = File::create(path).map_err(|e| err("create", e))?;
    let mut done = 0u64;
    let mut cut = None;
    while done < mib {
        sys::check_interrupt();
        if Instant::now() > deadline {
            cut = Some(format!(
                "sequential write stopped at the deadline after {done} of {mib} MiB"
            ));
            break;
        }
        f.write_all(&buf).map_err(|e| err("write", e))?;
        done += 1;
    }
    f.sync_all().map_err(|e| err("fsync", e))?;
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    fs::remove_file(path).map_err(|e| err("remove", e))?;
    Ok(Rate {
        per_sec: (done * MIB as u64) as f64 / 1e6 / secs,
        cut,
    })
}

/// Creates `n` new files of 4 KiB (open O_CREAT|O_EXCL, write, close) in a
/// new directory `dir`, then (untimed) removes them again, so that rounds
/// start alike and a FUSE daemon does not accumulate inodes.
pub(crate) fn create_files(dir: &Path, n: u64, deadline: Instant) -> Result<Rate, String> {
    mkdir(dir);
    let buf = pattern(BLOCK, 0x33);
    let start = Instant::now();
    let mut done = 0;
    let mut cut = None;
    while done < n {
        sys::check_interrupt();
        if Instant::now() > deadline {
            cut = Some(format!(
                "file creation stopped at the deadline after {done} of {n} files"
            ));
            break;
        }
        let p = dir.join(format!("f{done:05}"));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .map_err(|e| format!("create {} (after {done} files): {e}", p.display()))?;
        f.write_all(&buf)
            .map_err(|e| format!("write {}: {e}", p.display()))?;
        done += 1;
    }
    let rate = Rate {
        per_sec: done as f64 / start.elapsed().as_secs_f64(),
        cut,
    };
    fs::remove_dir_all(dir).map_err(|e| format!("remove {}: {e}", dir.display()))?;
    Ok(rate)
}

/// `n` cycles of: create an empty file, rename it, unlink it. Cycles/s.
pub(crate) fn churn(dir: &Path, n: u64, deadline: Instant) -> Result<Rate, String> {
    mkdir(dir);
    let start = Instant::now();
    let mut done = 0;
    let mut cut = None;
    while done < n {
        sys::check_interrupt();
        if Instant::now() > deadline {
            cut = Some(format!(
                "create+rename+unlink stopped at the deadline after {done} of {n} cycles"
            ));
            break;
        }
        let tmp = dir.join(format!("tmp{done}"));
        let fin = dir.join(format!("c{done}"));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| format!("create {} (after {done} cycles): {e}", tmp.display()))?;
        fs::rename(&tmp, &fin)
            .map_err(|e| format!("rename {} -> {}: {e}", tmp.display(), fin.display()))?;
        fs::remove_file(&fin).map_err(|e| format!("unlink {}: {e}", fin.display()))?;
        done += 1;
    }
    let rate = Rate {
        per_sec: done as f64 / start.elapsed().as_secs_f64(),
        cut,
    };
    fs::remove_dir(dir).map_err(|e| format!("rmdir {}: {e}", dir.display()))?;
    Ok(rate)
}

/// Creates a tree of `n` empty files: 10 directories of 10 directories, the
/// files spread over the 100 leaves. Returns the number of entries below
/// `root`. An error (or the deadline) is returned, not panicked: a target
/// that cannot hold the tree still has its other figures.
pub(crate) fn create_tree(root: &Path, n: u64, deadline: Instant) -> Result<u64, String> {
    let per_leaf = n.div_ceil(100);
    let mut made = 0;
    let mut dirs = 0;
    'outer: for a in 0..10 {
        for b in 0..10 {
            let leaf = root.join(format!("d{a}")).join(format!("e{b}"));
            fs::create_dir_all(&leaf)
                .map_err(|e| format!("mkdir {} (after {made} files): {e}", leaf.display()))?;
            dirs += if b == 0 { 2 } else { 1 };
            for _ in 0..per_leaf {
                if made == n {
                    break 'outer;
                }
                sys::check_interrupt();
                if Instant::now() > deadline {
                    return Err(format!(
                        "creating the {n}-file tree hit its deadline after {made} files \
                         (lower MIRRORFS_BENCH_TREE)"
                    ));
                }
                let p = leaf.join(format!("f{made:06}"));
                File::create(&p)
                    .map_err(|e| format!("create {} (after {made} files): {e}", p.display()))?;
                made += 1;
            }
        }
    }
    Ok(made + dirs)
}

/// Reads every directory below `root` and lstats every entry (what `find`
/// with a stat per entry does). Returns the number of entries and the time.
pub(crate) fn walk(root: &Path, deadline: Instant) -> Result<(u64, Duration), String> {
    let start = Instant::now();
    let mut stack = vec![root.to_path_buf()];
    let mut entries = 0u64;
    while let Some(dir) = stack.pop() {
        sys::check_interrupt();
        if Instant::now() > deadline {
            return Err(format!("the walk hit its deadline after {entries} entries"));
        }
        let before = entries;
        let after = |e| format!("readdir {} (after {before} entries): {e}", dir.display());
        for ent in fs::read_dir(&dir).map_err(after)? {
            let ent = ent.map_err(after)?;
            let p = ent.path();
            let md = fs::symlink_metadata(&p)
                .map_err(|e| format!("lstat {} (after {entries} entries): {e}", p.display()))?;
            if md.is_dir() {
                stack.push(p);
            }
            entries += 1;
        }
    }
    Ok((entries, start.elapsed()))
}

/// Writes a file of `size` bytes (readable by all) for the HTTP workload.
pub(crate) fn write_file(path: &Path, size: usize) {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(&pattern(size, 0x61))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    f.sync_all()
        .unwrap_or_else(|e| panic!("fsync {}: {e}", path.display()));
}

fn mkdir(dir: &Path) {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
}

/// Printable, non-zero, non-repeating-per-block bytes.
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| b'a' + ((i / 7 + salt as usize + i % 13) % 26) as u8)
        .collect()
}

/// A tiny seeded PRNG (xorshift64*): the offsets are the same on every target.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
