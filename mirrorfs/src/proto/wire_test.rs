//! Codec tests: exact round trips, hostile frames, and proptest over random bytes
//! and random operations.

use pretty_assertions::assert_eq;
use proptest::prelude::*;

use super::*;
use crate::proto::path::{MAX_PATH, MAX_SYMLINK_TARGET};

fn p(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}

fn round_trip(f: &Frame) {
    let mut buf = Vec::new();
    f.encode(&mut buf);
    assert_eq!(
        Frame::decode(&buf),
        Ok(Decoded::Frame(f.clone(), buf.len()))
    );
    // Every strict prefix is incomplete, never an error.
    for cut in [0, 1, 3, 4, buf.len() - 1] {
        assert_eq!(Frame::decode(&buf[..cut]), Ok(Decoded::Incomplete));
    }
}

fn op_frame(op: Op) -> Frame {
    Frame::Op { seq: Seq(7), op }
}

/// Encodes an op frame whose single path field is replaced by raw `bytes`.
fn unlink_frame_with_raw_path(bytes: &[u8]) -> Vec<u8> {
    let mut body = vec![tag::OP];
    body.extend_from_slice(&1u64.to_be_bytes());
    body.push(opcode::UNLINK);
    body.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    body.extend_from_slice(bytes);
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

#[test]
fn every_frame_kind_round_trips() {
    round_trip(&Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        node: "node1".into(),
        peer: "node2".into(),
        history: vec![3, 2, 1],
        peer_timeout_ms: 1500,
    }));
    round_trip(&Frame::Suspects {
        paths: vec![RelPath::root(), p("a/b")],
        last: true,
    });
    round_trip(&Frame::Data {
        seq: Seq(8),
        payload: encode_listing_page(
            &[
                (b"a".to_vec(), libc::S_IFDIR),
                (b"b c".to_vec(), libc::S_IFREG),
            ],
            true,
        ),
    });
    round_trip(&Frame::Refused {
        reason: "version 2 vs 1".into(),
    });
    round_trip(&Frame::Ack { upto: Seq(99) });
    round_trip(&Frame::Failed {
        seq: Seq(3),
        errno: libc::ENOSPC,
    });
    round_trip(&Frame::Synced {
        seq: Seq(4),
        errno: 0,
    });
    round_trip(&Frame::Progress { work: 12345 });
    let h = Target::Handle(HandleId(5));
    let t = Timestamp { sec: -1, nsec: 5 };
    for op in [
        Op::Create {
            path: p("a/b"),
            mode: 0o644,
            uid: 1,
            gid: 2,
            handle: Some(HandleId(9)),
            flags: libc::O_SYNC as u32,
        },
        Op::Mknod {
            path: p("fifo"),
            mode: libc::S_IFIFO | 0o600,
            rdev: 0,
            uid: 0,
            gid: 0,
        },
        Op::Mkdir {
            path: p("d"),
            mode: 0o2755,
            uid: 3,
            gid: 4,
        },
        Op::Symlink {
            path: p("l"),
            target: b"../../anything".to_vec(),
            uid: 0,
            gid: 0,
        },
        Op::Link {
            existing: p("a"),
            new: p("b"),
        },
        Op::Unlink { path: p("x") },
        Op::Rmdir { path: p("d") },
        Op::Rename {
            from: p("x"),
            to: p("y"),
            flags: libc::RENAME_EXCHANGE,
        },
        Op::Open {
            path: p("f"),
            handle: HandleId(1),
            flags: 0,
        },
        Op::Close {
            handle: HandleId(1),
        },
        Op::Write {
            target: h.clone(),
            offset: 1 << 40,
            data: vec![1, 2, 3],
        },
        Op::Truncate {
            target: Target::Path(p("f")),
            size: 0,
        },
        Op::Chmod {
            target: Target::Path(RelPath::root()),
            mode: 0o1777,
        },
        Op::Chown {
            target: h.clone(),
            uid: Some(1000),
            gid: None,
            mode: Some(0o755),
        },
        Op::SetTimes {
            target: h.clone(),
            atime: None,
            mtime: Some(t),
        },
        Op::SetXattr {
            target: h.clone(),
            name: b"user.color".to_vec(),
            value: b"blue".to_vec(),
            flags: 1,
        },
        Op::RemoveXattr {
            target: h.clone(),
            name: b"user.color".to_vec(),
        },
        Op::Fallocate {
            target: h.clone(),
            mode: 0,
            offset: 0,
            len: 4096,
        },
        Op::CopyRange {
            src: Target::Path(p("s")),
            src_offset: 1,
            dst: h.clone(),
            dst_offset: 2,
            len: 3,
        },
        Op::Fsync {
            target: h,
            datasync: true,
        },
        Op::Remove { path: p("gone") },
        Op::EnsureDir {
            path: RelPath::root(),
            mode: 0o755,
            uid: 1,
            gid: 2,
        },
        Op::EnsureFile {
            path: p("f"),
            mode: 0o600,
            uid: 1,
            gid: 2,
            single: true,
        },
        Op::EnsureSymlink {
            path: p("l"),
            target: b"t".to_vec(),
            uid: 0,
            gid: 0,
        },
        Op::EnsureNode {
            path: p("n"),
            mode: libc::S_IFIFO | 0o644,
            rdev: 0,
            uid: 0,
            gid: 0,
        },
        Op::ReplaceXattrs {
            path: p("f"),
            attrs: vec![(b"user.a".to_vec(), b"1".to_vec())],
        },
        Op::List {
            path: RelPath::root(),
            after: None,
            budget: MIN_LIST_BUDGET,
        },
        Op::List {
            path: p("d"),
            after: Some(b"last name".to_vec()),
            budget: MAX_LIST_BUDGET,
        },
        Op::Checksums {
            path: p("f"),
            block: 1 << 20,
            first: 3,
            count: 10,
        },
        Op::SetGeneration { ids: vec![9, 8] },
        Op::BeginResync {
            generation: u64::MAX,
        },
        Op::Barrier,
    ] {
        round_trip(&op_frame(op));
    }
}

#[test]
fn checksum_replies_round_trip_and_reject_bad_lengths() {
    let facts = FileFacts {
        size: 3 << 20,
        mtime: Timestamp {
            sec: -5,
            nsec: 999_999_999,
        },
        xattrs: 0xdead_beef,
    };
    let sums = vec![1, u64::MAX, 7];
    let raw = encode_checksums(&facts, &sums);
    assert_eq!(decode_checksums(&raw), Ok((facts, sums)));
    assert_eq!(
        decode_checksums(&encode_checksums(&facts, &[])),
        Ok((facts, vec![]))
    );
    assert!(decode_checksums(&raw[..raw.len() - 1]).is_err(), "torn sum");
    assert!(decode_checksums(&raw[..10]).is_err(), "torn facts");
    let mut bad_nsec = raw;
    bad_nsec[16..20].copy_from_slice(&1_000_000_000u32.to_be_bytes());
    assert!(
        decode_checksums(&bad_nsec).is_err(),
        "nanoseconds out of range"
    );
}

#[test]
fn listings_round_trip_and_reject_bad_names() {
    let entries = vec![
        (b"x".to_vec(), libc::S_IFLNK),
        (b".hidden".to_vec(), libc::S_IFREG),
    ];
    assert_eq!(decode_listing(&encode_listing(&entries)), Ok(entries));
    for bad in [&b".."[..], b"a/b", b"", b"n\0ul"] {
        let mut raw = vec![8u8];
        raw.extend_from_slice(&(bad.len() as u16).to_be_bytes());
        raw.extend_from_slice(bad);
        if bad == b"n\0ul" {
            raw = vec![8, 0, 3, b'n', 0, b'l'];
        }
        assert!(decode_listing(&raw).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn hostile_paths_are_rejected_by_the_decoder() {
    for (raw, want) in [
        (&b"../../etc/passwd"[..], "'..'"),
        (b"/etc/passwd", "absolute"),
        (b"a\0b", "NUL"),
        (b"", "not the root"),
        (b"a//b", "empty"),
    ] {
        let e = Frame::decode(&unlink_frame_with_raw_path(raw)).unwrap_err();
        assert!(e.to_string().contains(want), "{raw:?}: {e}");
    }
}

#[test]
fn oversized_frames_are_refused_from_the_header_alone() {
    let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
    assert_eq!(
        Frame::decode(&header),
        Err(WireError::Oversized(MAX_FRAME + 1))
    );
}

#[test]
fn unknown_tags_and_trailing_bytes_are_malformed() {
    assert_eq!(
        Frame::decode(&[0, 0, 0, 1, 99]),
        Err(WireError::UnknownFrame(99))
    );
    let mut op = vec![0, 0, 0, 10, tag::OP];
    op.extend_from_slice(&1u64.to_be_bytes());
    op.push(200);
    assert_eq!(Frame::decode(&op), Err(WireError::UnknownOp(200)));
    let mut ack = Vec::new();
    Frame::Ack { upto: Seq(1) }.encode(&mut ack);
    ack.push(0);
    ack[3] += 1;
    assert_eq!(
        Frame::decode(&ack),
        Err(WireError::Malformed("trailing bytes after the frame"))
    );
}

/// Issue 7, item 9: products and sums of wire values (offset + len,
/// block × index) that leave `off_t` are malformed frames, never wrapped
/// offsets; the largest valid ranges still pass.
#[test]
fn ranges_beyond_the_largest_offset_are_malformed() {
    let h = || Target::Handle(HandleId(1));
    let bad = [
        Op::Write {
            target: h(),
            offset: MAX_OFFSET,
            data: vec![1],
        },
        Op::Write {
            target: h(),
            offset: u64::MAX,
            data: vec![1],
        },
        Op::Truncate {
            target: h(),
            size: MAX_OFFSET + 1,
        },
        Op::Fallocate {
            target: h(),
            mode: 0,
            offset: u64::MAX - 1,
            len: 5,
        },
        Op::CopyRange {
            src: h(),
            src_offset: 0,
            dst: h(),
            dst_offset: MAX_OFFSET - 1,
            len: 2,
        },
        Op::CopyRange {
            src: h(),
            src_offset: u64::MAX,
            dst: h(),
            dst_offset: 0,
            len: 2,
        },
        Op::Checksums {
            path: p("f"),
            block: 1 << 20,
            first: u64::MAX / 4096,
            count: 1,
        },
        Op::Checksums {
            path: p("f"),
            block: 1 << 20,
            first: (MAX_OFFSET >> 20) - 1,
            count: 2,
        },
    ];
    for op in bad {
        let mut buf = Vec::new();
        op_frame(op.clone()).encode(&mut buf);
        assert_eq!(
            Frame::decode(&buf),
            Err(WireError::Malformed("range beyond the largest file offset")),
            "{op:?}"
        );
    }
    for op in [
        Op::Write {
            target: h(),
            offset: MAX_OFFSET - 1,
            data: vec![1],
        },
        Op::Truncate {
            target: h(),
            size: MAX_OFFSET,
        },
        Op::CopyRange {
            src: h(),
            src_offset: MAX_OFFSET - 2,
            dst: h(),
            dst_offset: 0,
            len: 2,
        },
        Op::Checksums {
            path: p("f"),
            block: 1 << 20,
            first: (MAX_OFFSET >> 20) - 1,
            count: 1,
        },
    ] {
        round_trip(&op_frame(op));
    }
}

/// Issue 7, item 6: one checksum request covers at most
/// MAX_CHECKSUM_BYTES, so that no single op occupies the secondary for long.
#[test]
fn checksum_requests_are_bounded_in_bytes() {
    let ok = Op::Checksums {
        path: p("f"),
        block: 1 << 20,
        first: 0,
        count: (MAX_CHECKSUM_BYTES >> 20) as u32,
    };
    round_trip(&op_frame(ok));
    for (block, count) in [
        (1u32 << 20, 65u32),
        (16 << 20, 5),
        (4096, 16385),
        (1 << 20, 4096),
    ] {
        let mut buf = Vec::new();
        op_frame(Op::Checksums {
            path: p("f"),
            block,
            first: 0,
            count,
        })
        .encode(&mut buf);
        assert_eq!(
            Frame::decode(&buf),
            Err(WireError::Malformed(
                "checksum block size or count out of range"
            )),
            "{count} blocks of {block}"
        );
    }
}

/// Issue 7, item 5: any number of suspect directories travel, in pages
/// that each fit in a frame: 20 000 directories of 200-byte names (4 MB,
/// far beyond the 16 KiB a hello may take) round-trip in order.
#[test]
fn suspect_directories_travel_in_pages_of_any_number() {
    let name = |i: usize| p(&format!("{i:0200}"));
    let suspects: Vec<RelPath> = (0..20_000).map(name).collect();
    let pages = Frame::suspect_pages(&suspects);
    assert!(pages.len() > 1, "{} page(s)", pages.len());
    let mut got = Vec::new();
    for (i, page) in pages.iter().enumerate() {
        let mut buf = Vec::new();
        page.encode(&mut buf);
        assert!(buf.len() <= MAX_FRAME + 4, "page {i}: {} bytes", buf.len());
        match Frame::decode(&buf) {
            Ok(Decoded::Frame(Frame::Suspects { paths, last }, _)) => {
                assert_eq!(last, i == pages.len() - 1);
                got.extend(paths);
            }
            other => panic!("page {i}: {other:?}"),
        }
    }
    assert_eq!(got, suspects);
    assert_eq!(
        Frame::suspect_pages(&[]),
        vec![Frame::Suspects {
            paths: vec![],
            last: true
        }]
    );
    // A count beyond what the frame can hold is refused before allocating.
    let mut raw = vec![0, 0, 0, 6, tag::SUSPECTS];
    raw.extend_from_slice(&u32::MAX.to_be_bytes());
    raw.push(1);
    assert_eq!(
        Frame::decode(&raw),
        Err(WireError::Malformed("suspect count beyond the frame"))
    );
}

/// Issue 7, item 5: listing pages carry their more-flag; a List continues
/// after a valid name and within a bounded budget.
#[test]
fn listing_pages_and_list_requests_are_checked() {
    let entries = vec![(b"a".to_vec(), libc::S_IFDIR)];
    for more in [false, true] {
        assert_eq!(
            decode_listing_page(&encode_listing_page(&entries, more)),
            Ok((entries.clone(), more))
        );
    }
    assert!(decode_listing_page(&[]).is_err());
    assert!(decode_listing_page(&[2]).is_err());
    for (after, budget) in [
        (Some(b"a/b".to_vec()), MIN_LIST_BUDGET),
        (Some(b"..".to_vec()), MIN_LIST_BUDGET),
        (Some(Vec::new()), MIN_LIST_BUDGET),
        (None, MIN_LIST_BUDGET - 1),
        (None, MAX_LIST_BUDGET + 1),
    ] {
        let mut buf = Vec::new();
        op_frame(Op::List {
            path: RelPath::root(),
            after: after.clone(),
            budget,
        })
        .encode(&mut buf);
        assert!(
            matches!(Frame::decode(&buf), Err(WireError::Malformed(_))),
            "{after:?} {budget}"
        );
    }
}

#[test]
fn issue_10_7_a_barrier_is_opcode_31_alone_and_answered_when_durable() {
    let mut buf = Vec::new();
    op_frame(Op::Barrier).encode(&mut buf);
    // Length, tag, sequence number, opcode.
    assert_eq!(buf.len(), 4 + 1 + 8 + 1);
    assert_eq!(buf[4 + 1 + 8], 31);
    assert!(Op::Barrier.is_durability(), "answered by Synced");
    assert_eq!(PROTOCOL_VERSION, 4, "a peer without barriers is told");
    round_trip(&op_frame(Op::Barrier));
}

#[test]
fn begin_resync_is_opcode_30_with_the_generation() {
    let mut buf = Vec::new();
    op_frame(Op::BeginResync {
        generation: 0x0102_0304_0506_0708,
    })
    .encode(&mut buf);
    // Length, tag, sequence number, opcode, generation.
    assert_eq!(buf.len(), 4 + 1 + 8 + 1 + 8);
    assert_eq!(buf[4 + 1 + 8], 30);
    assert_eq!(&buf[buf.len() - 8..], &[1, 2, 3, 4, 5, 6, 7, 8]);
    // A body cut short inside the generation is malformed, not a panic.
    let mut short = buf[..buf.len() - 3].to_vec();
    let body = (short.len() - 4) as u32;
    short[..4].copy_from_slice(&body.to_be_bytes());
    assert!(Frame::decode(&short).is_err());
}

fn arb_path() -> impl Strategy<Value = RelPath> {
    prop::collection::vec("[a-z0-9._-]{1,12}", 1..4).prop_filter_map("valid path", |parts| {
        RelPath::new(parts.join("/").into_bytes()).ok()
    })
}

fn arb_target() -> impl Strategy<Value = Target> {
    prop_oneof![
        arb_path().prop_map(Target::Path),
        any::<u64>().prop_map(|h| Target::Handle(HandleId(h))),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            arb_path(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<Option<u64>>()
        )
            .prop_map(|(path, mode, uid, gid, h)| Op::Create {
                path,
                mode,
                uid,
                gid,
                handle: h.map(HandleId),
                flags: 0
            }),
        (arb_path(), arb_path(), any::<u32>()).prop_map(|(from, to, flags)| Op::Rename {
            from,
            to,
            flags
        }),
        (
            arb_target(),
            0..=MAX_OFFSET - 300,
            prop::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(target, offset, data)| Op::Write {
                target,
                offset,
                data
            }),
        (arb_target(), any::<Option<u32>>(), any::<Option<u32>>()).prop_map(
            |(target, uid, gid)| Op::Chown {
                target,
                uid,
                gid,
                mode: None
            }
        ),
        (arb_target(), any::<bool>()).prop_map(|(target, datasync)| Op::Fsync { target, datasync }),
        arb_path().prop_map(|path| Op::Unlink { path }),
        any::<u64>().prop_map(|generation| Op::BeginResync { generation }),
        Just(Op::Barrier),
    ]
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Frame::decode(&bytes);
    }

    #[test]
    fn random_ops_round_trip(op in arb_op(), seq in any::<u64>()) {
        let f = Frame::Op { seq: Seq(seq), op };
        let mut buf = Vec::new();
        f.encode(&mut buf);
        prop_assert_eq!(Frame::decode(&buf), Ok(Decoded::Frame(f, buf.len())));
    }

    #[test]
    fn split_encoding_is_the_same_bytes(
        op in arb_op(),
        seq in any::<u64>(),
        large in prop::option::of((arb_target(), 0..=MAX_OFFSET - MAX_DATA as u64, SPLIT_AT..SPLIT_AT + 300)),
    ) {
        // A large write's data is handed back, not copied: head + data is
        // exactly what `encode` writes, behind whatever `out` held.
        let is_large = large.is_some();
        let op = match large {
            Some((target, offset, len)) => Op::Write { target, offset, data: vec![0x5a; len] },
            None => op,
        };
        let mut whole = b"before".to_vec();
        Frame::Op { seq: Seq(seq), op: op.clone() }.encode(&mut whole);
        let mut split = b"before".to_vec();
        let data = Frame::encode_op_split(Seq(seq), op.clone(), &mut split);
        prop_assert_eq!(data.is_some(), is_large);
        split.extend_from_slice(&data.unwrap_or_default());
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn corrupted_frames_never_panic(op in arb_op(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut buf = Vec::new();
        Frame::Op { seq: Seq(1), op }.encode(&mut buf);
        let i = pos.index(buf.len());
        buf[i] = byte;
        let _ = Frame::decode(&buf);
    }
}

/// A path of exactly `len` bytes.
fn long_path(len: usize) -> RelPath {
    RelPath::new(crate::proto::path::deep_path_bytes(len)).unwrap()
}

#[test]
fn the_longest_paths_round_trip_and_the_largest_frame_fits() {
    let longest = long_path(MAX_PATH);
    let write = op_frame(Op::Write {
        target: Target::Path(longest.clone()),
        offset: 1 << 40,
        data: vec![0xa5; MAX_DATA],
    });
    let mut buf = Vec::new();
    write.encode(&mut buf);
    assert!(
        buf.len() - 4 <= MAX_FRAME,
        "{} > {MAX_FRAME}",
        buf.len() - 4
    );
    assert!(Frame::decode(&buf) == Ok(Decoded::Frame(write, buf.len())));
    let other = RelPath::new([&b"x/"[..], &longest.as_bytes()[2..]].concat()).unwrap();
    for op in [
        Op::Rename {
            from: longest.clone(),
            to: other,
            flags: 0,
        },
        Op::Symlink {
            path: longest.clone(),
            target: vec![b't'; MAX_SYMLINK_TARGET],
            uid: 0,
            gid: 0,
        },
        Op::SetXattr {
            target: Target::Path(longest.clone()),
            name: vec![b'n'; 255],
            value: vec![1; MAX_XATTR_VALUE],
            flags: 0,
        },
        Op::EnsureDir {
            path: longest.clone(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
    ] {
        let f = op_frame(op);
        let mut buf = Vec::new();
        f.encode(&mut buf);
        assert!(buf.len() - 4 <= MAX_FRAME);
        assert!(
            Frame::decode(&buf) == Ok(Decoded::Frame(f.clone(), buf.len())),
            "{}",
            match &f {
                Frame::Op { op, .. } => op.name(),
                _ => "",
            }
        );
    }
    // Suspect directories of the longest paths: a page holds them whole,
    // within MAX_FRAME.
    let suspects: Vec<RelPath> = (0..100)
        .map(|i| long_path(MAX_PATH - (i % 7)))
        .chain([long_path(10_000), longest])
        .collect();
    let pages = Frame::suspect_pages(&suspects);
    let mut got = Vec::new();
    for page in &pages {
        let mut buf = Vec::new();
        page.encode(&mut buf);
        assert!(buf.len() - 4 <= MAX_FRAME);
        round_trip(page);
        if let Frame::Suspects { paths, .. } = page {
            got.extend(paths.iter().cloned());
        }
    }
    assert_eq!(got, suspects);
}

#[test]
fn one_byte_over_the_bounds_is_refused() {
    // A path of MAX_PATH + 1 bytes, otherwise valid.
    let over = crate::proto::path::deep_path_bytes(MAX_PATH + 1);
    assert_eq!(
        Frame::decode(&unlink_frame_with_raw_path(&over)),
        Err(WireError::Malformed("field longer than its limit"))
    );
    let at = crate::proto::path::deep_path_bytes(MAX_PATH);
    assert!(matches!(
        Frame::decode(&unlink_frame_with_raw_path(&at)),
        Ok(Decoded::Frame(
            Frame::Op {
                op: Op::Unlink { .. },
                ..
            },
            _
        ))
    ));
    // A symlink target keeps the kernel's limit.
    let symlink = |len: usize| {
        let mut buf = Vec::new();
        op_frame(Op::Symlink {
            path: p("l"),
            target: vec![b't'; len],
            uid: 0,
            gid: 0,
        })
        .encode(&mut buf);
        Frame::decode(&buf)
    };
    assert!(matches!(
        symlink(MAX_SYMLINK_TARGET),
        Ok(Decoded::Frame(..))
    ));
    assert_eq!(
        symlink(MAX_SYMLINK_TARGET + 1),
        Err(WireError::Malformed("field longer than its limit"))
    );
}
