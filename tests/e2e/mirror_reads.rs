//! Issue 10, items 4 and 5: what the kernel now keeps — small files' pages
//! across opens (`FOPEN_KEEP_CACHE`), directory listings across opens
//! (`FOPEN_CACHE_DIR`), entries and attributes from `READDIRPLUS` — follows
//! every change made through the mount, and files unlinked or directories
//! renamed while open or cached stay right.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::util::mirror::Mirror;
use crate::util::within;

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
