//! A benchmark's own small lab: a scratch directory, two network namespaces
//! joined by a veth pair, node identities, `mirrorfs serve` on node 2, and
//! FUSE mounts (mirrorfs on node 1, or any other FUSE daemon) that can be
//! restarted for cold-cache runs. Each piece is a guard that undoes itself on
//! drop (also while unwinding from a panic or a stop signal), in reverse order
//! of creation.

use std::ffi::OsString;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::name;
use super::sys::{self, Proc};

/// UDP port of `mirrorfs serve` inside node 2's namespace (private to it).
pub(crate) const SERVE_PORT: u16 = 7411;

/// A scratch directory `/var/tmp/<prefix>-<pid>` (the file system of the
/// local baselines), removed on drop once nothing is mounted beneath it.
pub(crate) struct Scratch {
    pub(crate) path: PathBuf,
}

impl Scratch {
    pub(crate) fn create(prefix: &str) -> Self {
        let path = PathBuf::from(format!("/var/tmp/{prefix}-{}", std::process::id()));
        if path.exists() {
            panic!(
                "{} already exists: a previous run with this pid left it; remove it",
                path.display()
            );
        }
        fs::create_dir(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        // A server running as another user (Apache's www-data) must traverse it.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        Self { path }
    }

    /// Creates (0755) and returns a subdirectory.
    pub(crate) fn dir(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
        p
    }

    /// The path of the log file `<name>.log` in it.
    pub(crate) fn log(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}.log"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for (mnt, _) in sys::mounts_under(&self.path) {
            eprintln!(
                "{}: {} still mounted at cleanup, unmounting",
                name(),
                mnt.display()
            );
            sys::unmount(&mnt);
        }
        if !sys::mounts_under(&self.path).is_empty() {
            eprintln!(
                "{}: leaving {} in place: something is still mounted in it",
                name(),
                self.path.display()
            );
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("{}: cannot remove {}: {e}", name(), self.path.display());
        }
    }
}

/// Two network namespaces joined by a veth pair, named and addressed after our pid.
pub(crate) struct Netns {
    pub(crate) node1: String,
    pub(crate) node2: String,
    pub(crate) ip1: Ipv4Addr,
    pub(crate) ip2: Ipv4Addr,
    /// Node 1's end of the pair.
    dev1: String,
    /// Node 2's end of the pair (its rx counter is what node 1 sent).
    dev2: String,
    created: Vec<String>,
}

impl Netns {
    /// Creates `<prefix><pid>a` (address 10.x.y.z/30) and `<prefix><pid>b`
    /// (the next one), joined by `<prefix><pid>x` and `<prefix><pid>y`.
    pub(crate) fn create(prefix: &str) -> Self {
        let pid = std::process::id();
        let tag = format!("{prefix}{pid}");
        // pid_max is at most 2^22: one /30 per pid fits 10.0.0.0/8 exactly.
        let base = u32::from(Ipv4Addr::new(10, 0, 0, 0)) | ((pid & 0x3f_ffff) << 2);
        let mut n = Self {
            node1: format!("{tag}a"),
            node2: format!("{tag}b"),
            ip1: Ipv4Addr::from(base + 1),
            ip2: Ipv4Addr::from(base + 2),
            dev1: format!("{tag}x"),
            dev2: format!("{tag}y"),
            created: Vec::new(),
        };
        for ns in [n.node1.clone(), n.node2.clone()] {
            sys::run(Command::new("ip").args(["netns", "add", &ns]));
            n.created.push(ns);
        }
        sys::run(Command::new("ip").args([
            "link", "add", &n.dev1, "type", "veth", "peer", "name", &n.dev2,
        ]));
        for (dev, ns, ip) in [(&n.dev1, &n.node1, n.ip1), (&n.dev2, &n.node2, n.ip2)] {
            sys::run(Command::new("ip").args(["link", "set", dev, "netns", ns]));
            let cidr = format!("{ip}/30");
            sys::run(Command::new("ip").args(["-n", ns, "addr", "add", &cidr, "dev", dev]));
            sys::run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
            sys::run(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]));
        }
        n
    }

    /// Bytes received so far by node 2's interface (everything node 1 sent it).
    pub(crate) fn node2_rx_bytes(&self) -> u64 {
        let out = sys::run(Command::new("ip").args([
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
        // Deleting a namespace deletes its end of the veth pair, and with it the pair.
        for ns in self.created.drain(..).rev() {
            sys::run_quietly(Command::new("ip").args(["netns", "del", &ns]));
        }
        // If moving it into a namespace failed, the pair is still here.
        if Path::new("/sys/class/net").join(&self.dev1).exists() {
            sys::run_quietly(Command::new("ip").args(["link", "del", &self.dev1]));
        }
    }
}

/// The `mirrorfs` binary with node identities made by `mirrorfs keygen`: it
/// starts `mirrorfs serve` on node 2 and describes `mirrorfs mount` on node 1.
pub(crate) struct Mirrorfs {
    pub(crate) bin: PathBuf,
    keys: PathBuf,
    node1: String,
    node2: String,
    /// Node 2's address (it serves on `SERVE_PORT`, or the port given).
    ip2: String,
}

impl Mirrorfs {
    /// Makes the identities of node1 and node2 in `keys`.
    pub(crate) fn new(bin: PathBuf, keys: PathBuf, net: &Netns) -> Self {
        for name in ["node1", "node2"] {
            sys::run(
                Command::new(&bin)
                    .arg("keygen")
                    .arg("--dir")
                    .arg(&keys)
                    .args(["--name", name]),
            );
        }
        Self {
            bin,
            keys,
            node1: net.node1.clone(),
            node2: net.node2.clone(),
            ip2: net.ip2.to_string(),
        }
    }

    /// Starts `mirrorfs serve` of `root` on node 2 (with a control socket
    /// beside its log, [`Mirrorfs::serve_control`]) and waits (up to 20 s)
    /// until its UDP socket is bound.
    pub(crate) fn serve(&self, root: &Path, log: &Path) -> Proc {
        self.serve_at(root, log, SERVE_PORT)
    }

    /// [`Mirrorfs::serve`] on UDP `port` (a second mirror beside the first).
    pub(crate) fn serve_at(&self, root: &Path, log: &Path, port: u16) -> Proc {
        let listen = format!("{}:{port}", self.ip2);
        let mut cmd = sys::command_in(Some(&self.node2), &self.bin);
        cmd.arg("serve")
            .arg("--root")
            .arg(root)
            .args(["--listen", &listen])
            .arg("--control")
            .arg(Self::serve_control(log))
            .args(self.identity("node2", "node1"));
        let mut p = Proc::spawn("mirrorfs serve", &mut cmd, log);
        // nsenter execs the program, so /proc/PID/net/udp lists node 2's sockets.
        let udp = format!("/proc/{}/net/udp", p.pid());
        let port = format!(":{port:04X}");
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            p.check_alive();
            let bound = fs::read_to_string(&udp)
                .map(|t| {
                    t.lines().skip(1).any(|l| {
                        l.split_whitespace()
                            .nth(1)
                            .is_some_and(|a| a.ends_with(&port))
                    })
                })
                .unwrap_or(false);
            if bound {
                return p;
            }
            if Instant::now() > end {
                panic!(
                    "mirrorfs serve did not bind UDP {listen} within 20 s; its log ends:\n{}",
                    p.log_tail()
                );
            }
            sys::nap(Duration::from_millis(10));
        }
    }

    /// `mirrorfs mount --foreground` of `backing` at `mountpoint` on node 1,
    /// replicating to node 2's serve (more arguments may follow).
    pub(crate) fn mount_spec(&self, backing: &Path, mountpoint: &Path, log: &Path) -> MountSpec {
        self.mount_spec_at(backing, mountpoint, log, SERVE_PORT)
    }

    /// [`Mirrorfs::mount_spec`] replicating to node 2's serve on `port`.
    pub(crate) fn mount_spec_at(
        &self,
        backing: &Path,
        mountpoint: &Path,
        log: &Path,
        port: u16,
    ) -> MountSpec {
        let mut args: Vec<OsString> = vec![
            "mount".into(),
            "--backing".into(),
            backing.into(),
            "--mountpoint".into(),
            mountpoint.into(),
            "--peer".into(),
            format!("{}:{port}", self.ip2).into(),
        ];
        args.extend(self.identity("node1", "node2"));
        args.push("--foreground".into());
        MountSpec {
            name: "mirrorfs mount",
            netns: Some(self.node1.clone()),
            program: self.bin.clone(),
            args,
            mountpoint: mountpoint.to_path_buf(),
            ready_file: None,
            log: log.to_path_buf(),
        }
    }

    /// The control socket of the serve started with `log`.
    pub(crate) fn serve_control(log: &Path) -> PathBuf {
        log.with_extension("ctl")
    }

    /// The bare QUIC round trip from node 1 to node 2 with `size`-byte
    /// messages and 16-byte answers (`mirrorfs rtt`, replication's TLS and
    /// transport settings, nothing else): its JSON figures (p50_us, p99_us,
    /// ...), or why it could not be measured.
    pub(crate) fn rtt(&self, sizes: &[usize], log: &Path) -> Result<Vec<Value>, String> {
        let addr = format!("{}:{}", self.ip2, SERVE_PORT + 100);
        let mut cmd = sys::command_in(Some(&self.node2), &self.bin);
        cmd.arg("rtt-serve")
            .args(["--listen", &addr])
            .args(self.identity("node2", "node1"));
        let _server = Proc::spawn("mirrorfs rtt-serve", &mut cmd, log);
        let mut out = Vec::new();
        for &size in sizes {
            let end = Instant::now() + Duration::from_secs(20);
            let figures = loop {
                let mut cmd = sys::command_in(Some(&self.node1), &self.bin);
                cmd.arg("rtt")
                    .args(["--peer", &addr])
                    .args(["--size", &size.to_string()])
                    .args(self.identity("node1", "node2"));
                let o = sys::output_within(&mut cmd, Duration::from_secs(60))?;
                if o.status.success() {
                    break serde_json::from_slice(&o.stdout)
                        .map_err(|e| format!("mirrorfs rtt printed no figures: {e}"))?;
                }
                // The server may not listen yet: it binds within moments.
                if Instant::now() > end {
                    return Err(format!(
                        "mirrorfs rtt failed: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ));
                }
                sys::nap(Duration::from_millis(100));
            };
            out.push(figures);
        }
        Ok(out)
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
}

/// How to start a FUSE daemon in the foreground (so we own its PID).
pub(crate) struct MountSpec {
    pub(crate) name: &'static str,
    pub(crate) netns: Option<String>,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) mountpoint: PathBuf,
    /// A file the daemon makes once it serves (a control socket): the mount
    /// counts as started only when it exists too.
    pub(crate) ready_file: Option<PathBuf>,
    pub(crate) log: PathBuf,
}

/// A running FUSE mount: unmounted and its daemon stopped on drop.
pub(crate) struct FuseMount {
    spec: MountSpec,
    proc: Option<Proc>,
}

impl FuseMount {
    /// Starts the daemon and waits (up to 30 s) until the mount is there.
    pub(crate) fn start(spec: MountSpec) -> Self {
        Self::try_start(spec).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`FuseMount::start`] for a target that may fail to mount without
    /// ending the run (a baseline becomes a note): why it did not mount, with
    /// nothing left mounted or running.
    pub(crate) fn try_start(spec: MountSpec) -> Result<Self, String> {
        let mut m = Self { spec, proc: None };
        m.spawn()?;
        Ok(m)
    }

    pub(crate) fn mountpoint(&self) -> &Path {
        &self.spec.mountpoint
    }

    /// Unmounts and mounts again, so the kernel holds no cached entries,
    /// attributes or pages of this mount.
    pub(crate) fn remount(&mut self) {
        self.unmount();
        self.spawn().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Unmounts with `fusermount3 -u` (panics if that fails) and waits up to
    /// `limit` for the daemon to exit by itself: its clean stop.
    pub(crate) fn unmount_cleanly(mut self, limit: Duration) {
        let Some(mut p) = self.proc.take() else {
            return;
        };
        sys::run(
            Command::new("fusermount3")
                .arg("-u")
                .arg(&self.spec.mountpoint),
        );
        if p.wait_exit(limit).is_none() {
            panic!(
                "{} did not exit within {} s of fusermount3 -u",
                self.spec.name,
                limit.as_secs()
            );
        }
    }

    /// Starts the daemon and waits until it has mounted; if it does not,
    /// unmounts whatever it left and stops it.
    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = sys::command_in(self.spec.netns.as_deref(), &self.spec.program);
        cmd.args(&self.spec.args);
        // Owned by the guard at once: a stop signal during the wait below
        // unwinds through our drop, which unmounts before stopping it.
        let p = self
            .proc
            .insert(Proc::spawn(self.spec.name, &mut cmd, &self.spec.log));
        let end = Instant::now() + Duration::from_secs(30);
        let ready = |s: &MountSpec| s.ready_file.as_deref().is_none_or(Path::exists);
        let failed = loop {
            if sys::fuse_mounted(&self.spec.mountpoint) && ready(&self.spec) {
                return Ok(());
            }
            if let Some(st) = p.exited() {
                break format!(
                    "{} exited ({st}) before mounting; its log ends:\n{}",
                    self.spec.name,
                    p.log_tail()
                );
            }
            if Instant::now() > end {
                break format!(
                    "{} did not mount {} within 30 s; its log ends:\n{}",
                    self.spec.name,
                    self.spec.mountpoint.display(),
                    p.log_tail()
                );
            }
            sys::nap(Duration::from_millis(10));
        };
        self.unmount();
        Err(failed)
    }

    /// How many descriptors the daemon has open, as text ("?" if unknown).
    pub(crate) fn fd_count(&self) -> String {
        self.proc
            .as_ref()
            .and_then(|p| fs::read_dir(format!("/proc/{}/fd", p.pid())).ok())
            .map_or_else(|| "?".into(), |d| d.count().to_string())
    }

    /// Panics with the daemon's log if it died.
    pub(crate) fn check_alive(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.check_alive();
        }
    }

    fn unmount(&mut self) {
        let Some(mut p) = self.proc.take() else {
            return;
        };
        if !sys::unmount(&self.spec.mountpoint) {
            eprintln!(
                "{}: could not unmount {}",
                name(),
                self.spec.mountpoint.display()
            );
        }
        // After the unmount the daemon leaves by itself; `stop` covers the rest.
        if p.wait_exit(Duration::from_secs(10)).is_none() {
            p.stop();
        }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        self.unmount();
    }
}
