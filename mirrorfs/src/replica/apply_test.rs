//! Applier tests on a temporary directory: each op's effect, and hostile input
//! that must never reach outside the root.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
    a: Applier,
}

fn fixture() -> Fixture {
    let dir = tempfile::Builder::new()
        .prefix("mfs-apply")
        .tempdir_in("/var/tmp")
        .unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"keep").unwrap();
    fs::set_permissions(outside.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    // Traps inside the replica pointing out of it.
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), root.join("secret-link")).unwrap();
    let a = Applier::open(&root).unwrap();
    Fixture {
        _dir: dir,
        root,
        outside,
        a,
    }
}

fn p(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}

fn errno(r: io::Result<Applied>) -> i32 {
    r.unwrap_err().raw_os_error().unwrap()
}

#[test]
fn create_write_rename_and_write_follows_the_handle() {
    let mut f = fixture();
    f.a.apply(&Op::Mkdir {
        path: p("d"),
        mode: 0o2750,
        uid: 12,
        gid: 34,
    })
    .unwrap();
    f.a.apply(&Op::Create {
        path: p("d/f"),
        mode: 0o640,
        uid: 1000,
        gid: 1000,
        handle: Some(HandleId(1)),
        flags: 0,
    })
    .unwrap();
    f.a.apply(&Op::Rename {
        from: p("d/f"),
        to: p("g"),
        flags: 0,
    })
    .unwrap();
    f.a.apply(&Op::Write {
        target: Target::Handle(HandleId(1)),
        offset: 3,
        data: b"abc".to_vec(),
    })
    .unwrap();
    f.a.apply(&Op::Close {
        handle: HandleId(1),
    })
    .unwrap();
    assert_eq!(fs::read(f.root.join("g")).unwrap(), b"\0\0\0abc");
    let md = fs::metadata(f.root.join("g")).unwrap();
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o640, 1000, 1000)
    );
    let md = fs::metadata(f.root.join("d")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o2750, 12, 34));
    assert_eq!(f.a.open_handles(), 0);
}

#[test]
fn rename_exchange_and_noreplace() {
    let mut f = fixture();
    fs::write(f.root.join("x"), b"x").unwrap();
    fs::write(f.root.join("y"), b"y").unwrap();
    f.a.apply(&Op::Rename {
        from: p("x"),
        to: p("y"),
        flags: libc::RENAME_EXCHANGE,
    })
    .unwrap();
    assert_eq!(fs::read(f.root.join("x")).unwrap(), b"y");
    let e = errno(f.a.apply(&Op::Rename {
        from: p("x"),
        to: p("y"),
        flags: libc::RENAME_NOREPLACE,
    }));
    assert_eq!(e, libc::EEXIST);
}

#[test]
fn fsync_returns_a_descriptor_to_sync() {
    let mut f = fixture();
    fs::write(f.root.join("x"), b"x").unwrap();
    match f
        .a
        .apply(&Op::Fsync {
            target: Target::Path(p("x")),
            datasync: true,
        })
        .unwrap()
    {
        Applied::Sync { fd, how } => {
            assert_eq!(how, SyncHow::Fdatasync);
            how.run(fd.as_fd()).unwrap();
        }
        other => panic!("expected a sync, got {other:?}"),
    }
}

#[test]
fn issue_10_7_a_barrier_flushes_the_replicas_file_system() {
    let mut f = fixture();
    match f.a.apply(&Op::Barrier).unwrap() {
        Applied::Sync { fd, how } => {
            assert_eq!(how, SyncHow::Syncfs);
            let st = sys::fstat(fd.as_fd()).unwrap();
            let root = fs::metadata(&f.root).unwrap();
            assert_eq!((st.st_dev, st.st_ino), (root.dev(), root.ino()), "the root");
            how.run(fd.as_fd()).unwrap();
        }
        other => panic!("expected a sync, got {other:?}"),
    }
    assert!(!refusal_diverges(&Op::Barrier), "changes nothing");
}

#[test]
fn symlinks_inside_the_root_never_lead_outside() {
    let mut f = fixture();
    // Through a symlinked directory: refused, nothing created outside.
    let e = errno(f.a.apply(&Op::Create {
        path: p("escape/new"),
        mode: 0o644,
        uid: 0,
        gid: 0,
        handle: None,
        flags: 0,
    }));
    assert_eq!(e, libc::ELOOP);
    assert!(!f.outside.join("new").exists());
    let e = errno(f.a.apply(&Op::Unlink {
        path: p("escape/secret"),
    }));
    assert_eq!(e, libc::ELOOP);
    // Writes, truncates and opens through a final symlink: refused.
    for op in [
        Op::Write {
            target: Target::Path(p("secret-link")),
            offset: 0,
            data: b"pwned".to_vec(),
        },
        Op::Truncate {
            target: Target::Path(p("secret-link")),
            size: 0,
        },
        Op::Open {
            path: p("secret-link"),
            handle: HandleId(9),
            flags: libc::O_TRUNC as u32,
        },
    ] {
        assert!(f.a.apply(&op).is_err(), "{op:?} was applied");
    }
    // Metadata ops act on the link itself, never on its target.
    let _ = f.a.apply(&Op::Chmod {
        target: Target::Path(p("secret-link")),
        mode: 0o777,
    });
    f.a.apply(&Op::Chown {
        target: Target::Path(p("secret-link")),
        uid: Some(4242),
        gid: Some(4242),
        mode: None,
    })
    .unwrap();
    let md = fs::metadata(f.outside.join("secret")).unwrap();
    assert_eq!((md.mode() & 0o777, md.uid()), (0o600, 0));
    assert_eq!(fs::read(f.outside.join("secret")).unwrap(), b"keep");
    // Renaming the escape link itself is fine: it stays a link inside the root.
    f.a.apply(&Op::Rename {
        from: p("escape"),
        to: p("escape2"),
        flags: 0,
    })
    .unwrap();
    assert!(f.outside.join("secret").exists());
}

#[test]
fn unknown_handles_and_bad_modes_are_errors_not_panics() {
    let mut f = fixture();
    assert_eq!(
        errno(f.a.apply(&Op::Write {
            target: Target::Handle(HandleId(77)),
            offset: 0,
            data: vec![1],
        })),
        libc::EBADF
    );
    assert_eq!(
        errno(f.a.apply(&Op::Close {
            handle: HandleId(77)
        })),
        libc::EBADF
    );
    assert_eq!(
        errno(f.a.apply(&Op::Mknod {
            path: p("dir-by-mknod"),
            mode: libc::S_IFDIR | 0o755,
            rdev: 0,
            uid: 0,
            gid: 0,
        })),
        libc::EINVAL
    );
    assert_eq!(
        errno(f.a.apply(&Op::Rename {
            from: p("a"),
            to: p("b"),
            flags: 0x8000,
        })),
        libc::EINVAL
    );
}

#[test]
fn removing_below_a_missing_directory_is_done() {
    let mut f = fixture();
    f.a.apply(&Op::Remove {
        path: p("gone/child"),
    })
    .unwrap();
    fs::write(f.root.join("file"), b"x").unwrap();
    f.a.apply(&Op::Remove {
        path: p("file/child"),
    })
    .unwrap();
    assert!(f.root.join("file").exists());
}

#[test]
fn ensure_file_says_whether_the_file_was_kept() {
    let mut f = fixture();
    let ensure = |single| Op::EnsureFile {
        path: p("f"),
        mode: 0o640,
        uid: 0,
        gid: 0,
        single,
    };
    let kept = |r: io::Result<Applied>| match r.unwrap() {
        Applied::Reply(b) => b == [1],
        _ => panic!("EnsureFile must answer"),
    };
    assert!(!kept(f.a.apply(&ensure(true))), "made anew");
    fs::write(f.root.join("f"), b"data").unwrap();
    assert!(kept(f.a.apply(&ensure(true))), "kept");
    assert_eq!(fs::read(f.root.join("f")).unwrap(), b"data");
    fs::hard_link(f.root.join("f"), f.root.join("g")).unwrap();
    assert!(
        kept(f.a.apply(&ensure(false))),
        "shared, and the primary's is too"
    );
    assert!(
        !kept(f.a.apply(&ensure(true))),
        "shared here only: made anew"
    );
    assert_eq!(
        fs::read(f.root.join("g")).unwrap(),
        b"data",
        "the other name keeps its bytes"
    );
    assert!(fs::read(f.root.join("f")).unwrap().is_empty());
}

/// Issue 7, item 11: the peer sets and removes only the extended attributes
/// that are replicated data (file capabilities among them); a host label is
/// this node's own: refused from the peer, and left alone by ReplaceXattrs.
#[test]
fn only_replicated_xattrs_are_applied() {
    let mut f = fixture();
    fs::write(f.root.join("f"), b"x").unwrap();
    let cap = vec![1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    f.a.apply(&Op::SetXattr {
        target: Target::Path(p("f")),
        name: b"security.capability".to_vec(),
        value: cap.clone(),
        flags: 0,
    })
    .unwrap();
    let file = File::open(f.root.join("f")).unwrap();
    assert_eq!(
        xattr::value(file.as_fd(), b"security.capability").unwrap(),
        Some(cap.clone())
    );
    for op in [
        Op::SetXattr {
            target: Target::Path(p("f")),
            name: b"security.selinux".to_vec(),
            value: b"system_u:object_r:x_t:s0".to_vec(),
            flags: 0,
        },
        Op::RemoveXattr {
            target: Target::Path(p("f")),
            name: b"security.selinux".to_vec(),
        },
        Op::ReplaceXattrs {
            path: p("f"),
            attrs: vec![(b"security.ima".to_vec(), b"x".to_vec())],
        },
    ] {
        assert_eq!(errno(f.a.apply(&op)), libc::EPERM, "{op:?}");
    }
    // This node's own label (where root may set one) survives a resync's
    // ReplaceXattrs, which replaces only the replicated ones.
    let label = sys::setxattr_fd(file.as_fd(), OsStr::new("security.selinux"), b"l_t", 0).is_ok();
    f.a.apply(&Op::ReplaceXattrs {
        path: p("f"),
        attrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
    })
    .unwrap();
    assert_eq!(
        xattr::read(file.as_fd()).unwrap(),
        vec![(b"user.k".to_vec(), b"v".to_vec())]
    );
    if label {
        assert_eq!(
            xattr::value(file.as_fd(), b"security.selinux").unwrap(),
            Some(b"l_t".to_vec())
        );
    }
}

/// Issue 7, item 9: data ops open only regular files. A FIFO, a device node
/// or a directory named by a data op is refused (EINVAL; a symlink ELOOP)
/// without being opened: a FIFO with no reader would block an open for
/// writing, and a device's open already acts on this node.
#[test]
fn data_ops_open_only_regular_files() {
    let mut f = fixture();
    f.a.apply(&Op::Mknod {
        path: p("fifo"),
        mode: libc::S_IFIFO | 0o600,
        rdev: 0,
        uid: 0,
        gid: 0,
    })
    .unwrap();
    // /dev/null's numbers: writing it would "succeed" and write nothing
    // visible, which is exactly what must not pass silently.
    f.a.apply(&Op::Mknod {
        path: p("null"),
        mode: libc::S_IFCHR | 0o666,
        rdev: libc::makedev(1, 3),
        uid: 0,
        gid: 0,
    })
    .unwrap();
    fs::create_dir(f.root.join("dir")).unwrap();
    fs::write(f.root.join("reg"), b"data").unwrap();
    for (name, want) in [
        ("fifo", libc::EINVAL),
        ("null", libc::EINVAL),
        ("dir", libc::EINVAL),
        ("secret-link", libc::ELOOP),
    ] {
        let t = || Target::Path(p(name));
        for op in [
            Op::Write {
                target: t(),
                offset: 0,
                data: b"x".to_vec(),
            },
            Op::Truncate {
                target: t(),
                size: 0,
            },
            Op::Fallocate {
                target: t(),
                mode: 0,
                offset: 0,
                len: 4096,
            },
            Op::CopyRange {
                src: t(),
                src_offset: 0,
                dst: Target::Path(p("reg")),
                dst_offset: 0,
                len: 4,
            },
            Op::CopyRange {
                src: Target::Path(p("reg")),
                src_offset: 0,
                dst: t(),
                dst_offset: 0,
                len: 4,
            },
            Op::Checksums {
                path: p(name),
                block: 4096,
                first: 0,
                count: 1,
            },
            Op::Open {
                path: p(name),
                handle: HandleId(9),
                flags: 0,
            },
        ] {
            assert_eq!(errno(f.a.apply(&op)), want, "{name}: {op:?}");
        }
        let sync = f.a.apply(&Op::Fsync {
            target: t(),
            datasync: false,
        });
        if name == "dir" {
            assert!(matches!(sync, Ok(Applied::Sync { .. })), "{sync:?}");
        } else {
            assert_eq!(errno(sync), want, "{name}: fsync");
        }
        // Not even a read-ahead hint opens it.
        let prefetch = f.a.prefetch().unwrap();
        let job = prefetch.job(&Op::Checksums {
            path: p(name),
            block: 4096,
            first: 0,
            count: 1,
        });
        job.expect("a hint job")();
    }
    assert_eq!(fs::read(f.root.join("reg")).unwrap(), b"data");
    assert_eq!(f.a.open_handles(), 0);
}

/// Issue 7, item 9: ranges computed from wire values are checked: an op that
/// reaches the applier with an overflowing range (the decoder refuses such
/// frames) fails with EINVAL instead of reading or writing a wrapped offset.
#[test]
fn overflowing_ranges_fail_with_einval() {
    let mut f = fixture();
    fs::write(f.root.join("reg"), b"data").unwrap();
    for op in [
        Op::Checksums {
            path: p("reg"),
            block: 1 << 20,
            first: u64::MAX - 1,
            count: 4,
        },
        Op::Checksums {
            path: p("reg"),
            block: 1 << 20,
            first: u64::MAX / (1 << 20),
            count: 1,
        },
        Op::CopyRange {
            src: Target::Path(p("reg")),
            src_offset: u64::MAX - 1,
            dst: Target::Path(p("reg")),
            dst_offset: 0,
            len: 4,
        },
        Op::Write {
            target: Target::Path(p("reg")),
            offset: u64::MAX - 1,
            data: b"xy".to_vec(),
        },
        Op::Truncate {
            target: Target::Path(p("reg")),
            size: u64::MAX,
        },
    ] {
        assert_eq!(errno(f.a.apply(&op)), libc::EINVAL, "{op:?}");
    }
    assert_eq!(fs::read(f.root.join("reg")).unwrap(), b"data");
}

/// Issue 7, item 6: `Remove` of a tree thousands of levels deep (deeper
/// than PATH_MAX in bytes, and than a recursion or a descriptor per level
/// would bear) with wide directories on the way: everything goes, and the
/// work counter shows one step per entry removed.
#[test]
fn remove_of_a_very_deep_tree_is_iterative_and_counts_its_work() {
    const DEPTH: usize = 10_000;
    let mut f = fixture();
    let mut dir: OwnedFd = File::open(&f.root).unwrap().into();
    let mut entries = 0u64;
    for level in 0..DEPTH {
        let name = OsStr::new(if level == 0 { "deep" } else { "d" });
        sys::mkdirat(dir.as_fd(), name, 0o755).unwrap();
        entries += 1;
        dir = sys::openat(
            dir.as_fd(),
            name,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .unwrap();
        if level % 1000 == 0 {
            for i in 0..100 {
                let n = format!("f{i}");
                sys::mknodat(dir.as_fd(), OsStr::new(&n), libc::S_IFREG | 0o644, 0).unwrap();
                entries += 1;
            }
        }
    }
    drop(dir);
    let work = f.a.work();
    let before = work.load(Ordering::Relaxed);
    f.a.apply(&Op::Remove { path: p("deep") }).unwrap();
    assert!(!f.root.join("deep").exists());
    assert!(f.root.join("escape").exists(), "a sibling was touched");
    // One per entry, one for the op.
    assert_eq!(work.load(Ordering::Relaxed) - before, entries + 1);
}

/// Issue 7, item 5: a directory is listed in pages, each within its budget,
/// continuing after the previous page's last name, until none follow: every
/// entry comes exactly once, in name order (the metadata area left out).
#[test]
fn list_pages_cover_a_large_directory_exactly_once() {
    let mut f = fixture();
    fs::create_dir(f.root.join(".mirrorfs-not-meta")).unwrap();
    let mut want: Vec<Vec<u8>> = vec![
        b".mirrorfs-not-meta".to_vec(),
        b"escape".to_vec(),
        b"secret-link".to_vec(),
    ];
    for i in 0..1000 {
        let name = format!("{i:0200}");
        fs::write(f.root.join(&name), b"").unwrap();
        want.push(name.into_bytes());
    }
    want.sort();
    let mut got = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let reply = match f
            .a
            .apply(&Op::List {
                path: RelPath::root(),
                after: after.clone(),
                budget: 4096,
            })
            .unwrap()
        {
            Applied::Reply(r) => r,
            other => panic!("{other:?}"),
        };
        assert!(reply.len() <= 1 + 4096, "page of {} bytes", reply.len());
        let (entries, more) = crate::proto::wire::decode_listing_page(&reply).unwrap();
        pages += 1;
        after = entries.last().map(|(n, _)| n.clone());
        got.extend(entries.into_iter().map(|(n, _)| n));
        if !more {
            break;
        }
    }
    assert_eq!(got, want);
    assert!(pages >= 1000 / 20, "{pages} pages");
}

#[test]
fn paths_longer_than_path_max_apply_beneath_the_root() {
    let mut f = fixture();
    let deep = crate::proto::path::deep_path_bytes(10_000);
    // Each directory of the path, by path as the primary sends them.
    let mut dir = RelPath::root();
    for name in deep.split(|b| *b == b'/') {
        dir = dir.join(OsStr::from_bytes(name)).unwrap();
        f.a.apply(&Op::Mkdir {
            path: dir.clone(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        })
        .unwrap();
    }
    assert!(dir.as_bytes().len() > libc::PATH_MAX as usize);
    let file = dir.join(OsStr::new("f")).unwrap();
    f.a.apply(&Op::Create {
        path: file.clone(),
        mode: 0o644,
        uid: 0,
        gid: 0,
        handle: None,
        flags: 0,
    })
    .unwrap();
    f.a.apply(&Op::Write {
        target: Target::Path(file.clone()),
        offset: 0,
        data: b"deep data".to_vec(),
    })
    .unwrap();
    let Applied::Reply(listing) =
        f.a.apply(&Op::List {
            path: dir.clone(),
            after: None,
            budget: crate::proto::wire::MIN_LIST_BUDGET,
        })
        .unwrap()
    else {
        panic!("a listing")
    };
    assert_eq!(
        crate::proto::wire::decode_listing_page(&listing).unwrap(),
        (vec![(b"f".to_vec(), libc::S_IFREG)], false)
    );
    // Rename a directory in the middle: what is below follows.
    let (mid, _) = deep.split_at(deep.len() / 2);
    let mid = &mid[..mid.iter().rposition(|b| *b == b'/').unwrap()];
    let mid = RelPath::new(mid.to_vec()).unwrap();
    let (mid_parent, _) = mid.split().unwrap();
    let moved = mid_parent.join(OsStr::new("moved")).unwrap();
    f.a.apply(&Op::Rename {
        from: mid.clone(),
        to: moved.clone(),
        flags: 0,
    })
    .unwrap();
    let below = &file.as_bytes()[mid.as_bytes().len()..];
    let file2 = RelPath::new([moved.as_bytes(), below].concat()).unwrap();
    let fd = sys::openat2(
        f.a.root.as_fd(),
        file2.as_os_str(),
        libc::O_RDONLY,
        0,
        sys::RESOLVE_STRICT,
    )
    .unwrap();
    let mut buf = [0u8; 16];
    let n = sys::pread(fd.as_fd(), &mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"deep data");
    // A symlink to the outside in the middle of a long path is refused.
    let (trap_parent, trap_name) = moved.split().unwrap();
    let pfd =
        f.a.resolve(&trap_parent, libc::O_PATH | libc::O_DIRECTORY)
            .unwrap();
    sys::renameat2(pfd.as_fd(), trap_name, pfd.as_fd(), OsStr::new("real"), 0).unwrap();
    sys::symlinkat(f.outside.as_os_str(), pfd.as_fd(), trap_name).unwrap();
    let e = errno(f.a.apply(&Op::Write {
        target: Target::Path(file2.clone()),
        offset: 0,
        data: b"pwned".to_vec(),
    }));
    assert_eq!(e, libc::ELOOP);
    assert_eq!(fs::read(f.outside.join("secret")).unwrap(), b"keep");
    // The whole tree goes with one remove.
    f.a.apply(&Op::Remove {
        path: RelPath::new(deep.split(|b| *b == b'/').next().unwrap().to_vec()).unwrap(),
    })
    .unwrap();
    let mut left: Vec<_> = fs::read_dir(&f.root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, [".mirrorfs", "escape", "secret-link"]);
    assert_eq!(fs::read(f.outside.join("secret")).unwrap(), b"keep");
}

#[test]
fn begin_resync_marks_the_tree_inconsistent_until_set_generation() {
    let mut f = fixture();
    f.a.set_primary("node1");
    assert!(matches!(
        f.a.apply(&Op::BeginResync { generation: 0xab }),
        Ok(Applied::Done)
    ));
    let meta = Meta::open(&f.root).unwrap();
    let mark = meta.inconsistent().unwrap().expect("marked inconsistent");
    assert_eq!(mark.from, "node1");
    assert_eq!(mark.generation, Some(GenerationId(0xab)));
    assert!(mark.since_unix > 1_700_000_000, "{}", mark.since_unix);
    let text = fs::read_to_string(f.root.join(".mirrorfs/inconsistent")).unwrap();
    assert!(text.contains("mix of old and new"), "{text}");
    // A second resync start (after a reconnect) keeps it marked.
    f.a.apply(&Op::BeginResync { generation: 0xac }).unwrap();
    assert!(meta.inconsistent().unwrap().is_some());
    f.a.apply(&Op::SetGeneration {
        ids: vec![0xac, 0xab],
    })
    .unwrap();
    assert_eq!(meta.inconsistent().unwrap(), None, "the resync completed");
    assert_eq!(
        meta.load_history().unwrap().current(),
        Some(GenerationId(0xac))
    );
}

/// Issue 7: a change the secondary refuses leaves it without the primary's
/// data while it may hold the primary's generation; it marks itself
/// inconsistent before answering, and a refused read does not.
#[test]
fn issue_7_a_refused_change_marks_the_tree_inconsistent() {
    let mut f = fixture();
    let e = errno(f.a.apply(&Op::List {
        path: p("missing"),
        after: None,
        budget: crate::proto::wire::MIN_LIST_BUDGET,
    }));
    assert_eq!(e, libc::ENOENT);
    assert_eq!(f.a.meta.inconsistent().unwrap(), None);
    let e = errno(f.a.apply(&Op::Unlink { path: p("missing") }));
    assert_eq!(e, libc::ENOENT);
    let mark =
        f.a.meta
            .inconsistent()
            .unwrap()
            .expect("marked inconsistent");
    assert_eq!(mark.generation, None);
    // Only the resync's end clears it.
    f.a.apply(&Op::SetGeneration { ids: vec![5] }).unwrap();
    assert_eq!(f.a.meta.inconsistent().unwrap(), None);
}

/// Issue 10, item 6: ensuring an entry that already has the primary's owner
/// and mode writes nothing (a `--full` resync ensures every entry of an
/// unchanged tree: a chown and a chmod to the same values would write every
/// inode); a different mode is still set.
#[test]
fn issue_10_6_ensuring_an_unchanged_entry_leaves_its_inode_alone() {
    use std::time::{Duration, Instant, UNIX_EPOCH};
    let mut f = fixture();
    fs::write(f.root.join("f"), b"data").unwrap();
    fs::set_permissions(f.root.join("f"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::create_dir(f.root.join("d")).unwrap();
    fs::set_permissions(f.root.join("d"), fs::Permissions::from_mode(0o750)).unwrap();
    let ctime = |name: &str| {
        let m = fs::symlink_metadata(f.root.join(name)).unwrap();
        (m.ctime(), m.ctime_nsec())
    };
    let before = (ctime("f"), ctime("d"));
    // A change now would carry a later change time than the entries'.
    // (The clock that stamps inodes moves in ticks of up to 10 ms.)
    let made = UNIX_EPOCH + Duration::new(before.0 .0 as u64, before.0 .1 as u32);
    let deadline = Instant::now() + Duration::from_secs(5);
    while SystemTime::now() < made + Duration::from_millis(30) {
        assert!(Instant::now() < deadline, "the clock does not move");
        std::thread::yield_now();
    }
    let owner = fs::symlink_metadata(f.root.join("f")).unwrap();
    let (uid, gid) = (owner.uid(), owner.gid());
    let file = |mode| Op::EnsureFile {
        path: p("f"),
        mode,
        uid,
        gid,
        single: true,
    };
    let dir = |mode| Op::EnsureDir {
        path: p("d"),
        mode,
        uid,
        gid,
    };
    f.a.apply(&file(0o640)).unwrap();
    f.a.apply(&dir(0o750)).unwrap();
    assert_eq!(ctime("f"), before.0, "the unchanged file was written");
    assert_eq!(ctime("d"), before.1, "the unchanged directory was written");
    f.a.apply(&file(0o600)).unwrap();
    f.a.apply(&dir(0o700)).unwrap();
    let mode = |name: &str| fs::symlink_metadata(f.root.join(name)).unwrap().mode() & 0o7777;
    assert_eq!((mode("f"), mode("d")), (0o600, 0o700));
    assert_ne!(ctime("f"), before.0);
}
