//! Runs a module's application scripts (`start_prim`, `stop_prim`, …): one
//! blocking [`run`] per script, called on a thread of the daemon's own (never on
//! the heartbeat path).
//!
//! Owns: the child process and its process group, the script's timeout
//! (SIGTERM to the group, then SIGKILL after the grace), and copying the
//! script's output into the module's log, one line at a time with a
//! `TIME LABEL: ` prefix. Must not: kill anything outside the script's group,
//! or anything the script left running on purpose.
//!
//! A start script usually leaves a daemon behind (`apache2 -k start`). That
//! daemon is in the script's process group and may still hold the script's
//! stdout. So `run` returns when the script itself exits, waiting only a short
//! [`READER_GRACE`] for the rest of its output; the reader thread stays behind,
//! logging whatever the daemon still writes, and ends when the last holder of
//! the pipe closes it. Closing the pipe early instead would kill a daemon that
//! writes to its inherited stdout with SIGPIPE. The group is signalled only on
//! timeout, while the script is still running.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};
use std::{fmt, mem};

/// How long `run` waits, after the script exited, for the end of its output.
/// Output still arriving later is logged all the same (see the module doc).
pub const READER_GRACE: Duration = Duration::from_millis(200);

/// A line longer than this is logged in pieces.
const MAX_LINE: usize = 8192;

/// One script invocation.
#[derive(Clone, Debug)]
pub struct ScriptRun {
    /// The executable (a file with a `#!` line, or a binary).
    pub path: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables added to the daemon's environment (`MIRRORFARM_MODULE`, …).
    pub env: Vec<(String, String)>,
    /// The working directory.
    pub cwd: PathBuf,
    /// How long the script may run before its group gets SIGTERM.
    pub timeout: Duration,
    /// How long after SIGTERM the group gets SIGKILL.
    pub stop_grace: Duration,
    /// The module's log, appended to (created if missing).
    pub log: PathBuf,
    /// The prefix of this script's lines in the log (`apache start_prim`).
    pub label: String,
}

/// How a script ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScriptOutcome {
    /// Exit status 0.
    Ok,
    /// A non-zero exit status (`code`) or death by a signal (`signal`).
    Failed {
        /// The exit status, when it exited.
        code: Option<i32>,
        /// The signal that ended it, when one did.
        signal: Option<i32>,
    },
    /// Still running at the timeout: its group was terminated.
    TimedOut,
    /// It could not be started; the text says why and what to do.
    NotStarted(String),
}

impl fmt::Display for ScriptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => f.write_str("exit 0"),
            Self::Failed {
                code: Some(code), ..
            } => write!(f, "exit {code}"),
            Self::Failed {
                signal: Some(sig), ..
            } => write!(f, "killed by signal {sig}"),
            Self::Failed { .. } => f.write_str("failed"),
            Self::TimedOut => f.write_str("timed out (terminated)"),
            Self::NotStarted(why) => write!(f, "not started: {why}"),
        }
    }
}

/// Runs the script to its end (or its timeout) and reports how it ended. The
/// script runs in a new process group, stdin `/dev/null`, stdout and stderr into
/// the log.
pub fn run(run: &ScriptRun) -> ScriptOutcome {
    let mut sink = LogSink::open(run);
    let started = Instant::now();
    // Logged before the spawn, so that it precedes the script's own lines.
    sink.line(&format!("starting {}", command_line(run)));
    let (mut child, reader_done) = match spawn(run, &sink) {
        Ok(spawned) => spawned,
        Err(why) => {
            sink.line(&format!("not started: {why}"));
            tracing::warn!(label = %run.label, path = %run.path.display(), %why, "script not started");
            return ScriptOutcome::NotStarted(why);
        }
    };
    let pid = child.id();
    tracing::info!(label = %run.label, path = %run.path.display(), pid, "script started");

    let outcome = match wait_timeout(&mut child, run.timeout) {
        Ok(Some(status)) => outcome_of(status),
        Ok(None) => {
            sink.line(&format!(
                "timed out after {} ms: SIGTERM to its process group",
                run.timeout.as_millis()
            ));
            terminate(&mut child, run.stop_grace, &mut sink);
            ScriptOutcome::TimedOut
        }
        Err(e) => {
            // Cannot wait for it: do not leave it running unobserved.
            sink.line(&format!(
                "waiting for the script failed ({e}): killing its group"
            ));
            let _ = kill_group(pid, libc::SIGKILL);
            let _ = child.wait();
            ScriptOutcome::Failed {
                code: None,
                signal: Some(libc::SIGKILL),
            }
        }
    };
    // The rest of the output, bounded: a leftover daemon may hold the pipe.
    let _ = reader_done.recv_timeout(READER_GRACE);
    let secs = started.elapsed().as_secs_f64();
    sink.line(&format!("{outcome} after {secs:.1} s"));
    match &outcome {
        ScriptOutcome::Ok => tracing::info!(label = %run.label, secs, "script done"),
        other => tracing::warn!(label = %run.label, secs, outcome = %other, "script failed"),
    }
    outcome
}

/// Sends `signal` to every process of the group `pgid`. Refuses the groups 0
/// and 1 (`kill(0)` is the caller's own group, `kill(-1)` every process).
pub fn kill_group(pgid: u32, signal: i32) -> io::Result<()> {
    let Ok(pgid) = i32::try_from(pgid) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    if pgid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process group {pgid}"),
        ));
    }
    // SAFETY: kill(2) with a negative pid signals that group only.
    if unsafe { libc::kill(-pgid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits up to `timeout` for `child` to exit, reaping it if it did; `None`
/// if it is still running. Sleeps in the kernel (pidfd + poll) rather than
/// polling, where the kernel has pidfds.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let pidfd = pidfd_open(child.id());
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        match &pidfd {
            Some(fd) => {
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let rc = unsafe { libc::poll(&mut pfd, 1, poll_millis(left)) };
                if rc < 0 {
                    let err = io::Error::last_os_error();
                    if err.kind() != io::ErrorKind::Interrupted {
                        return Err(err);
                    }
                }
            }
            // No pidfd (kernel < 5.3): check again in a little while.
            None => thread::sleep(left.min(Duration::from_millis(10))),
        }
    }
}

/// `2026-12-06T10:11:12.345Z` (UTC): the log's time prefix.
pub fn timestamp(t: SystemTime) -> String {
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = since.as_secs() as libc::time_t;
    // SAFETY: tm is plain old data; gmtime_r fills it from secs.
    let mut tm: libc::tm = unsafe { mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    if unsafe { libc::gmtime_r(&secs, &mut tm) }.is_null() {
        return format!("@{}", since.as_secs());
    }
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        since.subsec_millis()
    )
}

/// Starts the script with its output on a pipe read by a logging thread;
/// returns the child and a channel that closes when the reader saw EOF.
fn spawn(run: &ScriptRun, sink: &LogSink) -> Result<(Child, mpsc::Receiver<()>), String> {
    if !run.cwd.is_dir() {
        return Err(format!(
            "working directory {} does not exist: create it or fix the module's scripts.dir",
            run.cwd.display()
        ));
    }
    let (read_end, write_end) =
        pipe().map_err(|e| format!("cannot create a pipe for the script's output: {e}"))?;
    let child = {
        let stderr = write_end
            .try_clone()
            .map_err(|e| format!("cannot duplicate the output pipe: {e}"))?;
        let mut cmd = Command::new(&run.path);
        cmd.args(&run.args)
            .envs(run.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&run.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(write_end))
            .stderr(Stdio::from(stderr))
            // Its own group: a timeout can stop the script and its children
            // without touching the daemon.
            .process_group(0);
        cmd.spawn().map_err(|e| spawn_error(run, &e))?
        // `cmd` drops here with our copies of the write end: the reader sees
        // EOF once the script (and anything it left holding stdout) is gone.
    };
    let (done_tx, done_rx) = mpsc::channel();
    let mut sink = sink.clone_for_reader();
    let label = run.label.clone();
    let spawned = thread::Builder::new()
        .name(format!("script-log {label}"))
        .spawn(move || {
            copy_lines(File::from(read_end), &mut sink);
            drop(done_tx);
        });
    if let Err(e) = spawned {
        // The output is lost, the script runs anyway.
        tracing::warn!(%label, error = %e, "cannot start the script's log reader");
    }
    Ok((child, done_rx))
}

/// After the timeout: SIGTERM to the group, up to `grace` for the script to
/// go, then SIGKILL to whatever is left of the group; reaps the script.
fn terminate(child: &mut Child, grace: Duration, sink: &mut LogSink) {
    let pgid = child.id();
    // The script is not reaped yet, so its pid (the group id) cannot have been
    // reused: these signals reach only its group.
    if let Err(e) = kill_group(pgid, libc::SIGTERM) {
        sink.line(&format!("SIGTERM to group {pgid} failed: {e}"));
    }
    let exited = wait_for_exit(child, grace).unwrap_or_default();
    if !exited {
        sink.line(&format!(
            "still running {} ms after SIGTERM: SIGKILL to its process group",
            grace.as_millis()
        ));
    }
    // Children that ignored SIGTERM go too (none is left when it was heeded).
    let _ = kill_group(pgid, libc::SIGKILL);
    let _ = child.wait();
}

/// Waits up to `timeout` for the child to exit *without reaping it*, so that
/// its pid stays reserved as the group id while the group is signalled.
fn wait_for_exit(child: &Child, timeout: Duration) -> io::Result<bool> {
    let Some(fd) = pidfd_open(child.id()) else {
        // Without pidfds, reaping is the only way to see the exit: wait the
        // grace out (the SIGKILL after it is then still safe: the pid is held
        // until we reap below).
        thread::sleep(timeout);
        return Ok(false);
    };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, poll_millis(left)) };
        if rc > 0 {
            return Ok(true);
        }
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        } else if left.is_zero() {
            return Ok(false);
        }
    }
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Milliseconds for poll(2), rounded up so that a wait never ends early.
fn poll_millis(d: Duration) -> i32 {
    let ms = d.as_micros().div_ceil(1000);
    i32::try_from(ms).unwrap_or(i32::MAX)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn outcome_of(status: ExitStatus) -> ScriptOutcome {
    if status.success() {
        ScriptOutcome::Ok
    } else {
        ScriptOutcome::Failed {
            code: status.code(),
            signal: status.signal(),
        }
    }
}

fn spawn_error(run: &ScriptRun, e: &io::Error) -> String {
    let path = run.path.display();
    match e.kind() {
        io::ErrorKind::NotFound => {
            format!("{path} not found: install the script or fix the module's scripts")
        }
        io::ErrorKind::PermissionDenied => {
            format!("{path} is not executable: chmod +x {path}")
        }
        _ if e.raw_os_error() == Some(libc::ENOEXEC) => {
            format!("{path} is not a program: give the script a #! line (e.g. #!/bin/sh)")
        }
        _ => format!("cannot start {path}: {e}"),
    }
}

fn command_line(run: &ScriptRun) -> String {
    let mut s = run.path.display().to_string();
    for a in &run.args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// Reads the script's output to EOF and logs it line by line.
fn copy_lines(mut from: File, sink: &mut LogSink) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                sink.line(&format!("reading the script's output failed: {e}"));
                break;
            }
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            sink.line(&String::from_utf8_lossy(&line[..line.len() - 1]));
        }
        while pending.len() >= MAX_LINE {
            let piece: Vec<u8> = pending.drain(..MAX_LINE).collect();
            sink.line(&String::from_utf8_lossy(&piece));
        }
    }
    if !pending.is_empty() {
        sink.line(&String::from_utf8_lossy(&pending));
    }
}

/// Where log lines go: the module log, or `tracing` when it cannot be opened
/// (a broken log must not keep the application from starting).
enum LogSink {
    File { file: File, label: String },
    Tracing { label: String },
}

impl LogSink {
    fn open(run: &ScriptRun) -> Self {
        let label = run.label.clone();
        match OpenOptions::new().create(true).append(true).open(&run.log) {
            Ok(file) => Self::File { file, label },
            Err(e) => {
                tracing::warn!(
                    log = %run.log.display(), error = %e,
                    "cannot open the module log (create its directory or fix its permissions); \
                     script output goes to the daemon log"
                );
                Self::Tracing { label }
            }
        }
    }

    fn clone_for_reader(&self) -> Self {
        match self {
            Self::File { file, label } => match file.try_clone() {
                Ok(file) => Self::File {
                    file,
                    label: label.clone(),
                },
                Err(_) => Self::Tracing {
                    label: label.clone(),
                },
            },
            Self::Tracing { label } => Self::Tracing {
                label: label.clone(),
            },
        }
    }

    /// One line, written with a single `write` on an O_APPEND file, so lines
    /// from the reader and from `run` do not interleave within a line.
    fn line(&mut self, text: &str) {
        match self {
            Self::File { file, label } => {
                let line = format!("{} {label}: {text}\n", timestamp(SystemTime::now()));
                if let Err(e) = file.write_all(line.as_bytes()) {
                    tracing::warn!(%label, error = %e, line = text, "cannot write the module log");
                }
            }
            Self::Tracing { label } => tracing::info!(%label, "{text}"),
        }
    }
}

#[cfg(test)]
#[path = "scripts_test.rs"]
mod tests;
