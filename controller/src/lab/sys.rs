//! The lab's contact with the system: commands, processes in network
//! namespaces (start detached, find, stop), mounts, bounded waits.
//!
//! Processes are found the way `ip netns pids` finds them (a process is in
//! namespace NS when `/proc/PID/ns/net` is the same nsfs inode as
//! `/run/netns/NS`), but with one scan of `/proc` for all the lab's
//! namespaces at once instead of one `ip` process per namespace and poll.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::LabError;

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";
/// How long a process gets after SIGKILL to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often waits look again.
const POLL: Duration = Duration::from_millis(100);

/// Fails unless the lab runs as root.
pub(crate) fn require_root() -> Result<(), LabError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

/// Runs `program args` to completion (stdin `/dev/null`, output captured) and
/// returns its output if it exited 0; else an error that ends with `fix`.
pub(crate) fn run<S: AsRef<OsStr>>(
    program: &str,
    args: impl IntoIterator<Item = S>,
    fix: &str,
) -> Result<Output, LabError> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    let out = cmd.output().map_err(|source| LabError::Spawn {
        program: program.to_owned(),
        source,
        fix: fix.to_owned(),
    })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(LabError::Command {
            command: command_line(&cmd),
            status: out.status.to_string(),
            stderr: match tail(&String::from_utf8_lossy(&out.stderr), 5).trim() {
                "" => "no output".to_owned(),
                text => text.to_owned(),
            },
            fix: fix.to_owned(),
        })
    }
}

/// `ip ARGS` (iproute2).
pub(crate) fn ip<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Result<(), LabError> {
    run("ip", args, "is iproute2 installed, and is this root?").map(drop)
}

/// The file that holds network namespace `ns`.
pub(crate) fn netns_path(ns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns)
}

/// Whether network namespace `ns` exists.
pub(crate) fn netns_exists(ns: &str) -> bool {
    netns_path(ns).exists()
}

/// A command that runs `program` in network namespace `ns` only: the mount
/// namespace stays the shared one, so FUSE mounts made there are seen by
/// everyone (`ip netns exec` would give the process a private one).
pub(crate) fn in_netns(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns_path(ns).display()))
        .arg("--")
        .arg(program);
    cmd
}

/// Starts `program args` in namespace `ns`, detached: its own session (no
/// terminal, so ^C on the lab command does not reach it), stdin `/dev/null`,
/// cwd `/`, stdout and stderr appended to `log`. Writes its pid to
/// `pid_file`. nsenter execs the program (it forks only for a PID
/// namespace), so the pid is the program's.
pub(crate) fn spawn_in<S: AsRef<OsStr>>(
    ns: &str,
    program: &Path,
    args: impl IntoIterator<Item = S>,
    log: &Path,
    pid_file: &Path,
) -> Result<Child, LabError> {
    let log_fix = "is the lab's directory writable?";
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(LabError::io(log, log_fix))?;
    let mut cmd = in_netns(ns, program);
    cmd.args(args);
    let line = command_line(&cmd);
    writeln!(out, "--- mirrorfarm lab: starting {line}").map_err(LabError::io(log, log_fix))?;
    let err = out.try_clone().map_err(LabError::io(log, log_fix))?;
    cmd.current_dir("/")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| LabError::Spawn {
        program: line,
        source,
        fix: "is nsenter (util-linux) installed?".to_owned(),
    })?;
    fs::write(pid_file, format!("{}\n", child.id()))
        .map_err(LabError::io(pid_file, "is the lab's directory writable?"))?;
    Ok(child)
}

/// The live processes in each of `namespaces` (those that exist), by namespace.
pub(crate) fn pids_in(namespaces: &[String]) -> BTreeMap<String, Vec<i32>> {
    let ids: Vec<((u64, u64), &String)> = namespaces
        .iter()
        .filter_map(|ns| {
            let m = fs::metadata(netns_path(ns)).ok()?;
            Some(((m.dev(), m.ino()), ns))
        })
        .collect();
    let mut found: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    if ids.is_empty() {
        return found;
    }
    let Ok(proc_dir) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in proc_dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // Fails for a process that exited (a zombie has no namespaces left).
        let Ok(m) = fs::metadata(entry.path().join("ns/net")) else {
            continue;
        };
        if let Some((_, ns)) = ids.iter().find(|(id, _)| *id == (m.dev(), m.ino())) {
            found.entry((*ns).clone()).or_default().push(pid);
        }
    }
    found
}

/// Whether `pid` is a live process in namespace `ns`.
pub(crate) fn runs_in(pid: i32, ns: &str) -> bool {
    let (Ok(want), Ok(got)) = (
        fs::metadata(netns_path(ns)),
        fs::metadata(format!("/proc/{pid}/ns/net")),
    ) else {
        return false;
    };
    (want.dev(), want.ino()) == (got.dev(), got.ino())
}

/// The pid in `pid_file`, if it names a live process in namespace `ns`.
pub(crate) fn live_pid(pid_file: &Path, ns: &str) -> Option<i32> {
    let pid = fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    runs_in(pid, ns).then_some(pid)
}

/// Stops every process in `namespaces`: SIGTERM, up to `grace` for them to
/// exit, then SIGKILL to what is left (and what appeared meanwhile). Returns
/// the survivors, described, if any.
pub(crate) fn stop_all(namespaces: &[String], grace: Duration) -> Result<(), String> {
    for (signal, wait) in [(libc::SIGTERM, grace), (libc::SIGKILL, KILL_WAIT)] {
        let pids = pids_in(namespaces);
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids.values().flatten() {
            signal_pid(*pid, signal);
        }
        if wait_until(wait, || pids_in(namespaces).is_empty().then_some(())).is_some() {
            return Ok(());
        }
    }
    let left: Vec<String> = pids_in(namespaces)
        .iter()
        .flat_map(|(ns, pids)| {
            pids.iter()
                .map(move |p| format!("{} in {ns}", describe(*p)))
        })
        .collect();
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("processes survive SIGKILL: {}", left.join(", ")))
    }
}

/// The pid in `pid_file` if it names a live process (not a zombie) whose
/// command is `comm`, in whatever namespace.
pub(crate) fn pid_of(pid_file: &Path, comm: &str) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    alive_as(pid, comm).then_some(pid)
}

/// Whether `pid` is a live process (not a zombie) whose command is `comm`.
pub(crate) fn alive_as(pid: i32, comm: &str) -> bool {
    // "PID (COMM) STATE ...": COMM may hold spaces and parentheses.
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let state = stat[close + 1..].split_whitespace().next();
    &stat[open + 1..close] == comm && state != Some("Z")
}

/// SIGTERM to each of `pids` (leaders of their process groups, as a
/// detached Apache is), up to `grace` for them to exit, then SIGKILL to
/// their process groups.
pub(crate) fn term_then_kill(pids: &[i32], grace: Duration) {
    let comms: Vec<(i32, String)> = pids
        .iter()
        .map(|&p| {
            let comm = fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            (p, comm.trim().to_owned())
        })
        .collect();
    for &(pid, _) in &comms {
        signal_pid(pid, libc::SIGTERM);
    }
    let gone = || (!comms.iter().any(|(p, c)| alive_as(*p, c))).then_some(());
    if wait_until(grace, gone).is_none() {
        for (pid, comm) in &comms {
            if alive_as(*pid, comm) {
                // SAFETY: kill(2) has no memory-safety preconditions; the
                // pid was just seen alive with its command.
                unsafe { libc::kill(-*pid, libc::SIGKILL) };
                signal_pid(*pid, libc::SIGKILL);
            }
        }
        let _ = wait_until(KILL_WAIT, gone);
    }
}

/// Sends SIGTERM to `pids` and waits up to `grace` for them to leave
/// `namespaces` (exit); returns whether they all did.
pub(crate) fn term_and_wait(pids: &[i32], namespaces: &[String], grace: Duration) -> bool {
    for pid in pids {
        signal_pid(*pid, libc::SIGTERM);
    }
    let gone = || {
        let live = pids_in(namespaces);
        let any = pids.iter().any(|p| live.values().flatten().any(|q| q == p));
        (!any).then_some(())
    };
    wait_until(grace, gone).is_some()
}

/// `kill(pid, signal)`; a process that is gone already is no error.
fn signal_pid(pid: i32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions. The pid was just
    // seen in one of the lab's namespaces.
    unsafe { libc::kill(pid, signal) };
}

/// `pid (comm)`, for messages.
fn describe(pid: i32) -> String {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    format!("{pid} ({})", comm.trim())
}

/// Whether a process of namespace `ns` has a UDP socket bound to `port` (on
/// any address): reads `/proc/PID/net/udp*` of a process of that namespace,
/// which shows that namespace's sockets.
pub(crate) fn udp_bound(pid: i32, port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["udp", "udp6"].iter().any(|f| {
        fs::read_to_string(format!("/proc/{pid}/net/{f}"))
            .map(|t| {
                t.lines().skip(1).any(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .is_some_and(|local| local.ends_with(&want))
                })
            })
            .unwrap_or(false)
    })
}

/// A mount of the shared mount namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mount {
    pub(crate) path: PathBuf,
    pub(crate) fstype: String,
}

/// The mounts at or under `dir`, deepest first (each stacked mount once per
/// layer), from `/proc/self/mountinfo`.
pub(crate) fn mounts_under(dir: &Path) -> Result<Vec<Mount>, LabError> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(LabError::io("/proc/self/mountinfo", "is /proc mounted?"))?;
    let mut mounts: Vec<Mount> = parse_mountinfo(&info)
        .into_iter()
        .filter(|m| m.path.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.path.components().count()));
    Ok(mounts)
}

/// `(mount point, fstype)` of each line of a mountinfo text.
fn parse_mountinfo(info: &str) -> Vec<Mount> {
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let path = left.split(' ').nth(4)?;
            let fstype = right.split(' ').next()?;
            Some(Mount {
                path: PathBuf::from(OsStr::from_bytes(&unescape_octal(path))),
                fstype: fstype.to_owned(),
            })
        })
        .collect()
}

/// Undoes mountinfo's `\NNN` octal escapes (space, tab, newline, backslash).
fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = b.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (b[i], code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// `umount -l PATH`: detaches the mount now; the kernel finishes when its
/// last user goes.
pub(crate) fn unmount_lazy(path: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a valid C string that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the FUSE mount at `path` has lost its daemon: stat gives ENOTCONN
/// (or ECONNABORTED once aborted), or does not return within two seconds.
pub(crate) fn is_dead_mount(path: &Path) -> bool {
    let (tx, rx) = mpsc::channel();
    let p = path.to_owned();
    // A stat on a mount whose daemon hangs would block this thread for good:
    // it is left behind, the answer is "dead".
    thread::spawn(move || {
        let _ = tx.send(fs::metadata(p).map(drop));
    });
    match rx.recv_timeout(Duration::from_secs(2)) {
        Ok(Ok(())) => false,
        Ok(Err(e)) => matches!(
            e.raw_os_error(),
            Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)
        ),
        Err(_) => true,
    }
}

/// Calls `probe` every [`POLL`] until it returns `Some` or `bound` has passed
/// (then `None`). Probes at least once.
pub(crate) fn wait_until<T>(bound: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// Runs `cmd` with stdout and stderr captured; kills it if it has not exited
/// within `bound`. `None` when it could not start or was killed.
pub(crate) fn output_within(mut cmd: Command, bound: Duration) -> Option<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().ok()?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(bound) {
        Ok(out) => out.ok(),
        Err(_) => {
            // The child is not reaped (the waiter still waits for it), so the
            // pid is still ours.
            signal_pid(pid as i32, libc::SIGKILL);
            let _ = waiter.join();
            None
        }
    }
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut out = lines[start..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// The last `n` lines of file `path` (reads at most its last 64 KiB).
pub(crate) fn tail_file(path: &Path, n: usize) -> io::Result<String> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(tail(&String::from_utf8_lossy(&buf), n))
}

/// `cmd` as a shell-like line, for messages.
fn command_line(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;

    use super::*;

    #[test]
    fn mountinfo_lines_give_unescaped_paths_and_types() {
        let info = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
95 30 0:50 / /var/lib/mirrorfarm-lab/mf/node1/srv/apache-mirror/htdocs rw,nosuid,nodev,relatime shared:1 - fuse.mirrorfs mirrorfs rw,user_id=0
96 30 0:51 / /tmp/a\\040b\\134c rw - tmpfs none rw
";
        let m = |p: &str, t: &str| Mount {
            path: p.into(),
            fstype: t.into(),
        };
        assert_eq!(
            parse_mountinfo(info),
            [
                m("/proc", "proc"),
                m(
                    "/var/lib/mirrorfarm-lab/mf/node1/srv/apache-mirror/htdocs",
                    "fuse.mirrorfs"
                ),
                m("/tmp/a b\\c", "tmpfs"),
            ]
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a", 5), "a\n");
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn a_command_past_its_bound_is_killed() {
        let started = Instant::now();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        assert!(output_within(cmd, Duration::from_millis(200)).is_none());
        assert!(started.elapsed() < Duration::from_secs(10));
        let mut cmd = Command::new("echo");
        cmd.arg("hi");
        let out = output_within(cmd, Duration::from_secs(10)).unwrap();
        assert_eq!(out.stdout, b"hi\n");
    }
}
