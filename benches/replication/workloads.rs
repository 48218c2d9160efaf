//! The file-system workloads of the replication bench, in plain std/libc,
//! each bounded in time: a workload that reaches its deadline stops and
//! reports what it did (with a note), or, where a partial result would
//! compare unequal work, fails. The sync writes are the shared
//! [`crate::common::syncwrite`].

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::sys;

const BLOCK: usize = 4096;
const MIB: usize = 1 << 20;

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
    let mib = size.div_ceil(MIB as u64);
    let (_, cut) = until_deadline(mib, deadline, "preallocation", "MiB", |_| {
        f.write_all(&buf)
            .map_err(|e| format!("write {}: {e}", path.display()))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    if let Some(cut) = cut {
        panic!("preallocating {} took too long: {cut}", path.display());
    }
    f.sync_all()
        .unwrap_or_else(|e| panic!("fsync {}: {e}", path.display()));
}

/// Writes `mib` MiB in 1 MiB writes to a new file, fsyncs it, and removes it.
/// MB/s (10^6 bytes) including the final fsync.
pub(crate) fn seqwrite(path: &Path, mib: u64, deadline: Instant) -> Result<Rate, String> {
    let buf = pattern(MIB, 0xa5);
    let err = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
    let start = Instant::now();
    let mut f = File::create(path).map_err(|e| err("create", e))?;
    let (done, cut) = until_deadline(mib, deadline, "sequential write", "MiB", |_| {
        f.write_all(&buf).map_err(|e| err("write", e))
    })?;
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
/// new directory `dir`. Files/s.
pub(crate) fn create_files(dir: &Path, n: u64, deadline: Instant) -> Result<Rate, String> {
    let buf = pattern(BLOCK, 0x33);
    rate_in(dir, n, deadline, "file creation", "files", |i| {
        let p = dir.join(format!("f{i:05}"));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .map_err(|e| format!("create {} (after {i} files): {e}", p.display()))?;
        f.write_all(&buf)
            .map_err(|e| format!("write {}: {e}", p.display()))
    })
}

/// `n` cycles of: create an empty file, rename it, unlink it, in a new
/// directory `dir`. Cycles/s.
pub(crate) fn churn(dir: &Path, n: u64, deadline: Instant) -> Result<Rate, String> {
    rate_in(dir, n, deadline, "create+rename+unlink", "cycles", |i| {
        let tmp = dir.join(format!("tmp{i}"));
        let fin = dir.join(format!("c{i}"));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| format!("create {} (after {i} cycles): {e}", tmp.display()))?;
        fs::rename(&tmp, &fin)
            .map_err(|e| format!("rename {} -> {}: {e}", tmp.display(), fin.display()))?;
        fs::remove_file(&fin).map_err(|e| format!("unlink {}: {e}", fin.display()))
    })
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

/// Runs `step(i)` for `i` in `0..n` until all are done or the deadline
/// passes; returns how many were done and, if the deadline cut them short, a
/// note ("{what} stopped at the deadline after {done} of {n} {unit}").
fn until_deadline(
    n: u64,
    deadline: Instant,
    what: &str,
    unit: &str,
    mut step: impl FnMut(u64) -> Result<(), String>,
) -> Result<(u64, Option<String>), String> {
    for done in 0..n {
        sys::check_interrupt();
        if Instant::now() > deadline {
            let cut = format!("{what} stopped at the deadline after {done} of {n} {unit}");
            return Ok((done, Some(cut)));
        }
        step(done)?;
    }
    Ok((n, None))
}

/// Makes the directory `dir`, runs `step(i)` for `i` in `0..n` in it (see
/// [`until_deadline`]), then (untimed) removes `dir` with all it holds, so
/// that rounds start alike and a FUSE daemon does not accumulate inodes.
/// Steps per second.
fn rate_in(
    dir: &Path,
    n: u64,
    deadline: Instant,
    what: &str,
    unit: &str,
    step: impl FnMut(u64) -> Result<(), String>,
) -> Result<Rate, String> {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let start = Instant::now();
    let (done, cut) = until_deadline(n, deadline, what, unit, step)?;
    let rate = Rate {
        per_sec: done as f64 / start.elapsed().as_secs_f64(),
        cut,
    };
    fs::remove_dir_all(dir).map_err(|e| format!("remove {}: {e}", dir.display()))?;
    Ok(rate)
}

/// Printable, non-zero, non-repeating-per-block bytes.
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| b'a' + ((i / 7 + salt as usize + i % 13) % 26) as u8)
        .collect()
}
