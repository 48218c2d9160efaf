//! Issue 2: synchronous replication. Every mutating operation through the
//! primary's mount is applied on the secondary before it returns; after a mixed
//! workload the two trees are identical (by an independent comparison and by
//! `mirrorfs verify`, which must also catch tampering); peers that cannot be
//! authenticated or reached are refused with exit code 2; a vanished peer turns
//! writes into EIO within the peer timeout instead of hanging or acknowledging.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{
    chown, lchown, symlink, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::util::lab::Proc;
use crate::util::mirror::{Mirror, MountArgs, PORT};
use crate::util::{is_fuse_mount, pseudo_random, sys, tree, wait_for, within, Probe};

/// How long a refused `mirrorfs mount` may take to give up (as in the
/// acceptance check).
const REFUSAL_DEADLINE: Duration = Duration::from_secs(15);
/// The `--peer-timeout` of the peer-loss test, and the slack allowed on top.
const PEER_TIMEOUT_SECS: u64 = 2;
const PEER_TIMEOUT_MARGIN: Duration = Duration::from_secs(8);

#[test]
fn acked_write_is_on_replica() -> Result<()> {
    let m = Mirror::start(&[])?;
    let (mnt, replica) = (m.mnt(), m.replica());
    within(Duration::from_secs(120), "acked writes", move || {
        acked_writes(&mnt, &replica)
    })?
}

/// 200 files written with open/write/close, then a shared mmap write with
/// msync, each compared with the replica as soon as the call returned.
fn acked_writes(mnt: &Path, replica: &Path) -> Result<()> {
    for i in 0..200 {
        let name = format!("ack{i}");
        let data = pseudo_random(i, 4096 + i as usize);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(mnt.join(&name))
            .with_context(|| format!("create {name} through the mount"))?;
        f.write_all(&data)?;
        drop(f); // close(2) has returned: the write is acknowledged
        let got = fs::read(replica.join(&name))
            .with_context(|| format!("{name} missing on the replica right after close"))?;
        ensure!(
            got == data,
            "{name}: the replica's {} bytes differ from the {} written, right after close",
            got.len(),
            data.len()
        );
    }

    // A shared writable mapping: the dirty pages reach the file system through
    // writeback, and msync(MS_SYNC) must not return before the secondary has them.
    let data = pseudo_random(4242, 64 * 1024);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(mnt.join("mapped"))?;
    f.set_len(data.len() as u64)?;
    sys::mmap_write(&f, data.len(), 0, &data).context("mmap write + msync")?;
    let got = fs::read(replica.join("mapped"))?;
    ensure!(
        got == data,
        "a 64 KiB shared mmap write is not on the replica after msync returned"
    );
    Ok(())
}

#[test]
fn mixed_workload_verifies_clean() -> Result<()> {
    let m = Mirror::start(&[])?;
    let mnt = m.mnt();
    within(Duration::from_secs(900), "the mixed workload", move || {
        mixed_workload(&mnt)
    })??;

    let (backing, replica) = (m.backing(), m.replica());
    let diffs = tree::diff(&backing, &replica)?;
    ensure!(
        diffs.is_empty(),
        "replica differs from backing ({} differences):\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    // Spot checks of the operations whose effect the tree comparison alone
    // would not single out.
    let r = |p: &str| replica.join(p);
    assert_eq!(fs::read(r("d1/moved-here"))?, b"follows the inode");
    assert!(
        !r("open-unlinked").exists(),
        "an unlinked-while-open file reappeared"
    );
    assert_eq!(fs::read(r("x"))?, b"y", "RENAME_EXCHANGE not applied");
    assert_eq!(fs::read(r("y"))?, b"x", "RENAME_EXCHANGE not applied");
    assert!(
        !r("n1").exists() && r("n2").exists(),
        "RENAME_NOREPLACE not applied"
    );
    assert_eq!(
        fs::read(r("b"))?,
        b"a",
        "rename over an existing file not applied"
    );
    assert!(!r("gone").exists(), "rmdir not applied");
    assert_eq!(
        fs::metadata(r("d1/f"))?.mtime(),
        1_000_000_000,
        "utimes not applied"
    );
    assert_eq!(fs::metadata(r("big"))?.len(), BIG_FILE_MIB << 20);

    let out = m.verify(&backing, &replica)?;
    ensure!(
        out.status.code() == Some(0),
        "mirrorfs verify on identical trees exited {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Same size, same mtime, different bytes: only a content comparison sees it.
    let victim = r("many/1234");
    let mtime = fs::metadata(&victim)?.mtime();
    let f = OpenOptions::new().write(true).open(&victim)?;
    f.write_all_at(b"tampered", 0)?;
    drop(f);
    sys::set_times(&victim, mtime, mtime)?;
    let out = m.verify(&backing, &replica)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.code() == Some(1),
        "mirrorfs verify on a tampered replica exited {} (want 1):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        stdout.lines().any(|l| l.contains("many/1234")),
        "mirrorfs verify did not name the tampered file many/1234 on stdout:\n{stdout}"
    );
    Ok(())
}

#[test]
fn wrong_certificate_is_refused() -> Result<()> {
    let mut m = Mirror::prepare()?;
    m.start_serve()?;
    m.keygen("intruder")?;
    let mut args = second_mount(&m);
    args.key = "intruder".into();
    expect_refused(&m, &args, "certificate")?;

    // The refusal did not take the secondary down: its pinned peer still mounts.
    m.start_mount(&m.mount_args())?;
    let (mnt, replica) = (m.mnt(), m.replica());
    within(
        Duration::from_secs(30),
        "a write after the refusal",
        move || -> Result<()> {
            fs::write(mnt.join("after-intruder"), b"ok")?;
            ensure!(fs::read(replica.join("after-intruder"))? == b"ok");
            Ok(())
        },
    )?
}

#[test]
fn unpinned_server_certificate_is_refused() -> Result<()> {
    let mut m = Mirror::prepare()?;
    m.start_serve()?;
    m.keygen("intruder")?;
    // node1 presents its own (accepted) key but pins a certificate that is not
    // the server's: the mount must not trust the server it reached.
    let mut args = second_mount(&m);
    args.peer_cert = "intruder".into();
    expect_refused(&m, &args, "certificate")?;
    let replicated: Vec<_> = fs::read_dir(m.replica())?
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with(".mirrorfs"))
        .map(|e| e.file_name())
        .collect();
    assert!(replicated.is_empty(), "the replica changed: {replicated:?}");
    Ok(())
}

#[test]
fn unreachable_peer_is_refused() -> Result<()> {
    let m = Mirror::prepare()?; // no serve: nobody listens on node2's port
    let mut args = second_mount(&m);
    args.extra = vec!["--peer-timeout".into(), PEER_TIMEOUT_SECS.to_string()];
    let addr = format!("{}:{PORT}", m.node2.ip);
    assert_eq!(args.peer, addr);
    expect_refused(&m, &args, &addr)
}

#[test]
fn vanished_peer_gives_eio() -> Result<()> {
    let mut m = Mirror::start(&["--peer-timeout", &PEER_TIMEOUT_SECS.to_string()])?;
    let mnt = m.mnt();
    let before = pseudo_random(99, 10_000);
    let (m1, b1) = (mnt.clone(), before.clone());
    within(
        Duration::from_secs(30),
        "writes before the peer died",
        move || {
            fs::write(m1.join("before"), b1)?;
            fs::create_dir(m1.join("dir"))
        },
    )??;

    m.kill_serve()?;
    let killed = Instant::now();
    let m2 = mnt.clone();
    let result = within(
        Duration::from_secs(60),
        "a write after the peer died",
        move || {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(m2.join("after-peer-loss"))?;
            f.write_all(b"x")?;
            f.sync_all()
        },
    )?;
    let took = killed.elapsed();
    let limit = Duration::from_secs(PEER_TIMEOUT_SECS) + PEER_TIMEOUT_MARGIN;
    match result {
        Ok(()) => panic!("a write + fsync was acknowledged although the secondary is dead"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "want EIO, got {e}"),
    }
    assert!(
        took <= limit,
        "the write failed only after {took:?} (limit {limit:?})"
    );

    // Reads are local: they keep working without the secondary.
    let m3 = mnt;
    within(
        Duration::from_secs(10),
        "reads after the peer died",
        move || -> Result<()> {
            ensure!(
                fs::read(m3.join("before"))? == before,
                "a file written before reads back wrong"
            );
            let names: Vec<_> = fs::read_dir(&m3)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()?;
            ensure!(
                names.iter().any(|n| n == "dir"),
                "readdir lost entries: {names:?}"
            );
            ensure!(fs::metadata(m3.join("dir"))?.is_dir());
            Ok(())
        },
    )??;
    Ok(())
}

/// Size of the large file of the mixed workload.
const BIG_FILE_MIB: u64 = 200;

/// Every kind of mutating operation, through the mount at `m`.
fn mixed_workload(m: &Path) -> Result<()> {
    let p = |rel: &str| m.join(rel);

    // Directories, and data written, appended and truncated.
    fs::create_dir_all(p("d1/d2/d3"))?;
    fs::create_dir(p("gone"))?;
    fs::write(p("d1/f"), b"hello".repeat(1000))?;
    OpenOptions::new()
        .append(true)
        .open(p("d1/f"))?
        .write_all(b"tail")?;
    File::options().write(true).open(p("d1/f"))?.set_len(3000)?;
    File::create(p("sparse"))?.set_len(10 << 20)?; // truncate up: a hole

    // Attributes: mode, owner (also of a symlink itself), xattrs.
    fs::set_permissions(p("d1/f"), fs::Permissions::from_mode(0o600))?;
    fs::set_permissions(p("d1/d2"), fs::Permissions::from_mode(0o750))?;
    chown(p("d1/f"), Some(1000), Some(1000))?;
    symlink("d1/f", p("link"))?;
    symlink("nowhere", p("dangling"))?;
    lchown(p("link"), Some(1001), Some(1001))?;
    fs::hard_link(p("d1/f"), p("hard"))?;
    sys::set_xattr(&p("d1/f"), "user.color", b"blue")?;
    sys::set_xattr(&p("d1/f"), "user.gone", b"soon")?;
    sys::remove_xattr(&p("d1/f"), "user.gone")?;
    sys::set_xattr(&p("d1"), "user.dir", b"1")?;

    // Renames: over an existing file, exchange, no-replace, a directory.
    fs::write(p("a"), b"a")?;
    fs::write(p("b"), b"b")?;
    fs::rename(p("a"), p("b"))?;
    fs::write(p("x"), b"x")?;
    fs::write(p("y"), b"y")?;
    sys::renameat2(&p("x"), &p("y"), libc::RENAME_EXCHANGE).context("RENAME_EXCHANGE")?;
    fs::write(p("n1"), b"n")?;
    let err = sys::renameat2(&p("n1"), &p("y"), libc::RENAME_NOREPLACE)
        .expect_err("RENAME_NOREPLACE over an existing file succeeded");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EEXIST),
        "RENAME_NOREPLACE: {err}"
    );
    sys::renameat2(&p("n1"), &p("n2"), libc::RENAME_NOREPLACE).context("RENAME_NOREPLACE")?;
    fs::rename(p("d1/d2/d3"), p("d3-moved"))?;
    fs::remove_dir(p("gone"))?;

    // Handles follow the inode: writes after unlink and after rename.
    let mut f = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(p("open-unlinked"))?;
    fs::remove_file(p("open-unlinked"))?;
    f.write_all(&[b'z'; 100])?;
    drop(f);
    let mut f = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(p("moved"))?;
    fs::rename(p("moved"), p("d1/moved-here"))?;
    f.write_all(b"follows the inode")?;
    drop(f);

    // Special files, space allocation, in-kernel copies, syncs.
    sys::mkfifo(&p("fifo"), 0o640)?;
    let f = File::create(p("falloc"))?;
    sys::fallocate(&f, 0, 0, 1 << 20).context("fallocate")?;
    let holed = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(p("holed"))?;
    holed.write_all_at(&pseudo_random(5, 256 << 10), 0)?;
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    match sys::fallocate(&holed, punch, 64 << 10, 64 << 10) {
        // Refusing is fine (nothing changed); succeeding only on the primary is not.
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
        other => other.context("fallocate punch hole")?,
    }
    let src_data = pseudo_random(6, 1 << 20);
    fs::write(p("cfr-src"), &src_data)?;
    let src = File::open(p("cfr-src"))?;
    let dst = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(p("cfr-dst"))?;
    let copied =
        sys::copy_file_range(&src, 0, &dst, 4096, src_data.len()).context("copy_file_range")?;
    assert_eq!(copied, src_data.len());
    let mut f = File::create(p("synced"))?;
    f.write_all(b"first")?;
    f.sync_data()?;
    f.write_all(b" second")?;
    f.sync_all()?;
    drop(f);

    // A large file, written in 1 MiB pieces.
    let mut big = File::create(p("big"))?;
    for i in 0..BIG_FILE_MIB {
        big.write_all(&pseudo_random(1000 + i, 1 << 20))?;
    }
    big.sync_all()?;
    drop(big);

    // Many small files.
    fs::create_dir(p("many"))?;
    for i in 0..10_000u64 {
        fs::write(p(&format!("many/{i}")), pseudo_random(20_000 + i, 512))?;
    }

    // Concurrent writers: each its own file, and its own 1 MiB region of a shared one.
    let shared = File::create(p("shared"))?;
    shared.set_len(4 << 20)?;
    drop(shared);
    let writers: Vec<_> = (0..4u64)
        .map(|k| {
            let (own, shared) = (p(&format!("w{k}")), p("shared"));
            thread::spawn(move || concurrent_writer(k, &own, &shared))
        })
        .collect();
    for w in writers {
        w.join().expect("writer thread panicked")?;
    }

    // Last, so that no later write moves the mtime again.
    sys::set_times(&p("d1/f"), 1_000_000_000, 1_000_000_000)?;
    Ok(())
}

fn concurrent_writer(k: u64, own: &Path, shared: &Path) -> Result<()> {
    let mut f = File::create(own)?;
    let s = OpenOptions::new().write(true).open(shared)?;
    for j in 0..300u64 {
        let block = pseudo_random(k * 1000 + j, 4096);
        f.write_all(&block)?;
        let at = (k << 20) + (j % 256) * 4096;
        s.write_all_at(&block, at)?;
    }
    Ok(())
}

/// A second mount point and backing dir for a mount that is expected to fail.
fn second_mount(m: &Mirror) -> MountArgs {
    MountArgs {
        backing: m.path().join("backing2"),
        mountpoint: m.path().join("mnt2"),
        ..m.mount_args()
    }
}

/// Starts `mount` with `args` and asserts it exits 2 within
/// [`REFUSAL_DEADLINE`] without ever mounting, naming `fragment` on stderr.
fn expect_refused(m: &Mirror, args: &MountArgs, fragment: &str) -> Result<()> {
    let mut mount: Proc = m.spawn_mount(args)?;
    let mnt = &args.mountpoint;
    let status = wait_for(REFUSAL_DEADLINE, "the refused mount to exit", || {
        match is_fuse_mount(mnt) {
            Ok(false) => {}
            Ok(true) => return Probe::Fail(anyhow::anyhow!("{} got mounted", mnt.display())),
            Err(e) => return Probe::Fail(e),
        }
        match mount.try_status() {
            Ok(Some(st)) => Probe::Ready(st),
            Ok(None) => Probe::Pending(format!("still running; stderr: {}", mount.stderr_tail())),
            Err(e) => Probe::Fail(e),
        }
    })?;
    let stderr = mount.stderr();
    ensure!(
        !is_fuse_mount(mnt)?,
        "{} is mounted after the mount exited",
        mnt.display()
    );
    ensure!(
        status.code() == Some(2),
        "the refused mount exited {status} (want 2); stderr:\n{stderr}"
    );
    ensure!(
        stderr.to_lowercase().contains(&fragment.to_lowercase()),
        "the refused mount's stderr does not mention {fragment:?}:\n{stderr}"
    );
    Ok(())
}
