//! Issue 3: degraded mode, generations and resync. With `--on-peer-loss=alone`
//! the primary carries on ALONE when the secondary dies (the application sees
//! no error), records what it changed, and when the same `mirrorfs serve`
//! returns brings the secondary up to date with only the changed files, and
//! within a large file only the changed blocks, while the application keeps
//! writing. The bytes that reach node2 over the wire (its interface's receive
//! counter) show what a resync sent. A split brain (both sides wrote apart) is
//! refused and synchronises nothing; a `--full` resync repairs a replica
//! changed behind the mirror's back; `mirrorfs status` reports all of it, as
//! text and as JSON.
//!
//! Every process is the fixture's (`Mirror`) or the `Writer` thread, which is
//! declared after it and told to stop when dropped; so everything the test
//! started stops, and only that, also when a test fails.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::util::mirror::{in_sync, last_error, role, Mirror, ALONE_DEADLINE, PORT};
use crate::util::writer::Writer;
use crate::util::{pseudo_random, run_fs, sys, write_synced};

const MIB: u64 = 1 << 20;
/// The mount options that make the primary carry on ALONE, and notice a lost
/// secondary within a couple of seconds.
const ALONE: [&str; 3] = ["--on-peer-loss=alone", "--peer-timeout", "2"];
/// How long the primary may take to reconnect (its backoff reaches 5 s) and
/// to finish a resync of a large file, or a `--full` one.
const RESYNC_DEADLINE: Duration = Duration::from_secs(180);
/// How long the resync of a few MiB of changes in a 64 MiB tree may take.
const TREE_RESYNC_DEADLINE: Duration = Duration::from_secs(60);
/// How long a resync of a few small changes may take, reconnection included.
const SMALL_RESYNC_DEADLINE: Duration = Duration::from_secs(30);
/// How long file work through the mount may take before it counts as a hang.
const FS_DEADLINE: Duration = Duration::from_secs(300);
/// Size of the large file of `large_file_resync_sends_only_changed_blocks`
/// in MiB, unless `MIRRORFS_E2E_LARGE_FILE_MIB` says otherwise (e.g. 1024).
const LARGE_FILE_MIB: u64 = 256;

// ---------------------------------------------------------------- tests

#[test]
fn secondary_loss_goes_alone_and_resyncs_incrementally() -> Result<()> {
    let (mut m, control) = start(&ALONE)?;
    let mnt = m.mnt();
    let static_mib = run_fs(
        FS_DEADLINE,
        "writing the 64 MiB tree",
        &mnt,
        write_static_tree,
    )?;
    let tree_bytes = static_mib * MIB;
    let before = m.status_json(&control)?;

    let writer = Writer::start(mnt.join("live"))?;
    writer.wait_writes(20, "the writer's first writes")?;
    m.kill_serve()?;
    let killed = Instant::now();
    let alone = m.wait_alone(&control)?;
    let to_alone = killed.elapsed();
    ensure!(alone["connected"] == false, "ALONE but connected: {alone}");
    ensure!(
        alone["generation"] != before["generation"],
        "going ALONE did not start a new generation: {} before, {} now",
        before["generation"],
        alone["generation"]
    );
    // The application goes on: writes succeed while ALONE.
    writer.wait_writes(writer.writes() + 20, "writes while ALONE")?;

    run_fs(FS_DEADLINE, "changes while ALONE", &mnt, change_while_alone)?;
    let st = m.status_json(&control)?;
    ensure!(role(&st) == "ALONE", "no longer ALONE: {st}");
    ensure!(
        st["dirty_files"].as_u64().unwrap_or(0) > 0,
        "changes were made ALONE but status shows no dirty files: {st}"
    );

    let (rx0, w0) = (m.node2.rx_bytes()?, writer.writes());
    let restarted = Instant::now();
    m.start_serve()?;
    let (synced, seen_resync_bytes) = m.wait_in_sync(&control, TREE_RESYNC_DEADLINE)?;
    let resync_time = restarted.elapsed();
    let rx = m.node2.rx_bytes()? - rx0;
    let live_bytes = (writer.writes() - w0) * Writer::WRITE_SIZE;
    writer
        .check_running()
        .context("the writer must keep running through the resync")?;
    ensure!(
        synced["generation"] == alone["generation"],
        "the resync changed the generation: ALONE {}, in sync {}",
        alone["generation"],
        synced["generation"]
    );
    // Back in synchronous mode: the writer keeps going, replicated as it writes.
    writer.wait_writes(writer.writes() + 20, "writes after the resync")?;
    let writes = writer.finish()?;

    m.expect_replica_identical()?;
    expect_generation_on_replica(&m, &synced)?;
    // Resync: one changed 1 MiB block, a renamed 1 MiB file, a truncated
    // one, ~100 kB of new files and the writer's files: a few MiB, against a
    // 64 MiB tree. The writer's own writes during that time are on top.
    let resync_estimate = rx.saturating_sub(live_bytes);
    println!(
        "secondary loss: ALONE {to_alone:?} after the SIGKILL; writer: {writes} writes, \
         slowest {:?}; resync (serve restart to PRIM) {resync_time:?}; node2 received \
         {rx} bytes, of which the writer wrote {live_bytes}; resync bytes: {} logged, \
         {seen_resync_bytes} seen in status (0: no poll fell inside); tree {tree_bytes} bytes",
        writer.slowest(),
        logged_resync_bytes(&m)
    );
    ensure!(
        rx < tree_bytes / 4 && resync_estimate < 8 * MIB,
        "not incremental: node2 received {rx} bytes during the resync ({live_bytes} of them \
         written live by the application) for a few MiB of changes on a {tree_bytes}-byte tree"
    );
    ensure!(
        seen_resync_bytes < 8 * MIB,
        "status reported {seen_resync_bytes} resync bytes sent for a few MiB of changes"
    );
    Ok(())
}

/// `rm -rf` of a directory, and the rename of a directory holding a file
/// changed while ALONE, leave paths in the dirty log whose parent exists on
/// neither side any more; the resync must still end, in sync.
#[test]
fn dirs_removed_or_renamed_while_alone_resync() -> Result<()> {
    let (mut m, control) = start(&ALONE)?;
    let mnt = m.mnt();
    run_fs(FS_DEADLINE, "dirs while connected", &mnt, |mnt| {
        fs::create_dir_all(mnt.join("gone/sub"))?;
        write_synced(&mnt.join("gone/f"), b"f")?;
        write_synced(&mnt.join("gone/sub/g"), b"g")?;
        fs::create_dir(mnt.join("old"))?;
        write_synced(&mnt.join("old/f"), b"before")
    })?;
    m.kill_serve()?;
    m.wait_alone(&control)?;
    run_fs(
        FS_DEADLINE,
        "rm -rf, and a dir rename, while ALONE",
        &mnt,
        |mnt| {
            fs::remove_dir_all(mnt.join("gone"))?;
            write_synced(&mnt.join("old/f"), b"changed while ALONE")?;
            fs::rename(mnt.join("old"), mnt.join("new"))
        },
    )?;
    m.start_serve()?;
    m.wait_in_sync(&control, SMALL_RESYNC_DEADLINE)?;
    m.expect_replica_identical()
}

/// Look-alikes changed while ALONE: directories swapped with
/// `RENAME_EXCHANGE`, holding entries of the same names and kinds (at two
/// levels) but other contents; and one name of a hard-linked pair removed and
/// created again. The resync cannot tell them apart by name and kind, yet
/// every file must end up with the right bytes, and the other name of the
/// pair must keep the old ones. The entries are laid down on both sides
/// before the first start (equal, so the start's full resync sends nothing),
/// so no recent-activity record makes the resync compare them anyway.
#[test]
fn look_alikes_changed_while_alone_resync() -> Result<()> {
    let mut m = Mirror::prepare()?;
    for root in [m.backing(), m.replica()] {
        for (dir, tag) in [("a", b"A"), ("b", b"B")] {
            fs::create_dir_all(root.join(dir).join("sub"))?;
            fs::write(root.join(dir).join("x"), tag)?;
            fs::write(root.join(dir).join("sub/y"), tag)?;
        }
        fs::write(root.join("h1"), b"old")?;
        fs::hard_link(root.join("h1"), root.join("h2"))?;
    }
    let control = m.start_controlled(&ALONE)?;
    m.wait_in_sync(&control, SMALL_RESYNC_DEADLINE)?;
    let mnt = m.mnt();
    m.kill_serve()?;
    m.wait_alone(&control)?;
    run_fs(
        FS_DEADLINE,
        "RENAME_EXCHANGE a <-> b, h1 anew",
        &mnt,
        |mnt| {
            sys::renameat2(&mnt.join("a"), &mnt.join("b"), libc::RENAME_EXCHANGE)?;
            fs::remove_file(mnt.join("h1"))?;
            write_synced(&mnt.join("h1"), b"new")
        },
    )?;
    m.start_serve()?;
    m.wait_in_sync(&control, SMALL_RESYNC_DEADLINE)?;
    ensure!(
        fs::read(m.replica().join("a/sub/y"))? == b"B"
            && fs::read(m.replica().join("b/x"))? == b"A",
        "the replica's a/ and b/ were not swapped with the backing dir's"
    );
    let (h1, h2) = (
        fs::read(m.replica().join("h1"))?,
        fs::read(m.replica().join("h2"))?,
    );
    ensure!(
        h1 == b"new" && h2 == b"old",
        "h1 created anew while ALONE: the replica holds h1 {:?}, h2 {:?} (want \"new\", \"old\")",
        String::from_utf8_lossy(&h1),
        String::from_utf8_lossy(&h2)
    );
    m.expect_replica_identical()
}

/// A log rotated, a directory renamed, a file renamed out of it, all while
/// ALONE: the resync moves them on the secondary instead of sending their 32
/// MiB again, and still finds the one block changed after the move.
#[test]
fn renames_while_alone_move_instead_of_copying() -> Result<()> {
    let (mut m, control) = start(&ALONE)?;
    let mnt = m.mnt();
    run_fs(FS_DEADLINE, "a log and a directory", &mnt, |mnt| {
        write_synced(&mnt.join("log"), &pseudo_random(400, 16 * MIB as usize))?;
        fs::create_dir(mnt.join("d"))?;
        for i in 0..4 {
            write_synced(
                &mnt.join(format!("d/f{i}")),
                &pseudo_random(410 + i, 4 * MIB as usize),
            )?;
        }
        Ok(())
    })?;
    m.kill_serve()?;
    m.wait_alone(&control)?;
    run_fs(FS_DEADLINE, "renames while ALONE", &mnt, |mnt| {
        fs::rename(mnt.join("log"), mnt.join("log.1"))?;
        write_synced(&mnt.join("log"), b"a new log\n")?;
        fs::rename(mnt.join("d"), mnt.join("e"))?;
        fs::rename(mnt.join("e/f1"), mnt.join("moved-f1"))?;
        let f = OpenOptions::new().write(true).open(mnt.join("e/f0"))?;
        f.write_all_at(b"changed after the move", 4096)?;
        f.sync_all()
    })?;
    let rx0 = m.node2.rx_bytes()?;
    m.start_serve()?;
    m.wait_in_sync(&control, SMALL_RESYNC_DEADLINE)?;
    let rx = m.node2.rx_bytes()? - rx0;
    m.expect_replica_identical()?;
    println!(
        "renames while ALONE: node2 received {rx} bytes for 32 MiB renamed ({} resync bytes logged)",
        logged_resync_bytes(&m)
    );
    ensure!(
        rx < 4 * MIB,
        "node2 received {rx} bytes: the 32 MiB renamed while ALONE were sent again, not moved"
    );
    Ok(())
}

/// A file with only some dirty blocks, gone from the replica behind the
/// mirror's back (an operator, a restore): the resync must not send just the
/// dirty blocks into a new, empty file and call it in sync. The file is laid
/// down on both sides before the first start, so no recent-activity record
/// makes the resync compare it in full anyway.
#[test]
fn dirty_blocks_of_a_file_missing_on_the_replica_resync_all_of_it() -> Result<()> {
    let mut m = Mirror::prepare()?;
    let data = pseudo_random(500, 4 * MIB as usize);
    fs::write(m.backing().join("big"), &data)?;
    fs::write(m.replica().join("big"), &data)?;
    let control = m.start_controlled(&ALONE)?;
    m.wait_in_sync(&control, SMALL_RESYNC_DEADLINE)?;
    let mnt = m.mnt();
    // Opened while in sync (a writable open marks the whole file), written
    // while ALONE: only that block is dirty.
    let f = run_fs(FS_DEADLINE, "opening big", &mnt, |mnt| {
        OpenOptions::new().write(true).open(mnt.join("big"))
    })?;
    m.kill_serve()?;
    m.wait_alone(&control)?;
    run_fs(
        FS_DEADLINE,
        "one block changed while ALONE",
        &mnt,
        move |_| {
            f.write_all_at(b"changed while ALONE", MIB + 10)?;
            f.sync_all()
        },
    )?;
    let st = m.status_json(&control)?;
    ensure!(
        st["dirty_files"] == 1,
        "one file dirty (in one block) expected, status: {st}"
    );
    fs::remove_file(m.replica().join("big"))?;
    m.start_serve()?;
    m.wait_in_sync(&control, SMALL_RESYNC_DEADLINE)?;
    m.expect_replica_identical()
}

#[test]
fn status_reports_prim_and_json_is_parseable() -> Result<()> {
    let (m, control) = start(&[])?;
    let mode = fs::symlink_metadata(&control)?.permissions().mode() & 0o777;
    ensure!(
        mode == 0o600,
        "the control socket is mode {mode:o}, not 0600 (root only)"
    );

    let out = m.status_cmd(&control, false)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "mirrorfs status exited {}: {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| -> Result<String> {
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_owned())
            })
            .with_context(|| format!("no {name:?} line in mirrorfs status:\n{text}"))
    };
    ensure!(field("role")? == "PRIM", "text status:\n{text}");
    ensure!(field("connected")? == "yes", "text status:\n{text}");
    ensure!(
        field("ack")?.starts_with(m.ack().name()),
        "text status (--ack {}):\n{text}",
        m.ack().name()
    );
    let peer = format!("{}:{PORT}", m.node2.ip);
    ensure!(field("peer")?.contains(&peer), "text status:\n{text}");
    let text_generation = field("generation")?;
    ensure!(
        is_generation(&text_generation),
        "generation {text_generation:?} is not 16 hex digits:\n{text}"
    );

    let v = m.status_json(&control)?;
    ensure!(role(&v) == "PRIM", "json status: {v}");
    ensure!(v["connected"] == true, "json status: {v}");
    let generation = v["generation"].as_str().unwrap_or_default();
    ensure!(
        is_generation(generation),
        "generation {} is not a string of 16 hex digits: {v}",
        v["generation"]
    );
    ensure!(
        generation == text_generation,
        "text ({text_generation}) and JSON ({generation}) disagree on the generation"
    );
    ensure!(v["peer"] == peer.as_str(), "peer is not {peer}: {v}");
    ensure!(v["peer_node"] == "node2", "peer_node is not node2: {v}");
    ensure!(v["dirty_files"] == 0, "dirty files while in sync: {v}");
    ensure!(v["ops_in_flight"].is_u64(), "ops_in_flight: {v}");
    ensure!(v["ack"] == m.ack().name(), "ack: {v}");
    ensure!(v["resync"].is_null(), "a resync while in sync: {v}");
    ensure!(
        v["role_secs"].as_f64().is_some_and(|s| s >= 0.0),
        "role_secs: {v}"
    );
    ensure!(
        v.get("last_error").is_some(),
        "no last_error field (null when none): {v}"
    );
    expect_generation_on_replica(&m, &v)?;

    // No socket, or something that is not one: exit 2, naming the path.
    let not_a_socket = m.path().join("not-a-socket");
    fs::write(&not_a_socket, b"")?;
    for path in [Path::new("/nonexistent"), &not_a_socket] {
        for json in [false, true] {
            let out = m.status_cmd(path, json)?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            ensure!(
                out.status.code() == Some(2),
                "mirrorfs status --control {} (json: {json}) exited {}, want 2: {stderr}",
                path.display(),
                out.status
            );
            ensure!(
                stderr.contains(&*path.to_string_lossy()),
                "mirrorfs status --control {} does not name the path: {stderr}",
                path.display()
            );
        }
    }
    Ok(())
}

#[test]
fn split_brain_is_detected_and_nothing_is_synchronised() -> Result<()> {
    let (mut m, control) = start(&ALONE)?;
    let (mnt, replica) = (m.mnt(), m.replica());
    let common = pseudo_random(1, 50_000);
    run_fs(FS_DEADLINE, "the common file", &mnt, {
        let common = common.clone();
        move |mnt| write_synced(&mnt.join("common"), &common)
    })?;

    let parted = m.status_json(&control)?["generation"].clone();
    // The primary loses the secondary and writes fileA ALONE.
    m.kill_serve()?;
    m.wait_alone(&control)?;
    let file_a = pseudo_random(2, 30_000);
    run_fs(FS_DEADLINE, "fileA on the primary", &mnt, {
        let a = file_a.clone();
        move |mnt| write_synced(&mnt.join("fileA"), &a)
    })?;

    // Meanwhile node2 is used as a primary of its own: its replica is mounted
    // ALONE (its peer, node1's address, has no server) and fileB written.
    let mnt2 = m.path().join("mnt-node2");
    let control2 = m.path().join("ctl-node2.sock");
    let mut args = m.node2_mount_args(replica.clone(), mnt2.clone());
    args.extra = vec![
        "--alone".into(),
        "--control".into(),
        control2.display().to_string(),
    ];
    m.start_mount(&args)?;
    m.wait_status(&control2, ALONE_DEADLINE, "node2's mount ALONE", |v| {
        role(v) == "ALONE"
    })?;
    let file_b = pseudo_random(3, 40_000);
    run_fs(FS_DEADLINE, "fileB on node2", &mnt2, {
        let b = file_b.clone();
        move |mnt2| write_synced(&mnt2.join("fileB"), &b)
    })?;
    // For the diagnosis below: writing ALONE should be a generation of its
    // own, else nothing tells, when the two meet again, that node2 wrote.
    let node2_generation = m.status_json(&control2)?["generation"].clone();
    let exit = m.unmount(&mnt2)?;
    ensure!(exit.success(), "node2's mount exited {exit} when unmounted");

    // The secondary returns as before: the reconnect must be refused.
    m.start_serve()?;
    let refused = m.wait_status(
        &control,
        RESYNC_DEADLINE,
        "last_error to report a split brain",
        |v| last_error(v).contains("split brain") || role(v) != "ALONE",
    )?;
    if !last_error(&refused).contains("split brain") {
        // Let the resync that should not have started end, then say what it did.
        let end = m
            .wait_status(
                &control,
                SMALL_RESYNC_DEADLINE,
                "the resync to end",
                in_sync,
            )
            .unwrap_or_else(|e| serde_json::json!(format!("{e:#}")));
        bail!(
            "the split brain was not detected: node1 resynchronised node2 (status then: \
             {end}); on the replica now: fileA {}, fileB {} (fileB was written on node2 \
             only). node2's mount --alone wrote at generation {node2_generation}; the \
             generation both held when they parted was {parted}",
            if replica.join("fileA").exists() {
                "present"
            } else {
                "absent"
            },
            if replica.join("fileB").exists() {
                "present"
            } else {
                "LOST"
            },
        );
    }
    let why = last_error(&refused);
    ensure!(
        why.contains("mirrorfs discard"),
        "the split-brain message does not name `mirrorfs discard`: {why}"
    );
    ensure!(
        role(&refused) == "ALONE",
        "not ALONE after the refusal: {refused}"
    );
    ensure!(
        refused["connected"] == false,
        "connected despite the split brain: {refused}"
    );

    // The primary still works ALONE, and records it.
    let file_a2 = pseudo_random(4, 1000);
    run_fs(FS_DEADLINE, "fileA2 after the refusal", &mnt, {
        let a2 = file_a2.clone();
        move |mnt| write_synced(&mnt.join("fileA2"), &a2)
    })?;
    let after = m.status_json(&control)?;
    ensure!(role(&after) == "ALONE", "not ALONE: {after}");
    ensure!(
        after["dirty_files"].as_u64().unwrap_or(0) > 0,
        "no dirty files: {after}"
    );

    // Nothing crossed in either direction; nothing was lost on either side.
    let backing = m.backing();
    for (root, name, want) in [
        (&replica, "common", Some(&common)),
        (&replica, "fileB", Some(&file_b)),
        (&replica, "fileA", None),
        (&replica, "fileA2", None),
        (&backing, "common", Some(&common)),
        (&backing, "fileA", Some(&file_a)),
        (&backing, "fileA2", Some(&file_a2)),
        (&backing, "fileB", None),
    ] {
        let path = root.join(name);
        match (want, fs::read(&path)) {
            (Some(want), Ok(got)) => ensure!(
                &got == want,
                "{} was changed by the split brain",
                path.display()
            ),
            (Some(_), Err(e)) => bail!("{} was lost in the split brain: {e}", path.display()),
            (None, Err(e)) if e.kind() == io::ErrorKind::NotFound => {}
            (None, Err(e)) => bail!("{}: {e}", path.display()),
            (None, Ok(_)) => bail!(
                "{} was synchronised despite the split brain",
                path.display()
            ),
        }
    }
    Ok(())
}

#[test]
fn large_file_resync_sends_only_changed_blocks() -> Result<()> {
    let mib = match std::env::var("MIRRORFS_E2E_LARGE_FILE_MIB") {
        Ok(s) => s
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= 16)
            .with_context(|| format!("MIRRORFS_E2E_LARGE_FILE_MIB={s:?}: want MiB, >= 16"))?,
        Err(_) => LARGE_FILE_MIB,
    };
    let size = mib * MIB;
    let (mut m, control) = start(&ALONE)?;
    let mnt = m.mnt();
    let t = Instant::now();
    run_fs(FS_DEADLINE, "writing the large file", &mnt, move |mnt| {
        let mut f = File::create(mnt.join("large"))?;
        for i in 0..mib {
            f.write_all(&pseudo_random(1000 + i, MIB as usize))?;
        }
        f.sync_all()
    })?;
    let write_time = t.elapsed();

    m.kill_serve()?;
    m.wait_alone(&control)?;
    // Three 4 KiB regions, each in a different 1 MiB block.
    let regions: Vec<(u64, Vec<u8>)> =
        [7 * MIB + 1000, size / 2 + 5 * 4096, size - 3 * MIB + 12345]
            .into_iter()
            .zip(1..)
            .map(|(offset, seed)| (offset, pseudo_random(7000 + seed, 4096)))
            .collect();
    run_fs(FS_DEADLINE, "changing three regions ALONE", &mnt, {
        let regions = regions.clone();
        move |mnt| {
            let f = OpenOptions::new().write(true).open(mnt.join("large"))?;
            for (offset, data) in &regions {
                f.write_all_at(data, *offset)?;
            }
            f.sync_all()
        }
    })?;
    let st = m.status_json(&control)?;
    ensure!(
        st["dirty_files"].as_u64().unwrap_or(0) > 0,
        "the large file was changed ALONE but status shows no dirty files: {st}"
    );

    let rx0 = m.node2.rx_bytes()?;
    let restarted = Instant::now();
    m.start_serve()?;
    let (_, seen_resync_bytes) = m.wait_in_sync(&control, RESYNC_DEADLINE)?;
    let resync_time = restarted.elapsed();
    let rx = m.node2.rx_bytes()? - rx0;

    let replica = File::open(m.replica().join("large"))?;
    for (offset, data) in &regions {
        let mut got = vec![0u8; data.len()];
        replica.read_exact_at(&mut got, *offset)?;
        ensure!(
            &got == data,
            "the region changed ALONE at offset {offset} is not on the replica"
        );
    }
    let t = Instant::now();
    m.expect_replica_identical()?;
    println!(
        "large file: {mib} MiB written through the mount in {write_time:?}; 3 x 4 KiB changed \
         ALONE; resync (serve restart to PRIM) {resync_time:?}; node2 received {rx} bytes; \
         resync bytes: {} logged, {seen_resync_bytes} seen in status; verification {:?}",
        logged_resync_bytes(&m),
        t.elapsed()
    );
    ensure!(
        rx < 16 * MIB,
        "node2 received {rx} bytes to resync three changed 4 KiB regions of a {mib} MiB \
         file: more than the changed 1 MiB blocks"
    );
    Ok(())
}

#[test]
fn full_resync_after_tampering() -> Result<()> {
    let (mut m, control) = start(&[])?;
    let mnt = m.mnt();
    run_fs(FS_DEADLINE, "writing the tree", &mnt, |mnt| {
        fs::create_dir(mnt.join("files"))?;
        for i in 0..16 {
            write_synced(
                &mnt.join(format!("files/{i}")),
                &pseudo_random(i, MIB as usize),
            )?;
        }
        write_synced(&mnt.join("big"), &pseudo_random(100, 8 * MIB as usize))?;
        write_synced(&mnt.join("notes"), b"the original notes\n")
    })?;
    let tree_bytes = 24 * MIB;
    m.expect_replica_identical()?;

    let exit = m.unmount(&mnt)?;
    ensure!(
        exit.success(),
        "mirrorfs mount exited {exit} when unmounted"
    );

    // Same sizes, same mtimes, different bytes: only a checksum sees it.
    let replica = m.replica();
    for (name, offset, data) in [
        ("files/5", 500_000, &b"tampered"[..]),
        ("big", 5 * MIB + 4096, &pseudo_random(200, 4096)[..]),
        ("notes", 4, &b"ORIGINAL"[..]),
    ] {
        let path = replica.join(name);
        let mtime = fs::metadata(&path)?.modified()?;
        let f = OpenOptions::new().write(true).open(&path)?;
        f.write_all_at(data, offset)?;
        f.set_modified(mtime)?;
    }
    // Same bytes, other metadata: an hour-old mtime, a stray attribute, one
    // extra byte. The comparison must not stop at equal block checksums.
    let path = replica.join("files/6");
    let mtime = fs::metadata(&path)?.modified()?;
    OpenOptions::new()
        .write(true)
        .open(&path)?
        .set_modified(mtime - Duration::from_secs(3600))?;
    sys::set_xattr(
        &replica.join("files/7"),
        "user.stray",
        b"only on the replica",
    )?;
    OpenOptions::new()
        .append(true)
        .open(replica.join("files/8"))?
        .write_all(b"+")?;
    let out = m.verify(&m.backing(), &replica)?;
    ensure!(
        out.status.code() == Some(1),
        "mirrorfs verify does not see the tampering (exit {}): {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );

    let rx0 = m.node2.rx_bytes()?;
    let t = Instant::now();
    let mut args = m.mount_args();
    args.extra = vec![
        "--full".into(),
        "--control".into(),
        control.display().to_string(),
    ];
    m.start_mount(&args)?;
    let mut saw_full = false;
    m.wait_status(&control, RESYNC_DEADLINE, "the --full resync to end", |v| {
        saw_full |= v["resync"]["full"] == true;
        in_sync(v)
    })?;
    let resync_time = t.elapsed();
    let rx = m.node2.rx_bytes()? - rx0;
    m.expect_replica_identical()?;
    println!(
        "full resync: remount to PRIM {resync_time:?}; node2 received {rx} bytes for a \
         {tree_bytes}-byte tree with 3 tampered blocks and 3 tampered files' metadata ({} \
         resync bytes logged); status \
         showed a full resync: {saw_full}",
        logged_resync_bytes(&m)
    );
    ensure!(
        rx < 8 * MIB,
        "node2 received {rx} bytes in a --full resync of a {tree_bytes}-byte tree that \
         differed in 3 blocks: the files were sent, not compared by checksum"
    );
    Ok(())
}

/// A clean unmount leaves nothing to compare: the next mount's resync does
/// not send again what was written just before it. (The activity log, kept
/// so that after a crash the directories with recent writes are compared,
/// made every clean restart resend the files written in the last minute.)
#[test]
fn a_clean_remount_sends_nothing_again() -> Result<()> {
    let (mut m, control) = start(&[])?;
    let mnt = m.mnt();
    run_fs(FS_DEADLINE, "writing 200 files", &mnt, |mnt| {
        for d in 0..2u64 {
            fs::create_dir(mnt.join(format!("d{d}")))?;
            for i in 0..100 {
                fs::write(
                    mnt.join(format!("d{d}/{i}")),
                    pseudo_random(d * 1000 + i, 16 << 10),
                )?;
            }
        }
        // With --ack on-sync the writes return before the secondary has
        // them; an fsync of the root waits for every one before it.
        File::open(mnt)?.sync_all()
    })?;
    m.expect_replica_identical()?;
    let exit = m.unmount(&mnt)?;
    ensure!(
        exit.success(),
        "mirrorfs mount exited {exit} when unmounted"
    );

    let rx0 = m.node2.rx_bytes()?;
    let mut args = m.mount_args();
    args.extra = vec!["--control".into(), control.display().to_string()];
    m.start_mount(&args)?;
    m.wait_in_sync(&control, SMALL_RESYNC_DEADLINE)?;
    let rx = m.node2.rx_bytes()? - rx0;
    m.expect_replica_identical()?;
    ensure!(
        rx < 256 << 10,
        "node2 received {rx} bytes when the mount of a 3.2 MB tree it holds was \
         restarted cleanly: the tree was sent again"
    );
    Ok(())
}

// ---------------------------------------------------------------- helpers

/// A prepared fixture started with `extra` and a control socket; returns once
/// the mount reports PRIM.
fn start(extra: &[&str]) -> Result<(Mirror, PathBuf)> {
    let mut m = Mirror::prepare()?;
    let control = m.start_controlled(extra)?;
    Ok((m, control))
}

/// The data bytes of the last resync, as the mount logged them: for the
/// report only (a log line is not an interface to assert on).
fn logged_resync_bytes(m: &Mirror) -> String {
    let log = m.mount().map(|p| p.stderr()).unwrap_or_default();
    log.lines()
        .rev()
        .find(|l| l.contains("resync complete"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("bytes=")))
        .unwrap_or("?")
        .to_owned()
}

fn is_generation(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The secondary persists the generation history it adopted at the end of a
/// resync in its metadata area (current first): it must be the primary's.
fn expect_generation_on_replica(m: &Mirror, status: &Value) -> Result<()> {
    let path = m.replica().join(".mirrorfs/generation");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let current = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_default();
    ensure!(
        status["generation"] == current,
        "the secondary's current generation is {current:?}, the primary's {}",
        status["generation"]
    );
    Ok(())
}

/// static/0..63 (1 MiB each), which changes little later, plus the entries
/// [`change_while_alone`] works on; returns the MiB written.
fn write_static_tree(mnt: &Path) -> io::Result<u64> {
    fs::create_dir(mnt.join("static"))?;
    for i in 0..64 {
        write_synced(
            &mnt.join(format!("static/{i}")),
            &pseudo_random(i, MIB as usize),
        )?;
    }
    fs::create_dir_all(mnt.join("tree/a/sub"))?;
    write_synced(&mnt.join("tree/a/x"), b"x")?;
    write_synced(&mnt.join("tree/a/sub/z"), &pseudo_random(70, 3000))?;
    fs::create_dir(mnt.join("empty-dir"))?;
    Ok(64)
}

/// Modify in place, truncate, chmod, set an xattr, rename a file and a dir,
/// delete a file and an empty dir, create files and dirs, and a file created
/// and deleted again. (Deleting a dir with contents, and renaming a dir holding
/// a file changed ALONE: [`dirs_removed_or_renamed_while_alone_resync`].)
fn change_while_alone(mnt: &Path) -> io::Result<()> {
    let s = |p: &str| mnt.join(p);
    let f = OpenOptions::new().write(true).open(s("static/3"))?;
    f.write_all_at(&pseudo_random(300, 4096), 4096)?;
    f.sync_all()?;
    let f = OpenOptions::new().write(true).open(s("static/9"))?;
    f.set_len(300_000)?;
    f.sync_all()?;
    fs::set_permissions(s("static/11"), fs::Permissions::from_mode(0o600))?;
    fs::rename(s("static/5"), s("static/5-renamed"))?;
    fs::remove_file(s("static/7"))?;
    fs::create_dir_all(s("new/dir"))?;
    write_synced(&s("new/dir/f"), &pseudo_random(301, 100_000))?;
    fs::rename(s("tree/a"), s("tree/a-moved"))?;
    write_synced(&s("tree/a-moved/sub/added"), b"added after the move")?;
    fs::remove_dir(s("empty-dir"))?;
    write_synced(&s("transient"), b"here and gone while ALONE")?;
    fs::remove_file(s("transient"))?;
    // Hard links, to an old file and among new ones, then a write through
    // one name: the secondary must hold one inode with several names, not
    // copies.
    fs::hard_link(s("static/13"), s("static/13-link"))?;
    write_synced(&s("new/linked"), &pseudo_random(302, 5000))?;
    fs::hard_link(s("new/linked"), s("new/dir/linked-too"))?;
    fs::hard_link(s("new/linked"), s("linked-three"))?;
    OpenOptions::new()
        .write(true)
        .open(s("static/13-link"))?
        .write_all_at(b"through the second name", 10)?;
    sys::set_xattr(&s("static/12"), "user.changed", b"while alone")
}

crate::on_sync_twins!(
    secondary_loss_goes_alone_and_resyncs_incrementally,
    dirs_removed_or_renamed_while_alone_resync,
    look_alikes_changed_while_alone_resync,
    renames_while_alone_move_instead_of_copying,
    dirty_blocks_of_a_file_missing_on_the_replica_resync_all_of_it,
    status_reports_prim_and_json_is_parseable,
    split_brain_is_detected_and_nothing_is_synchronised,
    large_file_resync_sends_only_changed_blocks,
    full_resync_after_tampering,
    a_clean_remount_sends_nothing_again,
);
