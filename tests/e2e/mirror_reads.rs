//! Issue 10, items 4 and 5: what the kernel now keeps — small files' pages
//! across opens (`FOPEN_KEEP_CACHE`), directory listings across opens
//! (`FOPEN_CACHE_DIR`), entries and attributes from `READDIRPLUS` — follows
//! every change made through the mount, and files unlinked or directories
//! renamed while open or cached stay right.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::util::mirror::Mirror;
use crate::util::{sys, within};

fn names(dir: &Path) -> Result<Vec<String>> {
    let mut v: Vec<String> = fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    v.sort();
    Ok(v)
}

#[test]
fn issue_10_kept_pages_follow_writes_truncation_and_growth() -> Result<()> {
    let m = Mirror::start(&[])?;
    let (mnt, replica) = (m.mnt(), m.replica());
    within(Duration::from_secs(60), "kept pages", move || {
        let f = mnt.join("small");
        fs::write(&f, vec![b'a'; 4096])?;
        // Read twice: the second comes from the kept pages.
        ensure!(fs::read(&f)? == vec![b'a'; 4096]);
        ensure!(fs::read(&f)? == vec![b'a'; 4096]);
        // A reader kept open across the changes sees each of them.
        let mut reader = File::open(&f)?;
        let w = OpenOptions::new().write(true).open(&f)?;
        w.write_all_at(b"BBBB", 100)?;
        let mut want = vec![b'a'; 4096];
        want[100..104].copy_from_slice(b"BBBB");
        ensure!(fs::read(&f)? == want, "a write through another handle");
        let mut got = Vec::new();
        reader.read_to_end(&mut got)?;
        ensure!(got == want, "the open reader sees the write");
        w.set_len(10)?;
        ensure!(fs::read(&f)? == want[..10], "truncated");
        let mut a = OpenOptions::new().append(true).open(&f)?;
        a.write_all(&[b'c'; 8000])?;
        want.truncate(10);
        want.extend_from_slice(&[b'c'; 8000]);
        ensure!(fs::read(&f)? == want, "grown");
        reader.seek(SeekFrom::Start(0))?;
        got.clear();
        reader.read_to_end(&mut got)?;
        ensure!(got == want, "the open reader sees the growth");
        drop((reader, w, a));
        // Replaced by a rename: the name shows the new file's bytes.
        fs::write(mnt.join("other"), b"other")?;
        fs::rename(mnt.join("other"), &f)?;
        ensure!(fs::read(&f)? == b"other");
        ensure!(fs::read(replica.join("small"))? == b"other");
        Ok(())
    })?
}

#[test]
fn issue_10_cached_listings_and_readdirplus_entries_follow_changes() -> Result<()> {
    let m = Mirror::start(&[])?;
    let mnt = m.mnt();
    within(Duration::from_secs(60), "cached listings", move || {
        let d = mnt.join("d");
        fs::create_dir(&d)?;
        for n in ["a", "b"] {
            fs::write(d.join(n), n)?;
        }
        ensure!(names(&d)? == ["a", "b"]);
        ensure!(names(&d)? == ["a", "b"], "listed again, from the cache");
        fs::write(d.join("c"), b"c")?;
        ensure!(names(&d)? == ["a", "b", "c"], "a create");
        fs::rename(d.join("c"), d.join("e"))?;
        ensure!(names(&d)? == ["a", "b", "e"], "a rename");
        fs::remove_file(d.join("a"))?;
        ensure!(names(&d)? == ["b", "e"], "an unlink");
        // Attributes came with the listing; a change through the mount shows.
        fs::set_permissions(d.join("b"), fs::Permissions::from_mode(0o600))?;
        for e in fs::read_dir(&d)? {
            let e = e?;
            let md = fs::symlink_metadata(e.path())?;
            if e.file_name() == "b" {
                ensure!(md.mode() & 0o777 == 0o600, "mode after chmod");
            }
        }
        // A directory renamed after its entries were listed.
        fs::rename(&d, mnt.join("d2"))?;
        ensure!(!d.exists());
        ensure!(fs::read(mnt.join("d2/e"))? == b"c");
        ensure!(names(&mnt.join("d2"))? == ["b", "e"]);
        Ok(())
    })?
}

/// `fstat(2)` and reads of files opened before they were unlinked through
/// the mount (a small file: kept pages; a large one: passthrough).
#[test]
fn issue_10_open_files_unlinked_keep_their_attributes_and_data() -> Result<()> {
    let m = Mirror::start(&[])?;
    let mnt = m.mnt();
    within(Duration::from_secs(60), "unlinked while open", move || {
        for (name, size) in [("small", 100usize), ("large", 300_000)] {
            let p = mnt.join(name);
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            fs::write(&p, &data)?;
            // Listed first: its entry comes from READDIRPLUS.
            let _ = names(&mnt)?;
            let mut f = File::open(&p).with_context(|| format!("open {name}"))?;
            fs::remove_file(&p)?;
            let md = f.metadata().with_context(|| format!("fstat {name}"))?;
            ensure!(md.nlink() == 0 && md.len() == size as u64, "{name}: {md:?}");
            let mut got = Vec::new();
            f.read_to_end(&mut got)?;
            ensure!(got == data, "{name}: data after unlink");
        }
        Ok(())
    })?
}

/// Issue 10, item 4: by default the kernel opens files alone (no OPEN,
/// RELEASE or FLUSH requests) and sends their writes with handle 0. Every
/// kind of write through such opens reaches the secondary: in place, after
/// an `O_TRUNC` open (a SETATTR now), `O_APPEND`, `O_SYNC`, `ftruncate`, a
/// shared mapping, after a rename, `copy_file_range`, `fallocate`, and more
/// files than the mount keeps writers for; a file unlinked while open can
/// still be written and read. The same with `--open-requests`.
#[test]
fn issue_10_writes_through_opens_the_kernel_made_alone_reach_the_secondary() -> Result<()> {
    for extra in [&[][..], &["--open-requests"][..]] {
        let m = Mirror::start(extra)?;
        let mnt = m.mnt();
        within(Duration::from_secs(120), "writes without OPEN", move || {
            let p = |n: &str| mnt.join(n);
            let rw = |n: &str| OpenOptions::new().read(true).write(true).open(p(n));
            fs::write(p("a"), b"0123456789")?;
            OpenOptions::new()
                .write(true)
                .open(p("a"))?
                .write_all_at(b"AB", 3)?;
            fs::write(p("b"), vec![b'x'; 5000])?;
            OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(p("b"))?
                .write_all(b"short")?;
            fs::write(p("c"), b"1\n")?;
            for i in 0..3 {
                OpenOptions::new()
                    .append(true)
                    .open(p("c"))?
                    .write_all(format!("{i}\n").as_bytes())?;
            }
            fs::write(p("d"), b"")?;
            let mut d = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_SYNC)
                .open(p("d"))?;
            for i in 0..5 {
                d.write_all(format!("sync{i}").as_bytes())?;
            }
            drop(d);
            let a = rw("a")?;
            let mut got = [0u8; 10];
            a.read_exact_at(&mut got, 0)?;
            ensure!(&got == b"012AB56789", "read back {got:?}");
            a.set_len(4)?;
            a.sync_all()?;
            drop(a);
            // A shared writable mapping: its pages are written back by msync.
            fs::write(p("e"), vec![0u8; 8192])?;
            let e = rw("e")?;
            // SAFETY: a fresh shared mapping of 8192 bytes of an open file,
            // written within bounds and unmapped before the file is closed.
            unsafe {
                let at = libc::mmap(
                    std::ptr::null_mut(),
                    8192,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    e.as_raw_fd(),
                    0,
                );
                ensure!(
                    at != libc::MAP_FAILED,
                    "mmap: {}",
                    std::io::Error::last_os_error()
                );
                std::ptr::copy_nonoverlapping(b"MMAP!".as_ptr(), (at as *mut u8).add(100), 5);
                ensure!(libc::msync(at, 8192, libc::MS_SYNC) == 0, "msync");
                libc::munmap(at, 8192);
            }
            drop(e);
            // Unlinked while open, then written and read.
            fs::write(p("f"), b"gone")?;
            let f = rw("f")?;
            fs::remove_file(p("f"))?;
            f.write_all_at(b"still", 0)?;
            let mut got = [0u8; 5];
            f.read_exact_at(&mut got, 0)?;
            ensure!(&got == b"still", "unlinked file read back {got:?}");
            f.sync_all()?;
            drop(f);
            fs::write(p("g"), b"g")?;
            let g = OpenOptions::new().write(true).open(p("g"))?;
            fs::rename(p("g"), p("h"))?;
            g.write_all_at(b"H", 1)?;
            drop(g);
            let src: Vec<u8> = (0..16384u32).map(|i| (i % 251) as u8).collect();
            fs::write(p("src"), &src)?;
            let from = File::open(p("src"))?;
            let to = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(p("dst"))?;
            sys::copy_file_range(&from, 0, &to, 0, src.len())?;
            fs::write(p("fill"), vec![b'y'; 4096])?;
            let fill = rw("fill")?;
            // SAFETY: plain syscall on an open descriptor.
            ensure!(
                unsafe { libc::posix_fallocate(fill.as_raw_fd(), 0, 1 << 17) } == 0,
                "fallocate"
            );
            drop(fill);
            let n = mirrorfs::fs::ops::SHARED_WRITERS_MAX + 20;
            for i in 0..n {
                fs::write(p(&format!("m{i}")), b"")?;
            }
            for round in 0..2 {
                for i in (0..n).step_by(round * 6 + 1) {
                    OpenOptions::new()
                        .write(true)
                        .open(p(&format!("m{i}")))?
                        .write_all_at(format!("{round}").as_bytes(), round as u64)?;
                }
            }
            ensure!(fs::read(p("d"))? == b"sync0sync1sync2sync3sync4");
            ensure!(fs::read(p("c"))? == b"1\n0\n1\n2\n");
            Ok(())
        })??;
        m.expect_replica_identical()
            .with_context(|| format!("mount options {extra:?}"))?;
    }
    Ok(())
}
