//! Resync benchmark (issue 3): what bringing a returning secondary up to date
//! costs, against what the same work costs without mirrorfs.
//!
//! Run as root: `scripts/bench.sh resync`, or `cargo build --release -p
//! mirrorfs && cargo bench --bench resync`. It runs the `mirrorfs` binary at `$MIRRORFS_BIN`, or beside the
//! bench in the same target directory (`target/release/mirrorfs`). A default
//! run takes about 10 minutes on 2 cores.
//!
//! One run builds its own lab: two network namespaces (`mfr<pid>a`/`b`)
//! joined by a veth pair, `mirrorfs serve` on node 2 and `mirrorfs mount
//! --on-peer-loss=alone --peer-timeout 2 --control SOCK` on node 1, all in
//! /var/tmp/mfresync-<pid>. Then, in order:
//!
//! 1. A tree of `MIRRORFS_BENCH_RESYNC_FILES` files (default 100 000) of
//!    `MIRRORFS_BENCH_RESYNC_MIB` MiB in all (default 2048: 16 KiB files, and
//!    every hundredth file larger to make up the total), in directories of
//!    1000, plus one large file of `MIRRORFS_BENCH_RESYNC_LARGE_MIB` MiB
//!    (default 1024), written through the mount (so replicated). Then it waits
//!    until the mount's activity log is empty (up to a minute): mirrorfs
//!    compares every file of the directories written in the last two 30 s
//!    epochs at a reconnection, and the point here is the resync of a tree
//!    written long ago.
//! 2. Incremental resync, in `MIRRORFS_BENCH_RESYNC_ROUNDS` rounds (default
//!    5): serve stopped (SIGTERM), the mount goes ALONE; 1% of the files are
//!    rewritten and 10 separate 1 MiB blocks of the large file; serve
//!    restarted; the time from the restart until the status shows PRIM with
//!    nothing dirty (and the resync's own time, from the mount's log), and the
//!    bytes node 2's interface received meanwhile. Baseline, right after each
//!    round: a plain TCP copy of exactly the changed bytes from node 1's
//!    backing directory to new files on node 2, fsynced at the end.
//! 3. Sync writes, in as many rounds, each run `MIRRORFS_BENCH_RESYNC_SECS`
//!    seconds (default 4), one writer, on a local directory, through the
//!    mount in sync, and through the mount ALONE (serve stopped for it): 4 KiB
//!    writes at random offsets of a preallocated 64 MiB file, each followed
//!    by fdatasync (IOPS, p50, p99); and new files of 4 KiB, each created,
//!    written, fdatasynced and closed (files/s; dirty tracking records each
//!    new path durably once).
//!
//!    Figures are medians over the rounds; a ratio of two figures measured in
//!    the same rounds is the median of the rounds' ratios (the disk and CPUs
//!    may be shared, and background load drifts).
//! 4. A big change set while ALONE (the whole large file and 10% of the files
//!    rewritten), serve restarted, and the random sync writes while that
//!    resync runs: their p99 latency against the in-sync runs'. Both sides'
//!    stage latencies (`common/breakdown.rs`) of these writes and of the last
//!    in-sync round's go into the notes: where the resync's delay went.
//! 5. Full resync: the mount stopped cleanly (`fusermount3 -u`), caches
//!    dropped, started again with `--full`, timed until in sync. Baseline:
//!    reading every file once on each side (node 1's backing directory and
//!    node 2's replica, the two reads in parallel) after dropping the caches,
//!    once before the resync and once after it, against the faster of the
//!    two: this VM's disk has run the same reads 3-4x slower for a minute at
//!    a time (65.6 s before a resync, 15.2 s after it), which one baseline
//!    taken after the resync turned into ratios from 0.44x to 3.97x. The
//!    faster read is the one the resync could have matched.
//! 6. `mirrorfs verify` of backing against replica.
//!
//! Every figure and ratio is printed as a table, with issue 3's goals (goals,
//! not asserts), and written as Markdown, with the machine, to
//! `bench-resync.md` in the target directory. Everything the run makes
//! (namespaces, mounts, processes, the scratch directory) is removed at the
//! end, on a panic, and on Ctrl-C/SIGTERM; children are stopped by PID.
//! Traffic goes only over the veth pair between the two namespaces.
//!
//! The lab, the processes, the table and the sync-write workload are shared
//! with the replication bench (`common/`); `resync/status.rs` reads the
//! mount's state from its control socket.

#[path = "common/mod.rs"]
mod common;
#[path = "resync/status.rs"]
mod status;

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::breakdown::Breakdown;
use common::env_u64;
use common::lab::{FuseMount, Mirrorfs, Netns, Scratch};
use common::report::{loadavg, Goal, Table};
use common::rng::Rng;
use common::syncwrite::{self, SyncWrites};
use common::sys::{self, nap, settle, Proc};
use status::{in_sync, role};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// Threads that write the tree through the mount (and rewrite parts of it).
const WRITERS: usize = 4;
/// TCP port of the baseline copy's receiver on node 2.
const COPY_PORT: u16 = 7412;

fn main() {
    common::main("resync", run);
}

/// Settings, from the environment.
struct Config {
    files: u64,
    tree_mib: u64,
    large_mib: u64,
    secs: u64,
    paths: common::Paths,
}

impl Config {
    fn from_env() -> Self {
        Self {
            files: env_u64("MIRRORFS_BENCH_RESYNC_FILES", 100_000, 100),
            tree_mib: env_u64("MIRRORFS_BENCH_RESYNC_MIB", 2048, 1),
            large_mib: env_u64("MIRRORFS_BENCH_RESYNC_LARGE_MIB", 1024, 10),
            secs: env_u64("MIRRORFS_BENCH_RESYNC_SECS", 4, 1),
            paths: common::Paths::find(),
        }
    }
}

// ------------------------------------------------------------------ data

/// The tree: file `i` lives at `tree/dNNN/fNNNNNN`; its content is a function
/// of `(i, version)`.
#[derive(Clone)]
struct Tree {
    files: u64,
    small: u64,
    /// Extra bytes of every hundredth file (so the tree has its total size).
    extra: u64,
}

impl Tree {
    fn new(files: u64, total: u64) -> Self {
        let small = (16 * KIB).min(total / files);
        let big_files = files.div_ceil(100);
        let extra = (total - small * files) / big_files;
        Self {
            files,
            small,
            extra,
        }
    }

    fn size(&self, i: u64) -> u64 {
        if i % 100 == 99 || i + 1 == self.files {
            self.small + self.extra
        } else {
            self.small
        }
    }

    fn total(&self) -> u64 {
        (0..self.files).map(|i| self.size(i)).sum()
    }

    fn dirs(&self) -> u64 {
        self.files.div_ceil(1000)
    }

    fn rel(&self, i: u64) -> PathBuf {
        PathBuf::from(format!("tree/d{:03}/f{i:06}", i / 1000))
    }

    /// Writes file `i` at `version` beneath `root` (whole file, truncated first).
    fn write(&self, root: &Path, i: u64, version: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.resize(self.size(i) as usize, 0);
        Rng(i.wrapping_mul(0x1_0000_0001) ^ (version << 48)).fill(buf);
        let mut f = File::create(root.join(self.rel(i)))?;
        f.write_all(buf)
    }

    /// Writes the files `which` at `version` beneath `root`, `WRITERS` threads
    /// each taking every WRITERS-th one.
    fn write_many(&self, root: &Path, which: &[u64], version: u64) {
        thread::scope(|s| {
            let handles: Vec<_> = (0..WRITERS)
                .map(|t| {
                    s.spawn(move || {
                        let mut buf = Vec::new();
                        for &i in which.iter().skip(t).step_by(WRITERS) {
                            sys::check_interrupt();
                            self.write(root, i, version, &mut buf).unwrap_or_else(|e| {
                                panic!("writing {}: {e}", root.join(self.rel(i)).display())
                            });
                        }
                    })
                })
                .collect();
            for h in handles {
                if let Err(p) = h.join() {
                    std::panic::resume_unwind(p);
                }
            }
        });
    }
}

/// Writes `mib` MiB of version `version` into `path` (from scratch), in 1 MiB writes.
fn write_large(path: &Path, mib: u64, version: u64, fsync: bool) {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut buf = vec![0u8; MIB as usize];
    for b in 0..mib {
        sys::check_interrupt();
        Rng(b ^ (version << 40) ^ 0xdead_beef).fill(&mut buf);
        f.write_all(&buf)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
    if fsync {
        f.sync_all()
            .unwrap_or_else(|e| panic!("fsync {}: {e}", path.display()));
    }
}

/// The 1 MiB blocks of the large file that the incremental resync changes:
/// 10, evenly spread, aligned on mirrorfs's 1 MiB resync blocks.
fn large_regions(large_mib: u64) -> Vec<u64> {
    (0..10).map(|k| k * (large_mib / 10) * MIB).collect()
}

// ------------------------------------------------------- sync-write workload

/// One writer of the shared sync-write workload on `path` for `secs`.
fn sync_writes(path: &Path, secs: u64, seed: u64) -> SyncWrites {
    syncwrite::run(&[path.to_path_buf()], Duration::from_secs(secs), seed)
        .unwrap_or_else(|e| panic!("sync writes: {e}"))
}

// ---------------------------------------------------- baseline: plain copy

/// One piece of the baseline copy: `len` bytes at `offset` of a file, by
/// path relative to the tree's root.
struct Piece {
    rel: PathBuf,
    offset: u64,
    len: u64,
}

/// Copies `pieces` from `src` (read on node 1) to `dst` (written on node 2)
/// over one TCP connection between the namespaces; the receiver fsyncs every
/// file it wrote and then acknowledges. Returns the time from connecting to
/// the acknowledgement.
fn tcp_copy(net: &Netns, src: &Path, dst: &Path, pieces: Vec<Piece>) -> Duration {
    let addr = SocketAddr::from((net.ip2, COPY_PORT));
    let (ready_tx, ready_rx) = mpsc::channel();
    let dst = dst.to_path_buf();
    let receiver = sys::spawn_in_netns(&net.node2, move || {
        let listener = TcpListener::bind(addr).expect("baseline receiver: bind");
        ready_tx.send(()).expect("baseline: ready");
        let (conn, _) = listener.accept().expect("baseline receiver: accept");
        receive(conn, &dst).expect("baseline receiver");
    });
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the baseline receiver did not start");
    let src = src.to_path_buf();
    let sender = sys::spawn_in_netns(&net.node1, move || {
        let start = Instant::now();
        send(addr, &src, &pieces).expect("baseline sender");
        start.elapsed()
    });
    let took = sender
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    receiver
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    took
}

fn send(addr: SocketAddr, src: &Path, pieces: &[Piece]) -> io::Result<()> {
    let conn = TcpStream::connect(addr)?;
    conn.set_nodelay(true)?;
    let mut w = BufWriter::with_capacity(MIB as usize, conn.try_clone()?);
    let mut buf = Vec::new();
    for p in pieces {
        let f = File::open(src.join(&p.rel))?;
        buf.resize(p.len as usize, 0);
        f.read_exact_at(&mut buf, p.offset)?;
        let name = p.rel.as_os_str().as_encoded_bytes();
        w.write_all(&(name.len() as u32).to_be_bytes())?;
        w.write_all(name)?;
        w.write_all(&p.offset.to_be_bytes())?;
        w.write_all(&p.len.to_be_bytes())?;
        w.write_all(&buf)?;
    }
    w.write_all(&0u32.to_be_bytes())?;
    w.flush()?;
    let mut ack = [0u8; 1];
    (&conn).read_exact(&mut ack)?;
    Ok(())
}

fn receive(conn: TcpStream, dst: &Path) -> io::Result<()> {
    let mut r = BufReader::with_capacity(MIB as usize, conn.try_clone()?);
    let mut files: std::collections::BTreeMap<PathBuf, File> = Default::default();
    let mut buf = Vec::new();
    loop {
        let mut n4 = [0u8; 4];
        r.read_exact(&mut n4)?;
        let n = u32::from_be_bytes(n4) as usize;
        if n == 0 {
            break;
        }
        let mut name = vec![0u8; n];
        r.read_exact(&mut name)?;
        let mut n8 = [0u8; 8];
        r.read_exact(&mut n8)?;
        let offset = u64::from_be_bytes(n8);
        r.read_exact(&mut n8)?;
        let len = u64::from_be_bytes(n8);
        buf.resize(len as usize, 0);
        r.read_exact(&mut buf)?;
        let rel = PathBuf::from(String::from_utf8_lossy(&name).into_owned());
        let path = dst.join(&rel);
        if !files.contains_key(&rel) {
            if let Some(d) = path.parent() {
                fs::create_dir_all(d)?;
            }
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            files.insert(rel.clone(), f);
        }
        files[&rel].write_all_at(&buf, offset)?;
    }
    for f in files.values() {
        f.sync_all()?;
    }
    (&conn).write_all(&[1])
}

// ----------------------------------------------------- baseline: read all

/// Reads every regular file below `root` (skipping `root/.mirrorfs`) once, in
/// 1 MiB reads; returns bytes read and the time it took.
fn read_tree(root: &Path) -> (u64, Duration) {
    fn walk(dir: &Path, skip_meta: bool, buf: &mut [u8], total: &mut u64) -> io::Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            sys::check_interrupt();
            if skip_meta && e.file_name() == ".mirrorfs" {
                continue;
            }
            let ft = e.file_type()?;
            if ft.is_dir() {
                walk(&e.path(), false, buf, total)?;
            } else if ft.is_file() {
                let mut f = File::open(e.path())?;
                loop {
                    let n = f.read(buf)?;
                    if n == 0 {
                        break;
                    }
                    *total += n as u64;
                }
            }
        }
        Ok(())
    }
    let start = Instant::now();
    let mut total = 0;
    let mut buf = vec![0u8; MIB as usize];
    walk(root, true, &mut buf, &mut total)
        .unwrap_or_else(|e| panic!("reading {}: {e}", root.display()));
    (total, start.elapsed())
}

// ------------------------------------------------------------------ report

/// The figures, in sections, with issue 3's goals for some ratios; and notes.
struct Report {
    table: Table,
    notes: Vec<String>,
}

impl Report {
    fn new() -> Self {
        let head = ["figure", "value", "unit", "goal", "met"].map(String::from);
        Self {
            table: Table::new(head.to_vec(), |i| i == 1),
            notes: Vec::new(),
        }
    }

    fn section(&mut self, s: impl Into<String>) {
        self.table.section(s.into());
    }

    fn row(&mut self, label: impl Into<String>, value: f64, unit: &'static str) {
        let (label, v) = (label.into(), figure(value, unit));
        self.table
            .row(vec![label, v, unit.into(), String::new(), String::new()]);
    }

    /// A ratio ("x"), with its goal if it has one; n/a unless finite.
    fn ratio(&mut self, label: impl Into<String>, value: f64, goal: Option<Goal>) {
        let value = value.is_finite().then_some(value);
        let (g, met) = goal.map_or_else(Default::default, |g| (g.text("x"), g.met(value)));
        let v = value.map_or_else(|| "n/a".into(), |v| figure(v, "x"));
        self.table
            .row(vec![label.into(), v, "x".into(), g, met.into()]);
    }

    fn note(&mut self, s: impl Into<String>) {
        let s = s.into();
        eprintln!("resync: note: {s}");
        self.notes.push(s);
    }
}

fn figure(v: f64, unit: &str) -> String {
    match unit {
        "x" => format!("{v:.2}"),
        "MiB" | "MB/s" | "s" => format!("{v:.2}"),
        _ if v >= 100.0 => format!("{v:.0}"),
        _ if v >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

/// The numbers of the last "resync complete" line of the mount's log
/// (`files=N bytes=N secs=F`).
fn logged_resync(log: &Path) -> Option<(u64, u64, f64)> {
    let text = fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| l.contains("resync complete"))?;
    let field = |k: &str| -> Option<&str> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
    };
    Some((
        field("files")?.parse().ok()?,
        field("bytes")?.parse().ok()?,
        field("secs")?.parse().ok()?,
    ))
}

/// The length of a daemon's log now (0 if it does not exist yet): the logs
/// are appended to across restarts.
fn log_len(log: &Path) -> u64 {
    fs::metadata(log).map_or(0, |m| m.len())
}

/// The WARN and ERROR lines of `log` after its first `from` bytes.
fn log_warnings(log: &Path, from: u64) -> Vec<String> {
    let Ok(bytes) = fs::read(log) else {
        return Vec::new();
    };
    let tail = bytes.get(from as usize..).unwrap_or_default();
    String::from_utf8_lossy(tail)
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_owned)
        .collect()
}

// --------------------------------------------------------------------- run

/// The running lab. Its fields drop in declaration order: the mount (unmounted,
/// its daemon stopped), serve, the namespaces, then the scratch directory.
struct Lab {
    mount: Option<FuseMount>,
    serve: Option<Proc>,
    m: Mirrorfs,
    net: Netns,
    scratch: Scratch,
    backing: PathBuf,
    replica: PathBuf,
    mnt: PathBuf,
    control: PathBuf,
}

impl Lab {
    fn log(&self, name: &str) -> PathBuf {
        self.scratch.log(name)
    }

    /// The stage latencies of the mount and of the serve running now.
    fn breakdown(&self) -> Breakdown {
        Breakdown {
            bin: self.m.bin.clone(),
            mount: self.control.clone(),
            serve: Mirrorfs::serve_control(&self.log("serve")),
        }
    }

    /// Forgets both sides' stage latencies (a failure becomes a note).
    fn reset_breakdown(&self, rep: &mut Report) {
        if let Err(e) = self.breakdown().reset() {
            rep.note(format!("no latency breakdown: {e}"));
        }
    }

    /// Both sides' stage latencies since the reset, as a note on `what`.
    fn note_breakdown(&self, rep: &mut Report, what: &str) {
        match self.breakdown().take(what) {
            Ok(lines) => rep.note(lines.join("<br>")),
            Err(e) => rep.note(format!("no latency breakdown: {e}")),
        }
    }

    fn start_serve(&mut self) {
        assert!(self.serve.is_none(), "serve already running");
        self.serve = Some(self.m.serve(&self.replica, &self.log("serve")));
    }

    /// Stops serve with SIGTERM (by PID), waits until the mount says ALONE;
    /// returns how long that took.
    fn stop_serve_wait_alone(&mut self) -> Duration {
        let mut serve = self.serve.take().expect("serve is running");
        let t = Instant::now();
        serve.signal(libc::SIGTERM);
        if serve.wait_exit(Duration::from_secs(20)).is_none() {
            panic!("mirrorfs serve did not exit within 20 s of SIGTERM");
        }
        drop(serve);
        self.wait("the mount to go ALONE", Duration::from_secs(60), |v| {
            role(v) == "ALONE"
        });
        t.elapsed()
    }

    /// Starts `mirrorfs mount` (ALONE after 2 s without its peer, with a
    /// control socket) with `extra` arguments; waits until it is mounted.
    fn start_mount(&mut self, extra: &[&str]) {
        assert!(self.mount.is_none(), "mount already running");
        let mut spec = self
            .m
            .mount_spec(&self.backing, &self.mnt, &self.log("mount"));
        spec.args
            .extend(["--on-peer-loss=alone", "--peer-timeout", "2"].map(Into::into));
        spec.args
            .extend(["--control".into(), self.control.clone().into()]);
        spec.args.extend(extra.iter().map(Into::into));
        spec.ready_file = Some(self.control.clone());
        self.mount = Some(FuseMount::start(spec));
    }

    /// `fusermount3 -u`, then waits for the mount's daemon to exit by itself.
    fn unmount_cleanly(&mut self) {
        let mount = self.mount.take().expect("mount is running");
        mount.unmount_cleanly(Duration::from_secs(60));
    }

    fn wait(
        &mut self,
        what: &str,
        limit: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> (serde_json::Value, Instant) {
        let mount = self.mount.as_mut().expect("mount is running");
        status::wait_status(&self.control, mount, what, limit, done)
    }

    /// Polls until in sync; returns when that was seen.
    fn wait_in_sync(&mut self, what: &str, limit: Duration) -> Instant {
        self.wait(what, limit, in_sync).1
    }

    /// Waits until the mount's activity log (`.mirrorfs/activity` and
    /// `activity.prev`: directories written in the last two 30 s epochs) is
    /// empty: mirrorfs compares every file of those directories at the next
    /// resync, which would turn an incremental resync right after the tree was
    /// written into a full one. Returns how long it waited.
    fn wait_activity_gone(&mut self, limit: Duration) -> Option<Duration> {
        let t = Instant::now();
        let meta = self.backing.join(".mirrorfs");
        let empty = |n: &str| {
            fs::metadata(meta.join(n))
                .map_or(true, |m| m.len() <= mirrorfs::meta::LOG_HEADER_LEN as u64)
        };
        while !(empty("activity") && empty("activity.prev")) {
            self.mount.as_mut().expect("mount is running").check_alive();
            if t.elapsed() > limit {
                return None;
            }
            nap(Duration::from_millis(200));
        }
        Some(t.elapsed())
    }

    /// Stops serve, waits for ALONE, runs `f`, restarts serve and waits
    /// until in sync again.
    fn alone<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        self.stop_serve_wait_alone();
        let out = f(self);
        self.start_serve();
        self.wait_in_sync("in sync after ALONE", Duration::from_secs(600));
        out
    }
}

/// Creates files of 4 KiB in a new directory `dir`, each written, fdatasynced
/// and closed, for `secs` seconds; returns files per second. Then removes them.
fn new_file_syncs(dir: &Path, secs: u64) -> f64 {
    fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let buf = vec![0x5au8; syncwrite::BLOCK];
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut n = 0u64;
    while Instant::now() < end {
        sys::check_interrupt();
        let p = dir.join(format!("n{n:06}"));
        let mut f = File::create(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        f.write_all(&buf)
            .and_then(|()| f.sync_data())
            .unwrap_or_else(|e| panic!("write+fdatasync {}: {e}", p.display()));
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("rm -r {}: {e}", dir.display()));
    rate
}

/// The median of the per-round ratios `a[i] / b[i]` (each pair measured
/// moments apart, so drifting background load affects both alike).
fn paired(a: &[f64], b: &[f64]) -> f64 {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median(&r)
}

/// The median of the finite values; NaN if there are none.
fn median(v: &[f64]) -> f64 {
    common::report::median(v).unwrap_or(f64::NAN)
}

/// One mode's sync-write results over the rounds.
#[derive(Default)]
struct Mode {
    iops: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    new_files: Vec<f64>,
}

impl Mode {
    fn add(&mut self, w: &SyncWrites) {
        self.iops.push(w.iops);
        self.p50.push(w.p50_us);
        self.p99.push(w.p99_us);
    }

    fn rounds(v: &[f64]) -> String {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One round of the incremental resync and its baseline.
struct Incremental {
    to_alone: f64,
    change_time: f64,
    dirty_files: f64,
    /// Serve restart to in sync.
    total: f64,
    /// The resync's own duration, paths and data bytes (mirrorfs' log).
    own: f64,
    files: f64,
    bytes: u64,
    /// Bytes node 2's interface received from the restart to in sync.
    rx: u64,
    /// The baseline: TCP copy of the changed bytes.
    copy: f64,
}

/// Stops serve, rewrites the files `changed` and 10 blocks of the large file
/// (round `k`'s contents), restarts serve and times the resync; then copies
/// the same bytes over TCP into a fresh directory of `copy_dst`.
fn incremental(
    lab: &mut Lab,
    tree: &Tree,
    changed: &[u64],
    large_mib: u64,
    k: u64,
    copy_dst: &Path,
) -> Incremental {
    let mnt = lab.mnt.clone();
    let to_alone = secs(lab.stop_serve_wait_alone());
    let t = Instant::now();
    tree.write_many(&mnt, changed, 100 + k);
    {
        let f = OpenOptions::new()
            .write(true)
            .open(mnt.join("large.bin"))
            .expect("open large.bin");
        let mut buf = vec![0u8; MIB as usize];
        for (j, off) in large_regions(large_mib).into_iter().enumerate() {
            Rng(0xab5c ^ j as u64 ^ (k << 32)).fill(&mut buf);
            f.write_all_at(&buf, off).expect("write large.bin");
        }
    }
    let change_time = secs(t.elapsed());
    let (dirty, _) = lab.wait("dirty files recorded", Duration::from_secs(10), |v| {
        v["dirty_files"].as_u64().unwrap_or(0) > 0
    });
    settle();
    let rx0 = lab.net.node2_rx_bytes();
    let restart = Instant::now();
    lab.start_serve();
    let ended = lab.wait_in_sync("the incremental resync", Duration::from_secs(1800));
    let rx = lab.net.node2_rx_bytes() - rx0;
    let total = secs(ended - restart);
    let (files, bytes, own) = logged_resync(&lab.log("mount"))
        .map_or((f64::NAN, 0, f64::NAN), |(f, b, s)| (f as f64, b, s));

    let mut pieces: Vec<Piece> = changed
        .iter()
        .map(|&i| Piece {
            rel: tree.rel(i),
            offset: 0,
            len: tree.size(i),
        })
        .collect();
    pieces.extend(large_regions(large_mib).into_iter().map(|off| Piece {
        rel: "large.bin".into(),
        offset: off,
        len: MIB,
    }));
    settle();
    let copy = secs(tcp_copy(
        &lab.net,
        &lab.backing,
        &copy_dst.join(format!("r{k}")),
        pieces,
    ));
    Incremental {
        to_alone,
        change_time,
        dirty_files: dirty["dirty_files"].as_u64().unwrap_or(0) as f64,
        total,
        own,
        files,
        bytes,
        rx,
        copy,
    }
}

fn run() {
    let cfg = Config::from_env();
    let mut rep = Report::new();
    if let Some(stale) = &cfg.paths.stale {
        rep.notes.push(stale.clone());
    }
    let load_start = loadavg();
    let started = Instant::now();
    let tree = Tree::new(cfg.files, cfg.tree_mib * MIB);
    let tree_bytes = tree.total();
    let large_bytes = cfg.large_mib * MIB;
    eprintln!(
        "resync: {} files, {:.0} MiB, + a {} MiB file; mirrorfs {}",
        cfg.files,
        mib(tree_bytes),
        cfg.large_mib,
        cfg.paths.mirrorfs.display()
    );

    let scratch = Scratch::create("mfresync");
    let net = Netns::create("mfr");
    let m = Mirrorfs::new(cfg.paths.mirrorfs.clone(), scratch.dir("keys"), &net);
    let mut lab = Lab {
        backing: scratch.dir("backing"),
        replica: scratch.dir("replica"),
        mnt: scratch.dir("mnt"),
        control: scratch.path.join("control.sock"),
        scratch,
        net,
        m,
        serve: None,
        mount: None,
    };
    let local = lab.scratch.dir("local");
    let copy_dst = lab.scratch.dir("copy");
    lab.start_serve();
    lab.start_mount(&[]);
    lab.wait_in_sync("the first sync", Duration::from_secs(60));
    let mnt = lab.mnt.clone();

    // 1. The tree, through the mount.
    eprintln!("resync: writing the tree through the mount");
    let t = Instant::now();
    for d in 0..tree.dirs() {
        fs::create_dir_all(mnt.join(format!("tree/d{d:03}"))).expect("mkdir in the mount");
    }
    let all: Vec<u64> = (0..tree.files).collect();
    tree.write_many(&mnt, &all, 0);
    let tree_time = t.elapsed();
    let t = Instant::now();
    write_large(&mnt.join("large.bin"), cfg.large_mib, 0, true);
    let large_time = t.elapsed();
    fs::create_dir(mnt.join("sync")).expect("mkdir sync");
    let (prim_file, alone_file) = (mnt.join("sync/prim.dat"), mnt.join("sync/alone.dat"));
    let local_file = local.join("sync.dat");
    for f in [&prim_file, &alone_file, &local_file] {
        write_large(f, syncwrite::FILE_SIZE / MIB, 7, true);
    }
    lab.wait_in_sync("in sync after the tree", Duration::from_secs(60));
    rep.section(format!(
        "setup: {} files ({:.0} MiB) + one {} MiB file, written through the mount",
        tree.files,
        mib(tree_bytes),
        cfg.large_mib
    ));
    rep.row("  tree written through the mount", secs(tree_time), "s");
    rep.row(
        format!("  tree create rate ({WRITERS} writers)"),
        tree.files as f64 / secs(tree_time),
        "files/s",
    );
    rep.row(
        "  large file written through the mount",
        large_bytes as f64 / 1e6 / secs(large_time),
        "MB/s",
    );

    // 2. Incremental resync, once the directories just written are no
    // longer in the activity log (see `wait_activity_gone`).
    eprintln!("resync: waiting for the activity epochs to pass");
    let idle = lab.wait_activity_gone(Duration::from_secs(120));
    match idle {
        Some(d) => rep.row("  wait until the activity log is empty", secs(d), "s"),
        None => rep.note(
            "the activity log was still not empty after 120 s: the incremental resync \
             compares every file of the recently written directories",
        ),
    }
    let rounds = env_u64("MIRRORFS_BENCH_RESYNC_ROUNDS", 5, 1);
    let changed = Rng(1).pick(tree.files, tree.files.div_ceil(100));
    let changed_bytes: u64 = changed.iter().map(|&i| tree.size(i)).sum::<u64>() + 10 * MIB;
    let mut inc: Vec<Incremental> = Vec::new();
    for k in 0..rounds {
        eprintln!("resync: incremental resync, round {}/{rounds}", k + 1);
        inc.push(incremental(
            &mut lab,
            &tree,
            &changed,
            cfg.large_mib,
            k,
            &copy_dst,
        ));
    }
    let med = |f: &dyn Fn(&Incremental) -> f64| median(&inc.iter().map(f).collect::<Vec<_>>());
    rep.section(format!(
        "incremental resync: {} files rewritten + 10 x 1 MiB of the large file while ALONE; \
         median of {rounds} rounds",
        changed.len()
    ));
    rep.row(
        "  serve stopped (SIGTERM) to ALONE",
        med(&|i| i.to_alone),
        "s",
    );
    rep.row(
        "  changes written while ALONE",
        med(&|i| i.change_time),
        "s",
    );
    rep.row("  dirty files recorded", med(&|i| i.dirty_files), "files");
    rep.row("  changed bytes", mib(changed_bytes), "MiB");
    rep.row(
        "  serve restart to in sync (PRIM, 0 dirty)",
        med(&|i| i.total),
        "s",
    );
    rep.row("    of which reconnecting", med(&|i| i.total - i.own), "s");
    rep.row(
        "    of which the resync (mirrorfs' count)",
        med(&|i| i.own),
        "s",
    );
    rep.row(
        "  paths resynced (mirrorfs' count)",
        med(&|i| i.files),
        "paths",
    );
    rep.row(
        "  data bytes sent (mirrorfs' count)",
        med(&|i| mib(i.bytes)),
        "MiB",
    );
    rep.row(
        "  bytes received by node 2 (veth rx)",
        med(&|i| mib(i.rx)),
        "MiB",
    );
    rep.row(
        "  veth rx / changed bytes",
        med(&|i| i.rx as f64) / changed_bytes as f64,
        "x",
    );
    rep.row(
        "  baseline: TCP copy of the changed bytes + fsync",
        med(&|i| i.copy),
        "s",
    );
    rep.ratio(
        "  restart to in sync / baseline (median of the rounds' ratios)",
        med(&|i| i.total / i.copy),
        Some(Goal::AtMost(1.5)),
    );
    rep.ratio(
        "  the resync alone (no reconnect wait) / baseline",
        med(&|i| i.own / i.copy),
        Some(Goal::AtMost(1.5)),
    );
    let list = |f: &dyn Fn(&Incremental) -> f64| {
        inc.iter()
            .map(|i| format!("{:.2}", f(i)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    rep.notes.push(format!(
        "incremental rounds: restart to in sync s {}; the resync s {}; baseline copy s {}",
        list(&|i| i.total),
        list(&|i| i.own),
        list(&|i| i.copy)
    ));

    // 3. Sync writes in rounds: local directory, in sync, ALONE.
    let (mut w_local, mut w_prim, mut w_alone) =
        (Mode::default(), Mode::default(), Mode::default());
    for r in 0..rounds {
        eprintln!("resync: sync writes, round {}/{rounds}", r + 1);
        settle();
        w_local.add(&sync_writes(&local_file, cfg.secs, 10 + r));
        settle();
        w_local
            .new_files
            .push(new_file_syncs(&local.join(format!("new{r}")), cfg.secs));
        settle();
        // The last round's stage latencies, against the big resync's below.
        let last = r + 1 == rounds;
        if last {
            lab.reset_breakdown(&mut rep);
        }
        w_prim.add(&sync_writes(&prim_file, cfg.secs, 20 + r));
        if last {
            lab.note_breakdown(&mut rep, "sync writes in sync, last round");
        }
        settle();
        w_prim.new_files.push(new_file_syncs(
            &mnt.join(format!("sync/new-prim{r}")),
            cfg.secs,
        ));
        let secs_ = cfg.secs;
        let alone_file = alone_file.clone();
        let mnt2 = mnt.clone();
        let (st, nf) = lab.alone(move |_| {
            settle();
            let st = sync_writes(&alone_file, secs_, 30 + r);
            settle();
            (
                st,
                new_file_syncs(&mnt2.join(format!("sync/new-alone{r}")), secs_),
            )
        });
        w_alone.add(&st);
        w_alone.new_files.push(nf);
    }

    // 4. The same sync writes during a resync of a big change set.
    eprintln!("resync: big change set (the large file, 10% of the files)");
    let busy = Rng(2).pick(tree.files, tree.files.div_ceil(10));
    lab.stop_serve_wait_alone();
    write_large(&mnt.join("large.bin"), cfg.large_mib, 2, false);
    tree.write_many(&mnt, &busy, 2);
    let busy_bytes: u64 = busy.iter().map(|&i| tree.size(i)).sum::<u64>() + large_bytes;
    settle();
    let restart = Instant::now();
    lab.start_serve();
    let (_, resyncing) = lab.wait("the big resync to start", Duration::from_secs(120), |v| {
        role(v) == "RESYNC" || in_sync(v)
    });
    lab.reset_breakdown(&mut rep);
    let w_busy = sync_writes(&prim_file, cfg.secs, 40);
    lab.note_breakdown(
        &mut rep,
        "sync writes during the big resync (with the resync's own ops)",
    );
    if w_busy.writes < 1000 {
        rep.note(format!(
            "only {} sync writes during the big resync: their p99 is rough",
            w_busy.writes
        ));
    }
    let after = status::status(&lab.control).expect("status");
    let still = role(&after) == "RESYNC";
    let busy_end = lab.wait_in_sync("the big resync", Duration::from_secs(3600));
    let busy_log = logged_resync(&lab.log("mount"));
    if !still {
        let own = busy_log.map_or_else(|| secs(busy_end - resyncing), |(_, _, own)| own);
        rep.note(format!(
            "the big resync took {own:.1} s, less than the {} s sync-write run during it: \
             only part of that run overlapped the resync",
            cfg.secs
        ));
    }
    settle();
    let w_after = sync_writes(&prim_file, cfg.secs, 50);

    rep.section(format!(
        "sync writes: 4 KiB random write + fdatasync in a 64 MiB file, 1 writer, {} s; \
         median of {rounds} rounds",
        cfg.secs
    ));
    for (name, w) in [
        ("local directory", &w_local),
        ("mount, in sync (PRIM)", &w_prim),
        ("mount, ALONE (dirty tracking)", &w_alone),
    ] {
        rep.row(format!("  {name}: IOPS"), median(&w.iops), "IOPS");
        rep.row(format!("  {name}: p50"), median(&w.p50), "µs");
        rep.row(format!("  {name}: p99"), median(&w.p99), "µs");
    }
    rep.row("  mount, during the big resync: IOPS", w_busy.iops, "IOPS");
    rep.row("  mount, during the big resync: p50", w_busy.p50_us, "µs");
    rep.row("  mount, during the big resync: p99", w_busy.p99_us, "µs");
    rep.row("  mount, in sync just after it: p99", w_after.p99_us, "µs");
    rep.ratio(
        "  IOPS ALONE / in sync (dirty tracking vs synchronous mode)",
        paired(&w_alone.iops, &w_prim.iops),
        Some(Goal::AtLeast(0.9)),
    );
    rep.ratio(
        "  IOPS ALONE / local directory (FUSE + dirty tracking)",
        paired(&w_alone.iops, &w_local.iops),
        None,
    );
    rep.ratio(
        "  IOPS in sync / local directory",
        paired(&w_prim.iops, &w_local.iops),
        None,
    );
    rep.ratio(
        "  p99 during the big resync / in sync (median)",
        w_busy.p99_us / median(&w_prim.p99),
        Some(Goal::AtMost(1.25)),
    );
    rep.ratio(
        "  p99 during the big resync / in sync just after it",
        w_busy.p99_us / w_after.p99_us,
        None,
    );
    rep.ratio(
        "  IOPS during the big resync / in sync (median)",
        w_busy.iops / median(&w_prim.iops),
        None,
    );
    rep.section(format!(
        "new files: create + 4 KiB + fdatasync + close, 1 writer, {} s; median of {rounds} rounds",
        cfg.secs
    ));
    let (ln, pn, an) = (
        median(&w_local.new_files),
        median(&w_prim.new_files),
        median(&w_alone.new_files),
    );
    rep.row("  local directory", ln, "files/s");
    rep.row("  mount, in sync (PRIM)", pn, "files/s");
    rep.row(
        "  mount, ALONE (a dirty-log fsync per new file)",
        an,
        "files/s",
    );
    rep.ratio(
        "  ALONE / in sync",
        paired(&w_alone.new_files, &w_prim.new_files),
        Some(Goal::AtLeast(0.9)),
    );
    rep.ratio(
        "  ALONE / local directory",
        paired(&w_alone.new_files, &w_local.new_files),
        None,
    );
    for (name, w) in [
        ("local", &w_local),
        ("in sync", &w_prim),
        ("ALONE", &w_alone),
    ] {
        rep.notes.push(format!(
            "rounds, {name}: IOPS {}; p99 µs {}; new files/s {}",
            Mode::rounds(&w.iops),
            Mode::rounds(&w.p99),
            Mode::rounds(&w.new_files)
        ));
    }
    rep.section(format!(
        "the big resync: {} files + the whole large file rewritten ({:.0} MiB) + the ALONE \
         sync-write file",
        busy.len(),
        mib(busy_bytes)
    ));
    rep.row("  serve restart to in sync", secs(busy_end - restart), "s");
    if let Some((files, bytes, own)) = busy_log {
        rep.row("  the resync (mirrorfs' count)", own, "s");
        rep.row("  paths resynced (mirrorfs' count)", files as f64, "paths");
        rep.row("  data bytes sent (mirrorfs' count)", mib(bytes), "MiB");
        rep.row("  resync rate", bytes as f64 / 1e6 / own, "MB/s");
    }

    // 5. Full resync of the unchanged tree.
    eprintln!("resync: --full resync");
    lab.unmount_cleanly();
    // Both trees read cold, in parallel: (bytes of one, each read's time,
    // both reads' time).
    let (b, r) = (lab.backing.clone(), lab.replica.clone());
    let read_both = || {
        sys::drop_caches();
        let t = Instant::now();
        let ((bytes, time1), (_, time2)) = thread::scope(|s| {
            let a = s.spawn(|| read_tree(&b));
            let c = s.spawn(|| read_tree(&r));
            (
                a.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                c.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            )
        });
        (bytes, time1, time2, t.elapsed())
    };
    eprintln!("resync: baseline before the --full resync: reading both trees");
    let before = read_both();
    sys::drop_caches();
    let (mount_log, serve_log) = (lab.log("mount"), lab.log("serve"));
    let logs_from = [log_len(&mount_log), log_len(&serve_log)];
    let t = Instant::now();
    lab.start_mount(&["--full"]);
    let full_end = lab.wait_in_sync("the --full resync", Duration::from_secs(3600));
    let full_time = full_end - t;
    let full_log = logged_resync(&mount_log);
    // A --full much slower than the reads: what the two daemons warned about
    // meanwhile is the first thing to read.
    for (name, log, from) in [
        ("mount", &mount_log, logs_from[0]),
        ("serve", &serve_log, logs_from[1]),
    ] {
        let warnings = log_warnings(log, from);
        if !warnings.is_empty() {
            rep.note(format!(
                "the {name}'s log during the --full resync: {} WARN/ERROR lines; the first: {}",
                warnings.len(),
                warnings
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" | ")
            ));
        }
    }
    eprintln!("resync: baseline after the --full resync: reading both trees");
    let after = read_both();
    let faster = if before.3 <= after.3 { &before } else { &after };
    let (time1, time2, read_time) = (secs(faster.1), secs(faster.2), secs(faster.3));
    rep.section(format!(
        "--full resync of the unchanged tree ({:.0} MiB per side), caches dropped first",
        mib(before.0)
    ));
    rep.row("  mount start with --full to in sync", secs(full_time), "s");
    if let Some((files, bytes, own)) = full_log {
        rep.row("  the resync (mirrorfs' count)", own, "s");
        rep.row("  paths compared (mirrorfs' count)", files as f64, "paths");
        rep.row("  data bytes sent (mirrorfs' count)", mib(bytes), "MiB");
    }
    rep.row("  baseline: read node 1's backing dir, cold", time1, "s");
    rep.row("  baseline: read node 2's replica dir, cold", time2, "s");
    rep.row(
        "  baseline: both reads in parallel, before the resync",
        secs(before.3),
        "s",
    );
    rep.row(
        "  baseline: both reads in parallel, after the resync",
        secs(after.3),
        "s",
    );
    rep.ratio(
        "  full resync / both reads in parallel (the faster of before and after)",
        secs(full_time) / read_time,
        Some(Goal::AtMost(1.2)),
    );
    rep.ratio(
        "  full resync / the two reads one after the other",
        secs(full_time) / (time1 + time2),
        None,
    );
    rep.note(
        "the --full baselines (node 1's and node 2's reads, and the ratios) are those of the \
         faster of the two parallel reads, before or after the resync",
    );

    // 6. The trees are the same.
    eprintln!("resync: mirrorfs verify");
    let out = Command::new(&lab.m.bin)
        .arg("verify")
        .arg(&lab.backing)
        .arg(&lab.replica)
        .output()
        .expect("mirrorfs verify");
    let verdict = String::from_utf8_lossy(&out.stdout);
    rep.note(format!(
        "mirrorfs verify backing replica at the end ({}): {}",
        out.status,
        verdict
            .lines()
            .rev()
            .take(if out.status.success() { 1 } else { 10 })
            .collect::<Vec<_>>()
            .join("; ")
    ));
    rep.note(
        "times to in sync are measured by polling the control socket's status every 25 ms; \
         the resync's own duration and counts come from the mount's log",
    );
    rep.note(
        "the incremental baseline and resync both start with the data in the page cache \
         (written shortly before); the --full resync and its baseline start with dropped caches",
    );
    report(&cfg, &rep, &load_start, started.elapsed());
}

fn report(cfg: &Config, rep: &Report, load_start: &str, elapsed: Duration) {
    use common::report::{cpus, date_utc, kernel, memory};
    let table = rep.table.text();
    println!("\n{table}");
    for n in &rep.notes {
        println!("note: {n}");
    }
    let commit = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let settings: String = [
        "MIRRORFS_BENCH_RESYNC_FILES",
        "MIRRORFS_BENCH_RESYNC_MIB",
        "MIRRORFS_BENCH_RESYNC_LARGE_MIB",
        "MIRRORFS_BENCH_RESYNC_SECS",
        "MIRRORFS_BENCH_RESYNC_ROUNDS",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v} ")))
    .collect();
    let mut md = format!("## Resync benchmark, {}\n\n", date_utc());
    let _ = writeln!(
        md,
        "Machine: {} CPUs, {} memory, Linux {}; load average {load_start} at the start, \
         {} at the end; commit {commit}; the run took {:.0} s.\n",
        cpus(),
        memory(),
        kernel(),
        loadavg(),
        secs(elapsed)
    );
    let _ = writeln!(
        md,
        "Command: `{settings}cargo bench --bench resync` (as root). Goals are issue 3's.\n"
    );
    md += &rep.table.markdown();
    md += "\n";
    for n in &rep.notes {
        let _ = writeln!(md, "- {n}");
    }
    let out_path = cfg.paths.target_dir.join("bench-resync.md");
    match fs::write(&out_path, &md) {
        Ok(()) => println!("\nMarkdown: {}", out_path.display()),
        Err(e) => eprintln!("resync: cannot write {}: {e}", out_path.display()),
    }
}
