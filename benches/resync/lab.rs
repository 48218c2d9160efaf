//! The benchmark's small lab: signals, child processes owned by PID, two
//! network namespaces joined by a veth pair, a scratch directory, and the
//! `mirrorfs` command lines. Every piece is a guard that undoes itself on drop
//! (also while unwinding from a panic or a Ctrl-C), in reverse order of creation.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// UDP port of `mirrorfs serve`, TCP port of the baseline copy (node 2).
pub(crate) const SERVE_PORT: u16 = 7411;
pub(crate) const COPY_PORT: u16 = 7412;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// PIDs of live children: the watchdog kills them if cleanup after a signal stalls
/// (a syscall stuck on a FUSE mount whose daemon hangs).
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Panic payload of a run stopped by a signal.
pub(crate) struct Interrupted;

/// SIGINT, SIGTERM and SIGHUP only set a flag, which [`check_interrupt`]
/// turns into an unwind (so every guard runs); a watchdog kills our children
/// if that cleanup has not finished 15 s later.
pub(crate) fn install_signal_handlers() {
    extern "C" fn on_signal(_: libc::c_int) {
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
    thread::spawn(|| {
        while !INTERRUPTED.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!("\nresync: interrupted, cleaning up");
        thread::sleep(Duration::from_secs(15));
        for pid in CHILDREN.lock().map(|c| c.clone()).unwrap_or_default() {
            eprintln!("resync: cleanup is stuck, killing pid {pid}");
            // SAFETY: a PID we spawned and have not reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    });
}

/// Unwinds (running every guard) if a stop signal arrived.
pub(crate) fn check_interrupt() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        std::panic::resume_unwind(Box::new(Interrupted));
    }
}

/// Sleeps, unwinding on a stop signal.
pub(crate) fn nap(d: Duration) {
    let end = Instant::now() + d;
    loop {
        check_interrupt();
        let now = Instant::now();
        if now >= end {
            return;
        }
        thread::sleep((end - now).min(Duration::from_millis(10)));
    }
}

/// `program` in network namespace `ns` with `nsenter --net` (not `ip netns
/// exec`, whose private mount namespace would hide the FUSE mount from us).
pub(crate) fn command_in(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).arg(program);
    c
}

/// Runs a short command; panics with its output if it fails.
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

/// Runs a cleanup command; reports failure instead of panicking (guards run
/// while unwinding, where a second panic aborts).
pub(crate) fn run_quietly(cmd: &mut Command) -> bool {
    match cmd.stdin(Stdio::null()).output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "resync: cleanup {cmd:?} failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("resync: cleanup {cmd:?}: {e}");
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
    /// Spawns `cmd` in its own process group, stdout and stderr appended to `log`.
    pub(crate) fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Self {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let err = out.try_clone().expect("dup of the log descriptor");
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
            name: name.into(),
            child,
            log: log.to_path_buf(),
            reaped: None,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.reaped = Some(st);
                if let Ok(mut c) = CHILDREN.lock() {
                    c.retain(|&p| p != self.child.id());
                }
            }
        }
        self.reaped
    }

    /// Waits up to `d` for it to exit by itself.
    pub(crate) fn wait_exit(&mut self, d: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + d;
        while self.exited().is_none() && Instant::now() < end {
            thread::sleep(Duration::from_millis(10));
        }
        self.reaped
    }

    /// Panics with the end of its log if it has exited.
    pub(crate) fn check_alive(&mut self) {
        if let Some(st) = self.exited() {
            panic!(
                "{} exited ({st}); its log ends:\n{}",
                self.name,
                log_tail(&self.log, 12)
            );
        }
    }

    pub(crate) fn signal(&self, sig: libc::c_int) {
        if self.reaped.is_none() {
            // SAFETY: our own unreaped child's PID.
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        }
    }

    /// SIGTERM, up to 10 s, then SIGKILL. Never panics.
    pub(crate) fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        self.signal(libc::SIGTERM);
        if self.wait_exit(Duration::from_secs(10)).is_some() {
            return;
        }
        eprintln!("resync: {} ignored SIGTERM for 10 s, killing it", self.name);
        self.signal(libc::SIGKILL);
        if let Ok(st) = self.child.wait() {
            self.reaped = Some(st);
        }
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

/// The last `n` lines of a log file (of its last 16 KiB).
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Mount points at or below `path`, deepest first.
pub(crate) fn mounts_under(path: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|p| p.starts_with(path))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

/// Unmounts `path` (`fusermount3 -u`, else `umount -l`); never panics.
pub(crate) fn unmount(path: &Path) -> bool {
    if !mounts_under(path).iter().any(|p| p == path) {
        return true;
    }
    run_quietly(Command::new("fusermount3").arg("-u").arg(path))
        || run_quietly(Command::new("umount").arg("-l").arg(path))
}

/// A scratch directory under /var/tmp, removed on drop once nothing is mounted in it.
pub(crate) struct Scratch {
    pub(crate) path: PathBuf,
}

impl Scratch {
    pub(crate) fn create() -> Self {
        let path = PathBuf::from(format!("/var/tmp/mfresync-{}", std::process::id()));
        if path.exists() {
            panic!(
                "{} exists (left by an earlier run?): remove it",
                path.display()
            );
        }
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    pub(crate) fn dir(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for m in mounts_under(&self.path) {
            eprintln!(
                "resync: {} still mounted at cleanup, unmounting",
                m.display()
            );
            unmount(&m);
        }
        if !mounts_under(&self.path).is_empty() {
            eprintln!("resync: leaving {}: still mounted", self.path.display());
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("resync: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Two network namespaces `mfr<pid>a`/`b` joined by a veth pair with a /30
/// of 10.0.0.0/8 derived from our pid.
pub(crate) struct Netns {
    pub(crate) node1: String,
    pub(crate) node2: String,
    pub(crate) ip2: Ipv4Addr,
    /// node 2's end of the pair (its rx counter is what node 1 sent).
    pub(crate) dev2: String,
    dev1: String,
    created: Vec<String>,
}

impl Netns {
    pub(crate) fn create() -> Self {
        let pid = std::process::id();
        let tag = format!("mfr{pid}");
        let base = u32::from(Ipv4Addr::new(10, 0, 0, 0)) | ((pid & 0x3f_ffff) << 2);
        let (ip1, ip2) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let mut n = Self {
            node1: format!("{tag}a"),
            node2: format!("{tag}b"),
            ip2,
            dev1: format!("{tag}x"),
            dev2: format!("{tag}y"),
            created: Vec::new(),
        };
        for ns in [n.node1.clone(), n.node2.clone()] {
            run(Command::new("ip").args(["netns", "add", &ns]));
            n.created.push(ns);
        }
        run(Command::new("ip").args([
            "link", "add", &n.dev1, "type", "veth", "peer", "name", &n.dev2,
        ]));
        for (dev, ns, ip) in [(&n.dev1, &n.node1, ip1), (&n.dev2, &n.node2, ip2)] {
            run(Command::new("ip").args(["link", "set", dev, "netns", ns]));
            let cidr = format!("{ip}/30");
            run(Command::new("ip").args(["-n", ns, "addr", "add", &cidr, "dev", dev]));
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
            run(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]));
        }
        n
    }

    /// Bytes received so far by node 2's interface (everything node 1 sent it).
    pub(crate) fn node2_rx_bytes(&self) -> u64 {
        let out = run(Command::new("ip").args([
            "-n",
            &self.node2,
            "-s",
            "-j",
            "link",
            "show",
            "dev",
            &self.dev2,
        ]));
        let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j link: JSON");
        let link = &v[0];
        link["stats64"]["rx"]["bytes"]
            .as_u64()
            .or_else(|| link["stats"]["rx"]["bytes"].as_u64())
            .unwrap_or_else(|| panic!("no rx byte counter in `ip -s -j link`: {v}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the pair, and so the pair.
        for ns in self.created.drain(..).rev() {
            run_quietly(Command::new("ip").args(["netns", "del", &ns]));
        }
        if Path::new("/sys/class/net").join(&self.dev1).exists() {
            run_quietly(Command::new("ip").args(["link", "del", &self.dev1]));
        }
    }
}

/// Runs `f` on a new thread that joined network namespace `ns` (only that thread).
pub(crate) fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let nsfd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on an open namespace descriptor; this thread only.
        if unsafe { libc::setns(nsfd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            panic!("setns {path}: {}", io::Error::last_os_error());
        }
        f()
    })
}

/// sync(2): writes every dirty page.
pub(crate) fn sync() {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::sync() };
}

/// Writes dirty pages, then drops the page, dentry and inode caches.
pub(crate) fn drop_caches() {
    sync();
    fs::write("/proc/sys/vm/drop_caches", "3\n").expect("write /proc/sys/vm/drop_caches");
}

/// Writes dirty pages and idles a second, so earlier writeback is not billed
/// to the next measurement.
pub(crate) fn settle() {
    sync();
    nap(Duration::from_secs(1));
}

/// Node identities made with `mirrorfs keygen`, and the mirrorfs command lines.
pub(crate) struct Mirrorfs {
    pub(crate) bin: PathBuf,
    pub(crate) keys: PathBuf,
    pub(crate) node1: String,
    pub(crate) node2: String,
    pub(crate) peer: String,
}

impl Mirrorfs {
    pub(crate) fn new(bin: PathBuf, keys: PathBuf, net: &Netns) -> Self {
        for name in ["node1", "node2"] {
            run(Command::new(&bin)
                .arg("keygen")
                .arg("--dir")
                .arg(&keys)
                .args(["--name", name]));
        }
        Self {
            bin,
            keys,
            node1: net.node1.clone(),
            node2: net.node2.clone(),
            peer: format!("{}:{SERVE_PORT}", net.ip2),
        }
    }

    fn identity(&self, me: &str, peer: &str) -> Vec<OsString> {
        let k = |n: &str, ext: &str| self.keys.join(format!("{n}.{ext}")).into_os_string();
        vec![
            "--key".into(),
            k(me, "key"),
            "--cert".into(),
            k(me, "crt"),
            "--peer-cert".into(),
            k(peer, "crt"),
        ]
    }

    /// Starts `mirrorfs serve` on node 2 and waits until its UDP port is bound.
    pub(crate) fn serve(&self, root: &Path, log: &Path) -> Proc {
        let mut cmd = command_in(&self.node2, &self.bin);
        cmd.arg("serve")
            .arg("--root")
            .arg(root)
            .args(["--listen", &self.peer])
            .args(self.identity("node2", "node1"));
        let mut p = Proc::spawn("mirrorfs serve", &mut cmd, log);
        // nsenter execs mirrorfs: /proc/PID/net/udp is node 2's table.
        let port = format!(":{SERVE_PORT:04X}");
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            p.check_alive();
            let udp = fs::read_to_string(format!("/proc/{}/net/udp", p.pid())).unwrap_or_default();
            if udp.lines().skip(1).any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| a.ends_with(&port))
            }) {
                return p;
            }
            if Instant::now() > end {
                panic!(
                    "mirrorfs serve did not bind {} within 20 s:\n{}",
                    self.peer,
                    log_tail(log, 12)
                );
            }
            nap(Duration::from_millis(10));
        }
    }

    /// Starts `mirrorfs mount --foreground` on node 1 and waits until mounted.
    pub(crate) fn mount(
        &self,
        backing: &Path,
        mnt: &Path,
        control: &Path,
        extra: &[&str],
        log: &Path,
    ) -> Proc {
        let mut cmd = command_in(&self.node1, &self.bin);
        cmd.arg("mount")
            .arg("--backing")
            .arg(backing)
            .arg("--mountpoint")
            .arg(mnt)
            .args(["--peer", &self.peer])
            .args(self.identity("node1", "node2"))
            .args([
                "--foreground",
                "--on-peer-loss=alone",
                "--peer-timeout",
                "2",
            ])
            .arg("--control")
            .arg(control)
            .args(extra);
        let mut p = Proc::spawn("mirrorfs mount", &mut cmd, log);
        let end = Instant::now() + Duration::from_secs(30);
        while !mounts_under(mnt).iter().any(|m| m == mnt) || !control.exists() {
            p.check_alive();
            if Instant::now() > end {
                panic!(
                    "mirrorfs mount did not mount {} within 30 s:\n{}",
                    mnt.display(),
                    log_tail(log, 12)
                );
            }
            nap(Duration::from_millis(10));
        }
        p
    }
}

/// What `mirrorfs status --control SOCK --json` prints: the control socket's
/// one-line answer to `status`, asked here directly (no process per poll).
pub(crate) fn status(control: &Path) -> io::Result<Value> {
    let mut s = UnixStream::connect(control)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(s, "status")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(io::Error::other)
}

/// Polls the status every 25 ms until `done` holds; returns that status and
/// when it was seen. Panics after `limit` with the last status.
pub(crate) fn wait_status(
    control: &Path,
    mount: &mut Proc,
    what: &str,
    limit: Duration,
    mut each: impl FnMut(&Value),
    done: impl Fn(&Value) -> bool,
) -> (Value, Instant) {
    let end = Instant::now() + limit;
    let mut last = Value::Null;
    loop {
        mount.check_alive();
        if let Ok(v) = status(control) {
            let now = Instant::now();
            each(&v);
            if done(&v) {
                return (v, now);
            }
            last = v;
        }
        if Instant::now() > end {
            panic!("{what}: not reached within {limit:?}; last status: {last}");
        }
        nap(Duration::from_millis(25));
    }
}

pub(crate) fn role(v: &Value) -> &str {
    v["role"].as_str().unwrap_or("")
}

/// `mirrorfs status` shows PRIM and nothing dirty: in sync.
pub(crate) fn in_sync(v: &Value) -> bool {
    role(v) == "PRIM" && v["dirty_files"].as_u64() == Some(0)
}
