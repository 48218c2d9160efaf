//! Issue 3, crash consistency: a primary whose `mirrorfs mount` is SIGKILLed
//! in the middle of a write workload, and which comes back as the secondary
//! (`mirrorfs serve` over its old backing dir), loses no write the application
//! saw acknowledged, and whatever it applied alone at the kill is replaced by
//! the new primary's version; and a split brain, refused on reconnect, is
//! resolved by `mirrorfs discard` on the losing side without losing its files.
//!
//! Failover is done by hand, as the controller will do it: the surviving
//! node's `serve` is stopped and `mirrorfs mount --alone` started over its
//! replica, then `serve` is started on the dead primary's node over its old
//! backing dir, and the new primary reconnects by itself and resyncs.
//!
//! Every process is the fixture's (`Mirror`) or held in a [`Cluster`], whose
//! process fields (the writer, a python3 child, and the `Proc`s of each
//! side's mount and serve) are declared before the fixture and so stop first,
//! each one exactly the PID it started, also when a test fails.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::util::lab::{Node, Proc};
use crate::util::mirror::{
    in_sync, last_error, role, wait_mounted, wait_serve_listening, Mirror, MountArgs,
    ALONE_DEADLINE, PORT, PRIM_DEADLINE,
};
use crate::util::{
    is_fuse_mount, mirrorfs_bin, pseudo_random, run_fs, run_ok, tail, wait_for, within,
    write_synced, Probe,
};

/// Kill rounds unless `MIRRORFS_E2E_CRASH_ROUNDS` says otherwise.
const DEFAULT_ROUNDS: u64 = 20;
/// The kill comes once the writer has seen between 1 and this many records
/// acknowledged in the round (drawn from the seed).
const MAX_ACKS_BEFORE_KILL: u64 = 150;
/// Then, up to this many microseconds later (drawn from the seed; about the
/// time the writer takes for one record): so the SIGKILL lands anywhere in
/// the record's operations, not always just after an acknowledgement. This
/// places the kill; it waits for nothing.
const MAX_KILL_JITTER_US: u64 = 3000;
/// From the start of the new primary's mount to PRIM with nothing dirty: its
/// backoff (≤ 5 s) and a handshake (≤ 5 s), then a resync of a few directories.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);
/// How long the writer may take to reach its kill point, and to exit once
/// its mount is dead.
const WRITER_DEADLINE: Duration = Duration::from_secs(30);
/// How long file work through a mount may take before it counts as a hang.
const FS_DEADLINE: Duration = Duration::from_secs(60);
/// The mount options that make the primary carry on ALONE, and notice a lost
/// secondary within a couple of seconds.
const ALONE: [&str; 3] = ["--on-peer-loss=alone", "--peer-timeout", "2"];

// ---------------------------------------------------------------- the workload

/// Log files the writer appends to, round-robin.
const LOGS: u64 = 3;

/// The application: for record `seq` of round `round` it appends
/// [`record_line`] to `logs/log<seq % LOGS>` and fsyncs it; appends
/// [`chunk`] (1 to 64 KiB, so an op is in flight long enough for the kill to
/// catch it applied on one side only) to `data/r<round>/chunks` and fsyncs
/// it; for an even `seq` it writes [`file_content`] to `files/.tmp-<id>`,
/// fsyncs it and renames it to `files/<id>` (fsyncing the dir); for an odd
/// `seq` ≥ 3 it moves `files/<id of seq-3>` to `moved/` (fsyncing both
/// dirs). Only then does it print the record's id, flushed: a printed id is
/// an acknowledged record. The first error (the mount died) ends it.
const WRITER: &str = r#"
import os, sys
root, rnd, logs_n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
d = {n: os.path.join(root, n) for n in ("logs", "files", "moved", "data/r%d" % rnd)}
for p in d.values():
    os.makedirs(p, exist_ok=True)
flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
logs = [os.open(os.path.join(d["logs"], "log%d" % k), flags, 0o644) for k in range(logs_n)]
data = os.open(os.path.join(d["data/r%d" % rnd], "chunks"), flags, 0o644)

def write_all(fd, b):
    while b:
        b = b[os.write(fd, b):]

def dirsync(p):
    fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

def rid(seq):
    return "r%d-%d" % (rnd, seq)

seq = 0
while True:
    i = rid(seq)
    fd = logs[seq % logs_n]
    write_all(fd, (i + " " + (i + ".") * (1 + seq * 7 % 23) + "\n").encode())
    os.fsync(fd)
    tag = "<" + i + ">"
    size = 1024 * (1 + seq * 13 % 64)
    write_all(data, (tag * (size // len(tag) + 1))[:size].encode())
    os.fsync(data)
    if seq % 2 == 0:
        tmp = os.path.join(d["files"], ".tmp-" + i)
        with open(tmp, "wb") as f:
            f.write((("file " + i + "\n") * (1 + seq % 5)).encode())
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(d["files"], i))
        dirsync(d["files"])
    elif seq >= 3:
        old = rid(seq - 3)
        os.rename(os.path.join(d["files"], old), os.path.join(d["moved"], old))
        dirsync(d["files"])
        dirsync(d["moved"])
    print(i, flush=True)
    seq += 1
"#;

fn record_id(round: u64, seq: u64) -> String {
    format!("r{round}-{seq}")
}

/// The line record `seq` of `round` appends to its log file.
fn record_line(round: u64, seq: u64) -> String {
    let id = record_id(round, seq);
    format!(
        "{id} {}\n",
        format!("{id}.").repeat((1 + seq * 7 % 23) as usize)
    )
}

/// What record `seq` of `round` appends to `data/r<round>/chunks`.
fn chunk(round: u64, seq: u64) -> Vec<u8> {
    let tag = format!("<{}>", record_id(round, seq));
    let size = 1024 * (1 + seq * 13 % 64) as usize;
    tag.repeat(size / tag.len() + 1).into_bytes()[..size].to_vec()
}

/// The bytes of the small file record `seq` (even) creates.
fn file_content(round: u64, seq: u64) -> String {
    format!("file {}\n", record_id(round, seq)).repeat((1 + seq % 5) as usize)
}

/// Parses `r<round>-<seq>`.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (r, s) = id.strip_prefix('r')?.split_once('-')?;
    Some((r.parse().ok()?, s.parse().ok()?))
}

/// Checks what the application may rely on after `rounds` rounds, in which
/// the writer saw `acked[r]` records acknowledged (ids 0..acked[r]; record
/// `acked[r]` may have been in flight at the kill, nothing after it was ever
/// attempted), against the tree at `root`. Returns one line per problem.
fn check_records(root: &Path, acked: &[u64]) -> io::Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for k in 0..LOGS {
        let rel = format!("logs/log{k}");
        let text = match fs::read(root.join(&rel)) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                problems.push(format!("{rel}: missing"));
                continue;
            }
            Err(e) => return Err(e),
        };
        for (n, line) in text.split_inclusive('\n').enumerate() {
            let valid = |line: &str| {
                let id = line.split(' ').next().unwrap_or_default();
                parse_id(id).filter(|&(r, s)| {
                    usize::try_from(r).is_ok_and(|r| r < acked.len())
                        && s <= acked[r as usize]
                        && s % LOGS == k
                        && line == record_line(r, s)
                })
            };
            let id = line.split(' ').next().unwrap_or_default();
            let mut ok = valid(line);
            if ok.is_none() {
                // The record in flight at a kill may be torn (the kernel may
                // split one write into several requests, and the kill can
                // fall between them): a prefix of it (maybe shorter than its
                // id), then nothing or the next whole record appended by a
                // later round.
                ok = acked
                    .iter()
                    .enumerate()
                    .map(|(r, &s)| (r as u64, s))
                    .filter(|&(_, s)| s % LOGS == k)
                    .find(|&(r, s)| {
                        let full = record_line(r, s);
                        (1..full.len()).rev().any(|cut| {
                            line.starts_with(&full[..cut])
                                && (line.len() == cut
                                    || valid(&line[cut..]).is_some_and(|rs| seen.insert(rs)))
                        })
                    });
            }
            match ok {
                Some(rs) if seen.insert(rs) => {}
                Some(_) => problems.push(format!("{rel} line {}: {id} appears twice", n + 1)),
                None => problems.push(format!(
                    "{rel} line {}: not a record the writer wrote here: {:?}",
                    n + 1,
                    tail_chars(line, 80)
                )),
            }
        }
    }
    for (round, &n) in acked.iter().enumerate() {
        let round = round as u64;
        let rel = format!("data/r{round}/chunks");
        match fs::read(root.join(&rel)) {
            Ok(data) => problems.extend(check_chunks(&rel, &data, round, n)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                problems.push(format!("{rel}: missing"));
            }
            Err(e) => return Err(e),
        }
        for seq in 0..n {
            if !seen.contains(&(round, seq)) {
                problems.push(format!(
                    "acknowledged record {} is missing from logs/log{}",
                    record_id(round, seq),
                    seq % LOGS
                ));
            }
            if seq % 2 != 0 {
                continue;
            }
            let id = record_id(round, seq);
            let want = file_content(round, seq);
            let read = |rel: &str| -> io::Result<Option<String>> {
                match fs::read(root.join(rel)) {
                    Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            };
            let (in_files, in_moved) =
                (read(&format!("files/{id}"))?, read(&format!("moved/{id}"))?);
            // Its move is record seq + 3: acknowledged, in flight, or not yet.
            let move_acked = seq + 3 < n;
            let found = match (&in_files, &in_moved, move_acked) {
                (None, Some(c), _) => c,
                (Some(c), None, false) => c,
                (Some(_), None, true) => {
                    problems.push(format!(
                        "files/{id}: still there, but its move to moved/ was acknowledged"
                    ));
                    continue;
                }
                (None, None, _) => {
                    problems.push(format!(
                        "files/{id}: acknowledged, but neither in files/ nor in moved/"
                    ));
                    continue;
                }
                (Some(_), Some(_), _) => {
                    problems.push(format!("{id}: both in files/ and in moved/"));
                    continue;
                }
            };
            if *found != want {
                problems.push(format!("{id}: content {found:?}, want {want:?}"));
            }
            if read(&format!("files/.tmp-{id}"))?.is_some() {
                problems.push(format!(
                    "files/.tmp-{id}: still there, but its rename was acknowledged"
                ));
            }
        }
    }
    Ok(problems)
}

/// `data` (the file `rel`) must hold the chunks of records 0..n, then at
/// most a part of the chunk of record n (in flight at the kill: it may be
/// there whole, in part, or not at all), and nothing else.
fn check_chunks(rel: &str, data: &[u8], round: u64, n: u64) -> Option<String> {
    let mut at = 0;
    for seq in 0..=n {
        let want = chunk(round, seq);
        let got = &data[at.min(data.len())..(at + want.len()).min(data.len())];
        if got != &want[..got.len()] {
            return Some(format!(
                "{rel}: at offset {at}, not the chunk of {}{}",
                record_id(round, seq),
                if seq < n {
                    " (acknowledged)"
                } else {
                    " (in flight)"
                }
            ));
        }
        if got.len() < want.len() && seq < n {
            return Some(format!(
                "{rel}: ends at {} bytes, in the acknowledged chunk of {}",
                data.len(),
                record_id(round, seq)
            ));
        }
        at += want.len();
    }
    (data.len() > at).then(|| {
        format!(
            "{rel}: {} bytes after the chunk of {}, which no acknowledged record wrote",
            data.len() - at,
            record_id(round, n)
        )
    })
}

fn tail_chars(s: &str, n: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    chars[chars.len().saturating_sub(n)..].iter().collect()
}

// ---------------------------------------------------------------- tests

#[test]
fn primary_kill_rounds_lose_no_acknowledged_write() -> Result<()> {
    let rounds = match std::env::var("MIRRORFS_E2E_CRASH_ROUNDS") {
        Ok(s) => s
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= 1)
            .with_context(|| format!("MIRRORFS_E2E_CRASH_ROUNDS={s:?}: want a count >= 1"))?,
        Err(_) => DEFAULT_ROUNDS,
    };
    let seed = match std::env::var("MIRRORFS_E2E_CRASH_SEED") {
        Ok(s) => s
            .parse::<u64>()
            .with_context(|| format!("MIRRORFS_E2E_CRASH_SEED={s:?}: want a u64"))?,
        Err(_) => {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id())
        }
    };
    println!(
        "primary kill rounds: {rounds} rounds (MIRRORFS_E2E_CRASH_ROUNDS), seed {seed} \
         (MIRRORFS_E2E_CRASH_SEED={seed} repeats the kill points)"
    );
    let mut rng = SplitMix(seed);
    let started = Instant::now();
    let mut c = Cluster::new()?;
    c.start_serve(1)?;
    c.start_mount(0, false)?;
    c.wait_status(0, PRIM_DEADLINE, "the first sync to end", in_sync)?;

    let mut acked: Vec<u64> = Vec::new();
    let mut failover_times = Vec::new();
    let mut diverged_rounds = 0;
    for round in 0..rounds {
        let p = (round % 2) as usize;
        let s = 1 - p;
        let target = 1 + rng.below(MAX_ACKS_BEFORE_KILL);
        let jitter = Duration::from_micros(rng.below(MAX_KILL_JITTER_US + 1));
        let what = format!(
            "round {round} (primary {}, kill {jitter:?} after {target} acknowledged records)",
            c.sides[p].name
        );
        c.start_writer(p, round)?;
        c.writer()?
            .wait_acks(target)
            .with_context(|| what.clone())?;
        thread::sleep(jitter);
        c.kill_mount(p).with_context(|| what.clone())?;
        let n = c
            .writer
            .take()
            .context("no writer")?
            .finish()
            .with_context(|| what.clone())?;
        acked.push(n);
        // What the kill left behind: the dead primary's dir may hold an
        // operation it applied but the secondary did not (for the report).
        let out = c.m.verify(&c.sides[p].dir, &c.sides[s].dir)?;
        let diverged = match out.status.code() {
            Some(0) => false,
            Some(1) => true,
            _ => bail!(
                "mirrorfs verify exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        };
        diverged_rounds += u64::from(diverged);

        let t = Instant::now();
        let st = c.failover(p).with_context(|| what.clone())?;
        let to_prim = t.elapsed();
        failover_times.push(to_prim);

        // The application's view on the new primary: every acknowledged record.
        let mnt = c.sides[s].mnt.clone();
        let acked_now = acked.clone();
        let problems = within(FS_DEADLINE, "reading the records", move || {
            check_records(&mnt, &acked_now)
        })?
        .context("reading the records through the new primary's mount")?;
        ensure!(
            problems.is_empty(),
            "{what}: after the failover to {} (status {st}), {} problem(s) with the \
             writer's records (it saw {n} acknowledged in this round):\n{}",
            c.sides[s].name,
            problems.len(),
            problems.join("\n")
        );
        // Quiet now: both directories must be identical.
        c.expect_identical().with_context(|| {
            format!(
                "{what}: after the failover to {} (status {st})",
                c.sides[s].name
            )
        })?;
        println!(
            "round {round}: {} killed after {n} acknowledged records (target {target}, \
             then {jitter:?}); \
             the dirs {} at the kill; {} PRIM {to_prim:?} after the failover began \
             (generation {}); verify clean",
            c.sides[p].name,
            if diverged {
                "differed"
            } else {
                "were identical"
            },
            c.sides[s].name,
            st["generation"]
        );
    }
    let total = started.elapsed();
    let slowest = failover_times.iter().max().copied().unwrap_or_default();
    let mean = failover_times.iter().sum::<Duration>() / (rounds as u32).max(1);
    println!(
        "primary kill rounds: {rounds} rounds, {} records acknowledged, all present; \
         the dirs differed at the kill in {diverged_rounds} rounds; failover to PRIM mean \
         {mean:?}, slowest {slowest:?}; total {total:?} (seed {seed})",
        acked.iter().sum::<u64>()
    );
    Ok(())
}

#[test]
fn split_brain_resolved_by_discard_keeps_the_losers_files() -> Result<()> {
    let mut m = Mirror::prepare()?;
    let control = m.start_controlled(&ALONE)?;
    let (mnt, backing, replica) = (m.mnt(), m.backing(), m.replica());

    let shared = pseudo_random(1, 20_000);
    let untouched = pseudo_random(2, 30_000);
    run_fs(FS_DEADLINE, "the common files", &mnt, {
        let (shared, untouched) = (shared.clone(), untouched.clone());
        move |mnt| {
            write_synced(&mnt.join("shared"), &shared)?;
            write_synced(&mnt.join("untouched"), &untouched)
        }
    })?;

    // The winner, node1, loses its secondary and writes ALONE.
    m.kill_serve()?;
    m.wait_alone(&control)?;
    let file_a = pseudo_random(3, 30_000);
    let shared_a = pseudo_random(4, 25_000);
    run_fs(FS_DEADLINE, "node1's changes", &mnt, {
        let (a, sa) = (file_a.clone(), shared_a.clone());
        move |mnt| {
            write_synced(&mnt.join("fileA"), &a)?;
            write_synced(&mnt.join("shared"), &sa)
        }
    })?;

    // The loser, node2, mounts its replica ALONE and writes too.
    let mnt2 = m.path().join("mnt-node2");
    let control2 = m.path().join("ctl-node2.sock");
    let mut args2 = m.node2_mount_args(replica.clone(), mnt2.clone());
    args2.extra = vec![
        "--alone".into(),
        "--control".into(),
        control2.display().to_string(),
    ];
    m.start_mount(&args2)?;
    m.wait_status(&control2, ALONE_DEADLINE, "node2's mount ALONE", |v| {
        role(v) == "ALONE"
    })?;
    let file_b = pseudo_random(5, 40_000);
    let shared_b = pseudo_random(6, 15_000);
    run_fs(FS_DEADLINE, "node2's changes", &mnt2, {
        let (b, sb) = (file_b.clone(), shared_b.clone());
        move |mnt2| {
            write_synced(&mnt2.join("fileB"), &b)?;
            write_synced(&mnt2.join("shared"), &sb)
        }
    })?;
    let exit = m.unmount(&mnt2)?;
    ensure!(exit.success(), "node2's mount exited {exit} when unmounted");
    // Behind mirrorfs's back (no log knows it): the same size and mtime,
    // other bytes. Only a resync that compares every file repairs it.
    tamper_keeping_size_and_mtime(&replica.join("untouched"), 1000, b"TAMPERED")?;

    // node2 serves again: node1 must refuse, and stay ALONE.
    m.start_serve()?;
    let refused = m.wait_status(
        &control,
        FAILOVER_DEADLINE,
        "node1 to report the split brain",
        |v| last_error(v).contains("split brain") || role(v) != "ALONE",
    )?;
    let why = last_error(&refused);
    ensure!(
        why.contains("split brain") && why.contains("mirrorfs discard"),
        "the reconnect was not refused as a split brain naming `mirrorfs discard`: {refused}"
    );
    ensure!(
        role(&refused) == "ALONE",
        "not ALONE after the refusal: {refused}"
    );
    ensure!(
        fs::read(replica.join("fileB")).ok().as_ref() == Some(&file_b)
            && !replica.join("fileA").exists(),
        "the refused reconnect changed node2's tree"
    );

    // The operator keeps node1's side: on node2, nothing serving, discard.
    m.kill_serve()?;
    let bin = mirrorfs_bin()?;
    let mut argv: Vec<OsString> = vec![bin.into(), "discard".into()];
    argv.extend(["--root".into(), replica.clone().into()]);
    let out = m.node2.run(argv)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "mirrorfs discard --root {} exited {}: {stdout}{}",
        replica.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let kept: Vec<&str> = stdout.lines().map(str::trim).collect();
    for name in ["fileB", "shared"] {
        ensure!(
            kept.contains(&name),
            "mirrorfs discard does not list the kept path {name}:\n{stdout}"
        );
    }
    let prefix = format!("{}/.mirrorfs/discarded-", replica.display());
    let folder = stdout
        .split_whitespace()
        .find(|w| w.starts_with(&prefix))
        .map(|w| PathBuf::from(w.trim_end_matches([':', '.', ','])))
        .with_context(|| format!("mirrorfs discard names no folder {prefix}*:\n{stdout}"))?;
    ensure!(
        folder.is_dir(),
        "mirrorfs discard named {}, which is not a directory:\n{stdout}",
        folder.display()
    );

    // node2 serves again: node1 replaces its tree by a full resync.
    let t = Instant::now();
    m.start_serve()?;
    let mut saw_full = false;
    let synced = m.wait_status(
        &control,
        FAILOVER_DEADLINE,
        "node1 to resync node2 and reach PRIM",
        |v| {
            saw_full |= v["resync"]["full"] == true;
            in_sync(v)
        },
    )?;
    let resync_time = t.elapsed();
    m.expect_identical(&backing, &replica)?;
    for (root, side) in [(&backing, "node1"), (&replica, "node2")] {
        for (name, want) in [
            ("fileA", Some(&file_a)),
            ("shared", Some(&shared_a)),
            ("untouched", Some(&untouched)),
            ("fileB", None),
        ] {
            let got = fs::read(root.join(name)).ok();
            ensure!(
                got.as_ref() == want,
                "{side}'s {name} after the resolution: {}, want {}",
                describe(got.as_deref()),
                describe(want.map(Vec::as_slice))
            );
        }
    }
    for (name, want) in [("fileB", &file_b), ("shared", &shared_b)] {
        let got = fs::read(folder.join(name)).ok();
        ensure!(
            got.as_ref() == Some(want),
            "node2's {name} in {}: {}, want the {} bytes node2 wrote",
            folder.display(),
            describe(got.as_deref()),
            want.len()
        );
    }
    println!(
        "split brain: refused ({}); discard kept {} path(s) in {}; resync to PRIM {resync_time:?} \
         (generation {}, a full resync seen in status: {saw_full})",
        why.split(';').next().unwrap_or(why),
        kept.iter()
            .filter(|l| ["fileB", "shared"].contains(l))
            .count(),
        folder.display(),
        synced["generation"]
    );
    Ok(())
}

// ---------------------------------------------------------------- the cluster

/// One node's half of the mirror: its replicated dir (primary's backing dir
/// or secondary's replica root), where it mounts it, its control socket.
struct Side {
    /// node1 or node2: also the name of its key pair.
    name: &'static str,
    node: Node,
    dir: PathBuf,
    mnt: PathBuf,
    control: PathBuf,
}

/// Two sides that swap roles: a `mount` or a `serve` on each, and the
/// writer. The processes are fields before the fixture, so they stop first.
struct Cluster {
    writer: Option<Writer>,
    mounts: [Option<Proc>; 2],
    serves: [Option<Proc>; 2],
    sides: [Side; 2],
    bin: PathBuf,
    m: Mirror,
}

impl Cluster {
    fn new() -> Result<Self> {
        let m = Mirror::prepare()?;
        let sides = [
            Side {
                name: "node1",
                node: m.node1.clone(),
                dir: m.backing(),
                mnt: m.mnt(),
                control: m.path().join("ctl-node1.sock"),
            },
            Side {
                name: "node2",
                node: m.node2.clone(),
                dir: m.replica(),
                mnt: m.path().join("mnt-node2"),
                control: m.path().join("ctl-node2.sock"),
            },
        ];
        Ok(Self {
            writer: None,
            mounts: [None, None],
            serves: [None, None],
            sides,
            bin: mirrorfs_bin()?,
            m,
        })
    }

    /// `mirrorfs serve` on side `i` over its dir, listening on its address;
    /// waits until it has its UDP socket.
    fn start_serve(&mut self, i: usize) -> Result<()> {
        ensure!(self.serves[i].is_none(), "serve already runs on side {i}");
        let (me, peer) = (&self.sides[i], &self.sides[1 - i]);
        let keys = self.m.keys();
        let argv: Vec<OsString> = vec![
            self.bin.clone().into(),
            "serve".into(),
            "--root".into(),
            me.dir.clone().into(),
            "--listen".into(),
            format!("{}:{PORT}", me.node.ip).into(),
            "--key".into(),
            keys.join(format!("{}.key", me.name)).into(),
            "--cert".into(),
            keys.join(format!("{}.crt", me.name)).into(),
            "--peer-cert".into(),
            keys.join(format!("{}.crt", peer.name)).into(),
        ];
        let mut serve = me.node.spawn("serve", argv)?;
        wait_serve_listening(&me.node, &mut serve)?;
        self.serves[i] = Some(serve);
        Ok(())
    }

    /// Stops side `i`'s serve (SIGTERM), which must exit cleanly.
    fn stop_serve(&mut self, i: usize) -> Result<()> {
        let mut serve = self.serves[i]
            .take()
            .with_context(|| format!("no serve on {}", self.sides[i].name))?;
        let st = serve.stop()?;
        ensure!(
            st.success(),
            "serve on {} exited {st} on SIGTERM: {}",
            self.sides[i].name,
            serve.stderr_tail()
        );
        Ok(())
    }

    /// `mirrorfs mount` on side `i` of its dir (with `--alone` if asked, and
    /// its control socket), peering with the other side; waits for the mount.
    fn start_mount(&mut self, i: usize, alone: bool) -> Result<()> {
        ensure!(self.mounts[i].is_none(), "a mount already runs on side {i}");
        let s = &self.sides[i];
        let mut args: MountArgs = if i == 0 {
            let mut a = self.m.mount_args();
            a.backing = s.dir.clone();
            a.mountpoint = s.mnt.clone();
            a
        } else {
            self.m.node2_mount_args(s.dir.clone(), s.mnt.clone())
        };
        if alone {
            args.extra.push("--alone".into());
        }
        args.extra
            .extend(["--control".into(), s.control.display().to_string()]);
        let mut mount = self.m.spawn_mount(&args)?;
        wait_mounted(&mut mount, &s.mnt).with_context(|| format!("the mount on {}", s.name))?;
        self.mounts[i] = Some(mount);
        Ok(())
    }

    /// SIGKILLs side `i`'s mount process (by its PID) and lazily unmounts
    /// the dead mount point.
    fn kill_mount(&mut self, i: usize) -> Result<()> {
        let mut mount = self.mounts[i]
            .take()
            .with_context(|| format!("no mount on {}", self.sides[i].name))?;
        mount.kill_hard()?;
        let mnt = &self.sides[i].mnt;
        if is_fuse_mount(mnt)? {
            run_ok(Command::new("umount").arg("-l").arg(mnt))?;
        }
        Ok(())
    }

    /// Polls side `i`'s status until `ready`; fails at once if its mount died.
    fn wait_status(
        &mut self,
        i: usize,
        deadline: Duration,
        what: &str,
        mut ready: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        let Self {
            mounts, sides, m, ..
        } = self;
        let side = &sides[i];
        wait_for(deadline, what, || {
            let Some(mount) = mounts[i].as_mut() else {
                return Probe::Fail(anyhow::anyhow!("no mount on {}", side.name));
            };
            match mount.try_status() {
                Ok(None) => {}
                Ok(Some(st)) => {
                    return Probe::Fail(anyhow::anyhow!(
                        "the mount on {} exited ({st}): {}",
                        side.name,
                        mount.stderr_tail()
                    ))
                }
                Err(e) => return Probe::Fail(e),
            }
            match m.status_json(&side.control) {
                Ok(v) if ready(&v) => Probe::Ready(v),
                Ok(v) => Probe::Pending(v.to_string()),
                Err(e) => Probe::Pending(format!("{e:#}")),
            }
        })
    }

    /// Side `p` (the primary) is dead: side `s` stops serving and mounts its
    /// replica `--alone`, then `p` serves its old backing dir, and `s`
    /// reconnects by itself. Returns `s`'s status once PRIM with nothing
    /// dirty.
    fn failover(&mut self, p: usize) -> Result<Value> {
        let s = 1 - p;
        self.stop_serve(s)?;
        self.start_mount(s, true)?;
        self.start_serve(p)?;
        let what = format!("{} PRIM after the failover", self.sides[s].name);
        self.wait_status(s, FAILOVER_DEADLINE, &what, in_sync)
            .with_context(|| self.logs_tail())
    }

    /// The tail of each running process's log, for failure messages.
    fn logs_tail(&self) -> String {
        let mut out = String::new();
        for (kind, procs) in [("mount", &self.mounts), ("serve", &self.serves)] {
            for (side, proc_) in self.sides.iter().zip(procs.iter()) {
                if let Some(p) = proc_ {
                    out += &format!(
                        "--- {kind} on {} (pid {}):\n{}\n",
                        side.name,
                        p.pid(),
                        tail(&p.stderr(), 15)
                    );
                }
            }
        }
        out
    }

    /// Starts the writer on side `i`'s mount.
    fn start_writer(&mut self, i: usize, round: u64) -> Result<()> {
        ensure!(self.writer.is_none(), "a writer is already running");
        self.writer = Some(Writer::start(
            &self.sides[i].mnt,
            round,
            self.m.lab.log_dir(),
        )?);
        Ok(())
    }

    fn writer(&mut self) -> Result<&mut Writer> {
        self.writer.as_mut().context("no writer")
    }

    /// The two sides' dirs are identical: `mirrorfs verify` and the
    /// independent comparison.
    fn expect_identical(&self) -> Result<()> {
        self.m
            .expect_identical(&self.sides[0].dir, &self.sides[1].dir)
    }
}

/// The [`WRITER`] process on a primary's mount, its stdout read line by line
/// as it prints (so the kill follows the awaited acknowledgement closely).
/// Dropping it SIGKILLs that process if it still runs.
struct Writer {
    child: Child,
    round: u64,
    lines: mpsc::Receiver<String>,
    /// Acknowledged ids received so far.
    acked: Vec<String>,
    stderr: PathBuf,
}

impl Writer {
    fn start(mnt: &Path, round: u64, log_dir: &Path) -> Result<Self> {
        let stderr = log_dir.join(format!("writer-r{round}.err"));
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(WRITER)
            .arg(mnt)
            .arg(round.to_string())
            .arg(LOGS.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr)?)
            .spawn()
            .context("cannot start the writer (python3: scripts/setup.sh installs it)")?;
        let mut out = BufReader::new(child.stdout.take().expect("stdout was piped above"));
        let (tx, lines) = mpsc::channel();
        thread::Builder::new()
            .name(format!("writer-r{round}-out"))
            .spawn(move || loop {
                let mut line = String::new();
                match out.read_line(&mut line) {
                    // Only complete lines: a printed and flushed id.
                    Ok(_) if line.ends_with('\n') => {
                        if tx.send(line.trim_end().to_owned()).is_err() {
                            return;
                        }
                    }
                    _ => return, // end of output (the writer exited) or an error
                }
            })?;
        Ok(Self {
            child,
            round,
            lines,
            acked: Vec::new(),
            stderr,
        })
    }

    fn stderr_tail(&self) -> String {
        tail(&fs::read_to_string(&self.stderr).unwrap_or_default(), 5)
    }

    /// Waits until `n` records were acknowledged; fails if the writer stops
    /// first. Returns as soon as the `n`th id is read.
    fn wait_acks(&mut self, n: u64) -> Result<()> {
        let what = format!("{n} acknowledged records");
        wait_for(WRITER_DEADLINE, &what, || loop {
            if self.acked.len() as u64 >= n {
                return Probe::Ready(());
            }
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(id) => self.acked.push(id),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Probe::Pending(format!("{} acknowledged", self.acked.len()))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Probe::Fail(anyhow::anyhow!(
                        "the writer stopped after {} acknowledged records, before the kill: {}",
                        self.acked.len(),
                        self.stderr_tail()
                    ))
                }
            }
        })
    }

    /// After the kill of its mount: waits for the writer to fail and exit,
    /// reads the rest of its output, and returns how many records it saw
    /// acknowledged (checking they are ids 0.. of its round, in order).
    fn finish(mut self) -> Result<u64> {
        let child = &mut self.child;
        let exited = wait_for(WRITER_DEADLINE, "the writer to exit", || {
            match child.try_wait() {
                Ok(Some(st)) => Probe::Ready(st),
                Ok(None) => Probe::Pending("still running".into()),
                Err(e) => Probe::Fail(e.into()),
            }
        })
        .context("the writer did not fail once its mount was killed")?;
        ensure!(
            !exited.success(),
            "the writer exited {exited} after the kill, not with the error of a dead mount"
        );
        let Self { lines, acked, .. } = &mut self;
        wait_for(WRITER_DEADLINE, "the writer's last output", || loop {
            match lines.recv_timeout(Duration::from_millis(200)) {
                Ok(id) => acked.push(id),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Probe::Ready(()),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Probe::Pending(format!("{} ids read", acked.len()))
                }
            }
        })?;
        for (seq, id) in self.acked.iter().enumerate() {
            ensure!(
                *id == record_id(self.round, seq as u64),
                "the writer printed {id:?} as record {seq}"
            );
        }
        Ok(self.acked.len() as u64)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Only our own child, and only while it is not reaped.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------- helpers

/// splitmix64: the kill points, reproducible from the printed seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn describe(b: Option<&[u8]>) -> String {
    match b {
        None => "absent".into(),
        Some(b) => format!("{} bytes beginning {:02x?}", b.len(), &b[..b.len().min(8)]),
    }
}

/// Overwrites `data` at `offset` of `path` in place and restores its mtime.
fn tamper_keeping_size_and_mtime(path: &Path, offset: u64, data: &[u8]) -> Result<()> {
    let mtime = fs::metadata(path)?.modified()?;
    let f = OpenOptions::new().write(true).open(path)?;
    f.write_all_at(data, offset)?;
    f.set_modified(mtime)?;
    f.sync_all()?;
    Ok(())
}

crate::on_sync_twins!(
    primary_kill_rounds_lose_no_acknowledged_write,
    split_brain_resolved_by_discard_keeps_the_losers_files,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_checked_against_what_was_acknowledged() {
        let dir = tempfile::Builder::new()
            .prefix("mirror-crash-check")
            .tempdir_in("/var/tmp")
            .unwrap();
        let root = dir.path();
        for d in ["logs", "files", "moved"] {
            fs::create_dir(root.join(d)).unwrap();
        }
        // Round 0 acknowledged 0..5; 5 (odd: the move of 2) was in flight.
        let mut logs = vec![String::new(); LOGS as usize];
        for seq in 0..5 {
            logs[(seq % LOGS) as usize] += &record_line(0, seq);
        }
        for (k, text) in logs.iter().enumerate() {
            fs::write(root.join(format!("logs/log{k}")), text).unwrap();
        }
        fs::create_dir_all(root.join("data/r0")).unwrap();
        let mut chunks: Vec<u8> = (0..5).flat_map(|seq| chunk(0, seq)).collect();
        chunks.extend_from_slice(&chunk(0, 5)[..100]); // in flight: torn
        fs::write(root.join("data/r0/chunks"), &chunks).unwrap();
        fs::write(root.join("moved/r0-0"), file_content(0, 0)).unwrap();
        fs::write(root.join("files/r0-2"), file_content(0, 2)).unwrap();
        fs::write(root.join("files/r0-4"), file_content(0, 4)).unwrap();
        assert_eq!(check_records(root, &[5]).unwrap(), Vec::<String>::new());
        // The in-flight record torn before its id was whole.
        let in_flight_log = root.join(format!("logs/log{}", 5 % LOGS));
        let whole = fs::read(&in_flight_log).unwrap();
        fs::write(&in_flight_log, [&whole[..], b"r0-"].concat()).unwrap();
        assert_eq!(check_records(root, &[5]).unwrap(), Vec::<String>::new());
        fs::write(&in_flight_log, [&whole[..], b"r1-"].concat()).unwrap();
        assert_eq!(
            check_records(root, &[5]).unwrap().len(),
            1,
            "not a prefix of it"
        );
        fs::write(&in_flight_log, &whole).unwrap();
        // The in-flight move of r0-2 may have happened.
        fs::rename(root.join("files/r0-2"), root.join("moved/r0-2")).unwrap();
        assert_eq!(check_records(root, &[5]).unwrap(), Vec::<String>::new());
        // Record 6 was never attempted; a lost record; a torn line.
        let mut f = OpenOptions::new()
            .append(true)
            .open(root.join("logs/log0"))
            .unwrap();
        f.write_all(record_line(0, 6).as_bytes()).unwrap();
        f.write_all(b"r0-9 r0-9.").unwrap();
        fs::write(root.join("logs/log1"), "").unwrap();
        let problems = check_records(root, &[5]).unwrap();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].contains("r0-6"), "{problems:#?}");
        assert!(problems[1].contains("r0-9"), "{problems:#?}");
        assert!(problems[2].contains("r0-1 is missing"), "{problems:#?}");
        assert!(problems[3].contains("r0-4 is missing"), "{problems:#?}");
        // Chunks: a whole in-flight chunk is fine; more, or a lost one, not.
        let whole: Vec<u8> = (0..6).flat_map(|seq| chunk(0, seq)).collect();
        assert_eq!(check_chunks("c", &whole, 0, 5), None);
        assert_eq!(check_chunks("c", &whole[..whole.len() - 1], 0, 5), None);
        assert!(check_chunks("c", &whole, 0, 4)
            .unwrap()
            .contains("after the chunk of r0-4"));
        let lost = &whole[..chunk(0, 0).len() + 10];
        assert!(check_chunks("c", lost, 0, 5)
            .unwrap()
            .contains("acknowledged chunk of r0-1"));
        let mut bad = whole.clone();
        bad[5] ^= 1;
        assert!(check_chunks("c", &bad, 0, 5).unwrap().contains("offset 0"));
    }
}
