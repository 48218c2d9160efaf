//! Shared helpers of the end-to-end tests: waiting on conditions, finding the
//! `mirrorfs` binary, running commands, and the fixtures in the submodules
//! (the netns lab, the two-node mirror, the writing application, a primary
//! played by the test).
//!
//! Owns: nothing outside the test process's own temp dirs, namespaces and children.
//! Every fixture cleans up in `Drop`, so a panicking test leaves nothing behind.

#![allow(dead_code)] // each test module uses a different part of the helpers

pub mod farm;
pub mod lab;
pub mod mirror;
pub mod peer;
pub mod sys;
pub mod tree;
pub mod writer;

use std::ffi::OsStr;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What a probe passed to [`wait_for`] saw this time.
#[derive(Debug)]
pub enum Probe<T> {
    /// The condition holds; `wait_for` returns this value.
    Ready(T),
    /// Not yet; the string describes what was observed, and is the error message
    /// if the deadline passes.
    Pending(String),
    /// It can no longer become true (e.g. the process under test exited): stop now.
    Fail(anyhow::Error),
}

/// Polls `probe` with a short backoff until it is ready, it fails, or `deadline`
/// (from now) passes; on timeout the error names `what` and the last observed state.
///
/// This is the only way the e2e tests wait: never a fixed sleep.
pub fn wait_for<T>(
    deadline: Duration,
    what: &str,
    mut probe: impl FnMut() -> Probe<T>,
) -> Result<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        match probe() {
            Probe::Ready(v) => return Ok(v),
            Probe::Fail(e) => return Err(e.context(format!("while waiting for {what}"))),
            Probe::Pending(state) if start.elapsed() >= deadline => {
                bail!("timed out after {deadline:?} waiting for {what}; last observed: {state}")
            }
            Probe::Pending(_) => {}
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Runs `work` on its own thread and waits at most `deadline` for it: a file
/// system that hangs fails the test with `what` instead of hanging the suite.
/// (The stuck thread is released when the fixture unmounts and kills the daemon.)
pub fn within<T: Send + 'static>(
    deadline: Duration,
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name(what.chars().take(15).collect())
        .spawn(move || {
            let _ = tx.send(work());
        })?;
    match rx.recv_timeout(deadline) {
        Ok(v) => Ok(v),
        Err(RecvTimeoutError::Timeout) => {
            bail!("{what} did not finish within {deadline:?}: a hang in the file system?")
        }
        Err(RecvTimeoutError::Disconnected) => bail!("{what} panicked (see its message above)"),
    }
}

/// Runs `work` on the mount point `mnt` on its own thread, failing (rather
/// than hanging) if it takes longer than `deadline`.
pub fn run_fs<T: Send + 'static>(
    deadline: Duration,
    what: &str,
    mnt: &Path,
    work: impl FnOnce(&Path) -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    let mnt = mnt.to_owned();
    within(deadline, what, move || work(&mnt))?.with_context(|| what.to_owned())
}

/// create/truncate, write, fsync, close.
pub fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// The `mirrorfs` binary under test: `$MIRRORFS_BIN`, or `release/mirrorfs` in
/// `$CARGO_TARGET_DIR` (default: the workspace's `target/`).
pub fn mirrorfs_bin() -> Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = match std::env::var_os("MIRRORFS_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(|t| workspace.join(t)) // join keeps an absolute dir as is
                .unwrap_or_else(|| workspace.join("target"));
            target.join("release").join("mirrorfs")
        }
    };
    if !bin.is_file() {
        bail!(
            "no mirrorfs binary at {}: build it first: cargo build --release -p mirrorfs",
            bin.display()
        );
    }
    Ok(bin)
}

/// Fails unless the tests run as root (namespaces, FUSE with allow_other, chown).
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the e2e tests need root (network namespaces, FUSE): run sudo scripts/test.sh");
    }
    Ok(())
}

/// Runs `cmd` to completion and returns its output, failing (with its stderr) if
/// it could not start or exited non-zero.
pub fn run_ok(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?} (is it installed? scripts/setup.sh)"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// `program args...` as a `Command`, to keep call sites short.
pub fn cmd<S: AsRef<OsStr>>(program: &str, args: impl IntoIterator<Item = S>) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Whether `path` is currently the mount point of a FUSE file system, read from
/// /proc/self/mountinfo so that a dead FUSE daemon cannot make the check hang.
pub fn is_fuse_mount(path: &Path) -> Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mountinfo_has_fuse(&info, path))
}

/// The parsing half of [`is_fuse_mount`]: field 5 is the mount point (octal
/// escaped), the first field after ` - ` is the file system type.
fn mountinfo_has_fuse(info: &str, path: &Path) -> bool {
    let want = path.as_os_str().as_encoded_bytes();
    info.lines().any(|line| {
        let Some((left, right)) = line.split_once(" - ") else {
            return false;
        };
        let point = left.split(' ').nth(4).map(unescape_octal);
        let fstype = right.split(' ').next().unwrap_or("");
        point.as_deref() == Some(want) && (fstype == "fuse" || fstype.starts_with("fuse."))
    })
}

/// Undoes mountinfo's `\040`-style escapes of space, tab, newline and backslash.
fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let digits = b.get(i + 1..i + 4);
        match digits {
            Some(d) if b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// `len` deterministic pseudo-random bytes (splitmix64 from `seed`): incompressible
/// test data without an RNG dependency, reproducible from the seed in a failure.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The last `n` lines of `text`, for error messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_parsing_finds_fuse_mounts_only() {
        let info = "\
36 25 0:32 / /var/tmp/a\\040b rw,relatime shared:1 - fuse.mirrorfs mirrorfs rw,user_id=0
37 25 0:33 / /var/tmp/plain rw,relatime shared:2 - ext4 /dev/vda rw
38 25 0:34 / /var/tmp/fuse rw,relatime - fuse /dev/fuse rw";
        assert!(mountinfo_has_fuse(info, Path::new("/var/tmp/a b")));
        assert!(mountinfo_has_fuse(info, Path::new("/var/tmp/fuse")));
        assert!(!mountinfo_has_fuse(info, Path::new("/var/tmp/plain")));
        assert!(!mountinfo_has_fuse(info, Path::new("/var/tmp/a")));
    }

    #[test]
    fn wait_for_reports_the_last_observed_state() {
        let mut n = 0;
        let err = wait_for(Duration::from_millis(30), "n to reach 1000", || {
            n += 1;
            Probe::<()>::Pending(format!("n = {n}"))
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("n to reach 1000"), "{err}");
        assert!(err.contains(&format!("n = {n}")), "{err}");
    }

    #[test]
    fn pseudo_random_is_deterministic_and_seeded() {
        assert_eq!(pseudo_random(1, 100), pseudo_random(1, 100));
        assert_ne!(pseudo_random(1, 100), pseudo_random(2, 100));
        assert_eq!(pseudo_random(3, 13).len(), 13);
    }
}
