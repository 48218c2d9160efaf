//! Overlay tests without mounting: the local effect of each call and the exact
//! ops it submits for replication.

use std::fs;
use std::os::unix::fs::MetadataExt;

use pretty_assertions::assert_eq;

use super::*;
use crate::fs::replicate::Recorder;

const ROOT: Ctx = Ctx {
    uid: 0,
    gid: 0,
    pid: 1,
};
const USER: Ctx = Ctx {
    uid: 1000,
    gid: 1000,
    pid: 2,
};

fn p(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}

fn setup() -> (tempfile::TempDir, Arc<Recorder>, Overlay) {
    setup_with(|dir, rec| Overlay::new(dir, rec))
}

/// An overlay caching at most 64 descriptors (the table's smallest budget).
fn setup_small_budget() -> (tempfile::TempDir, Arc<Recorder>, Overlay) {
    setup_with(|dir, rec| Overlay::with_fd_budget(dir, rec, 64))
}

fn setup_with(
    make: impl FnOnce(&Path, Arc<Recorder>) -> io::Result<Overlay>,
) -> (tempfile::TempDir, Arc<Recorder>, Overlay) {
    let dir = tempfile::Builder::new()
        .prefix("mfs-ops")
        .tempdir_in("/var/tmp")
        .unwrap();
    let rec = Arc::new(Recorder::default());
    let ov = make(dir.path(), rec.clone()).unwrap();
    (dir, rec, ov)
}

/// Creates `name` in the root as root (mode 0644, no umask) with `flags`.
fn create_in_root(ov: &Overlay, name: &str, flags: i32) -> (Entry, Opened) {
    ov.create(ROOT, ROOT_INO, OsStr::new(name), 0o644, 0, flags)
        .wait()
        .unwrap()
}

#[test]
fn create_write_rename_unlink_submit_the_right_ops() {
    let (dir, rec, ov) = setup();
    let d = ov
        .mkdir(USER, ROOT_INO, OsStr::new("d"), 0o755, 0o022)
        .wait()
        .unwrap();
    let (e, o) = ov
        .create(USER, d.ino, OsStr::new("f"), 0o666, 0o022, libc::O_WRONLY)
        .wait()
        .unwrap();
    assert_eq!(ov.write(e.ino, o.fh, 0, b"hello").wait().unwrap(), 5);
    ov.rename(d.ino, OsStr::new("f"), ROOT_INO, OsStr::new("g"), 0)
        .wait()
        .unwrap();
    assert_eq!(ov.write(e.ino, o.fh, 5, b"!").wait().unwrap(), 1);
    ov.unlink(ROOT_INO, OsStr::new("g")).wait().unwrap();
    ov.fsync(e.ino, o.fh, true).wait().unwrap();
    ov.release(o.fh);
    let h = HandleId(o.fh);
    assert_eq!(
        rec.take(),
        vec![
            Op::Mkdir {
                path: p("d"),
                mode: 0o755,
                uid: 1000,
                gid: 1000
            },
            Op::Create {
                path: p("d/f"),
                mode: 0o644,
                uid: 1000,
                gid: 1000,
                handle: Some(h),
                flags: 0
            },
            Op::Write {
                target: Target::Handle(h),
                offset: 0,
                data: b"hello".to_vec()
            },
            Op::Rename {
                from: p("d/f"),
                to: p("g"),
                flags: 0
            },
            Op::Write {
                target: Target::Handle(h),
                offset: 5,
                data: b"!".to_vec()
            },
            Op::Unlink { path: p("g") },
            Op::Fsync {
                target: Target::Handle(h),
                datasync: true
            },
            Op::Close { handle: h },
        ]
    );
    assert!(!dir.path().join("g").exists());
    let md = fs::metadata(dir.path().join("d")).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o7777), (1000, 0o755));
}

#[test]
fn issue_10_3_a_large_write_is_sent_in_pieces_that_cover_it_in_order() {
    let (dir, rec, ov) = setup();
    let (e, o) = ov
        .create(
            USER,
            ROOT_INO,
            OsStr::new("big"),
            0o644,
            0o022,
            libc::O_WRONLY,
        )
        .wait()
        .unwrap();
    rec.take();
    // Two and a half pieces, at an offset: every byte once, in order.
    let data: Vec<u8> = (0..WRITE_OP_MAX * 5 / 2).map(|i| (i % 251) as u8).collect();
    let written = ov.write(e.ino, o.fh, 7, &data).wait().unwrap();
    assert_eq!(written as usize, data.len());
    let ops = rec.take();
    let pieces: Vec<(u64, usize)> = ops
        .iter()
        .map(|op| match op {
            Op::Write {
                target: Target::Handle(h),
                offset,
                data,
            } if *h == HandleId(o.fh) => (*offset, data.len()),
            other => panic!("not a write of the handle: {other:?}"),
        })
        .collect();
    let max = WRITE_OP_MAX as u64;
    assert_eq!(
        pieces,
        vec![
            (7, WRITE_OP_MAX),
            (7 + max, WRITE_OP_MAX),
            (7 + 2 * max, WRITE_OP_MAX / 2)
        ]
    );
    let sent: Vec<u8> = ops
        .into_iter()
        .flat_map(|op| match op {
            Op::Write { data, .. } => data,
            _ => unreachable!(),
        })
        .collect();
    assert!(sent == data, "the pieces' bytes are not the written bytes");
    assert_eq!(&fs::read(dir.path().join("big")).unwrap()[7..], &data[..]);
    // A write of exactly one piece stays one op.
    ov.write(e.ino, o.fh, 0, &data[..WRITE_OP_MAX])
        .wait()
        .unwrap();
    assert_eq!(rec.take().len(), 1);
    ov.release(o.fh);
}

#[test]
fn issue_10_7_on_sync_fsync_fsyncdir_and_o_sync_writes_end_with_a_barrier() {
    let (_dir, rec, ov) = setup();
    rec.set_on_sync(true);
    let (e, o) = create_in_root(&ov, "f", libc::O_WRONLY);
    let (es, s) = create_in_root(&ov, "s", libc::O_WRONLY | libc::O_DSYNC);
    rec.take();
    ov.write(e.ino, o.fh, 0, b"plain").wait().unwrap();
    ov.write(es.ino, s.fh, 0, b"dsync").wait().unwrap();
    ov.fsync(e.ino, o.fh, true).wait().unwrap();
    let d = ov.opendir(ROOT_INO).unwrap();
    ov.fsyncdir(ROOT_INO, d, false).wait().unwrap();
    assert_eq!(
        rec.take(),
        vec![
            Op::Write {
                target: Target::Handle(HandleId(o.fh)),
                offset: 0,
                data: b"plain".to_vec()
            },
            Op::Write {
                target: Target::Handle(HandleId(s.fh)),
                offset: 0,
                data: b"dsync".to_vec()
            },
            Op::Barrier,
            // In place of the fsyncs: everything before is made durable.
            Op::Barrier,
            Op::Barrier,
        ]
    );
}

#[test]
fn setattr_sends_explicit_values() {
    let (_dir, rec, ov) = setup();
    let (e, o) = create_in_root(&ov, "f", libc::O_RDWR);
    ov.release(o.fh);
    rec.take();
    let t = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_000_000_000, 5);
    let st = ov
        .setattr(
            e.ino,
            None,
            SetAttr {
                mode: Some(0o600),
                uid: Some(7),
                size: Some(10),
                mtime: Some(Some(t)),
                ..SetAttr::default()
            },
        )
        .wait()
        .unwrap();
    assert_eq!((st.st_size, st.st_uid, st.st_mode & 0o777), (10, 7, 0o600));
    let target = Target::Path(p("f"));
    let ops = rec.take();
    assert_eq!(ops.len(), 4);
    assert_eq!(
        ops[0],
        Op::Truncate {
            target: target.clone(),
            size: 10
        }
    );
    assert!(matches!(
        &ops[1],
        Op::Chown {
            uid: Some(7),
            gid: None,
            mode: None,
            ..
        }
    ));
    assert_eq!(
        ops[2],
        Op::Chmod {
            target: target.clone(),
            mode: 0o600
        }
    );
    assert_eq!(
        ops[3],
        Op::SetTimes {
            target,
            atime: None,
            mtime: Some(Timestamp {
                sec: 1_000_000_000,
                nsec: 5
            })
        }
    );
}

#[test]
fn metadata_area_is_hidden_and_reserved() {
    let (dir, rec, ov) = setup();
    fs::create_dir(dir.path().join(META_DIR)).unwrap();
    let e = ov.lookup(ROOT_INO, OsStr::new(META_DIR)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    let e = ov
        .mkdir(ROOT, ROOT_INO, OsStr::new(META_DIR), 0o755, 0)
        .wait()
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    let fh = ov.opendir(ROOT_INO).unwrap();
    let names: Vec<_> = ov
        .readdir(fh, 0)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec![OsString::from("."), OsString::from("..")]);
    assert_eq!(rec.take(), vec![]);
}

#[test]
fn bad_names_are_refused_before_any_syscall() {
    let (_dir, rec, ov) = setup();
    let long = "x".repeat(256);
    assert_eq!(
        ov.mkdir(ROOT, ROOT_INO, OsStr::new(&long), 0o755, 0)
            .wait()
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENAMETOOLONG)
    );
    assert_eq!(
        ov.lookup(ROOT_INO, OsStr::new(".."))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EINVAL)
    );
    assert_eq!(rec.take(), vec![]);
}

#[test]
fn hard_links_and_rename_exchange_keep_paths_right() {
    let (dir, rec, ov) = setup();
    let (a, o) = create_in_root(&ov, "a", libc::O_RDWR);
    ov.release(o.fh);
    ov.mkdir(ROOT, ROOT_INO, OsStr::new("b"), 0o755, 0)
        .wait()
        .unwrap();
    ov.link(a.ino, ROOT_INO, OsStr::new("a2")).wait().unwrap();
    ov.unlink(ROOT_INO, OsStr::new("a")).wait().unwrap();
    ov.rename(
        ROOT_INO,
        OsStr::new("a2"),
        ROOT_INO,
        OsStr::new("b"),
        libc::RENAME_EXCHANGE,
    )
    .wait()
    .unwrap();
    rec.take();
    // The file is now called "b": a chmod must name it so.
    ov.setattr(
        a.ino,
        None,
        SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        },
    )
    .wait()
    .unwrap();
    assert_eq!(
        rec.take(),
        vec![Op::Chmod {
            target: Target::Path(p("b")),
            mode: 0o600
        }]
    );
    assert!(dir.path().join("a2").is_dir());
}

#[test]
fn descriptor_cache_stays_bounded_and_reopens_by_path() {
    let (dir, rec, ov) = setup_small_budget();
    let mut files = Vec::new();
    for d in 0..10 {
        let de = ov
            .mkdir(ROOT, ROOT_INO, OsStr::new(&format!("d{d}")), 0o755, 0)
            .wait()
            .unwrap();
        for f in 0..40 {
            let (e, o) = ov
                .create(
                    ROOT,
                    de.ino,
                    OsStr::new(&format!("f{f}")),
                    0o644,
                    0,
                    libc::O_RDWR,
                )
                .wait()
                .unwrap();
            ov.release(o.fh);
            files.push((e.ino, format!("d{d}/f{f}")));
        }
    }
    let (known, cached) = ov.inode_stats();
    assert_eq!(known, 411);
    assert!(cached <= 64, "{cached} descriptors cached");
    rec.take();
    // Every inode is still reachable: evicted descriptors are reopened from the path.
    for (ino, path) in &files {
        let st = ov
            .setattr(
                *ino,
                None,
                SetAttr {
                    mode: Some(0o600),
                    ..SetAttr::default()
                },
            )
            .wait()
            .unwrap();
        assert_eq!(st.st_mode & 0o777, 0o600);
        assert_eq!(
            fs::metadata(dir.path().join(path)).unwrap().mode() & 0o777,
            0o600
        );
    }
    assert!(ov.inode_stats().1 <= 64);
    assert_eq!(rec.take().len(), files.len());
}

/// Issue 7, finding 8: a handle opened on one connection is never used on
/// the next (the secondary closed its copy with the old connection); it is
/// opened again there first, with the O_SYNC it was opened with, and
/// closed on the connection that knows it.
#[test]
fn issue_7_a_handle_is_reopened_with_its_sync_flags_on_a_new_connection() {
    let (_dir, rec, ov) = setup();
    let (e, o) = ov
        .create(
            ROOT,
            ROOT_INO,
            OsStr::new("f"),
            0o644,
            0o022,
            libc::O_WRONLY | libc::O_SYNC,
        )
        .wait()
        .unwrap();
    let h = HandleId(o.fh);
    assert_eq!(ov.write(e.ino, o.fh, 0, b"one").wait().unwrap(), 3);
    rec.set_epoch(2);
    assert_eq!(ov.write(e.ino, o.fh, 3, b"two").wait().unwrap(), 3);
    ov.fsync(e.ino, o.fh, false).wait().unwrap();
    ov.release(o.fh);
    assert_eq!(
        rec.take_with_epochs(),
        vec![
            (
                1,
                Op::Create {
                    path: p("f"),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    handle: Some(h),
                    flags: libc::O_SYNC as u32
                }
            ),
            (
                1,
                Op::Write {
                    target: Target::Handle(h),
                    offset: 0,
                    data: b"one".to_vec()
                }
            ),
            (
                2,
                Op::Open {
                    path: p("f"),
                    handle: h,
                    flags: libc::O_SYNC as u32
                }
            ),
            (
                2,
                Op::Write {
                    target: Target::Handle(h),
                    offset: 3,
                    data: b"two".to_vec()
                }
            ),
            (
                2,
                Op::Fsync {
                    target: Target::Handle(h),
                    datasync: false
                }
            ),
            (2, Op::Close { handle: h }),
        ]
    );
}

/// Issue 10, item 4: small regular files are read through the kernel's page
/// cache, kept across opens; larger ones through passthrough; a writer
/// coming makes no difference to a small file (the kernel keeps its pages
/// coherent with writes through the mount).
#[test]
fn issue_10_small_files_keep_the_page_cache_large_ones_use_passthrough() {
    let (dir, rec, ov) = setup();
    ov.enable_passthrough(true);
    fs::write(dir.path().join("small"), vec![1u8; 4096]).unwrap();
    let big = usize::try_from(PAGE_CACHED_MAX).unwrap() + 1;
    fs::write(dir.path().join("big"), vec![2u8; big]).unwrap();
    let small = ov.lookup(ROOT_INO, OsStr::new("small")).unwrap();
    let large = ov.lookup(ROOT_INO, OsStr::new("big")).unwrap();
    let d = ov
        .mkdir(ROOT, ROOT_INO, OsStr::new("d"), 0o755, 0)
        .wait()
        .unwrap();

    let o = ov.open_read(small.ino, libc::O_RDONLY).unwrap();
    assert!(o.keep_cache && o.passthrough.is_none());
    assert_eq!(ov.read(small.ino, o.fh, 0, 8192).unwrap(), vec![1u8; 4096]);
    let w = ov.open(small.ino, libc::O_WRONLY).wait().unwrap();
    assert_eq!(ov.write(small.ino, w.fh, 0, b"x").wait().unwrap(), 1);
    let o2 = ov.open_read(small.ino, libc::O_RDONLY).unwrap();
    assert!(o2.keep_cache && o2.passthrough.is_none());
    for fh in [o.fh, w.fh, o2.fh] {
        ov.release(fh);
    }

    let o = ov.open_read(large.ino, libc::O_RDONLY).unwrap();
    assert!(!o.keep_cache && o.passthrough.is_some());
    ov.release(o.fh);

    // Nothing but regular files has a page cache to keep.
    let o = ov.open_read(d.ino, libc::O_RDONLY).unwrap();
    assert!(!o.keep_cache && o.passthrough.is_none());
    ov.release(o.fh);
    rec.take();
}

/// Issue 10, item 4: a regular file's read-only opens share one cached
/// descriptor (an Apache GET's OPEN and RELEASE then cost mirrorfs no
/// `open(2)` and no `close(2)`), which counts in the descriptor budget, is
/// evicted with the inode's own, and is opened again after that.
#[test]
fn issue_10_read_only_opens_of_a_file_share_one_cached_descriptor() {
    let (dir, rec, ov) = setup_small_budget();
    fs::write(dir.path().join("f"), b"one").unwrap();
    let f = ov.lookup(ROOT_INO, OsStr::new("f")).unwrap();
    let raw = |fh| ov.handle(fh).unwrap().file.as_raw_fd();

    let a = ov.open_read(f.ino, libc::O_RDONLY).unwrap();
    let cached = ov.inode_stats().1;
    let b = ov
        .open_read(f.ino, libc::O_RDONLY | libc::O_NONBLOCK)
        .unwrap();
    assert_ne!(a.fh, b.fh);
    assert_eq!(raw(a.fh), raw(b.fh), "two descriptors for one file");
    assert_eq!(ov.inode_stats().1, cached);
    ov.release(a.fh);
    ov.release(b.fh);
    // Kept after the last release: the next open shares it too.
    let c = ov.open_read(f.ino, libc::O_RDONLY).unwrap();
    assert_eq!(ov.read(f.ino, c.fh, 0, 16).unwrap(), b"one");
    ov.release(c.fh);

    // Many files read once each: the cache stays within its budget, and a
    // file whose descriptors were evicted is opened and read again.
    for i in 0..200 {
        let name = format!("g{i}");
        fs::write(dir.path().join(&name), name.as_bytes()).unwrap();
        let e = ov.lookup(ROOT_INO, OsStr::new(&name)).unwrap();
        let o = ov.open_read(e.ino, libc::O_RDONLY).unwrap();
        assert_eq!(ov.read(e.ino, o.fh, 0, 16).unwrap(), name.as_bytes());
        ov.release(o.fh);
        let cached = ov.inode_stats().1;
        assert!(cached <= 64, "{cached} descriptors cached");
    }
    fs::write(dir.path().join("f"), b"two").unwrap();
    let c = ov.open_read(f.ino, libc::O_RDONLY).unwrap();
    assert_eq!(ov.read(f.ino, c.fh, 0, 16).unwrap(), b"two");
    ov.release(c.fh);
    // Forgotten: its descriptors leave the count.
    let before = ov.inode_stats();
    ov.forget(f.ino, 1);
    let after = ov.inode_stats();
    assert_eq!(after.0, before.0 - 1);
    assert!(after.1 <= before.1);
    assert!(rec.take().is_empty());
}

/// Issue 10, item 5: READDIRPLUS looks every entry up (counted, so the
/// kernel's later forget balances it), gives back the lookup of an entry the
/// reply buffer refused, hands `.` and `..` over without an entry, and
/// leaves out a name removed since the directory was opened.
#[test]
fn issue_10_readdirplus_counts_exactly_the_entries_the_kernel_gets() {
    let (dir, rec, ov) = setup();
    let d = ov
        .mkdir(ROOT, ROOT_INO, OsStr::new("d"), 0o755, 0)
        .wait()
        .unwrap();
    for n in ["a", "b", "c", "gone"] {
        fs::write(dir.path().join("d").join(n), n).unwrap();
    }
    let fh = ov.opendir(d.ino).unwrap();
    // Listed first (the snapshot), removed after.
    let _ = ov.readdir(fh, 0).unwrap();
    fs::remove_file(dir.path().join("d/gone")).unwrap();
    let mut got = Vec::new();
    ov.readdirplus(d.ino, fh, 0, |i, e, entry| {
        // The buffer takes three entries.
        if got.len() == 3 {
            return true;
        }
        got.push((i, e.name.clone(), entry.map(|en| en.ino)));
        false
    })
    .unwrap();
    let names: Vec<_> = got.iter().map(|(_, n, _)| n.clone()).collect();
    assert_eq!(names.len(), 3);
    assert_eq!(&names[..2], &[OsString::from("."), OsString::from("..")]);
    assert!(got[0].2.is_none() && got[1].2.is_none());
    let first = got[2].2.expect("a file comes with its entry");
    // The next call starts after the last entry taken.
    let mut rest = Vec::new();
    ov.readdirplus(d.ino, fh, got[2].0 + 1, |_, e, entry| {
        rest.push((e.name.clone(), entry.map(|en| en.ino)));
        false
    })
    .unwrap();
    assert_eq!(rest.len(), 2, "{rest:?}: the removed name is left out");
    assert!(rest.iter().all(|(n, ino)| n != "gone" && ino.is_some()));
    ov.releasedir(fh);
    // Known: a, b, c (one lookup each) besides the root and d.
    assert_eq!(ov.inode_stats().0, 5);
    // The kernel forgets what it was given.
    for ino in rest.iter().filter_map(|(_, ino)| *ino).chain([first]) {
        ov.forget(ino, 1);
    }
    assert_eq!(ov.inode_stats().0, 2, "every lookup was counted once");
    rec.take();
}

/// Issue 10, item 5: lookups open no descriptor (a walk of a tree larger
/// than the descriptor budget holds none per file); one is opened from the
/// parent's descriptor when an operation needs it, still right after the
/// parent was renamed, and a name that now leads to another inode gives
/// ESTALE, never the other file. An inode looked up, opened and then
/// unlinked keeps its attributes.
#[test]
fn issue_10_descriptors_are_opened_lazily_from_the_parent() {
    let (dir, rec, ov) = setup();
    let d = ov
        .mkdir(ROOT, ROOT_INO, OsStr::new("d"), 0o755, 0)
        .wait()
        .unwrap();
    for n in 0..100 {
        fs::write(dir.path().join(format!("d/f{n}")), b"x").unwrap();
    }
    let cached = ov.inode_stats().1;
    let entries: Vec<Entry> = (0..100)
        .map(|n| ov.lookup(d.ino, OsStr::new(&format!("f{n}"))).unwrap())
        .collect();
    // Only the directory's, opened to look names up in it.
    assert_eq!(
        ov.inode_stats(),
        (102, cached + 1),
        "no descriptor per lookup"
    );

    ov.rename(ROOT_INO, OsStr::new("d"), ROOT_INO, OsStr::new("e"), 0)
        .wait()
        .unwrap();
    let st = ov
        .setattr(
            entries[1].ino,
            None,
            SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            },
        )
        .wait()
        .unwrap();
    assert_eq!(st.st_mode & 0o777, 0o600);
    assert_eq!(
        fs::metadata(dir.path().join("e/f1")).unwrap().mode() & 0o777,
        0o600
    );

    // Replaced behind the overlay's back: the name leads elsewhere now (the
    // old inode kept, so that its number is not reused for the new one).
    fs::rename(dir.path().join("e/f2"), dir.path().join("moved")).unwrap();
    fs::write(dir.path().join("e/f2"), b"other").unwrap();
    let e = ov.getattr(entries[2].ino, None).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ESTALE));

    // Open, then unlinked through the mount: still reachable.
    let o = ov.open_read(entries[3].ino, libc::O_RDONLY).unwrap();
    let e4 = entries[4].ino;
    ov.unlink(d.ino, OsStr::new("f3")).wait().unwrap();
    ov.unlink(d.ino, OsStr::new("f4")).wait().unwrap();
    assert_eq!(ov.getattr(entries[3].ino, Some(o.fh)).unwrap().st_nlink, 0);
    assert_eq!(ov.getattr(entries[3].ino, None).unwrap().st_nlink, 0);
    assert_eq!(ov.read(entries[3].ino, o.fh, 0, 10).unwrap(), b"x");
    ov.release(o.fh);
    assert_eq!(ov.getattr(e4, None).unwrap().st_nlink, 0);
    rec.take();
}

/// Found for issue 10: an open file whose cached descriptor was evicted
/// (more inodes than the budget) and which was then unlinked through the
/// mount lost its attributes: `fstat(2)` of the open file reached GETATTR,
/// which looked the inode up by a name it no longer had (ENOENT). Now the
/// descriptor is taken before a name is removed, and GETATTR with a handle
/// uses the handle.
#[test]
fn issue_10_an_open_file_unlinked_after_its_descriptor_was_evicted_keeps_its_attributes() {
    let (_dir, rec, ov) = setup_small_budget();
    let (victim, o) = create_in_root(&ov, "victim", libc::O_RDWR);
    ov.getattr(victim.ino, None).unwrap();
    // Enough other inodes used to evict every cached descriptor.
    for n in 0..200 {
        let (e, f) = create_in_root(&ov, &format!("f{n}"), libc::O_RDWR);
        ov.release(f.fh);
        ov.getattr(e.ino, None).unwrap();
    }
    ov.unlink(ROOT_INO, OsStr::new("victim")).wait().unwrap();
    assert_eq!(ov.getattr(victim.ino, None).unwrap().st_nlink, 0);
    assert_eq!(ov.getattr(victim.ino, Some(o.fh)).unwrap().st_nlink, 0);
    ov.release(o.fh);
    rec.take();
}

/// Issue 10, item 4 (no OPEN requests): the kernel opens files alone and
/// sends their reads and writes with handle 0. Writes of one inode share
/// one local read-write descriptor; the secondary is told the file's path
/// (nothing it holds can go stale: an open it refused, or lost when it
/// restarted, while a resync brings the file over; such a stale handle
/// failed every later write there). After a rename the new path is named;
/// once the file has no path left, its writes stay local.
#[test]
fn issue_10_writes_without_an_open_share_one_writer_and_name_the_path() {
    let (dir, rec, ov) = setup();
    fs::write(dir.path().join("f"), b"0123456789").unwrap();
    let e = ov.lookup(ROOT_INO, OsStr::new("f")).unwrap();
    assert_eq!(ov.write(e.ino, 0, 3, b"AB").wait().unwrap(), 2);
    assert_eq!(ov.write(e.ino, 0, 10, b"!").wait().unwrap(), 1);
    ov.fsync(e.ino, 0, true).wait().unwrap();
    assert_eq!(ov.read(e.ino, 0, 0, 64).unwrap(), b"012AB56789!");
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"012AB56789!");
    assert_eq!(ov.shared_writers().by_ino.len(), 1);
    assert_eq!(
        rec.take(),
        vec![
            Op::Write {
                target: Target::Path(p("f")),
                offset: 3,
                data: b"AB".to_vec()
            },
            Op::Write {
                target: Target::Path(p("f")),
                offset: 10,
                data: b"!".to_vec()
            },
            Op::Fsync {
                target: Target::Path(p("f")),
                datasync: true
            },
        ]
    );
    ov.rename(ROOT_INO, OsStr::new("f"), ROOT_INO, OsStr::new("g"), 0)
        .wait()
        .unwrap();
    ov.fallocate(e.ino, 0, 0, 4096, 0).wait().unwrap();
    ov.unlink(ROOT_INO, OsStr::new("g")).wait().unwrap();
    ov.write(e.ino, 0, 0, b"local").wait().unwrap();
    let ops = rec.take();
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert!(
        matches!(&ops[1], Op::Fallocate { target, .. } if *target == Target::Path(p("g"))),
        "{ops:?}"
    );
    assert!(matches!(&ops[2], Op::Unlink { .. }), "{ops:?}");
    // Forgotten: the descriptor is closed.
    ov.forget(e.ino, 1);
    assert_eq!(ov.shared_writers().by_ino.len(), 0);
    assert!(ov.handles.read().unwrap().is_empty());
}

/// Issue 10, item 4: the shared writers are bounded: past
/// SHARED_WRITERS_MAX inodes the oldest is closed and its next write
/// opens it again.
#[test]
fn issue_10_the_oldest_shared_writer_is_closed_beyond_the_bound() {
    let (dir, rec, ov) = setup();
    let mut inos = Vec::new();
    for i in 0..=SHARED_WRITERS_MAX {
        let name = format!("f{i}");
        fs::write(dir.path().join(&name), b"").unwrap();
        let e = ov.lookup(ROOT_INO, OsStr::new(&name)).unwrap();
        ov.write(e.ino, 0, 0, b"x").wait().unwrap();
        inos.push(e.ino);
    }
    let open = || ov.handles.read().unwrap().len();
    assert_eq!(open(), SHARED_WRITERS_MAX);
    assert!(!ov.shared_writers().by_ino.contains_key(&inos[0]));
    ov.write(inos[0], 0, 1, b"y").wait().unwrap();
    assert_eq!(open(), SHARED_WRITERS_MAX);
    assert!(ov.shared_writers().by_ino.contains_key(&inos[0]));
    assert!(!ov.shared_writers().by_ino.contains_key(&inos[1]));
    assert_eq!(fs::read(dir.path().join("f0")).unwrap(), b"xy");
    assert_eq!(rec.take().len(), SHARED_WRITERS_MAX + 2);
}

/// Issue 10, item 4: when the kernel opens files alone it sends no RELEASE,
/// not even for a file it created: the create hands it handle 0 and keeps
/// its descriptor as the inode's shared writer (never O_SYNC: the kernel
/// follows an O_SYNC write with an FSYNC), closed when the kernel forgets
/// the inode. Before, each create kept a descriptor until the mount ended
/// (the e2e mixed workload ran out of them).
#[test]
fn issue_10_a_create_without_open_requests_leaves_its_descriptor_to_the_inode() {
    let (dir, rec, ov) = setup();
    ov.set_kernel_opens(true);
    let (e, o) = create_in_root(&ov, "f", libc::O_WRONLY | libc::O_SYNC);
    assert_eq!(o.fh, 0, "the kernel gets handle 0");
    ov.write(e.ino, 0, 0, b"data").wait().unwrap();
    assert_eq!(
        rec.take(),
        vec![
            Op::Create {
                path: p("f"),
                mode: 0o644,
                uid: 0,
                gid: 0,
                handle: None,
                flags: 0
            },
            Op::Write {
                target: Target::Path(p("f")),
                offset: 0,
                data: b"data".to_vec()
            },
        ]
    );
    assert_eq!(ov.handles.read().unwrap().len(), 1);
    ov.forget(e.ino, 1);
    assert!(ov.handles.read().unwrap().is_empty());
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"data");
}
