//! The mirrorfs processes of one module on this node: one `mirrorfs mount`
//! (primary) or `mirrorfs serve` (secondary) per replicated directory,
//! started with `--outlive-parent` so that they survive a daemon restart and
//! are re-adopted through their control sockets; watched with the control
//! protocol's `watch`, whose statuses become the core's [`MirrorView`].
//!
//! Owns: the mirrorfs command lines, their control sockets and logs under
//! `STATE_DIR/modules/MODULE/`, starting and stopping them, cleaning a dead
//! FUSE mount left by a killed mount, and summing the per-directory statuses.
//! Must not: decide anything (the module core does), or touch the data.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use mirrorfs::ctl::client::Client;
use mirrorfs::ctl::{self, AckMode, Request, Role, RootState, Status};
use tracing::{debug, warn};

use crate::cluster::module::{MirrorView, MountsView, ResyncView, ServesView};
use crate::cluster::state::RootInfo;
use crate::config::{DirSpec, Module, NodeConfig, NodeSpec};

/// How long a mirrorfs may take to come up (mounted, or its control socket
/// answering).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a mirrorfs may take to stop after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// One replicated directory's mirrorfs, as this node runs it.
#[derive(Debug, Clone)]
pub struct DirProcess {
    /// Index of the directory in the module.
    pub index: usize,
    /// The directory (this node's paths).
    pub dir: DirSpec,
    /// The control socket.
    pub control: PathBuf,
    /// The log file.
    pub log: PathBuf,
    /// This node's replication address (`addrs[0]:mirrorfs_port+index`).
    pub listen: String,
    /// The peer's.
    pub peer: String,
}

/// Everything needed to run a module's mirrorfs processes on this node.
#[derive(Debug, Clone)]
pub struct MirrorSet {
    /// The mirrorfs binary.
    pub binary: PathBuf,
    /// This node's key and certificate.
    pub key: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// The peer's certificate.
    pub peer_cert: PathBuf,
    /// The mounts' `--peer-timeout` (the module's heartbeat timeout): a lost
    /// secondary holds the application's writes no longer than that before
    /// the controller's order.
    pub peer_timeout: Duration,
    /// The mounts' `--ack` (the module's `ack`).
    pub ack: AckMode,
    /// One per directory.
    pub dirs: Vec<DirProcess>,
}

/// What a watcher reports.
#[derive(Debug, Clone)]
pub enum MirrorEvent {
    /// A status of directory `index` (on connect and on every change).
    Status {
        /// The directory.
        index: usize,
        /// Its mirrorfs's status.
        status: Box<Status>,
    },
    /// Directory `index`'s mirrorfs stopped answering.
    Gone {
        /// The directory.
        index: usize,
        /// The pid of the process watched (None: never answered): a Gone
        /// that arrives after another process took its place is stale.
        pid: Option<u32>,
    },
}

impl MirrorSet {
    /// The processes of `module` for node `me` (whose settings are `node`).
    pub fn new(
        module: &Module,
        node: &NodeConfig,
        me: &NodeSpec,
        peer: &NodeSpec,
        dir: &Path,
    ) -> Self {
        let dirs = module
            .dirs_for(node)
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                let port = module.mirrorfs_port + i as u16;
                DirProcess {
                    index: i,
                    dir: d,
                    control: dir.join(format!("dir{}.sock", i + 1)),
                    log: dir.join(format!("mirrorfs-dir{}.log", i + 1)),
                    listen: sockaddr(me.addrs[0], port),
                    peer: sockaddr(peer.addrs[0], port),
                }
            })
            .collect();
        Self {
            binary: mirrorfs_binary(node),
            key: node.key.clone(),
            cert: node.cert.clone(),
            peer_cert: peer.cert.clone(),
            peer_timeout: module.timing.heartbeat_timeout,
            ack: module.ack,
            dirs,
        }
    }

    /// This node's identity flags for mirrorfs (`--key`, `--cert`,
    /// `--peer-cert`), the same for a serve and a mount.
    fn identity(&self) -> [&std::ffi::OsStr; 6] {
        [
            "--key".as_ref(),
            self.key.as_os_str(),
            "--cert".as_ref(),
            self.cert.as_os_str(),
            "--peer-cert".as_ref(),
            self.peer_cert.as_os_str(),
        ]
    }

    /// Asks every control socket for its status (None where nothing answers).
    pub fn probe(&self) -> Vec<Option<Status>> {
        self.dirs
            .iter()
            .map(|d| ctl::client::request(&d.control, &Request::Status).ok())
            .collect()
    }

    /// Starts a serve for every directory that has none (the replica dirs are
    /// created if missing); returns once every control socket answers.
    pub fn start_serves(&self) -> Result<(), String> {
        for d in &self.dirs {
            if matches!(ctl::client::request(&d.control, &Request::Status), Ok(s) if s.role == Role::Second)
            {
                continue;
            }
            clear_dead_mount(&d.dir.mount)?;
            create_dir(&d.dir.backing)?;
            let mut cmd = Command::new(&self.binary);
            cmd.arg("serve")
                .arg("--root")
                .arg(&d.dir.backing)
                .args(["--listen", &d.listen])
                .args(self.identity())
                .arg("--control")
                .arg(&d.control)
                .arg("--outlive-parent");
            spawn_detached(cmd, &d.log)?;
            wait_answer(&d.control, |s| s.role == Role::Second).map_err(|e| {
                format!(
                    "mirrorfs serve of {}: {e} (see {})",
                    d.dir.backing.display(),
                    d.log.display()
                )
            })?;
        }
        Ok(())
    }

    /// Mounts every directory (`--on-peer-loss=hold --alone`: writes wait
    /// for the peer's serve or a grant); returns once all are mounted.
    pub fn mount_all(&self) -> Result<(), String> {
        for d in &self.dirs {
            if matches!(ctl::client::request(&d.control, &Request::Status), Ok(s) if s.role != Role::Second)
            {
                continue;
            }
            clear_dead_mount(&d.dir.mount)?;
            create_dir(&d.dir.backing)?;
            create_dir(&d.dir.mount)?;
            let secs = format!("{:.3}", self.peer_timeout.as_secs_f64());
            let out = Command::new(&self.binary)
                .arg("mount")
                .arg("--backing")
                .arg(&d.dir.backing)
                .arg("--mountpoint")
                .arg(&d.dir.mount)
                .args(["--peer", &d.peer])
                .args(self.identity())
                .args(["--peer-timeout", &secs])
                .args(["--on-peer-loss", "hold", "--alone"])
                .args(["--ack", self.ack.name()])
                .arg("--control")
                .arg(&d.control)
                .arg("--log")
                .arg(&d.log)
                // Detached (no --foreground): it outlives this daemon, and
                // returns once mounted.
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "mirrorfs mount of {} failed ({}): {}",
                    d.dir.mount.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            wait_answer(&d.control, |s| s.role != Role::Second).map_err(|e| {
                format!(
                    "mirrorfs mount of {}: {e} (see {})",
                    d.dir.mount.display(),
                    d.log.display()
                )
            })?;
        }
        Ok(())
    }

    /// Stops every process of the given kind (mounts: unmounted by their
    /// clean shutdown), SIGKILL past [`STOP_TIMEOUT`]; a mount left behind by
    /// a killed process is detached.
    pub fn stop_all(&self, mounts: bool) -> Result<(), String> {
        let mut errors = Vec::new();
        for d in &self.dirs {
            if let Ok(s) = ctl::client::request(&d.control, &Request::Status) {
                let is_mount = s.role != Role::Second;
                if is_mount == mounts {
                    if let Err(e) = stop_pid(s.pid, &d.control) {
                        errors.push(e);
                    }
                }
            }
            if mounts {
                if let Err(e) = clear_dead_mount(&d.dir.mount) {
                    errors.push(e);
                }
                if is_mountpoint(&d.dir.mount) {
                    errors.push(format!("{} is still mounted", d.dir.mount.display()));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Reads every directory's generations and consistency from disk.
    pub fn read_roots(&self) -> Result<Vec<RootInfo>, String> {
        self.dirs
            .iter()
            .map(|d| {
                if !d.dir.backing.exists() {
                    return Ok(RootInfo {
                        history: Vec::new(),
                        consistent: true,
                    });
                }
                RootState::read(&d.dir.backing)
                    .map(|r| RootInfo {
                        history: r.history,
                        consistent: r.consistent,
                    })
                    .map_err(|e| {
                        format!("cannot read the state of {}: {e}", d.dir.backing.display())
                    })
            })
            .collect()
    }

    /// Gives up this node's own changes (`mirrorfs discard`) in every
    /// directory.
    pub fn discard_all(&self) -> Result<(), String> {
        for d in &self.dirs {
            if !d.dir.backing.exists() {
                continue;
            }
            let out = Command::new(&self.binary)
                .arg("discard")
                .arg("--root")
                .arg(&d.dir.backing)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "mirrorfs discard --root {}: {}",
                    d.dir.backing.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(())
    }

    /// Starts a watcher thread per directory: each connects to the control
    /// socket, sends `watch` and forwards every status; on a lost connection
    /// it reports [`MirrorEvent::Gone`] once and tries again every 200 ms.
    pub fn watch(&self, events: Sender<MirrorEvent>, stop: Arc<AtomicBool>) {
        for d in &self.dirs {
            let (index, path, events, stop) =
                (d.index, d.control.clone(), events.clone(), stop.clone());
            let name = format!("watch-dir{}", index + 1);
            let spawned = thread::Builder::new().name(name).spawn(move || {
                let mut gone_sent = false;
                while !stop.load(Ordering::Relaxed) {
                    let mut pid = None;
                    match watch_once(&path, index, &events, &stop, &mut pid) {
                        Ok(()) => {}
                        Err(e) => debug!(control = %path.display(), "watch: {e}"),
                    }
                    if !gone_sent || pid.is_some() {
                        gone_sent = true;
                        if events.send(MirrorEvent::Gone { index, pid }).is_err() {
                            return;
                        }
                    }
                    thread::sleep(Duration::from_millis(200));
                    // A status after a reconnect sends Gone again on the next loss.
                    if ctl::client::request(&path, &Request::Status).is_ok() {
                        gone_sent = false;
                    }
                }
            });
            if let Err(e) = spawned {
                warn!("cannot start a mirrorfs watcher: {e}");
            }
        }
    }
}

/// Sums the directories' statuses (None: not answering) into the core's view.
pub fn view(statuses: &[Option<Status>]) -> MirrorView {
    let n = statuses.len();
    let live: Vec<&Status> = statuses.iter().flatten().collect();
    let mounts: Vec<&&Status> = live.iter().filter(|s| s.role != Role::Second).collect();
    let serves: Vec<&&Status> = live.iter().filter(|s| s.role == Role::Second).collect();
    let root = |s: &Status| RootInfo {
        history: s.history.clone(),
        consistent: !s.inconsistent.unwrap_or(false),
    };
    let mut view = MirrorView::default();
    if !mounts.is_empty() {
        let resyncs: Vec<_> = mounts.iter().filter_map(|s| s.resync.as_ref()).collect();
        view.mounts = Some(MountsView {
            all_up: mounts.len() == n,
            connected: mounts.len() == n
                && mounts
                    .iter()
                    .all(|s| matches!(s.role, Role::Prim | Role::Resync)),
            in_sync: mounts.len() == n && mounts.iter().all(|s| s.in_sync),
            fenced: mounts.iter().any(|s| s.role == Role::Fenced),
            roots: mounts.iter().map(|s| root(s)).collect(),
            resync: (!resyncs.is_empty()).then(|| ResyncView {
                files_done: resyncs.iter().map(|r| r.files_done).sum(),
                files_left: resyncs.iter().map(|r| r.files_left).sum(),
                bytes_sent: resyncs.iter().map(|r| r.bytes_sent).sum(),
                eta_secs: resyncs
                    .iter()
                    .map(|r| r.eta_secs)
                    .try_fold(0.0f64, |m, e| e.map(|e| m.max(e))),
            }),
        });
    } else if !serves.is_empty() {
        view.serves = Some(ServesView {
            all_up: serves.len() == n,
            primary_connected: serves.len() == n
                && serves.iter().all(|s| s.primary_connected == Some(true)),
            roots: serves.iter().map(|s| root(s)).collect(),
        });
    }
    view
}

/// The mirrorfs binary: the node file's, else the one beside this
/// executable, else `mirrorfs` on the PATH.
pub fn mirrorfs_binary(node: &NodeConfig) -> PathBuf {
    if let Some(b) = &node.mirrorfs {
        return b.clone();
    }
    if let Some(beside) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|p| p.join("mirrorfs")))
        .filter(|p| p.exists())
    {
        return beside;
    }
    PathBuf::from("mirrorfs")
}

fn sockaddr(ip: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

/// Watches one control socket until it closes; `pid` is the process seen.
fn watch_once(
    path: &Path,
    index: usize,
    events: &Sender<MirrorEvent>,
    stop: &AtomicBool,
    pid: &mut Option<u32>,
) -> Result<(), String> {
    let mut client = Client::connect(path).map_err(|e| e.to_string())?;
    client.send(&Request::Watch).map_err(|e| e.to_string())?;
    while !stop.load(Ordering::Relaxed) {
        let (_, status) = client.answer().map_err(|e| e.to_string())?;
        *pid = Some(status.pid);
        if events
            .send(MirrorEvent::Status {
                index,
                status: Box::new(status),
            })
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

/// Starts `cmd` in its own session with its output appended to `log`; does
/// not wait for it (it outlives this daemon).
fn spawn_detached(mut cmd: Command, log: &Path) -> Result<(), String> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start mirrorfs: {e}"))?;
    // Reap it when it exits, without waiting for it here.
    let pid = child.id();
    thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || {
            let mut child = child;
            let _ = child.wait();
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    Ok(())
}

/// Waits until the control socket answers with a status that `ok` accepts.
fn wait_answer(control: &Path, ok: impl Fn(&Status) -> bool) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match ctl::client::request(control, &Request::Status) {
            Ok(s) if ok(&s) => return Ok(()),
            Ok(s) => last = format!("answers as {}", s.role),
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "not up after {} s: {last}",
        START_TIMEOUT.as_secs()
    ))
}

/// SIGTERM to `pid` (a mirrorfs whose control socket is `control`), then
/// SIGKILL past [`STOP_TIMEOUT`]; returns once its control socket is silent.
fn stop_pid(pid: u32, control: &Path) -> Result<(), String> {
    let Ok(pid) = i32::try_from(pid) else {
        return Err(format!(
            "mirrorfs at {} reports pid {pid}",
            control.display()
        ));
    };
    if pid <= 1 {
        return Err(format!(
            "mirrorfs at {} reports pid {pid}",
            control.display()
        ));
    }
    // SAFETY: kill has no memory effects; pid is a mirrorfs this module runs.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if !alive(pid) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    warn!(
        pid,
        "mirrorfs did not stop within {} s: SIGKILL",
        STOP_TIMEOUT.as_secs()
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !alive(pid) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "mirrorfs pid {pid} survives SIGKILL (stuck in the kernel?)"
    ))
}

/// Whether process `pid` exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether `path` is a mount point (per /proc/self/mountinfo).
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mountinfo(m) == want)
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Detaches a FUSE mount at `path` whose process is gone (stat fails with
/// ENOTCONN): what a SIGKILLed mount leaves.
fn clear_dead_mount(path: &Path) -> Result<(), String> {
    match fs::metadata(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            warn!(mount = %path.display(), "detaching a dead FUSE mount");
            let out = Command::new("umount")
                .arg("-l")
                .arg(path)
                .output()
                .map_err(|e| format!("cannot run umount: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "cannot detach the dead mount {}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Creates a missing directory (mode 0755: the application, e.g. Apache as
/// www-data, must reach it); an existing one is left as it is.
fn create_dir(path: &Path) -> Result<(), String> {
    if path.exists() {
        return Ok(());
    }
    fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))
}
