//! The two-node mirrorfs fixture: `node1` mounts (primary), `node2` serves
//! (secondary), each with its own key pair, over a two-node [`Lab`].
//!
//! Owns: one temp dir under /var/tmp (keys/, backing/, replica/, mnt/ and
//! whatever the test adds), the `serve` and `mount` processes it starts (a
//! mount may also run on node2, e.g. over the replica), and every mount
//! beneath its temp dir. `Drop` unmounts all of them (fusermount3 -u,
//! then umount -l), stops the processes, removes the namespaces and then the
//! temp dir, and never removes a dir that is still mounted (that would recurse
//! into the mount, or hang on a dead one).
//!
//! Every mount the fixture starts gets `--ack` of the fixture's [`Ack`]
//! (unless its arguments say otherwise): each-op, or on-sync for a test run
//! through [`with_ack`] (the [`on_sync_twins!`] of a module's tests).

use std::cell::Cell;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use tempfile::TempDir;

use super::lab::{Lab, Node, Proc};
use super::{is_fuse_mount, mirrorfs_bin, run_ok, tree, wait_for, Probe};

/// The UDP port `serve` listens on in node2 (each lab has its own network).
pub const PORT: u16 = 7411;
/// How long `serve` gets to listen and `mount` to appear.
pub const START_DEADLINE: Duration = Duration::from_secs(15);
/// How long the first sync of an empty tree may take.
pub const PRIM_DEADLINE: Duration = Duration::from_secs(30);
/// How long the primary may take to report ALONE once the secondary died
/// (the peer timeout, twice, plus slack for a loaded machine).
pub const ALONE_DEADLINE: Duration = Duration::from_secs(30);

/// When the fixture's mounts answer writes (`mirrorfs mount --ack`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// Every mutation once the secondary applied it (the default).
    EachOp,
    /// Syncs wait for everything before them; other ops once queued.
    OnSync,
}

impl Ack {
    /// The `--ack` value.
    pub fn name(self) -> &'static str {
        match self {
            Self::EachOp => "each-op",
            Self::OnSync => "on-sync",
        }
    }
}

thread_local! {
    /// The ack mode of fixtures prepared on this thread (each test runs on
    /// its own thread).
    static ACK: Cell<Ack> = const { Cell::new(Ack::EachOp) };
}

/// Runs the test `case` with every fixture it prepares mounting with `ack`.
pub fn with_ack<T>(ack: Ack, case: impl FnOnce() -> T) -> T {
    ACK.set(ack);
    let r = case();
    ACK.set(Ack::EachOp);
    r
}

/// For each test `NAME` of the module (each-op, the default), declares its
/// twin `on_sync::NAME`: the same case with `mirrorfs mount --ack on-sync`.
#[macro_export]
macro_rules! on_sync_twins {
    ($($name:ident),* $(,)?) => {
        /// The same cases with `mirrorfs mount --ack on-sync` (issue 10, item 7).
        mod on_sync {
            $(
                #[test]
                fn $name() -> anyhow::Result<()> {
                    $crate::util::mirror::with_ack(
                        $crate::util::mirror::Ack::OnSync,
                        super::$name,
                    )
                }
            )*
        }
    };
}

pub struct Mirror {
    // Drop order matters and is spelled out in `Drop` below.
    /// Each running `mount` with its mount point, in start order.
    mounts: Vec<(PathBuf, Proc)>,
    serve: Option<Proc>,
    pub lab: Lab,
    /// The primary: runs `mirrorfs mount`.
    pub node1: Node,
    /// The secondary: runs `mirrorfs serve`.
    pub node2: Node,
    bin: PathBuf,
    dir: Option<TempDir>,
    /// `--ack` of its mounts.
    ack: Ack,
}

/// The arguments of one `mirrorfs mount`, defaulting to node1's key pair,
/// node2's pinned certificate, backing/ on mnt/, and node2's `serve` address.
#[derive(Clone, Debug)]
pub struct MountArgs {
    /// Key pair to present: `keys/<key>.key` and `keys/<key>.crt`.
    pub key: String,
    /// Pinned certificate of the peer: `keys/<peer_cert>.crt`.
    pub peer_cert: String,
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    /// `ADDR:PORT` of the secondary.
    pub peer: String,
    /// Further options, e.g. `["--peer-timeout", "2"]`.
    pub extra: Vec<String>,
    /// Run the mount on node2 instead of node1 (e.g. the secondary's replica
    /// mounted `--alone`, to make both sides write apart); `key`, `peer_cert`
    /// and `peer` must then name node2's key and node1.
    pub on_node2: bool,
}

/// How [`Mirror::start_serve_with`] starts `serve` beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct ServeOpts {
    /// Its replica root (default: the fixture's replica/).
    pub root: Option<PathBuf>,
    /// A command that runs it, e.g. `["prlimit", "--nofile=1024:"]`.
    pub prefix: Vec<String>,
    /// Further options, e.g. `["--control", SOCK]`.
    pub extra: Vec<String>,
}

/// Waits until `mnt` is a FUSE mount served by the `mirrorfs mount` process
/// `mount`; fails at once if that process exits first.
pub fn wait_mounted(mount: &mut Proc, mnt: &Path) -> Result<()> {
    wait_for(
        START_DEADLINE,
        &format!("mirrorfs to mount {}", mnt.display()),
        || {
            match mount.try_status() {
                Ok(Some(st)) => {
                    return Probe::Fail(anyhow::anyhow!(
                        "mirrorfs mount exited ({st}): {}",
                        mount.stderr_tail()
                    ))
                }
                Ok(None) => {}
                Err(e) => return Probe::Fail(e),
            }
            match is_fuse_mount(mnt) {
                Ok(true) => Probe::Ready(()),
                Ok(false) => Probe::Pending(format!(
                    "{} not a FUSE mount yet; mount stderr: {}",
                    mnt.display(),
                    mount.stderr_tail()
                )),
                Err(e) => Probe::Fail(e),
            }
        },
    )
}

impl Mirror {
    /// The lab, keys for node1 and node2, and empty backing/, replica/ and mnt/;
    /// nothing running yet.
    pub fn prepare() -> Result<Self> {
        let bin = mirrorfs_bin()?;
        let lab = Lab::builder().node("node1").node("node2").build()?;
        let dir = tempfile::Builder::new()
            .prefix("mirrorfs-e2e.")
            .tempdir_in("/var/tmp") // not /tmp: it may be tmpfs without user.* xattrs
            .context("cannot create a temp dir under /var/tmp")?;
        for sub in ["keys", "backing", "replica", "mnt"] {
            std::fs::create_dir(dir.path().join(sub))?;
        }
        let m = Self {
            mounts: Vec::new(),
            serve: None,
            node1: lab.node("node1").clone(),
            node2: lab.node("node2").clone(),
            lab,
            bin,
            dir: Some(dir),
            ack: ACK.get(),
        };
        m.keygen("node1")?;
        m.keygen("node2")?;
        Ok(m)
    }

    /// [`Mirror::prepare`], then `serve` on node2 and `mount` on node1 with the
    /// default arguments plus `mount_extra`, and waits until the pair is in
    /// sync ([`Mirror::start_controlled`]). Until then the first resync runs,
    /// and the replica is not yet the primary's image: a path the walk visits
    /// after an op on it changes for a moment on the replica (a file the walk
    /// rewrites loses its capability until the walk's xattrs follow).
    pub fn start(mount_extra: &[&str]) -> Result<Self> {
        let mut m = Self::prepare()?;
        m.start_controlled(mount_extra)?;
        Ok(m)
    }

    /// Runs `mirrorfs keygen --dir keys --name <name>` and checks its two files.
    pub fn keygen(&self, name: &str) -> Result<()> {
        let keys = self.keys();
        run_ok(
            Command::new(&self.bin)
                .arg("keygen")
                .arg("--dir")
                .arg(&keys)
                .args(["--name", name]),
        )?;
        for ext in ["key", "crt"] {
            let f = keys.join(format!("{name}.{ext}"));
            if std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0) == 0 {
                bail!(
                    "mirrorfs keygen --name {name} did not write {}",
                    f.display()
                );
            }
        }
        Ok(())
    }

    /// Starts `mirrorfs serve` on node2 over replica/ and waits until node2 has
    /// a UDP socket on [`PORT`]. After [`Mirror::kill_serve`] this restarts the
    /// secondary with the same command on the same replica.
    pub fn start_serve(&mut self) -> Result<()> {
        self.start_serve_with(&ServeOpts::default())
    }

    /// [`Mirror::start_serve`] with another root, further options or run
    /// through a wrapper.
    pub fn start_serve_with(&mut self, opts: &ServeOpts) -> Result<()> {
        if self.serve.is_some() {
            bail!("serve is already running: kill it first");
        }
        let keys = self.keys();
        let mut argv: Vec<OsString> = opts.prefix.iter().map(OsString::from).collect();
        argv.extend([self.bin.clone().into(), "serve".into()]);
        argv.extend(flag(
            "--root",
            opts.root.clone().unwrap_or_else(|| self.replica()),
        ));
        argv.extend(flag("--listen", format!("{}:{PORT}", self.node2.ip)));
        argv.extend(flag("--key", keys.join("node2.key")));
        argv.extend(flag("--cert", keys.join("node2.crt")));
        argv.extend(flag("--peer-cert", keys.join("node1.crt")));
        argv.extend(opts.extra.iter().map(OsString::from));
        let mut serve = self.node2.spawn("serve", argv)?;
        wait_serve_listening(&self.node2, &mut serve)?;
        self.serve = Some(serve);
        Ok(())
    }

    /// The default `mount` arguments (see [`MountArgs`]).
    pub fn mount_args(&self) -> MountArgs {
        MountArgs {
            key: "node1".into(),
            peer_cert: "node2".into(),
            backing: self.backing(),
            mountpoint: self.mnt(),
            peer: format!("{}:{PORT}", self.node2.ip),
            extra: Vec::new(),
            on_node2: false,
        }
    }

    /// [`Mirror::mount_args`] for a mount on node2 of `backing` at
    /// `mountpoint`: node2's key pair, node1's pinned certificate, and node1's
    /// address as the peer (where normally nothing serves).
    pub fn node2_mount_args(&self, backing: PathBuf, mountpoint: PathBuf) -> MountArgs {
        MountArgs {
            key: "node2".into(),
            peer_cert: "node1".into(),
            backing,
            mountpoint,
            peer: format!("{}:{PORT}", self.node1.ip),
            extra: Vec::new(),
            on_node2: true,
        }
    }

    /// Starts `mirrorfs mount --foreground` on node1 (node2 if
    /// [`MountArgs::on_node2`]) and returns it without waiting: for tests that
    /// expect it to fail. Creates the mount point and
    /// backing dir if needed. Mounts it makes are still cleaned up by `Drop`.
    pub fn spawn_mount(&self, args: &MountArgs) -> Result<Proc> {
        std::fs::create_dir_all(&args.backing)?;
        std::fs::create_dir_all(&args.mountpoint)?;
        let keys = self.keys();
        let mut argv: Vec<OsString> = vec![self.bin.clone().into(), "mount".into()];
        argv.extend(flag("--backing", &args.backing));
        argv.extend(flag("--mountpoint", &args.mountpoint));
        argv.extend(flag("--peer", &args.peer));
        argv.extend(flag("--key", keys.join(format!("{}.key", args.key))));
        argv.extend(flag("--cert", keys.join(format!("{}.crt", args.key))));
        argv.extend(flag(
            "--peer-cert",
            keys.join(format!("{}.crt", args.peer_cert)),
        ));
        argv.push("--foreground".into());
        if !args.extra.iter().any(|a| a.starts_with("--ack")) {
            argv.extend(flag("--ack", self.ack.name()));
        }
        argv.extend(args.extra.iter().map(OsString::from));
        let node = if args.on_node2 {
            &self.node2
        } else {
            &self.node1
        };
        node.spawn("mount", argv)
    }

    /// Starts `mirrorfs mount` and waits until the mount point is a FUSE mount;
    /// the mount then lives until the fixture is dropped.
    pub fn start_mount(&mut self, args: &MountArgs) -> Result<()> {
        let mut mount = self.spawn_mount(args)?;
        let mnt = &args.mountpoint;
        wait_mounted(&mut mount, mnt)?;
        self.mounts.push((mnt.clone(), mount));
        Ok(())
    }

    /// Unmounts `mountpoint` cleanly, as an operator would (`fusermount3 -u`),
    /// and waits for its `mount` process to exit by itself; returns how it
    /// exited (the caller judges it).
    pub fn unmount(&mut self, mountpoint: &Path) -> Result<ExitStatus> {
        self.start_unmount(mountpoint)?.wait_exit(START_DEADLINE)
    }

    /// [`Mirror::unmount`] without the wait: `fusermount3 -u`, then the
    /// `mount` process, still running (the caller waits for it; dropping it
    /// stops it).
    pub fn start_unmount(&mut self, mountpoint: &Path) -> Result<Proc> {
        let i = self
            .mounts
            .iter()
            .position(|(p, _)| p == mountpoint)
            .with_context(|| format!("no mount of this fixture at {}", mountpoint.display()))?;
        run_ok(Command::new("fusermount3").arg("-u").arg(mountpoint))?;
        // Taken out first: if it does not exit, dropping it stops it.
        let (_, mount) = self.mounts.remove(i);
        Ok(mount)
    }

    /// SIGKILLs `serve`: the secondary vanishes without a goodbye.
    pub fn kill_serve(&mut self) -> Result<()> {
        let mut serve = self.serve.take().context("serve is not running")?;
        serve.kill_hard()?;
        Ok(())
    }

    /// SIGKILLs the `mount` of [`Mirror::start`] (the primary's mirrorfs
    /// crashes, as far as the applications and the secondary can tell), then
    /// lazily unmounts the dead mount point, which applications may still hold
    /// files open on: from now on their calls fail with ENOTCONN.
    pub fn kill_mount(&mut self) -> Result<()> {
        let (_, mount) = self.mounts.first_mut().context("mount is not running")?;
        mount.kill_hard()?;
        let mnt = self.mnt();
        if is_fuse_mount(&mnt)? {
            run_ok(Command::new("umount").arg("-l").arg(&mnt))?;
        }
        Ok(())
    }

    /// `mirrorfs verify a b` (in the test's own namespaces).
    pub fn verify(&self, a: &Path, b: &Path) -> Result<Output> {
        Command::new(&self.bin)
            .arg("verify")
            .arg(a)
            .arg(b)
            .output()
            .context("cannot run mirrorfs verify")
    }

    /// `mirrorfs status --control PATH`, with `--json` if asked, run as an
    /// operator would (root, the test's own namespaces); the caller judges
    /// the exit status.
    pub fn status_cmd(&self, control: &Path, json: bool) -> Result<Output> {
        status_cmd(&self.bin, control, json)
    }

    /// `mirrorfs status --control PATH --json`, parsed; fails if the command
    /// fails or does not print one JSON object.
    pub fn status_json(&self, control: &Path) -> Result<Value> {
        status_json(&self.bin, control)
    }

    /// Polls [`Mirror::status_json`] until `ready` accepts it and returns that
    /// status. Fails at once if a `mount` of the fixture has exited; on
    /// timeout the error shows the last status (or why there was none).
    pub fn wait_status(
        &mut self,
        control: &Path,
        deadline: Duration,
        what: &str,
        mut ready: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        let Self { mounts, bin, .. } = self;
        wait_for(deadline, what, || {
            for (point, mount) in mounts.iter_mut() {
                match mount.try_status() {
                    Ok(None) => {}
                    Ok(Some(st)) => {
                        return Probe::Fail(anyhow!(
                            "the mount at {} exited ({st}): {}",
                            point.display(),
                            mount.stderr_tail()
                        ))
                    }
                    Err(e) => return Probe::Fail(e),
                }
            }
            match status_json(bin, control) {
                Ok(v) if ready(&v) => Probe::Ready(v),
                Ok(v) => Probe::Pending(v.to_string()),
                Err(e) => Probe::Pending(format!("{e:#}")),
            }
        })
    }

    /// [`Mirror::start_serve`], then `mount` with `extra` and a control
    /// socket (`ctl.sock` in the fixture's dir); returns the socket's path
    /// once the mount reports [`in_sync`].
    pub fn start_controlled(&mut self, extra: &[&str]) -> Result<PathBuf> {
        self.start_serve()?;
        let control = self.path().join("ctl.sock");
        let mut args = self.mount_args();
        args.extra = extra.iter().map(|s| (*s).to_owned()).collect();
        args.extra.push("--control".into());
        args.extra.push(control.display().to_string());
        self.start_mount(&args)?;
        self.wait_status(&control, PRIM_DEADLINE, "the first sync to end", in_sync)?;
        Ok(control)
    }

    /// Waits until the mount at `control` reports ALONE; returns that status.
    pub fn wait_alone(&mut self, control: &Path) -> Result<Value> {
        self.wait_status(control, ALONE_DEADLINE, "role ALONE", |v| {
            role(v) == "ALONE"
        })
    }

    /// Waits for [`in_sync`]; returns that status and the largest
    /// `resync.bytes_sent` seen on the way (0 if no poll fell inside the resync).
    pub fn wait_in_sync(&mut self, control: &Path, deadline: Duration) -> Result<(Value, u64)> {
        let mut seen = 0;
        let v = self.wait_status(
            control,
            deadline,
            "PRIM, connected and no dirty files",
            |v| {
                seen = seen.max(v["resync"]["bytes_sent"].as_u64().unwrap_or(0));
                in_sync(v)
            },
        )?;
        Ok((v, seen))
    }

    /// `mirrorfs verify a b` exits 0, and the independent comparison
    /// ([`tree::diff`]) agrees.
    pub fn expect_identical(&self, a: &Path, b: &Path) -> Result<()> {
        let out = self.verify(a, b)?;
        ensure!(
            out.status.code() == Some(0),
            "mirrorfs verify {} {} exited {}:\n{}{}",
            a.display(),
            b.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let diffs = tree::diff(a, b)?;
        ensure!(
            diffs.is_empty(),
            "mirrorfs verify is clean but the trees differ ({} differences):\n{}",
            diffs.len(),
            diffs.join("\n")
        );
        Ok(())
    }

    /// The replica equals the backing dir (see [`Mirror::expect_identical`]).
    pub fn expect_replica_identical(&self) -> Result<()> {
        self.expect_identical(&self.backing(), &self.replica())
    }

    /// `--ack` of the fixture's mounts.
    pub fn ack(&self) -> Ack {
        self.ack
    }

    /// The `mirrorfs` binary under test.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The fixture's temp dir; tests may add their own entries under it.
    pub fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the temp dir is only taken in Drop")
            .path()
    }

    pub fn keys(&self) -> PathBuf {
        self.path().join("keys")
    }

    /// The primary's backing directory (what `mount` overlays).
    pub fn backing(&self) -> PathBuf {
        self.path().join("backing")
    }

    /// The secondary's replica root (what `serve` writes).
    pub fn replica(&self) -> PathBuf {
        self.path().join("replica")
    }

    /// The mount point applications write through.
    pub fn mnt(&self) -> PathBuf {
        self.path().join("mnt")
    }

    /// The `serve` process, if running (for its logs).
    pub fn serve(&self) -> Option<&Proc> {
        self.serve.as_ref()
    }

    /// The `mount` process started by [`Mirror::start_mount`] (the first one).
    pub fn mount(&self) -> Option<&Proc> {
        self.mounts.first().map(|(_, p)| p)
    }

    /// The running `mount` at `mountpoint` (for its logs).
    pub fn mount_at(&self, mountpoint: &Path) -> Option<&Proc> {
        self.mounts
            .iter()
            .find(|(p, _)| p == mountpoint)
            .map(|(_, m)| m)
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else {
            return;
        };
        // 1. Unmount first, so the daemons exit by themselves and nothing can
        //    reach the mounts any more.
        unmount_all_under(dir.path());
        // 2. Stop the daemons (SIGTERM, bounded wait, SIGKILL), mounts first.
        self.mounts.clear();
        self.serve = None;
        // 3. A mount still there (e.g. re-made by a daemon that ignored SIGTERM
        //    for a moment): try again now that the daemons are gone.
        unmount_all_under(dir.path());
        let left = mounts_under(dir.path());
        if left.is_empty() {
            if let Err(e) = dir.close() {
                eprintln!("mirror fixture: cannot remove its temp dir: {e}");
            }
        } else {
            let kept = dir.keep();
            eprintln!(
                "mirror fixture: {left:?} still mounted: kept {} rather than delete through it",
                kept.display()
            );
        }
        // 4. The lab (namespaces) goes when the fields drop.
    }
}

/// The role in a `mirrorfs status --json` object ("" if none).
pub fn role(v: &Value) -> &str {
    v["role"].as_str().unwrap_or_default()
}

/// Its last error ("" if none).
pub fn last_error(v: &Value) -> &str {
    v["last_error"].as_str().unwrap_or_default()
}

/// PRIM, connected, nothing dirty, no resync running.
pub fn in_sync(v: &Value) -> bool {
    role(v) == "PRIM" && v["connected"] == true && v["dirty_files"] == 0 && v["resync"].is_null()
}

fn status_cmd(bin: &Path, control: &Path, json: bool) -> Result<Output> {
    let mut c = Command::new(bin);
    c.arg("status").arg("--control").arg(control);
    if json {
        c.arg("--json");
    }
    c.output().context("cannot run mirrorfs status")
}

fn status_json(bin: &Path, control: &Path) -> Result<Value> {
    let out = status_cmd(bin, control, true)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "mirrorfs status --json exited {}: {} {}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_str(&stdout)
        .with_context(|| format!("mirrorfs status --json printed no JSON: {stdout:?}"))?;
    if !v.is_object() {
        bail!("mirrorfs status --json printed {v}, not an object");
    }
    Ok(v)
}

/// Waits until `node` has a UDP socket on [`PORT`], failing at once (with its
/// stderr) if the `serve` process exits first.
pub fn wait_serve_listening(node: &Node, serve: &mut Proc) -> Result<()> {
    let port = format!(":{PORT} ");
    wait_for(
        START_DEADLINE,
        &format!("mirrorfs serve on {} to listen", node.name),
        || {
            match serve.try_status() {
                Ok(Some(st)) => {
                    return Probe::Fail(anyhow::anyhow!(
                        "mirrorfs serve exited ({st}): {}",
                        serve.stderr_tail()
                    ))
                }
                Ok(None) => {}
                Err(e) => return Probe::Fail(e),
            }
            match node.run(["ss", "-lun"]) {
                Ok(out) => {
                    let sockets = String::from_utf8_lossy(&out.stdout).into_owned();
                    if sockets.contains(&port) {
                        Probe::Ready(())
                    } else {
                        Probe::Pending(format!("ss -lun on {}:\n{sockets}", node.name))
                    }
                }
                Err(e) => Probe::Fail(e),
            }
        },
    )
}

fn flag(name: &str, value: impl Into<OsString>) -> [OsString; 2] {
    [name.into(), value.into()]
}

/// Mount points at or beneath `dir`, deepest first, from /proc/self/mountinfo.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// `fusermount3 -u` every mount beneath `dir`, falling back to `umount -l`
/// (a busy or dead mount); reports what it could not unmount.
fn unmount_all_under(dir: &Path) {
    for point in mounts_under(dir) {
        let ok = |c: &mut Command| c.output().map(|o| o.status.success()).unwrap_or(false);
        if ok(Command::new("fusermount3").arg("-u").arg(&point))
            || ok(Command::new("umount").arg("-l").arg(&point))
        {
            continue;
        }
        eprintln!("mirror fixture: cannot unmount {}", point.display());
    }
}
