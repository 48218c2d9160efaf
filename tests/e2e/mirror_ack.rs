//! Issue 10, item 7: `mirrorfs mount --ack on-sync`. What an application can
//! rely on, read on the secondary's disk: an fsync (of a file or a
//! directory) and a write through an `O_DSYNC` open return only once every
//! change made through the mount before them is on the replica; a write the
//! secondary refuses (its disk is full) is answered at once but fails the
//! next fsync, and the pair converges once there is room; while the
//! secondary is stopped, writes go on only up to the bound of what may await
//! it (64 MiB), then wait, and all complete once it resumes.
//!
//! Everything runs in the fixture (`Mirror`); the small disk is a tmpfs
//! ([`Tmpfs`], unmounted when dropped); a stopped `serve` is resumed by
//! [`Resume`] also when a test fails.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::mirror_faults::Tmpfs;
use crate::util::mirror::{last_error, Mirror};
use crate::util::{pseudo_random, run_fs, wait_for, Probe};

const MIB: usize = 1 << 20;
/// How long file work through the mount may take before it counts as a hang.
const FS_DEADLINE: Duration = Duration::from_secs(60);
/// How long the pair may take to converge again.
const RESYNC_DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn issue_10_7_on_sync_a_sync_returns_once_everything_before_it_is_on_the_secondary() -> Result<()> {
    let mut m = Mirror::prepare()?;
    let control = m.start_controlled(&["--ack", "on-sync"])?;
    let st = m.status_json(&control)?;
    ensure!(st["ack"] == "on-sync", "status: {st}");
    let (mnt, replica) = (m.mnt(), m.replica());

    // Many changes without a sync, then the fsync of another file: on its
    // return the replica holds them all.
    run_fs(FS_DEADLINE, "changes, then an fsync", &mnt, |mnt| {
        fs::create_dir(mnt.join("d"))?;
        for i in 0..300u64 {
            fs::write(
                mnt.join(format!("d/f{i}")),
                pseudo_random(i, 3000 + i as usize),
            )?;
        }
        fs::rename(mnt.join("d/f0"), mnt.join("renamed"))?;
        fs::remove_file(mnt.join("d/f1"))?;
        let mut marker = File::create(mnt.join("marker"))?;
        marker.write_all(b"synced")?;
        marker.sync_all()
    })?;
    expect_files(&replica, 2..300, "after the fsync of marker")?;
    ensure!(
        fs::read(replica.join("renamed"))? == pseudo_random(0, 3000)
            && !replica.join("d/f0").exists()
            && !replica.join("d/f1").exists(),
        "the rename and the unlink before the fsync are not on the replica"
    );

    // A write through an O_DSYNC open: the same.
    run_fs(FS_DEADLINE, "changes, then an O_DSYNC write", &mnt, |mnt| {
        for i in 300..400u64 {
            fs::write(
                mnt.join(format!("d/f{i}")),
                pseudo_random(i, 3000 + i as usize),
            )?;
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DSYNC)
            .open(mnt.join("dsync"))?;
        f.write_all(b"dsync")
    })?;
    expect_files(&replica, 300..400, "after the O_DSYNC write")?;
    ensure!(fs::read(replica.join("dsync"))? == b"dsync", "dsync");

    // fsync of a directory: the same.
    run_fs(
        FS_DEADLINE,
        "changes, then an fsync of a directory",
        &mnt,
        |mnt| {
            for i in 400..500u64 {
                fs::write(
                    mnt.join(format!("d/f{i}")),
                    pseudo_random(i, 3000 + i as usize),
                )?;
            }
            File::open(mnt)?.sync_all()
        },
    )?;
    expect_files(&replica, 400..500, "after the fsync of the root directory")?;
    m.wait_in_sync(&control, RESYNC_DEADLINE)?;
    m.expect_replica_identical()
}

#[test]
fn issue_10_7_on_sync_a_write_the_secondary_refuses_fails_the_next_fsync() -> Result<()> {
    let mut m = Mirror::prepare()?;
    let disk = Tmpfs::mount(&m.replica(), 16)?;
    let control = m.start_controlled(&["--ack", "on-sync"])?;
    let mnt = m.mnt();
    // 32 MiB into a 16 MiB secondary: every write is answered (queued), the
    // fsync after them is not.
    let (written, synced) = run_fs(FS_DEADLINE, "32 MiB, then an fsync", &mnt, |mnt| {
        let mut f = File::create(mnt.join("fill"))?;
        let mut written = 0;
        for i in 0..32u64 {
            f.write_all(&pseudo_random(500 + i, MIB))?;
            written += MIB;
        }
        Ok((written, f.sync_all()))
    })?;
    ensure!(written == 32 * MIB, "{written} bytes written");
    let err = synced
        .err()
        .context("the fsync after 32 MiB put on a 16 MiB secondary succeeded")?;
    ensure!(
        err.raw_os_error() == Some(libc::ENOSPC),
        "the fsync failed with {err}, not with the secondary's ENOSPC"
    );
    let st = m.wait_status(
        &control,
        RESYNC_DEADLINE,
        "the resync to report the full disk",
        |v| last_error(v).contains("No space left on device"),
    )?;
    // Room again: the mirror converges by itself, and syncs succeed.
    disk.resize(64)?;
    m.wait_in_sync(&control, RESYNC_DEADLINE)?;
    m.expect_replica_identical()?;
    run_fs(FS_DEADLINE, "a write and an fsync with room", &mnt, |mnt| {
        let mut f = OpenOptions::new().append(true).open(mnt.join("fill"))?;
        f.write_all(b"more")?;
        f.sync_all()
    })?;
    ensure!(
        fs::metadata(m.replica().join("fill"))?.len() == 32 * MIB as u64 + 4,
        "the synced append is not on the replica"
    );
    println!("on-sync full disk: 32 MiB answered, the fsync failed with {err}; status then {st}");
    Ok(())
}

#[test]
fn issue_10_7_on_sync_writes_wait_beyond_the_bound_while_the_secondary_is_stopped() -> Result<()> {
    let mut m = Mirror::prepare()?;
    // Long enough that the stopped secondary is neither lost nor given up.
    let control = m.start_controlled(&[
        "--ack",
        "on-sync",
        "--peer-timeout",
        "20",
        "--stall-timeout",
        "60",
    ])?;
    let mnt = m.mnt();
    let total: u64 = 100;
    let done = Arc::new(AtomicU64::new(0));
    let serve_pid = m.serve().context("no serve")?.pid();
    let resume = Resume(serve_pid);
    // SAFETY: plain syscall on the serve this fixture started.
    ensure!(
        unsafe { libc::kill(serve_pid as i32, libc::SIGSTOP) } == 0,
        "cannot stop serve"
    );
    let writer = {
        let (mnt, done) = (mnt.clone(), done.clone());
        thread::spawn(move || -> std::io::Result<()> {
            let mut f = File::create(mnt.join("big"))?;
            for i in 0..total {
                f.write_all(&pseudo_random(700 + i, MIB))?;
                done.fetch_add(1, Ordering::SeqCst);
            }
            f.sync_all()
        })
    };
    // Early answers go on while the secondary is stopped...
    wait_for(
        FS_DEADLINE,
        "writes answered without the secondary",
        || match done.load(Ordering::SeqCst) {
            n if n >= 40 => Probe::Ready(()),
            n => Probe::Pending(format!("{n} MiB written")),
        },
    )?;
    // ... up to the bound (64 MiB with each op's cost: 63 writes of 1 MiB),
    // and no further: watched for a while (what must not happen has no
    // moment to wait for).
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        let n = done.load(Ordering::SeqCst);
        ensure!(
            n <= 64,
            "{n} writes of 1 MiB answered while the secondary is stopped: the bound is 64 MiB"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let held_at = done.load(Ordering::SeqCst);
    ensure!(held_at < total, "every write answered: nothing held back");
    drop(resume);
    match writer.join() {
        Ok(r) => r.context("the writer, once the secondary resumed")?,
        Err(_) => anyhow::bail!("the writer panicked"),
    }
    m.wait_in_sync(&control, RESYNC_DEADLINE)?;
    m.expect_replica_identical()?;
    println!(
        "on-sync bound: {held_at} MiB answered while the secondary was stopped, all {total} after"
    );
    Ok(())
}

#[test]
fn issue_10_7_on_sync_an_unmount_waits_for_what_was_answered_before_the_secondary_had_it(
) -> Result<()> {
    let mut m = Mirror::prepare()?;
    let control = m.start_controlled(&["--ack", "on-sync", "--peer-timeout", "20"])?;
    let (mnt, replica) = (m.mnt(), m.replica());
    let serve_pid = m.serve().context("no serve")?.pid();
    let resume = Resume(serve_pid);
    // SAFETY: plain syscall on the serve this fixture started.
    ensure!(
        unsafe { libc::kill(serve_pid as i32, libc::SIGSTOP) } == 0,
        "cannot stop serve"
    );
    run_fs(
        FS_DEADLINE,
        "writes answered while the secondary is stopped",
        &mnt,
        |mnt| {
            for i in 0..50u64 {
                fs::write(mnt.join(format!("u{i}")), pseudo_random(900 + i, 100_000))?;
            }
            Ok(())
        },
    )?;
    let st = m.status_json(&control)?;
    let mut mount = m.start_unmount(&mnt)?;
    wait_for(
        FS_DEADLINE,
        "the unmounted mount to wait for the secondary",
        || match mount.try_status() {
            Ok(Some(s)) => Probe::Fail(anyhow::anyhow!(
                "the mount exited ({s}) with the secondary stopped: {}",
                mount.stderr_tail()
            )),
            Ok(None) if mount.stderr().contains("waiting for the secondary") => Probe::Ready(()),
            Ok(None) => Probe::Pending(mount.stderr_tail()),
            Err(e) => Probe::Fail(e),
        },
    )?;
    drop(resume);
    let exit = mount.wait_exit(FS_DEADLINE)?;
    ensure!(
        exit.success(),
        "the mount exited {exit}: {}",
        mount.stderr_tail()
    );
    for i in 0..50u64 {
        let p = replica.join(format!("u{i}"));
        ensure!(
            fs::read(&p).ok() == Some(pseudo_random(900 + i, 100_000)),
            "{}: not on the replica after the unmount (status before it: {st})",
            p.display()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- helpers

/// Files `d/f<i>` for `range` on the replica hold what was written.
fn expect_files(replica: &Path, range: std::ops::Range<u64>, when: &str) -> Result<()> {
    for i in range {
        let p = replica.join(format!("d/f{i}"));
        let got = fs::read(&p).with_context(|| format!("{when}: {}", p.display()))?;
        ensure!(
            got == pseudo_random(i, 3000 + i as usize),
            "{when}: {} holds other bytes",
            p.display()
        );
    }
    Ok(())
}

/// Resumes a stopped process (by the pid this test started) when dropped.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: plain syscall on the process this test stopped.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}
