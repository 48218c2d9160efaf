//! Issue 7, item 10: trees deeper than `PATH_MAX`. FUSE hands the mount names,
//! not paths, so an application that walks down with directory descriptors
//! builds paths below the mount root far longer than one system call takes.
//! Such a tree replicates, resyncs after the secondary was away (changes deep
//! down and the rename of a deep directory) and verifies like any other, up
//! to the bound (`mirrorfs::proto::path::MAX_PATH`, 32 KiB); a mutation that
//! would name a longer path fails with `ENAMETOOLONG` and exists on neither
//! side.
//!
//! Path-based calls fail beyond `PATH_MAX`, so everything here goes name by
//! name from directory descriptors, on the mount as on the two trees, and the
//! trees are compared with `mirrorfs verify` (which walks by descriptor) rather
//! than with the path-based `util::tree`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use mirrorfs::proto::path::MAX_PATH;
use mirrorfs::sys;

use crate::util::mirror::Mirror;
use crate::util::{pseudo_random, run_fs};

/// Mount options that make the primary carry on ALONE when the secondary dies.
const ALONE: [&str; 3] = ["--on-peer-loss=alone", "--peer-timeout", "2"];
/// How long a resync of a few deep changes may take, reconnection included.
const RESYNC_DEADLINE: Duration = Duration::from_secs(60);
/// How long file work through the mount may take before it counts as a hang.
const FS_DEADLINE: Duration = Duration::from_secs(120);
/// Levels of the tree of `deep_tree_replicates_resyncs_and_verifies`: its
/// directories' path is 90 × 201 − 1 = 18 089 bytes, over four times
/// `PATH_MAX`, and more than the 16 KiB a version 1 dirty log could record.
const DEPTH: usize = 90;
/// The level renamed while ALONE (everything below it moves).
const RENAMED_LEVEL: usize = 60;

/// The 200-byte name of level `i`.
fn level(i: usize) -> Vec<u8> {
    let mut n = format!("{i:03}-").into_bytes();
    n.resize(200, b'd');
    n
}

/// A name of `len` bytes made of `c`.
fn name(c: u8, len: usize) -> Vec<u8> {
    vec![c; len]
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

/// The path `names` join to (for lengths and messages).
fn joined(names: &[Vec<u8>]) -> Vec<u8> {
    names.join(&b'/')
}

/// Opens `dir` (`O_PATH`), never following a symlink.
fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    let cwd = std::fs::File::open(dir)?;
    sys::openat(
        cwd.as_fd(),
        OsStr::new("."),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
}

/// Walks from `root` down `names`, name by name, making missing directories
/// when `make` is set; returns the last directory (`O_PATH`).
fn walk(root: &Path, names: &[Vec<u8>], make: bool) -> io::Result<OwnedFd> {
    let mut dir = open_dir(root)?;
    for n in names {
        if make {
            match sys::mkdirat(dir.as_fd(), os(n), 0o755) {
                Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
                _ => {}
            }
        }
        dir = sys::openat(
            dir.as_fd(),
            os(n),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
    }
    Ok(dir)
}

/// Writes `data` as the file `name` in `dir` (created or truncated), synced.
fn write_at(dir: BorrowedFd<'_>, name: &[u8], data: &[u8]) -> io::Result<()> {
    let dir = sys::openat(dir, OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let f = sys::openat(
        dir.as_fd(),
        os(name),
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW,
        0o644,
    )?;
    sys::pwrite_all(f.as_fd(), data, 0)?;
    sys::fsync(f.as_fd(), false)
}

/// Writes `data` at `offset` into the existing file `name` in `dir`, synced.
fn patch_at(dir: BorrowedFd<'_>, name: &[u8], offset: u64, data: &[u8]) -> io::Result<()> {
    let dir = sys::openat(dir, OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let f = sys::openat(dir.as_fd(), os(name), libc::O_WRONLY | libc::O_NOFOLLOW, 0)?;
    sys::pwrite_all(f.as_fd(), data, offset)?;
    sys::fsync(f.as_fd(), false)
}

/// The content of the file `name` in `dir`.
fn read_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<u8>> {
    let dir = sys::openat(dir, OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let f = sys::openat(dir.as_fd(), os(name), libc::O_RDONLY | libc::O_NOFOLLOW, 0)?;
    let size = sys::fstat(f.as_fd())?.st_size as usize;
    let mut buf = vec![0; size];
    let n = sys::pread_full(f.as_fd(), &mut buf, 0)?;
    buf.truncate(n);
    Ok(buf)
}

/// Whether `name` exists in `dir` (not following a symlink).
fn exists_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<bool> {
    match sys::fstatat(dir, os(name)) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `mirrorfs verify` says the two trees are identical; returns how many
/// entries it compared.
fn verify_identical(m: &Mirror) -> Result<u64> {
    let out = m.verify(&m.backing(), &m.replica())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.code() == Some(0),
        "mirrorfs verify exited {}:\n{}{}",
        out.status,
        // The differences name 8 KiB paths: show the start of each line.
        stdout
            .lines()
            .take(20)
            .map(|l| l.chars().take(300).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    // "identical: N entries, B bytes compared"
    let entries = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no entry count in verify's output {stdout:?}"))?;
    Ok(entries)
}

fn start() -> Result<(Mirror, PathBuf)> {
    let mut m = Mirror::prepare()?;
    let control = m.start_controlled(&ALONE)?;
    Ok((m, control))
}

/// The files at the bottom of the tree, as first written.
fn bottom_files() -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (b"small".to_vec(), pseudo_random(1, 10_000)),
        // Spans four 1 MiB blocks: the resync sends only the one changed.
        (b"big".to_vec(), pseudo_random(2, (3 << 20) + 123)),
    ]
}

#[test]
fn deep_tree_replicates_resyncs_and_verifies() -> Result<()> {
    let (mut m, control) = start()?;
    let mnt = m.mnt();
    let levels: Vec<Vec<u8>> = (0..DEPTH).map(level).collect();
    let deepest = joined(&levels).len() + 1 + "small".len();
    ensure!(
        deepest > 8 << 10,
        "the deepest path has only {deepest} bytes"
    );

    let lv = levels.clone();
    run_fs(FS_DEADLINE, "building the deep tree", &mnt, move |mnt| {
        let mid = walk(mnt, &lv[..20], true)?;
        write_at(mid.as_fd(), b"mid-file", b"halfway down")?;
        let bottom = walk(mnt, &lv, true)?;
        for (name, data) in bottom_files() {
            write_at(bottom.as_fd(), &name, &data)?;
        }
        sys::mkdirat(bottom.as_fd(), OsStr::new("leaf"), 0o750)?;
        let leaf = walk(mnt, &[lv.clone(), vec![b"leaf".to_vec()]].concat(), false)?;
        write_at(leaf.as_fd(), b"g", b"in the leaf")
    })?;

    // On the secondary, by descriptor as well.
    let replica = m.replica();
    let bottom = walk(&replica, &levels, false).context("the deep tree on the secondary")?;
    for (name, data) in bottom_files() {
        ensure!(
            read_at(bottom.as_fd(), &name)? == data,
            "the secondary's {} at {deepest} bytes deep differs",
            String::from_utf8_lossy(&name)
        );
    }
    let leaf = walk(
        &replica,
        &[levels.clone(), vec![b"leaf".to_vec()]].concat(),
        false,
    )?;
    ensure!(read_at(leaf.as_fd(), b"g")? == b"in the leaf");
    // Every level, two files at the bottom, the leaf and its file, mid-file.
    let made = (DEPTH + 5) as u64;
    let entries = verify_identical(&m)?;
    ensure!(
        entries >= made,
        "verify compared {entries} entries, fewer than the {made} of the deep tree"
    );

    // --- secondary killed; deep changes and a deep rename while ALONE
    m.kill_serve()?;
    m.wait_alone(&control)?;
    let renamed = {
        let mut n = b"renamed-".to_vec();
        n.resize(200, b'r');
        n
    };
    let (lv, rn) = (levels.clone(), renamed.clone());
    run_fs(FS_DEADLINE, "deep changes while ALONE", &mnt, move |mnt| {
        let bottom = walk(mnt, &lv, false)?;
        patch_at(
            bottom.as_fd(),
            b"big",
            (2 << 20) + 5,
            b"changed while ALONE",
        )?;
        write_at(bottom.as_fd(), b"small", b"rewritten while ALONE")?;
        write_at(bottom.as_fd(), b"new", b"made while ALONE")?;
        let mid = walk(mnt, &lv[..20], false)?;
        sys::unlinkat(mid.as_fd(), OsStr::new("mid-file"), 0)?;
        // Rename level 30: the bottom moves with it; then write below it.
        let parent = walk(mnt, &lv[..RENAMED_LEVEL], false)?;
        sys::renameat2(
            parent.as_fd(),
            os(&lv[RENAMED_LEVEL]),
            parent.as_fd(),
            os(&rn),
            0,
        )?;
        let mut moved = lv.clone();
        moved[RENAMED_LEVEL] = rn;
        let leaf = walk(mnt, &[moved, vec![b"leaf".to_vec()]].concat(), false)?;
        write_at(leaf.as_fd(), b"g", b"the leaf, moved")
    })?;
    m.start_serve()?;
    m.wait_in_sync(&control, RESYNC_DEADLINE)?;

    let mut moved = levels.clone();
    moved[RENAMED_LEVEL] = renamed;
    let bottom = walk(&replica, &moved, false).context("the renamed tree on the secondary")?;
    let mut big = bottom_files()[1].1.clone();
    big[(2 << 20) + 5..][..19].copy_from_slice(b"changed while ALONE");
    for (name, data) in [
        (&b"big"[..], &big[..]),
        (b"small", b"rewritten while ALONE"),
        (b"new", b"made while ALONE"),
    ] {
        ensure!(
            read_at(bottom.as_fd(), name)? == data,
            "the secondary's {} after the resync differs",
            String::from_utf8_lossy(name)
        );
    }
    let leaf = walk(&replica, &[moved, vec![b"leaf".to_vec()]].concat(), false)?;
    ensure!(read_at(leaf.as_fd(), b"g")? == b"the leaf, moved");
    let above = walk(&replica, &levels[..RENAMED_LEVEL], false)?;
    ensure!(
        !exists_at(above.as_fd(), &levels[RENAMED_LEVEL])?,
        "the old name of the renamed directory is still on the secondary"
    );
    let mid = walk(&replica, &levels[..20], false)?;
    ensure!(
        !exists_at(mid.as_fd(), b"mid-file")?,
        "mid-file was not removed"
    );
    verify_identical(&m)?;

    // verify really looks at the bottom: a byte changed there behind the
    // mirror's back is a difference.
    patch_at(bottom.as_fd(), b"small", 0, b"R")?;
    let out = m.verify(&m.backing(), &m.replica())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.code() == Some(1) && stdout.contains("/small: content differs"),
        "mirrorfs verify missed a change {deepest} bytes deep (exit {})",
        out.status
    );
    Ok(())
}

/// The tree for the bound tests: directories of 200-byte names down to a
/// path as close to [`MAX_PATH`] as leaves room for a 206-byte name only.
fn near_the_bound(mnt: &Path) -> io::Result<(Vec<Vec<u8>>, usize)> {
    let levels: Vec<Vec<u8>> = (0..(MAX_PATH + 1) / 201).map(level).collect();
    walk(mnt, &levels, true)?;
    let len = joined(&levels).len();
    Ok((levels, len))
}

#[test]
fn create_and_rename_beyond_the_bound_fail_on_both_sides() -> Result<()> {
    let (m, _control) = start()?;
    let mnt = m.mnt();
    let (levels, len) = run_fs(FS_DEADLINE, "a tree near the bound", &mnt, near_the_bound)?;
    // The longest name that still fits, and one byte more.
    let fits = name(b'f', MAX_PATH - len - 1);
    let over = name(b'o', MAX_PATH - len);
    let (lv, f, o) = (levels.clone(), fits.clone(), over.clone());
    run_fs(
        FS_DEADLINE,
        "creations at and over the bound",
        &mnt,
        move |mnt| {
            let dir = walk(mnt, &lv, false)?;
            write_at(dir.as_fd(), &f, b"at the bound")?;
            let e = write_at(dir.as_fd(), &o, b"over").expect_err("create over the bound");
            assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG), "create: {e}");
            let root = open_dir(mnt)?;
            write_at(root.as_fd(), b"top", b"stays at the top")?;
            let e = sys::renameat2(root.as_fd(), OsStr::new("top"), dir.as_fd(), os(&o), 0)
                .expect_err("rename over the bound");
            assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG), "rename: {e}");
            Ok(())
        },
    )?;
    for tree in [m.backing(), m.replica()] {
        let dir = walk(&tree, &levels, false)?;
        ensure!(
            read_at(dir.as_fd(), &fits)? == b"at the bound",
            "{}: the file of exactly {MAX_PATH} bytes of path is missing",
            tree.display()
        );
        ensure!(
            !exists_at(dir.as_fd(), &over)?,
            "{}: the entry over the bound exists",
            tree.display()
        );
        let root = open_dir(&tree)?;
        ensure!(read_at(root.as_fd(), b"top")? == b"stays at the top");
    }
    verify_identical(&m)?;
    Ok(())
}

#[test]
fn mkdir_mknod_symlink_link_beyond_the_bound_fail_on_both_sides() -> Result<()> {
    let (m, _control) = start()?;
    let mnt = m.mnt();
    let (levels, len) = run_fs(FS_DEADLINE, "a tree near the bound", &mnt, near_the_bound)?;
    // One name per op, so that an op applied by mistake cannot make the
    // next one fail for another reason (EEXIST).
    let over = move |c: u8| name(c, MAX_PATH - len);
    let lv = levels.clone();
    let errors = run_fs(FS_DEADLINE, "mutations over the bound", &mnt, move |mnt| {
        let dir = walk(mnt, &lv, false)?;
        let root = open_dir(mnt)?;
        write_at(root.as_fd(), b"top", b"linked")?;
        let errno = |r: io::Result<()>| r.err().and_then(|e| e.raw_os_error());
        Ok(vec![
            (
                "mkdir",
                errno(sys::mkdirat(dir.as_fd(), os(&over(b'd')), 0o755)),
            ),
            (
                "mknod",
                errno(sys::mknodat(
                    dir.as_fd(),
                    os(&over(b'n')),
                    libc::S_IFIFO | 0o644,
                    0,
                )),
            ),
            (
                "symlink",
                errno(sys::symlinkat(
                    OsStr::new("t"),
                    dir.as_fd(),
                    os(&over(b's')),
                )),
            ),
            (
                "link",
                errno(sys::linkat(
                    root.as_fd(),
                    OsStr::new("top"),
                    dir.as_fd(),
                    os(&over(b'l')),
                )),
            ),
        ])
    })?;
    for (op, errno) in errors {
        ensure!(
            errno == Some(libc::ENAMETOOLONG),
            "{op} over the bound gave errno {errno:?}, not ENAMETOOLONG"
        );
    }
    let mut applied = Vec::new();
    for tree in [m.backing(), m.replica()] {
        let dir = walk(&tree, &levels, false)?;
        for (c, op) in [
            (b'd', "mkdir"),
            (b'n', "mknod"),
            (b's', "symlink"),
            (b'l', "link"),
        ] {
            if exists_at(dir.as_fd(), &over(c))? {
                applied.push(format!("{op} in {}", tree.display()));
            }
        }
    }
    ensure!(
        applied.is_empty(),
        "mutations over the bound were applied: {}",
        applied.join(", ")
    );
    verify_identical(&m)?;
    Ok(())
}
