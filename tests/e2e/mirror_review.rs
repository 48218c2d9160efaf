//! Issue 7 ("every acknowledged write accounted for"): the review's findings
//! as end-to-end regression tests, and the scenario seen when tried as a new
//! user would: two writers churning a tree (create, write, rename files and
//! directories, unlink, truncate, copy ranges) on a mount with
//! `--on-peer-loss=alone --peer-timeout 1` while the secondary's `serve` is
//! SIGKILLed and restarted every 1–3 s. Once the secondary stays up and the
//! mount says it is in sync, the two trees must be identical.
//!
//! Owns: the `Mirror` fixture of each test (namespaces, processes, mounts,
//! cleaned up on drop) and the churning writer threads (told to stop on drop).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::util::mirror::Mirror;
use crate::util::sys;

/// Carry on ALONE when the secondary is lost, and notice it within a second.
const ALONE: [&str; 3] = ["--on-peer-loss=alone", "--peer-timeout", "1"];
/// How long the secondary is killed and restarted (the issue's 40 s), unless
/// `MIRRORFS_E2E_CHURN_SECS` says otherwise.
const CHURN_SECS: u64 = 40;
/// How long the final resync may take once the secondary stays up.
const SETTLE_DEADLINE: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------- tests

/// Issue 7, "seen when tried as a new user would": the replica must hold
/// exactly the primary's tree once the mount reports in sync again, after
/// 40 s of a secondary killed and restarted under two churning writers.
#[test]
fn issue_7_churn_while_the_secondary_restarts_leaves_identical_trees() -> Result<()> {
    let secs = std::env::var("MIRRORFS_E2E_CHURN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CHURN_SECS);
    let mut m = Mirror::prepare()?;
    let control = m.start_controlled(&ALONE)?;
    let mnt = m.mnt();
    let churn = Churn::start(&mnt, 2)?;
    churn.wait_ops(200)?;

    let mut rng = Rng(0x5eed_0007);
    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        // The fault schedule itself: 1-3 s up, then killed, 1-3 s down.
        thread::sleep(Duration::from_millis(1000 + rng.below(2000)));
        m.kill_serve()?;
        kills += 1;
        thread::sleep(Duration::from_millis(1000 + rng.below(2000)));
        m.start_serve()?;
        churn.check_running()?;
    }
    let ops = churn.ops();
    churn.wait_ops(ops + 50)?;
    let ops = churn.finish()?;
    let (synced, _) = m.wait_in_sync(&control, SETTLE_DEADLINE)?;
    ensure!(
        synced["dirty_files"].as_u64() == Some(0),
        "in sync with dirty files: {synced}"
    );
    m.expect_replica_identical().with_context(|| {
        format!("after {kills} kills of the secondary under {ops} churning ops, the mount reported in sync: {synced}")
    })?;
    println!("churn: {kills} kills, {ops} ops, in sync: {synced}");
    Ok(())
}

/// Issue 7, finding 3: ops on names inside a directory that another thread
/// keeps renaming (fsync, fsyncdir, rename, mkdir, rmdir, symlink, link,
/// unlink, each through a descriptor of the directory, so the application's
/// own names never go stale) replicate to the names the objects have when
/// the op runs. Computed before the sequencer, they named the old place on
/// the secondary: ENOENT there, EIO to the application (`fail` mode).
#[test]
fn issue_7_ops_inside_a_directory_being_renamed_reach_the_right_names() -> Result<()> {
    let m = Mirror::start(&[])?;
    let mnt = m.mnt();
    fs::create_dir(mnt.join("d"))?;
    fs::write(mnt.join("d/data"), b"start")?;
    fs::write(mnt.join("d/f"), b"f")?;
    let dir = File::open(mnt.join("d"))?;
    let data = OpenOptions::new().write(true).open(mnt.join("d/data"))?;
    // Names resolved through the descriptor: wherever the directory is now.
    let here = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    let stop = Arc::new(AtomicBool::new(false));
    let renamer = {
        let (stop, mnt) = (stop.clone(), mnt.clone());
        thread::spawn(move || -> io::Result<u64> {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 200_000 {
                fs::rename(mnt.join("d"), mnt.join("e"))?;
                fs::rename(mnt.join("e"), mnt.join("d"))?;
                n += 2;
            }
            Ok(n)
        })
    };
    let started = Instant::now();
    let mut rounds = 0u64;
    let worked = (|| -> Result<()> {
        while started.elapsed() < Duration::from_secs(8) && rounds < 20_000 {
            data.write_all_at(&rounds.to_le_bytes(), rounds % 4096)
                .context("write")?;
            data.sync_all().context("fsync")?;
            dir.sync_all().context("fsync of the directory")?;
            fs::rename(here.join("f"), here.join("g")).context("rename f -> g")?;
            fs::rename(here.join("g"), here.join("f")).context("rename g -> f")?;
            fs::create_dir(here.join("sub")).context("mkdir")?;
            fs::remove_dir(here.join("sub")).context("rmdir")?;
            std::os::unix::fs::symlink("f", here.join("s")).context("symlink")?;
            fs::hard_link(here.join("f"), here.join("h")).context("link")?;
            fs::remove_file(here.join("s")).context("unlink of the symlink")?;
            fs::remove_file(here.join("h")).context("unlink of the link")?;
            rounds += 1;
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let renames = renamer
        .join()
        .map_err(|_| anyhow::anyhow!("the renaming thread panicked"))?
        .context("the renaming thread failed")?;
    worked.with_context(|| {
        format!("round {rounds} of ops inside the directory, beside {renames} renames of it")
    })?;
    ensure!(
        rounds > 100 && renames > 100,
        "too little overlap to show anything: {rounds} rounds, {renames} renames"
    );
    drop((dir, data));
    m.expect_replica_identical()?;
    println!("{rounds} rounds of ops beside {renames} renames of their directory");
    Ok(())
}

/// Issue 7, finding 7: an `open` (its first write, now that the kernel
/// opens files alone) or `create` that the secondary refuses (here: its
/// copies are immutable) fails, and leaves no handle behind on the
/// primary. Each one used to keep a descriptor (and a writer count that
/// costs the file its passthrough reads) until the mount ended; the entry a
/// refused `create`, `mkdir` or `symlink` made locally is never the
/// kernel's, so the mount gives back its lookup too.
#[test]
fn issue_7_a_refused_open_or_create_leaves_no_handle_behind() -> Result<()> {
    let m = Mirror::start(&[])?;
    let mnt = m.mnt();
    fs::write(mnt.join("f"), b"x")?;
    fs::create_dir(mnt.join("locked"))?;
    let _immutable = Immutable::set(&[m.replica().join("f"), m.replica().join("locked")])?;
    let pid = m.mount().context("the mount runs")?.pid();
    let fds = || -> Result<usize> { Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count()) };
    let before = fds()?;
    const TRIES: usize = 50;
    for i in 0..TRIES {
        // The kernel opens files alone (no OPEN requests): the first write
        // through the open is what the secondary refuses.
        let written = OpenOptions::new()
            .write(true)
            .open(mnt.join("f"))
            .and_then(|mut f| f.write_all(b"z"));
        ensure!(
            written.is_err(),
            "a writable open and write the secondary refused succeeded"
        );
        let created = File::create(mnt.join(format!("locked/new-{i}")));
        ensure!(created.is_err(), "a create the secondary refused succeeded");
        let made = fs::create_dir(mnt.join(format!("locked/dir-{i}")));
        ensure!(made.is_err(), "a mkdir the secondary refused succeeded");
        let linked = std::os::unix::fs::symlink("f", mnt.join(format!("locked/sym-{i}")));
        ensure!(linked.is_err(), "a symlink the secondary refused succeeded");
    }
    let after = fds()?;
    ensure!(
        after < before + TRIES / 5,
        "the mount holds {after} descriptors after {TRIES} rounds of refused opens, creates, mkdirs and symlinks, {before} before"
    );
    // The file is still writable once the secondary accepts it again.
    drop(_immutable);
    OpenOptions::new()
        .write(true)
        .open(mnt.join("f"))?
        .write_all(b"y")?;
    Ok(())
}

/// Files made immutable (`chattr +i`) for a test, and mutable again on drop.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(paths: &[PathBuf]) -> Result<Self> {
        let mut me = Self(Vec::new());
        for p in paths {
            crate::util::run_ok(std::process::Command::new("chattr").arg("+i").arg(p))?;
            me.0.push(p.clone());
        }
        Ok(me)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(p)
                .status();
        }
    }
}

// ---------------------------------------------------------------- the churning writers

/// Writer threads that change a small tree at random until told to stop.
/// Errors a concurrent writer can cause (a name that vanished, a directory
/// not empty) are part of the game; any other error (EIO above all) ends
/// the writer and fails the test.
struct Churn {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    failed: Arc<Mutex<Option<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

/// Names the writers use: few, so that they meet.
const DIRS: [&str; 3] = ["d0", "d1", "d2"];
const FILES: [&str; 6] = ["f0", "f1", "f2", "f3", "f4", "f5"];

impl Churn {
    fn start(mnt: &Path, writers: u64) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(None));
        let root = mnt.join("churn");
        fs::create_dir(&root)?;
        for d in DIRS {
            fs::create_dir(root.join(d))?;
        }
        let mut threads = Vec::new();
        for w in 0..writers {
            let (stop, ops, failed, root) =
                (stop.clone(), ops.clone(), failed.clone(), root.clone());
            threads.push(
                thread::Builder::new()
                    .name(format!("churn-{w}"))
                    .spawn(move || {
                        let mut rng = Rng(0xc0ffee + w * 7919);
                        while !stop.load(Ordering::Relaxed) {
                            if let Err(e) = step(&root, &mut rng) {
                                *failed.lock().unwrap_or_else(|e| e.into_inner()) =
                                    Some(format!("writer {w}: {e:#}"));
                                return;
                            }
                            ops.fetch_add(1, Ordering::Relaxed);
                        }
                    })?,
            );
        }
        Ok(Self {
            stop,
            ops,
            failed,
            threads,
        })
    }

    fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    fn check_running(&self) -> Result<()> {
        if let Some(e) = self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            anyhow::bail!("a churning writer failed: {e}");
        }
        Ok(())
    }

    fn wait_ops(&self, n: u64) -> Result<()> {
        crate::util::wait_for(
            Duration::from_secs(60),
            &format!("{n} churning ops"),
            || match self.check_running() {
                Err(e) => crate::util::Probe::Fail(e),
                Ok(()) if self.ops() >= n => crate::util::Probe::Ready(()),
                Ok(()) => crate::util::Probe::Pending(format!("{} ops", self.ops())),
            },
        )
    }

    /// Stops the writers and waits for them; returns the ops they made.
    fn finish(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.check_running()?;
        Ok(self.ops())
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One random change below `root`.
fn step(root: &Path, rng: &mut Rng) -> Result<()> {
    let dir = |rng: &mut Rng| root.join(DIRS[rng.below(DIRS.len() as u64) as usize]);
    let file = |rng: &mut Rng| dir(rng).join(FILES[rng.below(FILES.len() as u64) as usize]);
    let kind = rng.below(10);
    let r = match kind {
        0 | 1 => {
            let n = 1 + rng.below(64 << 10) as usize;
            let data = bytes(rng, n);
            write_new(&file(rng), &data)
        }
        2 => {
            let n = 1 + rng.below(16 << 10) as usize;
            let data = bytes(rng, n);
            let off = rng.below(128 << 10);
            OpenOptions::new()
                .write(true)
                .open(file(rng))
                .and_then(|f| f.write_all_at(&data, off))
        }
        3 => fs::rename(file(rng), file(rng)),
        4 => {
            // A directory renamed over another (empty) one, or to a new
            // name and back: the subtree moves on both sides.
            let (a, b) = (dir(rng), dir(rng));
            let tmp = root.join(format!("moving-{}", rng.below(1000)));
            fs::rename(&a, &tmp)
                .and_then(|()| fs::rename(&tmp, &b).or_else(|_| fs::rename(&tmp, &a)))
        }
        5 => fs::remove_file(file(rng)),
        6 => OpenOptions::new()
            .write(true)
            .open(file(rng))
            .and_then(|f| f.set_len(rng.below(96 << 10))),
        7 => {
            let (a, b) = (file(rng), file(rng));
            if a == b {
                // A writable open waits for this thread's own passthrough
                // reader of the file (ETXTBSY after 10 s): not this test's topic.
                return Ok(());
            }
            let len = 1 + rng.below(32 << 10) as usize;
            let off = rng.below(32 << 10) as i64;
            // The destination is opened first: a writable open waits for the
            // file's kernel-passthrough readers to close (ETXTBSY after 10
            // s), so two writers each holding one file open read-only while
            // opening the other's for writing would wait for each other (a
            // known limit of passthrough reads, not this test's topic).
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&b)
                .and_then(|to| {
                    let from = File::open(&a)?;
                    sys::copy_file_range(&from, 0, &to, off, len).map(drop)
                })
        }
        8 => {
            // Make sure every directory exists again (renames may have
            // parked one under a temporary name for a moment).
            let d = dir(rng);
            fs::create_dir(&d)
        }
        _ => {
            let f = file(rng);
            File::open(&f).and_then(|f| f.sync_all())
        }
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if expected(&e) => Ok(()),
        Err(e) => Err(e).with_context(|| {
            format!("operation kind {kind} failed with an error no concurrent writer explains")
        }),
    }
}

/// Errors the writers cause each other (or a file not there yet).
fn expected(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOENT
                | libc::EEXIST
                | libc::ENOTEMPTY
                | libc::EISDIR
                | libc::ENOTDIR
                | libc::EINVAL
                | libc::EBUSY
        )
    )
}

fn write_new(path: &PathBuf, data: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(data)
}

fn bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    let seed = rng.next();
    crate::util::pseudo_random(seed, n)
}

/// A small seeded generator (xorshift64*) for the fault schedule and the writers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0 | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
