//! What the benchmarks (`replication`, `resync`, `failover`, `farm`) share. Each bench is its
//! own crate (`harness = false`) and includes this directory with
//! `#[path = "common/mod.rs"] mod common;`.
//!
//! - this file: the bench's `main` (root, signals, exit code), settings from
//!   the environment, and where the target directory and the `mirrorfs`
//!   binary are;
//! - [`sys`]: child processes owned by PID, commands (also within a time
//!   limit), stop signals, mounts, caches, threads in a network namespace and
//!   the processes in one;
//! - [`lab`]: the scratch directory, the two network namespaces, the node
//!   identities, `mirrorfs serve` and FUSE mounts, each a guard that undoes
//!   itself on drop;
//! - [`report`]: the results table (aligned text and Markdown), goals,
//!   medians, and the machine facts a report starts with;
//! - [`syncwrite`]: the 4 KiB random write + fdatasync workload both measure;
//! - [`breakdown`]: where replicated ops spent their time, stage by stage, on
//!   both sides (`mirrorfs ctl latency`);
//! - [`rng`]: the seeded generator for offsets and file contents.
//!
//! What only one bench measures or reports stays in `replication/` or
//! `resync/`.

// Each bench uses a part of this module; the rest is dead code in its crate.
#![allow(dead_code)]

pub(crate) mod breakdown;
pub(crate) mod lab;
pub(crate) mod report;
pub(crate) mod rng;
pub(crate) mod syncwrite;
pub(crate) mod sys;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

static NAME: OnceLock<&'static str> = OnceLock::new();

/// The bench's name ("replication", "resync"): it starts every message.
pub(crate) fn name() -> &'static str {
    NAME.get().copied().unwrap_or("bench")
}

/// The bench's `main`. Without `--bench` (as `cargo test --all-targets` runs
/// benches) it only says what it is. Otherwise it checks for root, installs
/// the stop-signal handlers and runs `run`, whose guards remove everything it
/// set up also when it panics or is interrupted; exits 0, 1 on a failure,
/// 130 on a stop signal.
pub(crate) fn main(name: &'static str, run: fn()) {
    if !std::env::args().any(|a| a == "--bench") {
        println!("{name}: a benchmark; run it with `cargo bench --bench {name}` (as root)");
        return;
    }
    let _ = NAME.set(name);
    sys::install_signal_handlers();
    let code = match std::panic::catch_unwind(|| {
        // SAFETY: plain syscall without pointers.
        if unsafe { libc::geteuid() } != 0 {
            panic!("run the {name} bench as root: it creates network namespaces and mounts, and drops caches");
        }
        run();
    }) {
        Ok(()) => 0,
        Err(p) if p.is::<sys::Interrupted>() => {
            eprintln!("{name}: interrupted; everything it set up is removed");
            130
        }
        Err(_) => {
            eprintln!("{name}: failed (see above); everything it set up is removed");
            1
        }
    };
    std::process::exit(code);
}

/// A whole-number setting from the environment: `default` when unset; panics
/// if it is not a number of at least `min`.
pub(crate) fn env_u64(name: &str, default: u64, min: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => match v.trim().parse() {
            Ok(n) if n >= min => n,
            _ => panic!("{name}={v:?}: expected a whole number >= {min}"),
        },
        Err(_) => default,
    }
}

/// Where the bench writes its Markdown, and the `mirrorfs` binary it runs.
pub(crate) struct Paths {
    /// The target directory the bench was built in.
    pub(crate) target_dir: PathBuf,
    /// `$MIRRORFS_BIN`, or `mirrorfs` beside the bench (`TARGET/release/`).
    pub(crate) mirrorfs: PathBuf,
    /// A warning when the binary is older than its sources (the bench builds
    /// nothing), for the report's notes.
    pub(crate) stale: Option<String>,
}

impl Paths {
    /// Panics if there is no mirrorfs binary; prints the staleness warning.
    pub(crate) fn find() -> Self {
        let exe = std::env::current_exe().expect("cannot find the bench executable's path");
        // The bench runs as TARGET/release/deps/NAME-HASH.
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
        let stale = stale_binary(&mirrorfs);
        if let Some(note) = &stale {
            eprintln!("{}: WARNING: {note}", name());
        }
        Self {
            target_dir,
            mirrorfs,
            stale,
        }
    }
}

/// A warning if the mirrorfs binary is older than its sources.
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

/// A warning if `bin` is older than the sources in the workspace's `dirs`
/// (for a bench that runs another binary than mirrorfs, e.g. `mirrorfarm`
/// built from `controller/` and `mirrorfs/`); `rebuild` says how to rebuild it.
pub(crate) fn older_than_sources(bin: &Path, dirs: &[&str], rebuild: &str) -> Option<String> {
    let built = fs::metadata(bin).and_then(|m| m.modified()).ok()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let newest = dirs
        .iter()
        .filter_map(|d| newest_mtime(&root.join(d), 4))
        .max()?;
    (newest > built).then(|| {
        format!(
            "{} is older than the sources in {}: rebuild it ({rebuild})",
            bin.display(),
            dirs.join(", ")
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
