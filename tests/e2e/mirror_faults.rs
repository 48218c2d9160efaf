//! Issue 3, items 5 and 6: faults during a resync. The secondary's `serve`
//! SIGKILLed in the middle of a resync (the next one resumes and nothing
//! half-copied is ever marked clean), a full disk on the secondary (a clear
//! error naming the file, retries until there is room, and what an
//! application sees when it happens in synchronous mode), files deleted and
//! renamed by the application while the resync still has them to copy, and a
//! secondary restarted over and over under a writing application: every time
//! the end state is checked with `mirrorfs verify` and against what the
//! application saw acknowledged.
//!
//! The secondary's disk is a tmpfs the test mounts on the replica root
//! ([`Tmpfs`], unmounted when dropped); everything else is the fixture's
//! (`Mirror`) or the `Writer` thread, which is declared after it and told to
//! stop when dropped. Processes are killed by the PID the fixture started.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::util::lab::Node;
use crate::util::mirror::{in_sync, last_error, role, Mirror, ALONE_DEADLINE};
use crate::util::writer::Writer;
use crate::util::{pseudo_random, run_fs, run_ok, wait_for, write_synced, Probe};

const MIB: usize = 1 << 20;
/// Carry on ALONE when the secondary is lost, and notice it within a second
/// (every kill below costs one peer timeout).
const ALONE: [&str; 3] = ["--on-peer-loss=alone", "--peer-timeout", "1"];
/// How long a resync of the few dozen MiB here may take, reconnection included.
const RESYNC_DEADLINE: Duration = Duration::from_secs(60);
/// How long the resync may take to start sending once `serve` is back.
const RESYNC_START_DEADLINE: Duration = Duration::from_secs(20);
/// How long file work through the mount may take before it counts as a hang.
const FS_DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- tests

/// "If the secondary is killed mid-resync, the next resync resumes safely
/// (never leaves a half-copied file marked clean)."
#[test]
fn secondary_killed_mid_resync_resumes_and_marks_nothing_half_copied_clean() -> Result<()> {
    const BIG_MIB: usize = 48;
    let mut m = Mirror::prepare()?;
    // 16 MB/s: the 48 MiB file takes ~3 s, time enough to kill in the middle.
    let control = m.start_controlled(&[&ALONE[..], &["--resync-rate-limit", "16"]].concat())?;
    let (mnt, backing, replica) = (m.mnt(), m.backing(), m.replica());
    run_fs(FS_DEADLINE, "the big file, in sync", &mnt, |mnt| {
        write_blocks(&mnt.join("big"), 1, BIG_MIB)
    })?;
    let writer = Writer::start(mnt.join("live"))?;
    writer.wait_writes(10, "the writer's first writes")?;

    m.kill_serve()?;
    m.wait_alone(&control)?;
    // Rewritten (truncated, new bytes) while ALONE, with 300 small new files.
    run_fs(FS_DEADLINE, "rewriting ALONE", &mnt, |mnt| {
        write_blocks(&mnt.join("big"), 2, BIG_MIB)?;
        fs::create_dir(mnt.join("small"))?;
        for i in 0..300 {
            write_synced(
                &mnt.join(format!("small/{i:03}")),
                &pseudo_random(10_000 + i, 4096),
            )?;
        }
        Ok(())
    })?;

    let rx0 = m.node2.rx_bytes()?;
    m.start_serve()?;
    let node2 = m.node2.clone();
    let resyncing = m.wait_status(
        &control,
        RESYNC_START_DEADLINE,
        "RESYNC with 8 MiB received by node2",
        |v| role(v) == "RESYNC" && received_since(&node2, rx0) > 8 * MIB as u64,
    )?;
    m.kill_serve()?;
    let received = received_since(&node2, rx0);
    // The kill fell inside the big file: some of its blocks are new on the
    // replica, some still old, so it is half-copied now.
    let (new_blocks, old_blocks) = count_blocks(&replica.join("big"), 2, BIG_MIB)?;
    ensure!(
        new_blocks > 0 && old_blocks > 0,
        "the kill did not fall inside the big file's copy ({new_blocks} blocks new, \
         {old_blocks} old on the replica; status at the kill: {resyncing})"
    );

    // Back to ALONE, never to PRIM: the half-copied file is still dirty.
    let mut saw = String::new();
    let alone = m.wait_status(&control, ALONE_DEADLINE, "ALONE after the kill", |v| {
        if role(v) == "PRIM" {
            saw = v.to_string();
        }
        role(v) == "ALONE" || !saw.is_empty()
    })?;
    ensure!(
        saw.is_empty(),
        "PRIM with the secondary killed mid-resync: {saw}"
    );
    ensure!(
        alone["dirty_files"].as_u64().unwrap_or(0) > 0,
        "ALONE with a half-copied file, yet nothing dirty: {alone}"
    );
    writer.wait_writes(writer.writes() + 20, "writes after the kill")?;

    let rx1 = m.node2.rx_bytes()?;
    let t = Instant::now();
    m.start_serve()?;
    // The writer never stops: for the first 10 s the resync yields to it
    // as far as its pace asks, then goes at its floor (4 MB/s): ~15–20 s on
    // a quiet machine for the ~40 MiB left.
    m.wait_in_sync(&control, 2 * RESYNC_DEADLINE)?;
    let resume_time = t.elapsed();
    let resumed = received_since(&m.node2, rx1);
    let writes = writer.finish()?;

    m.expect_replica_identical()?;
    let want = blocks(2, BIG_MIB);
    for side in [&backing, &replica] {
        let got = fs::read(side.join("big"))?;
        ensure!(
            got == want,
            "{}/big is not the file rewritten ALONE",
            side.display()
        );
    }
    Writer::expect_last_writes(&replica.join("live"), writes)?;
    println!(
        "killed mid-resync: node2 had received {received} bytes, big file {new_blocks}/{BIG_MIB} \
         MiB copied; the next resync took {resume_time:?} and node2 received {resumed} bytes; \
         writer {writes} writes, slowest {:?}",
        writer.slowest()
    );
    Ok(())
}

/// A full disk on the secondary during a resync: the resync stops with an
/// error that says so and names the file, the application goes on, and once
/// there is room the resync retries by itself and completes.
#[test]
fn full_disk_on_the_secondary_fails_the_resync_clearly_until_there_is_room() -> Result<()> {
    let mut m = Mirror::prepare()?;
    let disk = Tmpfs::mount(&m.replica(), 64)?;
    let control = m.start_controlled(&ALONE)?;
    let mnt = m.mnt();
    m.kill_serve()?;
    m.wait_alone(&control)?;
    // 100 MiB written ALONE: more than the secondary's 64 MiB.
    run_fs(FS_DEADLINE, "100 MiB ALONE", &mnt, |mnt| {
        for i in 0..5 {
            write_blocks(&mnt.join(format!("data{i}")), 100 + i, 20)?;
        }
        Ok(())
    })?;

    m.start_serve()?;
    let full = m.wait_status(
        &control,
        RESYNC_DEADLINE,
        "last_error to report the full disk",
        |v| last_error(v).contains("No space left on device") || in_sync(v),
    )?;
    let why = last_error(&full);
    ensure!(
        !in_sync(&full) && role(&full) == "RESYNC",
        "in sync, or not resyncing, with 100 MiB to put on a 64 MiB disk: {full}"
    );
    ensure!(
        (0..5).any(|i| why.contains(&format!("data{i}"))),
        "the error does not name the file that did not fit: {why}"
    );
    ensure!(
        why.contains("secondary") && why.contains("make room"),
        "the error does not say where the disk is full and what to do: {why}"
    );

    // The application still writes (ALONE configured: recorded for the resync).
    run_fs(FS_DEADLINE, "a write while the disk is full", &mnt, |mnt| {
        write_synced(&mnt.join("while-full"), &pseudo_random(200, 100_000))
    })?;
    let st = m.status_json(&control)?;
    ensure!(!in_sync(&st), "in sync while the disk is full: {st}");

    // The resync does not give up, and does not spin either: it retries the
    // file after a pause. Only the mount's log counts attempts; three of them
    // a hot loop would make within milliseconds.
    let path = why
        .strip_prefix("resync of ")
        .and_then(|rest| rest.split(':').next())
        .with_context(|| format!("no \"resync of PATH:\" in {why:?}"))?;
    let first = Instant::now();
    let retries = wait_for(
        RESYNC_DEADLINE,
        "three failed attempts of the resync",
        || match enospc_retries_logged(&m, path) {
            n if n >= 3 => Probe::Ready(n),
            n => Probe::Pending(format!("{n} attempts on {path} logged")),
        },
    )?;
    let spread = first.elapsed();
    ensure!(
        spread >= Duration::from_millis(500),
        "{retries} failed attempts within {spread:?}: the resync retries without a pause"
    );
    ensure!(
        !in_sync(&m.status_json(&control)?),
        "in sync while the disk is full"
    );

    disk.resize(512)?;
    let t = Instant::now();
    m.wait_in_sync(&control, RESYNC_DEADLINE)?;
    let recovery = t.elapsed();
    m.expect_replica_identical()?;
    println!(
        "full disk: {why:?}; {retries} failed attempts in {spread:?}; in sync {recovery:?} after \
         the tmpfs grew"
    );
    Ok(())
}

/// The secondary's disk fills while in sync. With `--on-peer-loss=fail`
/// (the default) the write that does not fit fails with ENOSPC, and every
/// byte acknowledged before it is on the replica. With `alone` the
/// application sees no error; the writes are recorded and the mirror is not
/// in sync until the secondary has them. Either way, once there is room, the
/// mirror converges by itself.
#[test]
fn full_disk_on_the_secondary_in_sync_mode() -> Result<()> {
    let mut m = Mirror::prepare()?;
    let disk = Tmpfs::mount(&m.replica(), 16)?;
    let (mnt, backing, replica) = (m.mnt(), m.backing(), m.replica());

    // --on-peer-loss=fail: the default.
    let control = m.start_controlled(&[])?;
    let (acked, err) = run_fs(FS_DEADLINE, "filling the disk", &mnt, |mnt| {
        fill(&mnt.join("fill"), 300, 32)
    })?;
    let err = err.context("32 MiB written through a 16 MiB secondary without an error")?;
    ensure!(
        err.raw_os_error() == Some(libc::ENOSPC),
        "the write that did not fit failed with {err}, not ENOSPC"
    );
    let on_replica = fs::read(replica.join("fill"))?;
    ensure!(
        on_replica.len() >= acked && on_replica[..acked] == blocks(300, 32)[..acked],
        "{acked} bytes were acknowledged but the replica holds {} bytes that differ",
        on_replica.len()
    );
    let st = m.wait_status(
        &control,
        RESYNC_DEADLINE,
        "the resync of the file that did not fit to report the full disk",
        |v| last_error(v).contains("No space left on device"),
    )?;
    ensure!(!in_sync(&st), "in sync although fill differs: {st}");
    ensure!(
        last_error(&st).contains("fill"),
        "the error does not name the file: {st}"
    );
    let fail_mode = format!(
        "fail: {acked} bytes acknowledged, then {err}; the replica held {} bytes",
        on_replica.len()
    );
    // Room again: the mirror converges by itself.
    disk.resize(64)?;
    m.wait_in_sync(&control, RESYNC_DEADLINE)?;
    m.expect_identical(&backing, &replica)?;
    run_fs(FS_DEADLINE, "removing fill", &mnt, |mnt| {
        fs::remove_file(mnt.join("fill"))
    })?;
    m.wait_in_sync(&control, RESYNC_DEADLINE)?;

    // --on-peer-loss=alone: no error for the application.
    let exit = m.unmount(&mnt)?;
    ensure!(
        exit.success(),
        "mirrorfs mount exited {exit} when unmounted"
    );
    disk.resize(16)?;
    let control = m.path().join("ctl-alone.sock");
    let mut args = m.mount_args();
    args.extra = [&ALONE[..], &["--control", &control.display().to_string()]]
        .concat()
        .into_iter()
        .map(str::to_owned)
        .collect();
    m.start_mount(&args)?;
    let (shared, _) = m.wait_in_sync(&control, RESYNC_DEADLINE)?;
    let (acked, err) = run_fs(FS_DEADLINE, "filling the disk ALONE", &mnt, |mnt| {
        fill(&mnt.join("fill"), 400, 32)
    })?;
    if let Some(err) = err {
        bail!("with --on-peer-loss=alone the application saw {err} after {acked} bytes");
    }
    let st = m.wait_status(
        &control,
        RESYNC_DEADLINE,
        "the resync to report the full disk",
        |v| last_error(v).contains("No space left on device"),
    )?;
    ensure!(
        !in_sync(&st),
        "in sync although fill is not on the replica: {st}"
    );
    // Acknowledged without the secondary: this side is ahead now, so that a
    // secondary promoted before the resync ends is seen as a split brain,
    // not as "in sync" (which would lose the acknowledged bytes).
    ensure!(
        st["generation"] != shared["generation"],
        "writes the secondary refused were acknowledged but the generation stayed {}",
        shared["generation"]
    );
    disk.resize(64)?;
    m.wait_in_sync(&control, RESYNC_DEADLINE)?;
    m.expect_identical(&backing, &replica)?;
    ensure!(
        fs::read(replica.join("fill"))? == blocks(400, 32),
        "the replica's fill is not what the application wrote"
    );
    println!(
        "full disk in sync mode: {fail_mode}; alone: {acked} bytes acknowledged, no error, \
         status then {st}"
    );
    Ok(())
}

/// Files deleted or renamed by the application while the resync still has
/// them to copy (one of them while its blocks are on the wire): the resync
/// completes, the trees are identical, and nothing deleted comes back.
#[test]
fn files_vanishing_during_resync_are_not_resurrected() -> Result<()> {
    const BIG_MIB: usize = 8;
    const SMALL: u64 = 60;
    let mut m = Mirror::prepare()?;
    // 8 MB/s: each big file takes a second, the small ones another.
    let control = m.start_controlled(&[&ALONE[..], &["--resync-rate-limit", "8"]].concat())?;
    let (mnt, replica) = (m.mnt(), m.replica());
    m.kill_serve()?;
    m.wait_alone(&control)?;
    run_fs(FS_DEADLINE, "the dirty files", &mnt, |mnt| {
        fs::create_dir(mnt.join("d"))?;
        write_blocks(&mnt.join("d/a-big-gone"), 1, BIG_MIB)?;
        write_blocks(&mnt.join("d/b-big-moved"), 2, BIG_MIB)?;
        for i in 0..SMALL {
            write_synced(
                &mnt.join(format!("d/n{i:02}")),
                &pseudo_random(100 + i, 128 << 10),
            )?;
        }
        Ok(())
    })?;

    m.start_serve()?;
    // The first big file is on the wire: part of it is on the replica.
    let gone = replica.join("d/a-big-gone");
    wait_for(
        RESYNC_START_DEADLINE,
        "d/a-big-gone to be partly on the replica",
        || match fs::metadata(&gone).map(|md| md.len()) {
            Ok(n) if n >= MIB as u64 => Probe::Ready(()),
            Ok(n) => Probe::Pending(format!("{n} bytes")),
            Err(e) => Probe::Pending(e.to_string()),
        },
    )?;
    let before = m.status_json(&control)?;
    let (at_unlink, deleted, renamed) = run_fs(FS_DEADLINE, "deleting and renaming", &mnt, {
        let gone = gone.clone();
        move |mnt| {
            let d = mnt.join("d");
            let mut deleted = vec!["a-big-gone".to_owned()];
            let mut renamed = vec![("b-big-moved".to_owned(), "z-big-moved".to_owned())];
            let at_unlink = fs::metadata(&gone)?.len();
            fs::remove_file(d.join("a-big-gone"))?;
            fs::rename(d.join("b-big-moved"), d.join("z-big-moved"))?;
            for i in (SMALL - 10)..SMALL {
                deleted.push(format!("n{i:02}"));
                fs::remove_file(d.join(format!("n{i:02}")))?;
            }
            for i in (SMALL - 20)..(SMALL - 15) {
                let (from, to) = (format!("n{i:02}"), format!("r{i:02}"));
                fs::rename(d.join(&from), d.join(&to))?;
                renamed.push((from, to));
            }
            Ok((at_unlink, deleted, renamed))
        }
    })?;
    let after = m.status_json(&control)?;
    ensure!(
        at_unlink < (BIG_MIB * MIB) as u64 && role(&after) == "RESYNC",
        "the changes did not fall inside the resync (d/a-big-gone had {at_unlink} of {} bytes \
         on the replica when deleted; status before {before}, after {after})",
        BIG_MIB * MIB
    );

    m.wait_in_sync(&control, RESYNC_DEADLINE)?;
    m.expect_replica_identical()?;
    for name in &deleted {
        let p = replica.join("d").join(name);
        ensure!(
            !p.exists(),
            "{} was deleted during the resync but is on the replica",
            p.display()
        );
    }
    for (from, to) in &renamed {
        ensure!(
            !replica.join("d").join(from).exists() && replica.join("d").join(to).is_file(),
            "d/{from} renamed to d/{to} during the resync: not so on the replica"
        );
    }
    ensure!(
        fs::read(replica.join("d/z-big-moved"))? == blocks(2, BIG_MIB),
        "the big file renamed during the resync does not hold its bytes on the replica"
    );
    println!(
        "vanishing files: {} deleted, {} renamed during the resync (status before: {} files \
         left); d/a-big-gone had {at_unlink} bytes on the replica when deleted",
        deleted.len(),
        renamed.len(),
        before["resync"]["files_left"]
    );
    Ok(())
}

/// `serve` SIGKILLed and restarted eight times at different points (in sync,
/// before the primary noticed, mid-resync, right after it listens, just
/// connected) under a writing application: the application never sees an
/// error, and at the end the trees are identical and hold every write it saw
/// acknowledged.
#[test]
fn peer_restarting_repeatedly_loses_no_acknowledged_write() -> Result<()> {
    /// Where a round's kill falls. Every round ends with its kill, so each
    /// but the first starts with `serve` down.
    #[derive(Debug, Clone, Copy)]
    enum KillAt {
        /// `serve` (re)started, the primary in sync on a connection made
        /// since the last kill.
        InSync,
        /// Once the primary noticed the last kill: 8 MiB written ALONE,
        /// `serve` restarted, killed when 1 MiB of the resync went out.
        Resyncing,
        /// `serve` restarted, killed as soon as it listens (before or
        /// during the primary's handshake).
        Listening,
        /// `serve` restarted, killed as soon as the primary reports a
        /// connection made since the last kill.
        Connected,
    }
    use KillAt::*;
    /// Each round's kill point, and whether to await ALONE after the kill
    /// (else the next `serve` starts before the primary notices).
    const PLAN: [(KillAt, bool); 8] = [
        (InSync, false),
        (InSync, true),
        (Resyncing, true),
        (Listening, false),
        (Connected, false),
        (Resyncing, true),
        (Listening, false),
        (InSync, true),
    ];
    let mut m = Mirror::prepare()?;
    // 8 MB/s: a resync of 8 MiB takes a second, time enough to kill in it.
    let control = m.start_controlled(&[&ALONE[..], &["--resync-rate-limit", "8"]].concat())?;
    let (mnt, backing, replica) = (m.mnt(), m.backing(), m.replica());
    let writer = Writer::start(mnt.join("live"))?;
    writer.wait_writes(10, "the writer's first writes")?;
    let started = Instant::now();
    let mut killed: Option<Instant> = None;
    for (round, (at, notice)) in (0u64..).zip(PLAN) {
        let step = || format!("round {round}: kill at {at:?}");
        // A role the primary took since the last kill (not one left over
        // from the connection to the dead `serve`, which it may not have
        // noticed yet).
        let new_role = |v: &Value| {
            killed.is_none_or(|t| {
                v["role_secs"].as_f64().unwrap_or(f64::MAX) < t.elapsed().as_secs_f64()
            })
        };
        match at {
            InSync => {
                if killed.is_some() {
                    m.start_serve().with_context(step)?;
                }
                m.wait_status(&control, RESYNC_DEADLINE, "in sync again", |v| {
                    in_sync(v) && new_role(v)
                })
                .with_context(step)?;
            }
            Resyncing => {
                m.wait_alone(&control).with_context(step)?;
                run_fs(FS_DEADLINE, "8 MiB ALONE", &mnt, move |mnt| {
                    write_blocks(&mnt.join(format!("bulk{round}")), 1000 + round, 8)
                })?;
                let rx0 = m.node2.rx_bytes()?;
                m.start_serve().with_context(step)?;
                let node2 = m.node2.clone();
                m.wait_status(
                    &control,
                    RESYNC_START_DEADLINE,
                    "RESYNC with 1 MiB received by node2",
                    |v| role(v) == "RESYNC" && received_since(&node2, rx0) > MIB as u64,
                )
                .with_context(step)?;
            }
            Listening => m.start_serve().with_context(step)?,
            Connected => {
                m.start_serve().with_context(step)?;
                m.wait_status(&control, RESYNC_DEADLINE, "connected again", |v| {
                    v["connected"] == true && new_role(v)
                })
                .with_context(step)?;
            }
        }
        m.kill_serve().with_context(step)?;
        killed = Some(Instant::now());
        if notice {
            m.wait_alone(&control).with_context(step)?;
        }
        writer.check_running().with_context(step)?;
        ensure!(
            started.elapsed() < Duration::from_secs(120),
            "{}: the rounds take over 2 minutes",
            step()
        );
    }
    m.start_serve()?;
    writer.wait_writes(writer.writes() + 10, "writes after the last restart")?;
    m.wait_in_sync(&control, RESYNC_DEADLINE)?;
    let writes = writer.finish()?;
    let rounds_time = started.elapsed();
    // The writer's last writes, replicated as they were made.
    m.wait_in_sync(&control, RESYNC_DEADLINE)?;
    m.expect_replica_identical()?;
    for side in [&backing, &replica] {
        Writer::expect_last_writes(&side.join("live"), writes)?;
    }
    println!(
        "peer restarts: {} kills in {rounds_time:?}; writer {writes} writes, slowest {:?}",
        PLAN.len(),
        writer.slowest()
    );
    Ok(())
}

// ---------------------------------------------------------------- helpers

/// A tmpfs of a few MiB mounted over a directory: the secondary's small disk.
/// Unmounted (lazily: `serve` may still hold files on it) when dropped, also
/// when the test fails. (Also the on-sync tests' small disk.)
pub(crate) struct Tmpfs {
    point: PathBuf,
}

impl Tmpfs {
    pub(crate) fn mount(point: &Path, mib: u64) -> Result<Self> {
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={mib}m,mode=0755"))
                .arg("mirrorfs-e2e-small-disk")
                .arg(point),
        )?;
        Ok(Self {
            point: point.to_owned(),
        })
    }

    /// Grows (or shrinks) it to `mib` MiB in place: the operator frees space.
    pub(crate) fn resize(&self, mib: u64) -> Result<()> {
        run_ok(
            Command::new("mount")
                .args(["-o"])
                .arg(format!("remount,size={mib}m"))
                .arg(&self.point),
        )?;
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = run_ok(Command::new("umount").arg("-l").arg(&self.point)) {
            eprintln!(
                "cannot unmount the tmpfs at {}: {e:#}",
                self.point.display()
            );
        }
    }
}

/// `mib` MiB of block `i` = `pseudo_random(seed * 1000 + i, 1 MiB)`.
fn blocks(seed: u64, mib: usize) -> Vec<u8> {
    (0..mib as u64)
        .flat_map(|i| pseudo_random(seed * 1000 + i, MIB))
        .collect()
}

/// Creates (truncates) `path` with [`blocks`]`(seed, mib)`, then fsyncs.
fn write_blocks(path: &Path, seed: u64, mib: usize) -> io::Result<()> {
    let mut f = File::create(path)?;
    for i in 0..mib as u64 {
        f.write_all(&pseudo_random(seed * 1000 + i, MIB))?;
    }
    f.sync_all()
}

/// Of the `mib` 1 MiB blocks of `path`, how many are already those of
/// [`blocks`]`(seed, mib)` and how many not.
fn count_blocks(path: &Path, seed: u64, mib: usize) -> Result<(usize, usize)> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; MIB];
    let mut new = 0;
    for i in 0..mib {
        let n = f.read_at(&mut buf, (i * MIB) as u64)?;
        if n == MIB && buf == pseudo_random(seed * 1000 + i as u64, MIB) {
            new += 1;
        }
    }
    Ok((new, mib - new))
}

/// Writes [`blocks`]`(seed, mib)` to a new `path` with pwrite, 1 MiB at a
/// time, then fsyncs; stops at the first error. Returns the bytes the kernel
/// reported written, and that error.
fn fill(path: &Path, seed: u64, mib: usize) -> io::Result<(usize, Option<io::Error>)> {
    let f = OpenOptions::new().create_new(true).write(true).open(path)?;
    let data = blocks(seed, mib);
    let mut acked = 0;
    while acked < data.len() {
        match f.write_at(&data[acked..(acked + MIB).min(data.len())], acked as u64) {
            Ok(0) => return Ok((acked, Some(io::Error::other("pwrite wrote 0 bytes")))),
            Ok(n) => acked += n,
            Err(e) => return Ok((acked, Some(e))),
        }
    }
    match f.sync_all() {
        Ok(()) => Ok((acked, None)),
        Err(e) => Ok((acked, Some(e))),
    }
}

/// Bytes `node` received since its counter read `since` (0 if unreadable).
fn received_since(node: &Node, since: u64) -> u64 {
    node.rx_bytes().map_or(0, |rx| rx.saturating_sub(since))
}

/// How many attempts to resync `path` the mount logged as failed for lack of
/// space on the secondary.
fn enospc_retries_logged(m: &Mirror, path: &str) -> usize {
    let log = m.mount().map(|p| p.stderr()).unwrap_or_default();
    let field = format!("path={path} ");
    log.lines()
        .filter(|l| l.contains("resync of a path failed") && l.contains(&field))
        .filter(|l| l.contains("No space left"))
        .count()
}
