//! Replication benchmark: what synchronous replication costs an application
//! that writes into a mirrorfs mount, and what reads through it cost.
//!
//! Run as root: `cargo build --release -p mirrorfs && cargo bench --bench
//! replication` (or `scripts/bench.sh`). It builds nothing itself; it runs the
//! `mirrorfs` binary found at `$MIRRORFS_BIN`, or beside the bench in the same
//! target directory (`target/release/mirrorfs`).
//!
//! In one run it sets up its own lab: two network namespaces (`mfb<pid>a`,
//! `mfb<pid>b`) joined by a veth pair with a 10.x /30 derived from its pid,
//! node identities from `mirrorfs keygen`, `mirrorfs serve` on node 2 and
//! `mirrorfs mount` on node 1 (node 1 mounts, node 2 holds the replica). Then
//! it runs the same workloads on three targets:
//!
//! - **local**: a directory on /var/tmp. The baseline: what the application gets
//!   without mirrorfs. The mirrorfs backing and replica directories are on the
//!   same file system, so the comparison is disk against the same disk.
//! - **bindfs**: a bindfs FUSE mount of a directory on /var/tmp (skipped with a
//!   note if bindfs is not installed). No replication at all: it shows the cost
//!   of going through FUSE, the floor mirrorfs builds on, so the remaining gap
//!   is the cost of replication (or of our FUSE code).
//! - **mirrorfs**: the replicating mount. Every write returns only after
//!   the secondary applied it; every fsync only after both sides are durable.
//!
//! Workloads (figures in the table, each also as a ratio to local):
//!
//! - 4 KiB random writes, each followed by fdatasync, into preallocated 64 MiB
//!   files, with 1 writer and with 4 writers (one file each), for a fixed time:
//!   IOPS and p50/p99 latency. The latency-bound path: here local disk flush
//!   and the round trip to the secondary must overlap, not add up.
//! - 1 MiB sequential writes of 512 MiB (`MIRRORFS_BENCH_SEQ_MIB`) and an
//!   fsync: MB/s. The bandwidth-bound path (pipelining).
//! - creating 5000 files of 4 KiB, and 2000 cycles of create+rename+unlink:
//!   files/s and cycles/s. Metadata operations, each one a round trip.
//! - HTTP reads: our own Apache (event MPM, sendfile, mmap) serving the
//!   directory, `wrk -t2 -c32` from node 1's namespace against a 4 KiB and a 1 MiB
//!   file: requests/s. Reads must stay local (FUSE passthrough); skipped with
//!   a note if apache2 or wrk is missing.
//! - `find` + lstat of every entry of a 100 000-file tree
//!   (`MIRRORFS_BENCH_TREE`), created through the target (so mirrorfs replicates
//!   it), cold (FUSE targets remounted, then the kernel's caches dropped) and
//!   warm: seconds. Metadata reads must never touch the network.
//!
//! The goals column is issue 2's targets for mirrorfs; they are goals, not
//! asserts. Other settings: `MIRRORFS_BENCH_SECS` (duration of each timed run,
//! default 5) and `MIRRORFS_BENCH_TARGETS` (e.g. `local,mirrorfs`).
//!
//! The table is printed and written as Markdown to `bench-replication.md` in
//! the target directory. Everything the run makes (namespaces, mounts,
//! processes, the scratch directory /var/tmp/mfbench-<pid>) is removed at the
//! end, on a panic, and on Ctrl-C/SIGTERM, by drop guards; children are
//! stopped by PID. Traffic goes only over the veth pair and loopback.

#[path = "replication/http.rs"]
mod http;
#[path = "replication/lab.rs"]
mod lab;
#[path = "replication/report.rs"]
mod report;
#[path = "replication/sys.rs"]
mod sys;
#[path = "replication/workloads.rs"]
mod workloads;

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use lab::{FuseMount, Netns, Scratch};
use report::{Figures, Goal, Report, Row, Target};
use workloads::RANDWRITE_FILE;

fn main() {
    // `cargo test --all-targets` runs benches without `--bench`: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "replication: a benchmark; run it with `cargo bench --bench replication` (as root)"
        );
        return;
    }
    sys::install_signal_handlers();
    let code = match std::panic::catch_unwind(run) {
        Ok(()) => 0,
        Err(p) if p.is::<sys::Interrupted>() => {
            eprintln!("replication: interrupted; everything it set up is removed");
            130
        }
        Err(_) => {
            eprintln!("replication: failed (see above); everything it set up is removed");
            1
        }
    };
    std::process::exit(code);
}

/// Settings, from the environment.
struct Config {
    secs: u64,
    seq_mib: u64,
    tree: u64,
    files: u64,
    churn: u64,
    targets: Vec<Target>,
    mirrorfs: PathBuf,
    /// Where the Markdown table goes.
    markdown: PathBuf,
}

impl Config {
    fn from_env(notes: &mut Vec<String>) -> Self {
        let exe = std::env::current_exe().expect("cannot find the bench executable's path");
        // The bench runs as TARGET/release/deps/replication-HASH.
        let release = exe.parent().and_then(Path::parent).map(Path::to_path_buf);
        let target_dir = release
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
        let mirrorfs = match std::env::var_os("MIRRORFS_BIN") {
            Some(p) => PathBuf::from(p),
            None => release
                .unwrap_or_else(|| target_dir.join("release"))
                .join("mirrorfs"),
        };
        if !mirrorfs.is_file() {
            panic!(
                "no mirrorfs binary at {}: build it first with `cargo build --release -p mirrorfs` \
                 (with the same CARGO_TARGET_DIR), or set MIRRORFS_BIN",
                mirrorfs.display()
            );
        }
        if let Some(note) = stale_binary(&mirrorfs) {
            eprintln!("replication: WARNING: {note}");
            notes.push(note);
        }
        let targets = match std::env::var("MIRRORFS_BENCH_TARGETS") {
            Ok(list) => list
                .split(',')
                .map(|n| {
                    Target::ALL
                        .into_iter()
                        .find(|t| t.name() == n.trim())
                        .unwrap_or_else(|| panic!("MIRRORFS_BENCH_TARGETS: unknown target {n:?} (local, bindfs, mirrorfs)"))
                })
                .collect(),
            Err(_) => Target::ALL.to_vec(),
        };
        Self {
            secs: env_u64("MIRRORFS_BENCH_SECS", 5, 1),
            seq_mib: env_u64("MIRRORFS_BENCH_SEQ_MIB", 512, 1),
            tree: env_u64("MIRRORFS_BENCH_TREE", 100_000, 100),
            files: 5000,
            churn: 2000,
            targets,
            mirrorfs,
            markdown: target_dir.join("bench-replication.md"),
        }
    }

    fn rows(&self) -> Vec<Row> {
        let row = |key, label: &str, unit, goal| Row {
            key,
            label: label.to_string(),
            unit,
            ratio: true,
            goal,
        };
        vec![
            row(
                "rw1_iops",
                "4 KiB random write + fdatasync, 1 writer",
                "IOPS",
                Some(Goal::RatioAtLeast(0.5)),
            ),
            row("rw1_p50", "  p50 latency", "µs", None),
            row("rw1_p99", "  p99 latency", "µs", None),
            row(
                "rw4_iops",
                "4 KiB random write + fdatasync, 4 writers",
                "IOPS",
                None,
            ),
            row("rw4_p50", "  p50 latency", "µs", None),
            row("rw4_p99", "  p99 latency", "µs", None),
            Row {
                ratio: false,
                ..row(
                    "rw_scale",
                    "  4 writers / 1 writer (IOPS)",
                    "x",
                    Some(Goal::AtLeast(2.0)),
                )
            },
            row(
                "seq",
                &format!("1 MiB sequential writes, {} MiB + fsync", self.seq_mib),
                "MB/s",
                Some(Goal::RatioAtLeast(0.3)),
            ),
            row(
                "create",
                &format!("create {} files of 4 KiB", self.files),
                "files/s",
                Some(Goal::RatioAtLeast(0.08)),
            ),
            row(
                "churn",
                &format!("create+rename+unlink x {}", self.churn),
                "cycles/s",
                Some(Goal::RatioAtLeast(0.08)),
            ),
            row(
                "http_4k",
                "HTTP GET of a 4 KiB file (Apache, wrk)",
                "req/s",
                Some(Goal::RatioAtLeast(0.9)),
            ),
            row(
                "http_1m",
                "HTTP GET of a 1 MiB file (Apache, wrk)",
                "req/s",
                Some(Goal::RatioAtLeast(0.9)),
            ),
            row(
                "walk_cold",
                &format!("find + stat, {} files, cold", self.tree),
                "s",
                Some(Goal::RatioAtMost(2.0)),
            ),
            row(
                "walk_warm",
                &format!("find + stat, {} files, warm", self.tree),
                "s",
                Some(Goal::RatioAtMost(2.0)),
            ),
        ]
    }
}

/// What the workloads need besides their directory.
struct Bench<'a> {
    cfg: &'a Config,
    net: &'a Netns,
    scratch: &'a Scratch,
    http: Option<&'a http::Tools>,
}

fn run() {
    // SAFETY: plain syscalls without pointers.
    if unsafe { libc::geteuid() } != 0 {
        panic!("run the replication bench as root: it creates network namespaces and mounts, and drops caches");
    }
    // SAFETY: as above. Files the workloads create get 0644, dirs 0755, on every target.
    unsafe { libc::umask(0o022) };
    let mut notes = Vec::new();
    let cfg = Config::from_env(&mut notes);
    // The mirrorfs mount holds a descriptor per inode the kernel has looked up:
    // the tree, plus the other workloads' files, plus slack.
    notes.extend(sys::raise_nofile_limit(cfg.tree + cfg.files + 20_000));
    let header = machine_header(&cfg);
    eprintln!("{header}");

    let scratch = Scratch::create();
    let net = Netns::create();
    let keys = lab::Keys::generate(&cfg.mirrorfs, scratch.dir("keys"));
    let replica = scratch.dir("replica");
    let backing = scratch.dir("backing");
    let mountpoint = scratch.dir("mnt");
    let mut serve = lab::start_serve(
        &cfg.mirrorfs,
        &net,
        &keys,
        &replica,
        &scratch.path.join("serve.log"),
    );
    let mirrorfs_spec = || {
        let log = scratch.path.join("mount.log");
        lab::mirrorfs_spec(&cfg.mirrorfs, &net, &keys, &backing, &mountpoint, &log)
    };
    if cfg.targets.contains(&Target::Mirrorfs) {
        // Fail in seconds, not after the local and bindfs runs.
        smoke_test(FuseMount::start(mirrorfs_spec()), &replica);
    }
    let http = http::Tools::find().map_err(|note| notes.push(note)).ok();
    let bench = Bench {
        cfg: &cfg,
        net: &net,
        scratch: &scratch,
        http: http.as_ref(),
    };

    let mut figures = BTreeMap::new();
    for &t in &cfg.targets {
        match t {
            Target::Local => {
                let f = run_target(&bench, t, &scratch.dir("local"), None, &mut notes);
                figures.insert(t, f);
            }
            Target::Bindfs => match sys::which("bindfs") {
                Some(bindfs) => {
                    let (src, mnt) = (scratch.dir("bindfs-src"), scratch.dir("bindfs-mnt"));
                    let log = scratch.path.join("bindfs.log");
                    let mut m = FuseMount::start(lab::bindfs_spec(&bindfs, &src, &mnt, &log));
                    let f = run_target(&bench, t, &mnt, Some(&mut m), &mut notes);
                    figures.insert(t, f);
                }
                None => notes.push("bindfs skipped: not installed (apt-get install bindfs)".into()),
            },
            Target::Mirrorfs => {
                let mut m = FuseMount::start(mirrorfs_spec());
                let f = run_target(&bench, t, &mountpoint, Some(&mut m), &mut notes);
                serve.check_alive();
                drop(m);
                let log = scratch.path.join("verify.log");
                notes.push(verify_replica(&cfg.mirrorfs, &backing, &replica, &log));
                figures.insert(t, f);
            }
        }
    }

    let report = Report {
        rows: cfg.rows(),
        figures,
        notes,
    };
    let text = report.text();
    println!("\n{header}\n\n{text}");
    for n in &report.notes {
        println!("note: {n}");
    }
    let md = format!(
        "# mirrorfs replication benchmark\n\n{}\n\n{}\n{}",
        header
            .lines()
            .map(|l| format!("- {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
        report.markdown(),
        report
            .notes
            .iter()
            .map(|n| format!("\n- {n}"))
            .collect::<String>()
    );
    if let Some(dir) = cfg.markdown.parent() {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    }
    fs::write(&cfg.markdown, md + "\n")
        .unwrap_or_else(|e| panic!("write {}: {e}", cfg.markdown.display()));
    println!("\nwritten to {}", cfg.markdown.display());
}

/// Runs every workload in `dir` (on `mount`, if a FUSE target) and returns the figures.
fn run_target(
    b: &Bench,
    t: Target,
    dir: &Path,
    mut mount: Option<&mut FuseMount>,
    notes: &mut Vec<String>,
) -> Figures {
    let cfg = b.cfg;
    let secs = Duration::from_secs(cfg.secs);
    let name = t.name();
    let mut f = Figures::new();
    // Before each measurement: the mount's daemon is alive, and the previous
    // workload's writeback and journal work (e.g. freeing a deleted 512 MiB
    // file) is done, so that it is not billed to the next one.
    let settle = |mount: &mut Option<&mut FuseMount>| {
        if let Some(m) = mount.as_deref_mut() {
            m.check_alive();
        }
        sys::settle();
    };
    eprintln!("[{name}] workloads in {}", dir.display());

    // Random 4 KiB writes with fdatasync, 1 and 4 writers.
    let files: Vec<PathBuf> = (0..4)
        .map(|i| dir.join(format!("randwrite{i}.dat")))
        .collect();
    for p in &files {
        workloads::preallocate(p, RANDWRITE_FILE, Instant::now() + Duration::from_secs(120));
    }
    for (n, [iops, p50, p99]) in [
        (1, ["rw1_iops", "rw1_p50", "rw1_p99"]),
        (4, ["rw4_iops", "rw4_p50", "rw4_p99"]),
    ] {
        settle(&mut mount);
        let r = workloads::randwrite(&files[..n], secs);
        eprintln!("[{name}] 4 KiB random write + fdatasync, {n} writer(s): {:.0} IOPS, p50 {:.0} µs, p99 {:.0} µs",
            r.iops, r.p50_us, r.p99_us);
        f.insert(iops, r.iops);
        f.insert(p50, r.p50_us);
        f.insert(p99, r.p99_us);
    }
    f.insert("rw_scale", f["rw4_iops"] / f["rw1_iops"]);
    for p in &files {
        fs::remove_file(p).unwrap_or_else(|e| panic!("remove {}: {e}", p.display()));
    }

    // Sequential writes.
    settle(&mut mount);
    let r = workloads::seqwrite(
        &dir.join("seq.dat"),
        cfg.seq_mib,
        Instant::now() + Duration::from_secs(180),
    );
    eprintln!("[{name}] sequential write: {:.1} MB/s", r.per_sec);
    f.insert("seq", r.per_sec);
    notes.extend(r.cut.map(|c| format!("{name}: {c}")));

    // Metadata: creation and churn.
    settle(&mut mount);
    let r = workloads::create_files(
        &dir.join("create"),
        cfg.files,
        Instant::now() + Duration::from_secs(120),
    );
    eprintln!(
        "[{name}] create {} files of 4 KiB: {:.0} files/s",
        cfg.files, r.per_sec
    );
    f.insert("create", r.per_sec);
    notes.extend(r.cut.map(|c| format!("{name}: {c}")));
    settle(&mut mount);
    let r = workloads::churn(
        &dir.join("churn"),
        cfg.churn,
        Instant::now() + Duration::from_secs(120),
    );
    eprintln!("[{name}] create+rename+unlink: {:.0} cycles/s", r.per_sec);
    f.insert("churn", r.per_sec);
    notes.extend(r.cut.map(|c| format!("{name}: {c}")));

    // Reads through HTTP.
    if let Some(tools) = b.http {
        let www = dir.join("www");
        fs::create_dir_all(&www).unwrap_or_else(|e| panic!("mkdir {}: {e}", www.display()));
        workloads::write_file(&www.join("f4k.bin"), 4096);
        workloads::write_file(&www.join("f1m.bin"), 1 << 20);
        let work = b.scratch.dir(&format!("apache-{name}"));
        let addr = SocketAddr::new(b.net.ip1.into(), http::HTTP_PORT);
        settle(&mut mount);
        let mut apache = http::Apache::start(tools, &b.net.node1, addr, &www, &work, "/f4k.bin");
        for (path, key) in [("/f4k.bin", "http_4k"), ("/f1m.bin", "http_1m")] {
            // A short warm-up: page cache, Apache's worker threads, kernel caches.
            apache.wrk(tools, path, 1, &work.join("wrk-warmup.out"));
            let rps = apache.wrk(tools, path, cfg.secs, &work.join(format!("wrk-{key}.out")));
            eprintln!("[{name}] HTTP GET {path}: {rps:.0} requests/s");
            f.insert(key, rps);
        }
        drop(apache);
    }

    // Tree walk, cold then warm.
    settle(&mut mount);
    if let Err(e) = tree_walks(
        &mut f,
        name,
        &dir.join("tree"),
        cfg.tree,
        mount.as_deref_mut(),
    ) {
        eprintln!("[{name}] tree walk: {e}");
        notes.push(format!("{name}: no tree-walk figures: {e}"));
        // Whatever state the failure left the mount in, start afresh.
        if let Some(m) = mount.as_deref_mut() {
            m.remount();
        }
    }
    if let Some(m) = mount {
        m.check_alive();
    }
    f
}

/// Creates the tree through the target, then walks it cold (FUSE targets
/// remounted, kernel caches dropped) and warm.
fn tree_walks(
    f: &mut Figures,
    name: &str,
    tree: &Path,
    n: u64,
    mount: Option<&mut FuseMount>,
) -> Result<(), String> {
    let started = Instant::now();
    let expected = workloads::create_tree(tree, n, Instant::now() + Duration::from_secs(420))?;
    eprintln!(
        "[{name}] created a tree of {expected} entries in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if let Some(m) = mount {
        m.remount();
    }
    sys::drop_caches();
    for key in ["walk_cold", "walk_warm"] {
        let (found, d) = workloads::walk(tree, Instant::now() + Duration::from_secs(300))?;
        if found != expected {
            return Err(format!(
                "the walk found {found} entries, {expected} were created"
            ));
        }
        eprintln!(
            "[{name}] find + stat of {found} entries, {}: {:.3} s",
            &key[5..],
            d.as_secs_f64()
        );
        f.insert(key, d.as_secs_f64());
    }
    Ok(())
}

/// Mounts, writes a file through the mount, checks the replica has it when
/// the write returned, unmounts.
fn smoke_test(mut m: FuseMount, replica: &Path) {
    let name = "bench-smoke-test";
    let data = b"replicated before close returned\n";
    let p = m.mountpoint().join(name);
    fs::write(&p, data).unwrap_or_else(|e| panic!("smoke test: write {}: {e}", p.display()));
    let got = fs::read(replica.join(name))
        .unwrap_or_else(|e| panic!("smoke test: the replica has no {name}: {e}"));
    if got != data {
        panic!("smoke test: the replica's {name} differs from what was written");
    }
    fs::remove_file(&p).unwrap_or_else(|e| panic!("smoke test: remove {}: {e}", p.display()));
    m.check_alive();
}

/// After the mirrorfs run (unmounted): `mirrorfs verify` of the backing
/// directory against the replica, as a note. A difference is a finding about
/// mirrorfs, not a failure of the bench, so it is reported, loudly, not panicked.
fn verify_replica(mirrorfs: &Path, backing: &Path, replica: &Path, log: &Path) -> String {
    let mut cmd = Command::new(mirrorfs);
    cmd.arg("verify").arg(backing).arg(replica);
    let mut p = sys::Proc::spawn("mirrorfs verify", &mut cmd, log);
    let status = p.wait_exit(Duration::from_secs(300));
    let out = fs::read_to_string(log).unwrap_or_default();
    let last = out.lines().last().unwrap_or("").to_string();
    match status.and_then(|s| s.code()) {
        Some(0) => format!("after the run, `mirrorfs verify` of backing and replica: {last}"),
        Some(1) => {
            let lines: Vec<&str> = out.lines().collect();
            let first = &lines[..lines.len().saturating_sub(1).min(5)];
            let msg = format!(
                "REPLICA DIFFERS after the run, `mirrorfs verify` of backing and replica: {last}; first: {}",
                first.join("; ")
            );
            eprintln!("replication: {msg}");
            msg
        }
        _ => format!(
            "`mirrorfs verify` of backing and replica did not finish cleanly ({status:?}): {last}"
        ),
    }
}

/// Date, machine, kernel, command and settings, one per line.
fn machine_header(cfg: &Config) -> String {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| format!("{:?}", SystemTime::now()));
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
        })
        .map_or("unknown CPU".to_string(), |m| m.trim().to_string());
    let mem_kib: u64 = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let fs_type = Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE,SOURCE", "--target", "/var/tmp"])
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    format!(
        "date: {date}\n\
         machine: {cpus} CPUs ({model}), {:.1} GiB RAM, kernel {}\n\
         command: cargo bench --bench replication (MIRRORFS_BENCH_SECS={} MIRRORFS_BENCH_SEQ_MIB={} MIRRORFS_BENCH_TREE={})\n\
         disk: /var/tmp on {fs_type}; mirrorfs backing and replica on the same file system\n\
         load average at start: {} (anything else running distorts the figures)\n\
         mirrorfs: {}",
        mem_kib as f64 / (1 << 20) as f64,
        kernel.trim(),
        cfg.secs,
        cfg.seq_mib,
        cfg.tree,
        fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        cfg.mirrorfs.display()
    )
}

/// A warning if the mirrorfs binary is older than its sources (we build nothing).
fn stale_binary(bin: &Path) -> Option<String> {
    let built = fs::metadata(bin).and_then(|m| m.modified()).ok()?;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("mirrorfs");
    let newest = newest_mtime(&src, 4)?;
    (newest > built).then(|| {
        format!(
            "{} is older than the sources in {}: rebuild it (cargo build --release -p mirrorfs)",
            bin.display(),
            src.display()
        )
    })
}

fn newest_mtime(dir: &Path, depth: u32) -> Option<SystemTime> {
    let mut newest = None;
    for e in fs::read_dir(dir).ok()?.flatten() {
        let md = e.metadata().ok()?;
        let t = if md.is_dir() && depth > 0 {
            newest_mtime(&e.path(), depth - 1)
        } else {
            md.modified().ok()
        };
        newest = newest.max(t);
    }
    newest
}

fn env_u64(name: &str, default: u64, min: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => match v.trim().parse() {
            Ok(n) if n >= min => n,
            _ => panic!("{name}={v:?}: expected a whole number >= {min}"),
        },
        Err(_) => default,
    }
}
