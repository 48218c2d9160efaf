//! The benchmark's own small lab: a scratch directory, two network namespaces
//! joined by a veth pair, node identities, `mirrorfs serve` on node 2, and FUSE
//! mounts (mirrorfs on node 1, bindfs) that can be restarted for cold-cache runs.
//! Each piece is a guard that undoes itself on drop, in reverse order of creation.

use std::ffi::OsString;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::sys::{self, Proc};

/// UDP port of `mirrorfs serve` inside node 2's namespace (private to it).
pub(crate) const SERVE_PORT: u16 = 7411;

/// A scratch directory under /var/tmp (the same file system as the local
/// baseline), removed on drop once nothing is mounted beneath it.
pub(crate) struct Scratch {
    pub(crate) path: PathBuf,
}

impl Scratch {
    pub(crate) fn create() -> Self {
        let path = PathBuf::from(format!("/var/tmp/mfbench-{}", std::process::id()));
        if path.exists() {
            panic!(
                "{} already exists: a previous run with this pid left it; remove it",
                path.display()
            );
        }
        fs::create_dir(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        // Apache's www-data must traverse it.
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
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for (mnt, _) in sys::mounts_under(&self.path) {
            eprintln!(
                "replication: {} still mounted at cleanup, unmounting",
                mnt.display()
            );
            sys::unmount(&mnt);
        }
        if !sys::mounts_under(&self.path).is_empty() {
            eprintln!(
                "replication: leaving {} in place: something is still mounted in it",
                self.path.display()
            );
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("replication: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Two network namespaces joined by a veth pair, named and addressed after our pid.
pub(crate) struct Netns {
    pub(crate) node1: String,
    pub(crate) node2: String,
    pub(crate) ip1: Ipv4Addr,
    pub(crate) ip2: Ipv4Addr,
    veth: String,
    created: Vec<String>,
}

impl Netns {
    /// Creates `mfb<pid>a` (address 10.x.y.z/30) and `mfb<pid>b` (the next one).
    pub(crate) fn create() -> Self {
        let pid = std::process::id();
        let tag = format!("mfb{pid}");
        // pid_max is at most 2^22: one /30 per pid fits 10.0.0.0/8 exactly.
        let base = u32::from(Ipv4Addr::new(10, 0, 0, 0)) | ((pid & 0x3f_ffff) << 2);
        let mut n = Self {
            node1: format!("{tag}a"),
            node2: format!("{tag}b"),
            ip1: Ipv4Addr::from(base + 1),
            ip2: Ipv4Addr::from(base + 2),
            veth: format!("{tag}x"),
            created: Vec::new(),
        };
        for ns in [n.node1.clone(), n.node2.clone()] {
            sys::run(Command::new("ip").args(["netns", "add", &ns]));
            n.created.push(ns);
        }
        let peer = format!("{tag}y");
        sys::run(Command::new("ip").args([
            "link", "add", &n.veth, "type", "veth", "peer", "name", &peer,
        ]));
        for (dev, ns, ip) in [(&n.veth, &n.node1, n.ip1), (&peer, &n.node2, n.ip2)] {
            sys::run(Command::new("ip").args(["link", "set", dev, "netns", ns]));
            sys::run(Command::new("ip").args([
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/30"),
                "dev",
                dev,
            ]));
            sys::run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
            sys::run(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]));
        }
        n
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with it the pair.
        for ns in self.created.drain(..).rev() {
            sys::run_quietly(Command::new("ip").args(["netns", "del", &ns]));
        }
        // If moving it into a namespace failed, the pair is still here.
        if Path::new("/sys/class/net").join(&self.veth).exists() {
            sys::run_quietly(Command::new("ip").args(["link", "del", &self.veth]));
        }
    }
}

/// How to start a FUSE daemon in the foreground (so we own its PID).
pub(crate) struct MountSpec {
    pub(crate) name: &'static str,
    pub(crate) netns: Option<String>,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) mountpoint: PathBuf,
    pub(crate) log: PathBuf,
}

/// A running FUSE mount: unmounted and its daemon stopped on drop.
pub(crate) struct FuseMount {
    spec: MountSpec,
    proc: Option<Proc>,
}

impl FuseMount {
    /// Starts the daemon and waits (up to 20 s) until the mount is there.
    pub(crate) fn start(spec: MountSpec) -> Self {
        let mut m = Self { spec, proc: None };
        m.spawn();
        m
    }

    pub(crate) fn mountpoint(&self) -> &Path {
        &self.spec.mountpoint
    }

    /// Unmounts and mounts again, so the kernel holds no cached entries,
    /// attributes or pages of this mount.
    pub(crate) fn remount(&mut self) {
        self.unmount();
        self.spawn();
    }

    fn spawn(&mut self) {
        let mut cmd = sys::command_in(self.spec.netns.as_deref(), &self.spec.program);
        cmd.args(&self.spec.args);
        let mut p = Proc::spawn(self.spec.name, &mut cmd, &self.spec.log);
        let end = Instant::now() + Duration::from_secs(20);
        while !sys::fuse_mounted(&self.spec.mountpoint) {
            if let Some(st) = p.exited() {
                panic!(
                    "{} exited ({st}) before mounting; its log ends:\n{}",
                    self.spec.name,
                    p.log_tail()
                );
            }
            if Instant::now() > end {
                panic!(
                    "{} did not mount {} within 20 s; its log ends:\n{}",
                    self.spec.name,
                    self.spec.mountpoint.display(),
                    p.log_tail()
                );
            }
            sys::nap(Duration::from_millis(20));
        }
        self.proc = Some(p);
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
                "replication: could not unmount {}",
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

/// Node identities made with `mirrorfs keygen`.
pub(crate) struct Keys {
    dir: PathBuf,
}

impl Keys {
    pub(crate) fn generate(mirrorfs: &Path, dir: PathBuf) -> Self {
        for name in ["node1", "node2"] {
            sys::run(
                Command::new(mirrorfs)
                    .arg("keygen")
                    .arg("--dir")
                    .arg(&dir)
                    .args(["--name", name]),
            );
        }
        Self { dir }
    }

    fn identity(&self, me: &str, peer: &str) -> Vec<OsString> {
        let f = |flag: &str, name: &str, ext: &str| {
            [
                OsString::from(flag),
                self.dir.join(format!("{name}.{ext}")).into_os_string(),
            ]
        };
        [
            f("--key", me, "key"),
            f("--cert", me, "crt"),
            f("--peer-cert", peer, "crt"),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// Starts `mirrorfs serve` on node 2 and waits until its UDP socket is bound.
pub(crate) fn start_serve(
    mirrorfs: &Path,
    net: &Netns,
    keys: &Keys,
    replica: &Path,
    log: &Path,
) -> Proc {
    let mut cmd = sys::command_in(Some(&net.node2), mirrorfs);
    cmd.arg("serve")
        .arg("--root")
        .arg(replica)
        .arg("--listen")
        .arg(format!("{}:{SERVE_PORT}", net.ip2))
        .args(keys.identity("node2", "node1"));
    let mut p = Proc::spawn("mirrorfs serve", &mut cmd, log);
    // nsenter execs the program, so /proc/PID/net/udp lists node 2's sockets.
    let udp = format!("/proc/{}/net/udp", p.pid());
    let port = format!(":{SERVE_PORT:04X} ");
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        p.check_alive();
        let bound = fs::read_to_string(&udp)
            .map(|t| {
                t.lines().skip(1).any(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .is_some_and(|a| format!("{a} ").ends_with(&port))
                })
            })
            .unwrap_or(false);
        if bound {
            return p;
        }
        if Instant::now() > end {
            panic!(
                "mirrorfs serve did not bind UDP {}:{SERVE_PORT} within 20 s; its log ends:\n{}",
                net.ip2,
                p.log_tail()
            );
        }
        sys::nap(Duration::from_millis(20));
    }
}

/// The `mirrorfs mount --foreground` of `backing` at `mountpoint`, on node 1.
pub(crate) fn mirrorfs_spec(
    mirrorfs: &Path,
    net: &Netns,
    keys: &Keys,
    backing: &Path,
    mountpoint: &Path,
    log: &Path,
) -> MountSpec {
    let mut args: Vec<OsString> = vec![
        "mount".into(),
        "--backing".into(),
        backing.into(),
        "--mountpoint".into(),
        mountpoint.into(),
        "--peer".into(),
        format!("{}:{SERVE_PORT}", net.ip2).into(),
    ];
    args.extend(keys.identity("node1", "node2"));
    args.push("--foreground".into());
    MountSpec {
        name: "mirrorfs mount",
        netns: Some(net.node1.clone()),
        program: mirrorfs.to_path_buf(),
        args,
        mountpoint: mountpoint.to_path_buf(),
        log: log.to_path_buf(),
    }
}

/// A plain `bindfs` of `source` at `mountpoint` (bindfs adds allow_other as root).
pub(crate) fn bindfs_spec(
    bindfs: &Path,
    source: &Path,
    mountpoint: &Path,
    log: &Path,
) -> MountSpec {
    MountSpec {
        name: "bindfs",
        netns: None,
        program: bindfs.to_path_buf(),
        args: vec!["-f".into(), source.into(), mountpoint.into()],
        mountpoint: mountpoint.to_path_buf(),
        log: log.to_path_buf(),
    }
}
