//! Processes, commands, mounts, caches and stop signals for the benchmarks.
//!
//! Every child runs in its own process group (so a terminal's Ctrl-C reaches only
//! the benchmark, which then stops its children in order) and is owned by a
//! [`Proc`] guard that stops it by PID on drop. SIGINT, SIGTERM and SIGHUP only
//! set a flag: the workloads poll it and unwind with an [`Interrupted`] payload,
//! so every guard on the stack runs. If that cleanup is itself stuck (a syscall
//! on a dead FUSE mount), a watchdog kills the registered children after a grace
//! period, which fails the stuck syscall and lets the unwinding finish.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use super::name;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// PIDs of live children, killed by the watchdog if cleanup after a signal stalls.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// How long the orderly cleanup after a signal may take before the watchdog
/// kills the children.
const CLEANUP_GRACE: Duration = Duration::from_secs(15);

/// Panic payload of a run stopped by a signal (unwound without a message).
pub(crate) struct Interrupted;

/// Installs the signal handlers and the watchdog thread.
pub(crate) fn install_signal_handlers() {
    extern "C" fn on_signal(_: libc::c_int) {
        // Only an atomic store: async-signal-safe.
        INTERRUPTED.store(true, Ordering::SeqCst);
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    thread::Builder::new()
        .name("watchdog".into())
        .spawn(|| {
            while !interrupted() {
                thread::sleep(Duration::from_millis(100));
            }
            eprintln!("\n{}: interrupted, cleaning up", name());
            thread::sleep(CLEANUP_GRACE);
            let pids = CHILDREN.lock().map(|c| c.clone()).unwrap_or_default();
            for pid in pids {
                eprintln!("{}: cleanup is stuck, killing pid {pid}", name());
                // SAFETY: plain syscall on a PID we spawned and have not reaped.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        })
        .expect("cannot start the watchdog thread");
}

/// True once a stop signal arrived.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Unwinds (running every guard) if a stop signal arrived.
pub(crate) fn check_interrupt() {
    if interrupted() {
        std::panic::resume_unwind(Box::new(Interrupted));
    }
}

/// Sleeps in small steps, unwinding on a stop signal.
pub(crate) fn nap(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupt();
        thread::sleep(Duration::from_millis(10).min(end - Instant::now()));
    }
}

/// A `Command` that runs `program` in network namespace `ns` (if any) but in
/// our mount namespace: `nsenter --net`, not `ip netns exec`, which would hide
/// FUSE mounts made inside it.
pub(crate) fn command_in(ns: Option<&str>, program: impl AsRef<OsStr>) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Runs a short command to completion; panics with its output if it fails.
pub(crate) fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs a cleanup command; reports a failure on stderr instead of panicking
/// (guards run during unwinding, where a second panic would abort).
pub(crate) fn run_quietly(cmd: &mut Command) -> bool {
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "{}: cleanup {cmd:?} failed ({}): {}",
                name(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("{}: cleanup {cmd:?}: {e}", name());
            false
        }
    }
}

/// A child process, stopped by PID (SIGTERM, then SIGKILL) when dropped.
/// Spawn children from the main thread only: mirrorfs asks for SIGTERM when
/// the *thread* that started it exits.
pub(crate) struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    reaped: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` in its own process group with stdout and stderr appended to `log`.
    pub(crate) fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Self {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open log {}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot dup log {}: {e}", log.display()));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        if let Ok(mut c) = CHILDREN.lock() {
            c.push(child.id());
        }
        Self {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            reaped: None,
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.reap(st);
            }
        }
        self.reaped
    }

    /// Waits up to `d` for the process to exit by itself.
    pub(crate) fn wait_exit(&mut self, d: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + d;
        while self.exited().is_none() && Instant::now() < end {
            thread::sleep(Duration::from_millis(10));
        }
        self.reaped
    }

    /// The last lines of its log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.log, 12)
    }

    /// Panics with its log if it has exited.
    pub(crate) fn check_alive(&mut self) {
        if let Some(st) = self.exited() {
            panic!(
                "{} exited ({st}); its log ends:\n{}",
                self.name,
                self.log_tail()
            );
        }
    }

    /// SIGTERM, up to 10 s to exit, then SIGKILL. Idempotent; never panics.
    pub(crate) fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        self.signal(libc::SIGTERM);
        if self.wait_exit(Duration::from_secs(10)).is_some() {
            return;
        }
        eprintln!(
            "{}: {} ignored SIGTERM for 10 s, killing it",
            name(),
            self.name
        );
        self.signal(libc::SIGKILL);
        match self.child.wait() {
            Ok(st) => self.reap(st),
            Err(e) => eprintln!("{}: waiting for {}: {e}", name(), self.name),
        }
    }

    /// Sends `sig` unless it has been reaped (its PID may be reused then).
    pub(crate) fn signal(&self, sig: libc::c_int) {
        if self.reaped.is_none() {
            // SAFETY: plain syscall on our own unreaped child's PID.
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        }
    }

    fn reap(&mut self, st: ExitStatus) {
        self.reaped = Some(st);
        if let Ok(mut c) = CHILDREN.lock() {
            c.retain(|&p| p != self.child.id());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `n` lines of a log file (at most its last 16 KiB).
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("({}: {e})", path.display()),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// True if a FUSE file system is mounted exactly at `path`.
pub(crate) fn fuse_mounted(path: &Path) -> bool {
    mounted_at(path).is_some_and(|fstype| fstype.starts_with("fuse"))
}

/// The type of the file system mounted exactly at `path`, if any.
pub(crate) fn mounted_at(path: &Path) -> Option<String> {
    mounts_under(path)
        .into_iter()
        .find_map(|(p, fstype)| (p == path).then_some(fstype))
}

/// Mount points (with their type) at or below `path`, deepest first.
pub(crate) fn mounts_under(path: &Path) -> Vec<(PathBuf, String)> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<(PathBuf, String)> = info
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let mnt = f.nth(4)?;
            // The type follows the " - " separator.
            let fstype = l.split(" - ").nth(1)?.split(' ').next()?;
            Some((PathBuf::from(unescape_mountinfo(mnt)), fstype.to_string()))
        })
        .filter(|(p, _)| p.starts_with(path))
        .collect();
    found.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    found
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts `path`: `fusermount3 -u`, falling back to a lazy `umount -l`.
/// Never panics; returns whether nothing is mounted there any more.
pub(crate) fn unmount(path: &Path) -> bool {
    if mounted_at(path).is_none() {
        return true;
    }
    let ok = Command::new("fusermount3")
        .arg("-u")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return true;
    }
    run_quietly(Command::new("umount").arg("-l").arg(path))
}

/// sync(2): writes every dirty page.
pub(crate) fn sync() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Writes dirty pages, then idles a second so background work (journal
/// commits, block freeing) finishes before the next measurement.
pub(crate) fn settle() {
    sync();
    nap(Duration::from_secs(1));
}

/// Writes dirty pages and drops the page, dentry and inode caches.
pub(crate) fn drop_caches() {
    sync();
    fs::write("/proc/sys/vm/drop_caches", "3\n")
        .expect("cannot write /proc/sys/vm/drop_caches (needs root)");
}

/// Runs `f` on a thread that has joined network namespace `ns` and waits for
/// its result (a panic in it goes on here).
pub(crate) fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_netns(ns, f)
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Runs `f` on a new thread that has joined network namespace `ns` (only that
/// thread: the rest of the process stays where it is).
pub(crate) fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let nsfd = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
        // SAFETY: setns on an open namespace fd; affects this thread only.
        if unsafe { libc::setns(nsfd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            panic!("setns({path}): {}", io::Error::last_os_error());
        }
        f()
    })
}

/// Looks `program` up in PATH (and the sbin directories root has).
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| {
            fs::metadata(p)
                .map(|m| {
                    m.is_file()
                        && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
                .unwrap_or(false)
        })
}

/// Our RLIMIT_NOFILE, soft/hard, as text: the daemons inherit it, and a FUSE
/// daemon that keeps a descriptor per inode is bounded by it.
pub(crate) fn nofile_limit() -> String {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return format!("unknown ({})", io::Error::last_os_error());
    }
    format!("{} soft, {} hard", lim.rlim_cur, lim.rlim_max)
}

/// Runs a command to completion within `limit` (killed past it), stdout and
/// stderr captured.
pub(crate) fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let pid = child.id();
    // wait_with_output reads both pipes; a watchdog thread kills the child past the limit.
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(r) => {
            let _ = waiter.join();
            r.map_err(|e| format!("{cmd:?}: {e}"))
        }
        Err(_) => {
            // SAFETY: plain syscall on our own child, not yet reaped (the waiter still waits).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            let _ = waiter.join();
            Err(format!(
                "{cmd:?} did not finish within {} s",
                limit.as_secs()
            ))
        }
    }
}

/// The processes in a network namespace (`ip netns pids`).
pub(crate) fn netns_pids(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The processes whose parent is `pid`, with their command names (from /proc).
pub(crate) fn children(pid: u32) -> Vec<(u32, String)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            let (head, rest) = stat.rsplit_once(") ")?;
            let comm = head.split_once(" (")?.1;
            let ppid: u32 = rest.split(' ').nth(1)?.parse().ok()?;
            (ppid == pid).then(|| (child, comm.to_string()))
        })
        .collect()
}
