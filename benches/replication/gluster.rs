//! The GlusterFS baseline: a replica 2 volume with a brick on each node,
//! made as an operator would make it (`gluster volume create VOL replica 2
//! ...`, default options), mounted on node 1 by GlusterFS's FUSE client.
//! GlusterFS replicates in the client: a write goes to the brick on node 1
//! and, over the veth, to the one on node 2.
//!
//! Each node runs its own `glusterd`, in the node's network namespace and in
//! private mount and PID namespaces (`unshare`). Inside the mount namespace,
//! scratch directories are bound over /var/lib/glusterd (peers, volumes, the
//! node's UUID), /run (glusterd.socket; the bricks' pid files and sockets in
//! /run/gluster) and /var/log/glusterfs, so the two daemons share none of
//! them and the machine's own stay untouched. The package's hook scripts in
//! /var/lib/glusterd/hooks (Samba, CTDB and NFS-Ganesha set-up when a volume
//! starts) are hidden with it and do not run; they are not on the data path.
//! glusterd is its PID namespace's init: the brick (glusterfsd) and
//! self-heal daemons it starts, which daemonize, die with it, and its /proc
//! (`--mount-proc`) is the namespace's, where glusterd finds its bricks by
//! their pids.
//!
//! Cleanup is the guards': [`Glusterd`] SIGKILLs glusterd, by PID while it
//! is the child of our `unshare` (or else `unshare` itself, whose
//! `--kill-child` kills glusterd); the end of the namespace's init makes the
//! kernel kill everything else in it, and `unshare` reaps it, then exits. The
//! namespaces and their bind mounts go with their last process. The client
//! (`glusterfs -N`, a [`FuseMount`](crate::common::lab::FuseMount) the bench
//! owns) runs in node 1's network namespace only, so that its mount is in
//! ours, and is unmounted before the servers stop (the subject drops its
//! mount first).

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::lab::{MountSpec, Netns};
use crate::common::sys::{self, Proc};

/// The volume's name.
const VOLUME: &str = "bench";

/// How long each setup step (a glusterd answering, the peers connecting, the
/// bricks coming online) may take.
const SETUP_LIMIT: Duration = Duration::from_secs(60);

/// How long one `gluster` command may take.
const CLI_LIMIT: Duration = Duration::from_secs(120);

/// The GlusterFS programs, when all are installed.
pub(crate) struct Tools {
    glusterd: PathBuf,
    gluster: PathBuf,
    glusterfs: PathBuf,
}

impl Tools {
    pub(crate) fn find() -> Result<Self, String> {
        let names = ["glusterd", "gluster", "glusterfs"];
        match names.map(sys::which) {
            [Some(glusterd), Some(gluster), Some(glusterfs)] => Ok(Self {
                glusterd,
                gluster,
                glusterfs,
            }),
            found => {
                let missing: Vec<&str> = names
                    .iter()
                    .zip(&found)
                    .filter(|(_, p)| p.is_none())
                    .map(|(n, _)| *n)
                    .collect();
                Err(format!(
                    "not installed (no {}; scripts/setup.sh installs glusterfs-server)",
                    missing.join(", ")
                ))
            }
        }
    }

    /// `glusterfs --version`'s first line ("glusterfs 10.3").
    pub(crate) fn version(&self) -> String {
        Command::new(&self.glusterfs)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                let out = String::from_utf8_lossy(&o.stdout);
                out.lines().next().map(str::to_string)
            })
            .unwrap_or_else(|| "glusterfs (version unknown)".into())
    }
}

/// The two glusterds, their peering and the started replica 2 volume.
pub(crate) struct Cluster {
    nodes: Vec<Glusterd>,
    /// The bricks, on node 1 and node 2: what a write must reach.
    bricks: [PathBuf; 2],
    /// Node 1, where the client runs and fetches the volume's description.
    node1: String,
    ip1: String,
    glusterfs: PathBuf,
    dir: PathBuf,
}

impl Cluster {
    /// Starts a glusterd on each node (state in `dir`), probes node 2 from
    /// node 1, creates the volume and starts it; returns once both bricks
    /// are online. An error says which step failed and what was last seen;
    /// whatever had started is stopped.
    pub(crate) fn start(tools: &Tools, net: &Netns, dir: &Path) -> Result<Self, String> {
        let bricks = ["brick1", "brick2"].map(|b| dir.join(b));
        for b in &bricks {
            fs::create_dir_all(b).map_err(|e| format!("mkdir {}: {e}", b.display()))?;
        }
        let mut c = Self {
            nodes: Vec::new(),
            bricks,
            node1: net.node1.clone(),
            ip1: net.ip1.to_string(),
            glusterfs: tools.glusterfs.clone(),
            dir: dir.to_path_buf(),
        };
        for (ns, name) in [(&net.node1, "node1"), (&net.node2, "node2")] {
            let g = Glusterd::start(tools, ns, &dir.join(name))?;
            c.nodes.push(g);
        }
        c.nodes[0].cli(&["peer", "probe", &net.ip2.to_string()])?;
        c.wait(
            "the peers in each other's pool, connected",
            Self::peers_connected,
        )?;
        // `force`: the bricks are on the root file system, which glusterd
        // refuses without it. Replica 2 asks for a confirmation (split-brain
        // risk), which --mode=script gives.
        let specs = [(net.ip1, &c.bricks[0]), (net.ip2, &c.bricks[1])]
            .map(|(ip, b)| format!("{ip}:{}", b.display()));
        let create = ["volume", "create", VOLUME, "replica", "2"];
        let args: Vec<&str> = create
            .iter()
            .copied()
            .chain(specs.iter().map(String::as_str))
            .chain(["force"])
            .collect();
        c.nodes[0].cli(&args)?;
        c.nodes[0].cli(&["volume", "start", VOLUME])?;
        c.wait(
            "the volume started and both bricks online",
            Self::bricks_online,
        )?;
        Ok(c)
    }

    /// The FUSE client on node 1, in the foreground (`-N`) so that we own
    /// its PID, with the options `mount -t glusterfs` gives it; its log in
    /// our directory, not the machine's /var/log/glusterfs.
    pub(crate) fn mount_spec(&self, mountpoint: &Path, log: &Path) -> MountSpec {
        let mut args: Vec<OsString> = vec![
            "--process-name".into(),
            "fuse".into(),
            format!("--volfile-server={}", self.ip1).into(),
            format!("--volfile-id={VOLUME}").into(),
            "-N".into(),
        ];
        let mut log_file = OsString::from("--log-file=");
        log_file.push(self.dir.join("client.log"));
        args.push(log_file);
        args.push(mountpoint.into());
        MountSpec {
            name: "glusterfs",
            netns: Some(self.node1.clone()),
            program: self.glusterfs.clone(),
            args,
            mountpoint: mountpoint.to_path_buf(),
            ready_file: None,
            log: log.to_path_buf(),
        }
    }

    /// The brick directories, node 1's first.
    pub(crate) fn bricks(&self) -> &[PathBuf] {
        &self.bricks
    }

    /// Panics with its log if a glusterd died.
    pub(crate) fn check_alive(&mut self) {
        for g in &mut self.nodes {
            if let Err(e) = g.alive() {
                panic!("{e}");
            }
        }
    }

    /// After the run: what `gluster volume heal VOL info` says is left to
    /// heal on each brick (a write that reached one brick only), as a note.
    pub(crate) fn heal_info(&self) -> String {
        match self.nodes[0].cli(&["volume", "heal", VOLUME, "info"]) {
            Ok(out) => {
                let lines: Vec<&str> = out
                    .lines()
                    .map(str::trim)
                    .filter(|l| l.starts_with("Brick ") || l.starts_with("Number of entries"))
                    .collect();
                format!(
                    "after the run, `gluster volume heal {VOLUME} info`: {}",
                    lines.join("; ")
                )
            }
            Err(e) => format!("after the run, no heal info: {e}"),
        }
    }

    /// Polls `probe` (every 100 ms, up to [`SETUP_LIMIT`]) until it is met;
    /// its error is what it saw. Fails at once if a glusterd died.
    fn wait(&mut self, what: &str, probe: fn(&Self) -> Result<(), String>) -> Result<(), String> {
        let end = Instant::now() + SETUP_LIMIT;
        loop {
            for g in &mut self.nodes {
                g.alive()?;
            }
            let last = match probe(self) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() > end {
                return Err(format!(
                    "{what}: not within {} s; last seen: {last}",
                    SETUP_LIMIT.as_secs()
                ));
            }
            sys::nap(Duration::from_millis(100));
        }
    }

    /// Each glusterd has the other in its pool, in the cluster and connected.
    fn peers_connected(&self) -> Result<(), String> {
        let mut seen = Vec::new();
        for (i, g) in self.nodes.iter().enumerate() {
            let xml = g.cli(&["peer", "status", "--xml"])?;
            let states = tags(&xml, "stateStr");
            let connected = tags(&xml, "connected");
            if states == ["Peer in Cluster"] && connected == ["1"] {
                continue;
            }
            seen.push(format!(
                "node {}: peers {states:?}, connected {connected:?}",
                i + 1
            ));
        }
        if seen.is_empty() {
            Ok(())
        } else {
            Err(seen.join("; "))
        }
    }

    /// `volume status` lists both bricks as online (it fails while the
    /// volume is not started).
    fn bricks_online(&self) -> Result<(), String> {
        let xml = self.nodes[0].cli(&["volume", "status", VOLUME, "--xml"])?;
        // One <node> per brick and per daemon; a brick's path is its directory.
        let bricks: Vec<(String, String)> = xml
            .split("<node>")
            .skip(1)
            .filter_map(|n| {
                let path = tags(n, "path").first()?.to_string();
                let status = tags(n, "status").first()?.to_string();
                path.starts_with('/').then_some((path, status))
            })
            .collect();
        if bricks.len() == 2 && bricks.iter().all(|(_, s)| s == "1") {
            return Ok(());
        }
        Err(format!("bricks and their status: {bricks:?}"))
    }
}

/// One glusterd, in a node's network namespace and its own mount and PID
/// namespaces; killed with everything it started on drop.
struct Glusterd {
    /// `unshare` (nsenter execs it), glusterd's parent.
    proc: Proc,
    /// glusterd's PID in our PID namespace, once it runs.
    pid: Option<u32>,
    gluster: PathBuf,
    /// Its /var/log/glusterfs.
    logs: PathBuf,
}

impl Glusterd {
    /// What runs as the PID namespace's init: the bind mounts, then glusterd
    /// in the foreground (`-N`). Arguments: the directories to bind over
    /// /var/lib/glusterd, /run and /var/log/glusterfs, and glusterd. `-n`:
    /// mount(8) would otherwise create the machine's /run/mount for its
    /// records of mounts that die with the namespace anyway.
    const INIT: &'static str = "mount -n --bind \"$1\" /var/lib/glusterd \
        && mount -n --bind \"$2\" /run \
        && mount -n --bind \"$3\" /var/log/glusterfs \
        && exec \"$4\" -N";

    /// Starts glusterd in `ns` with its state in `dir`; returns once it
    /// answers the CLI.
    fn start(tools: &Tools, ns: &str, dir: &Path) -> Result<Self, String> {
        let [lib, run, logs] = ["lib", "run", "log"].map(|d| dir.join(d));
        for d in [&lib, &run, &logs] {
            fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        let mut cmd = sys::command_in(Some(ns), "unshare");
        cmd.args(["--mount", "--propagation", "private"])
            .args(["--pid", "--fork", "--kill-child", "--mount-proc"])
            .args(["sh", "-c", Self::INIT, "sh"])
            .args([&lib, &run, &logs, &tools.glusterd]);
        let mut g = Self {
            proc: Proc::spawn("glusterd", &mut cmd, &dir.join("glusterd.out")),
            pid: None,
            gluster: tools.gluster.clone(),
            logs,
        };
        // Its PID, once the shell has made the bind mounts and exec'd it:
        // the CLI must not enter the namespace before.
        let end = Instant::now() + SETUP_LIMIT;
        while g.pid.is_none() {
            g.alive()?;
            g.pid = sys::children(g.proc.pid())
                .into_iter()
                .find_map(|(pid, comm)| (comm == "glusterd").then_some(pid));
            if g.pid.is_none() && Instant::now() > end {
                return Err(format!(
                    "glusterd in {ns} did not start within {} s",
                    SETUP_LIMIT.as_secs()
                ));
            }
            sys::nap(Duration::from_millis(10));
        }
        let end = Instant::now() + SETUP_LIMIT;
        loop {
            g.alive()?;
            match g.cli(&["peer", "status"]) {
                Ok(_) => return Ok(g),
                Err(e) if Instant::now() > end => {
                    return Err(format!(
                        "glusterd in {ns} did not answer within {} s: {e}",
                        SETUP_LIMIT.as_secs()
                    ))
                }
                Err(_) => sys::nap(Duration::from_millis(50)),
            }
        }
    }

    /// Runs `gluster --mode=script ARGS` in glusterd's namespaces; its output.
    /// The PID namespace too: its /proc has no entry for a process from
    /// outside, and the CLI crashes without /proc/self.
    fn cli(&self, args: &[&str]) -> Result<String, String> {
        let pid = self.pid.ok_or("glusterd is not running")?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={pid}"))
            .args(["--net", "--mount", "--pid"])
            .arg(&self.gluster)
            .arg("--mode=script")
            .args(args);
        let o = sys::output_within(&mut cmd, CLI_LIMIT)?;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() {
            return Ok(out);
        }
        Err(format!(
            "`gluster {}` failed ({}): {} {}",
            args.join(" "),
            o.status,
            out.trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }

    /// An error with its log if glusterd (or `unshare`) has exited.
    fn alive(&mut self) -> Result<(), String> {
        match self.proc.exited() {
            None => Ok(()),
            Some(st) => Err(format!(
                "glusterd exited ({st}); {}; its log ends:\n{}",
                self.proc.log_tail(),
                sys::log_tail(&self.logs.join("glusterd.log"), 12)
            )),
        }
    }
}

impl Drop for Glusterd {
    fn drop(&mut self) {
        // SIGKILL for glusterd, the PID namespace's init: the kernel kills
        // everything else in it (glusterd's own stop would leave its bricks
        // running), and unshare, its parent, reaps it once they are all gone,
        // then exits. Only while it is still unshare's child, so that its PID
        // cannot have been reused.
        let init = self.pid.filter(|&pid| {
            self.proc.exited().is_none()
                && sys::children(self.proc.pid())
                    .iter()
                    .any(|&(child, _)| child == pid)
        });
        if let Some(pid) = init {
            // SAFETY: plain syscall on a PID checked above to be our child's child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            if self.proc.wait_exit(Duration::from_secs(10)).is_none() {
                eprintln!(
                    "{}: glusterd (pid {pid}) still runs 10 s after SIGKILL",
                    crate::common::name()
                );
            }
        }
        // Otherwise (or if that failed): unshare ignores SIGTERM while it
        // waits for its child, and its --kill-child turns its death into
        // glusterd's.
        self.proc.signal(libc::SIGKILL);
        self.proc.stop();
    }
}

/// The text of every `<tag>...</tag>` in `xml` (the CLI's `--xml` output has
/// no attributes on these and no nesting of the same tag).
fn tags<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(open.as_str())
        .skip(1)
        .filter_map(|s| s.split_once(close.as_str()).map(|(t, _)| t))
        .collect()
}
