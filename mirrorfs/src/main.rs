//! The `mirrorfs` command: `keygen`, `serve` (secondary), `mount` (primary) and
//! `verify`. Parses flags, sets up logging, and hands over to the library.
//!
//! Exit codes: 0 success; 1 `verify` found differences; 2 the command could not
//! do its job (bad flags or files, peer unreachable or refused, mount failed).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tracing::{error, info, warn};

use mirrorfs::fs::fuse::MirrorFs;
use mirrorfs::fs::Overlay;
use mirrorfs::meta::META_DIR;
use mirrorfs::mirror::{Mirror, MirrorConfig, MirrorRef, OnPeerLoss, Status};
use mirrorfs::net::client::{LinkConfig, DEFAULT_STALL_TIMEOUT};
use mirrorfs::net::server::{self, ServeConfig};
use mirrorfs::net::tls;

#[derive(Parser, Debug)]
#[command(
    name = "mirrorfs",
    version,
    about = "Synchronous replication of a directory to a second node"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Write a node identity: DIR/NAME.key (private, 0600) and DIR/NAME.crt.
    Keygen {
        /// Directory to write into (created 0700 if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Node name (the certificate's CN), e.g. node1.
        #[arg(long)]
        name: String,
    },
    /// Secondary: apply the primary's operations beneath --root.
    Serve(ServeArgs),
    /// Primary: mount a replicating overlay of --backing at --mountpoint.
    Mount(MountArgs),
    /// Give up this side's own changes after a split brain: keep copies in
    /// DIR/.mirrorfs/discarded-<time>/, then let the peer replace this tree.
    /// Run it while nothing serves or mounts DIR.
    Discard {
        /// The replicated directory (a backing or replica root).
        #[arg(long)]
        root: PathBuf,
    },
    /// Show the state of a running mount (role, peer, generation, dirty files, resync).
    Status {
        /// The mount's control socket (its --control).
        #[arg(long)]
        control: PathBuf,
        /// Print JSON (for scripts) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Compare two trees; exit 0 when identical, 1 with one line per difference.
    Verify {
        /// First tree (e.g. the primary's backing directory).
        a: PathBuf,
        /// Second tree (e.g. the secondary's replica).
        b: PathBuf,
    },
}

#[derive(Args, Debug)]
struct Identity {
    /// This node's private key (from keygen).
    #[arg(long)]
    key: PathBuf,
    /// This node's certificate (from keygen).
    #[arg(long)]
    cert: PathBuf,
    /// The peer's certificate: the only one accepted.
    #[arg(long = "peer-cert")]
    peer_cert: PathBuf,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// The replica directory (must exist).
    #[arg(long)]
    root: PathBuf,
    /// UDP address to listen on, e.g. 10.0.0.2:7411.
    #[arg(long)]
    listen: SocketAddr,
    #[command(flatten)]
    id: Identity,
    /// Seconds without any packet from the primary before its connection is dropped.
    #[arg(long = "peer-timeout", default_value_t = 5.0, value_parser = parse_secs)]
    peer_timeout: f64,
    /// Keep running when the process that started this one exits (by default a
    /// supervised mirrorfs stops with its supervisor, so none is left behind).
    #[arg(long = "outlive-parent")]
    outlive_parent: bool,
}

#[derive(Args, Debug)]
struct MountArgs {
    /// The directory replicated (its contents appear at the mountpoint).
    #[arg(long)]
    backing: PathBuf,
    /// Where to mount.
    #[arg(long)]
    mountpoint: PathBuf,
    /// The secondary's `mirrorfs serve` address, e.g. 10.0.0.2:7411.
    #[arg(long)]
    peer: SocketAddr,
    #[command(flatten)]
    id: Identity,
    /// Stay in the foreground (otherwise detach once mounted, logging to --log).
    #[arg(long)]
    foreground: bool,
    /// Seconds without anything from the secondary before it counts as lost
    /// (QUIC idle timeout); with operations waiting and no progress reported,
    /// it shows as stalled after this long, and is lost after the stall timeout.
    #[arg(long = "peer-timeout", default_value_t = 5.0, value_parser = parse_secs)]
    peer_timeout: f64,
    /// When the peer is lost: `fail` (mutations fail with EIO until it is back)
    /// or `alone` (carry on ALONE, record every change, resync when it returns).
    #[arg(long = "on-peer-loss", default_value = "fail", value_parser = parse_on_peer_loss)]
    on_peer_loss: OnPeerLoss,
    /// Start ALONE without waiting for the peer (implies --on-peer-loss=alone);
    /// connect and resync when it appears.
    #[arg(long)]
    alone: bool,
    /// Compare every file by checksum at the next resync (first start, doubt).
    #[arg(long)]
    full: bool,
    /// Cap the resync's data rate, in MB/s (it also yields to the application
    /// by itself: while the application writes, one resync block at a time).
    #[arg(long = "resync-rate-limit")]
    resync_rate_limit: Option<u64>,
    /// Control socket for `mirrorfs status` (root only, mode 0600).
    #[arg(long)]
    control: Option<PathBuf>,
    /// FUSE worker threads (concurrent operations served).
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// Serve read-only opens through mirrorfs even where the kernel offers passthrough.
    #[arg(long = "no-passthrough")]
    no_passthrough: bool,
    /// Log file when detached (default: BACKING/.mirrorfs/mount.log).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Keep running when the process that started this one exits (by default a
    /// supervised mirrorfs stops, and unmounts, with its supervisor).
    #[arg(long = "outlive-parent")]
    outlive_parent: bool,
}

fn parse_on_peer_loss(s: &str) -> Result<OnPeerLoss, String> {
    match s {
        "fail" => Ok(OnPeerLoss::Fail),
        "alone" => Ok(OnPeerLoss::Alone),
        _ => Err(format!("{s:?}: use `fail` or `alone`")),
    }
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 3600"
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let r = match cli.cmd {
        Cmd::Keygen { dir, name } => keygen(&dir, &name),
        Cmd::Serve(a) => tie_to_parent(a.outlive_parent).and_then(|()| serve(a)),
        Cmd::Mount(a) if a.foreground => tie_to_parent(a.outlive_parent).and_then(|()| mount(a)),
        Cmd::Mount(a) => detach(a),
        Cmd::Verify { a, b } => return verify(&a, &b),
        Cmd::Status { control, json } => return status(&control, json),
        Cmd::Discard { root } => discard(&root),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            error!("{msg}");
            eprintln!("mirrorfs: {msg}");
            ExitCode::from(2)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MIRRORFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Unless `outlive`, asks the kernel to send us SIGTERM (a clean stop) when the
/// process that started us dies, so that no orphaned server or mount is left.
fn tie_to_parent(outlive: bool) -> Result<(), String> {
    if outlive {
        return Ok(());
    }
    // SAFETY: getppid and prctl(PR_SET_PDEATHSIG) have no memory effects.
    let parent = unsafe { libc::getppid() };
    // SAFETY: as above.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) } != 0 {
        return Err(format!(
            "prctl(PR_SET_PDEATHSIG): {}",
            std::io::Error::last_os_error()
        ));
    }
    // The parent may have died before the prctl took effect.
    // SAFETY: as above.
    if unsafe { libc::getppid() } != parent {
        return Err("the process that started mirrorfs has already exited".into());
    }
    Ok(())
}

fn keygen(dir: &Path, name: &str) -> Result<(), String> {
    let (key, cert) = tls::keygen(dir, name).map_err(|e| e.to_string())?;
    let id = tls::load_identity(&key, &cert).map_err(|e| e.to_string())?;
    println!("wrote {} and {}", key.display(), cert.display());
    println!("node {name}: certificate sha256 {}", id.fingerprint());
    println!(
        "copy {} to the peer; it passes it as --peer-cert",
        cert.display()
    );
    Ok(())
}

fn load_identity(id: &Identity) -> Result<(tls::Identity, tls::PinnedPeer), String> {
    let me = tls::load_identity(&id.key, &id.cert).map_err(|e| e.to_string())?;
    let peer = tls::load_peer(&id.peer_cert).map_err(|e| e.to_string())?;
    Ok((me, peer))
}

/// Resolves on SIGINT or SIGTERM.
fn shutdown_signal() -> Result<tokio::sync::oneshot::Receiver<()>, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    ctrlc::set_handler(move || {
        if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
            let _ = tx.send(());
        }
    })
    .map_err(|e| format!("cannot install the signal handler: {e}"))?;
    Ok(rx)
}

fn serve(a: ServeArgs) -> Result<(), String> {
    let (identity, pinned) = load_identity(&a.id)?;
    // One descriptor per writable handle the primary's applications hold
    // open: the default soft limit (1024) would refuse them beyond that.
    match mirrorfs::sys::raise_nofile_limit() {
        Ok(limit) => info!(limit, "open-files limit"),
        Err(e) => {
            warn!(error = %e, "could not raise the open-files limit: beyond it, opens replicated from the primary fail with EMFILE")
        }
    }
    let cfg = ServeConfig {
        root: a.root,
        listen: a.listen,
        identity,
        pinned,
        idle_timeout: Duration::from_secs_f64(a.peer_timeout),
    };
    let stop = shutdown_signal()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(server::run(cfg, async {
        let _ = stop.await;
    }))
    .map_err(|e| e.to_string())
}

fn check_dirs(backing: &Path, mountpoint: &Path) -> Result<(PathBuf, PathBuf), String> {
    let b = backing.canonicalize().map_err(|e| {
        format!(
            "--backing {}: {e}: create the directory first",
            backing.display()
        )
    })?;
    let m = mountpoint.canonicalize().map_err(|e| {
        format!(
            "--mountpoint {}: {e}: create the directory first",
            mountpoint.display()
        )
    })?;
    if !b.is_dir() || !m.is_dir() {
        return Err(format!(
            "--backing {} and --mountpoint {} must both be directories",
            b.display(),
            m.display()
        ));
    }
    if b.starts_with(&m) || m.starts_with(&b) {
        return Err(format!(
            "--backing {} and --mountpoint {} must not contain each other",
            b.display(),
            m.display()
        ));
    }
    Ok((b, m))
}

fn mount(a: MountArgs) -> Result<(), String> {
    let (backing, mountpoint) = check_dirs(&a.backing, &a.mountpoint)?;
    let meta = backing.join(META_DIR);
    std::fs::create_dir_all(&meta).map_err(|e| format!("cannot create {}: {e}", meta.display()))?;
    let (identity, pinned) = load_identity(&a.id)?;
    mirrorfs::sys::set_umask(0);
    if let Err(e) = mirrorfs::sys::raise_nofile_limit() {
        info!(error = %e, "could not raise the open-files limit");
    }
    let on_peer_loss = if a.alone {
        OnPeerLoss::Alone
    } else {
        a.on_peer_loss
    };
    let mirror = Mirror::start(
        &backing,
        MirrorConfig {
            link: LinkConfig {
                peer: a.peer,
                identity: Arc::new(identity),
                pinned,
                peer_timeout: Duration::from_secs_f64(a.peer_timeout),
                stall_timeout: DEFAULT_STALL_TIMEOUT.max(Duration::from_secs_f64(a.peer_timeout)),
            },
            on_peer_loss,
            start_alone: a.alone,
            full_resync: a.full,
            resync_rate_limit: a.resync_rate_limit.map(|mb| mb * 1_000_000),
        },
    )
    .map_err(|e| e.to_string())?;
    let overlay = Arc::new(
        Overlay::new(&backing, Arc::new(MirrorRef(mirror.clone())))
            .map_err(|e| format!("--backing {}: {e}", backing.display()))?,
    );
    {
        let (o, m) = (overlay.clone(), mirror.clone());
        std::thread::Builder::new()
            .name("mirrorfs-resync".into())
            .spawn(move || mirrorfs::fs::resync::run(o, m))
            .map_err(|e| format!("cannot start the resync thread: {e}"))?;
    }
    {
        // Activity epochs: every 30 s, flush the backing filesystem, then drop
        // the older epoch (its mutations are now durable here).
        let (o, m, b) = (overlay.clone(), mirror.clone(), backing.clone());
        std::thread::Builder::new()
            .name("mirrorfs-epochs".into())
            .spawn(move || loop {
                for _ in 0..30 {
                    std::thread::sleep(Duration::from_secs(1));
                    if m.is_shut_down() {
                        return;
                    }
                }
                if let Err(e) = mirrorfs::meta::syncfs(&b) {
                    tracing::warn!(error = %e, "syncfs of the backing filesystem failed");
                    continue;
                }
                let _g = o.sequence();
                m.rotate_activity();
            })
            .map_err(|e| format!("cannot start the epoch thread: {e}"))?;
    }
    let _control = match &a.control {
        Some(path) => Some(
            mirrorfs::control::serve(path, mirror.clone())
                .map_err(|e| format!("--control {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let fs = MirrorFs::new(overlay, !a.no_passthrough);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("mirrorfs:{}", backing.display())),
        fuser::MountOption::Subtype("mirrorfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::Dev,
        fuser::MountOption::Suid,
    ];
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(a.threads.clamp(1, 256));
    config.clone_fd = true;
    let mut session = fuser::Session::new(fs, &mountpoint, &config)
        .map_err(|e| format!("cannot mount at {}: {e}", mountpoint.display()))?;
    let mut unmounter = session.unmount_callable();
    let target = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("--mountpoint {}: contains a NUL byte", mountpoint.display()))?;
    let detached = std::sync::atomic::AtomicBool::new(false);
    ctrlc::set_handler(move || {
        if detached.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // A second signal while files were still open: stop now.
            tracing::warn!("second stop signal: exiting with files still open on the detached mount");
            std::process::exit(0);
        }
        if let Err(e) = unmounter.unmount() {
            // Files are still open: detach the mount now (new opens cannot
            // reach it); the open files keep working until they are closed,
            // then the session ends and this process exits.
            tracing::warn!(error = %e, "busy: detaching the mount; send the signal again to exit with files still open");
            // SAFETY: valid C string; umount2 has no memory effects.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    })
    .map_err(|e| format!("cannot install the signal handler: {e}"))?;
    info!(backing = %backing.display(), mountpoint = %mountpoint.display(), peer = %a.peer, "mounted");
    session
        .run()
        .map_err(|e| format!("the FUSE session failed: {e}"))?;
    info!("unmounted");
    mirror.shutdown();
    Ok(())
}

/// Starts `mount --foreground` in a new session, waits until it has mounted
/// (or failed, relaying its error), then returns.
fn detach(a: MountArgs) -> Result<(), String> {
    let (backing, mountpoint) = check_dirs(&a.backing, &a.mountpoint)?;
    let log = a
        .log
        .clone()
        .unwrap_or_else(|| backing.join(META_DIR).join("mount.log"));
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let logfile = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| format!("cannot open the log {}: {e}", log.display()))?;
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // The detached child outlives this process, which returns once mounted.
    args.push("--foreground".into());
    args.push("--outlive-parent".into());
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(logfile.try_clone().map_err(|e| e.to_string())?)
        .stderr(logfile);
    // SAFETY: setsid is async-signal-safe; it detaches the child from our terminal.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the mount process: {e}"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let last = tail
                .lines()
                .rev()
                .find(|l| l.starts_with("mirrorfs:"))
                .unwrap_or("");
            return Err(format!(
                "the mount process exited ({status}): {last} (log: {})",
                log.display()
            ));
        }
        if is_mounted(&mountpoint) {
            println!(
                "mounted {} at {} (pid {}, log {})",
                backing.display(),
                mountpoint.display(),
                child.id(),
                log.display()
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("not mounted after 30 s; see {}", log.display()))
}

fn is_mounted(mountpoint: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| {
            s.lines().any(|l| {
                l.split(' ').nth(4) == Some(&*mountpoint.to_string_lossy()) && l.contains(" - fuse")
            })
        })
        .unwrap_or(false)
}

fn discard(root: &Path) -> Result<(), String> {
    if is_mounted(root) {
        return Err(format!(
            "{} is a mount point: run discard on the backing or replica directory, with nothing serving or mounting it",
            root.display()
        ));
    }
    let r = mirrorfs::discard::discard(root)
        .map_err(|e| format!("discard in {}: {e}", root.display()))?;
    println!(
        "kept {} changed path(s) of this side in {}:",
        r.kept.len(),
        r.folder.display()
    );
    for p in &r.kept {
        println!("  {}", p.display());
    }
    for p in &r.absent {
        println!("  {} (deleted on this side: nothing to keep)", p.display());
    }
    println!(
        "this side now counts as new: the primary will compare every file and replace what differs. Delete {} once you no longer need it.",
        r.folder.display()
    );
    Ok(())
}

fn status(control: &Path, json: bool) -> ExitCode {
    let line = match mirrorfs::control::request(control, "status") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mirrorfs: status: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        print!("{line}");
        return ExitCode::SUCCESS;
    }
    let st: Status = match serde_json::from_str(&line) {
        Ok(s) => s,
        Err(_) => {
            eprintln!("mirrorfs: status: unexpected answer: {}", line.trim());
            return ExitCode::from(2);
        }
    };
    println!("role:        {}", st.role);
    println!("peer:        {} ({})", st.peer, st.peer_node);
    println!("connected:   {}", if st.connected { "yes" } else { "no" });
    println!("generation:  {}", st.generation);
    println!(
        "dirty:       {} files, {} bytes",
        st.dirty_files, st.dirty_bytes
    );
    println!("in flight:   {} ops", st.ops_in_flight);
    println!("in role:     {:.0} s", st.role_secs);
    if let Some(r) = &st.resync {
        println!(
            "resync:      {} done, {} left, {} bytes sent, {:.1} MB/s, ETA {}{}",
            r.files_done,
            r.files_left,
            r.bytes_sent,
            r.rate_bytes_per_sec / 1e6,
            r.eta_secs.map_or("unknown".into(), |s| format!("{s:.0} s")),
            if r.full {
                " (full: every file by checksum)"
            } else {
                ""
            }
        );
    }
    if let Some(e) = &st.last_error {
        println!("last error:  {e}");
    }
    ExitCode::SUCCESS
}

fn verify(a: &Path, b: &Path) -> ExitCode {
    let opts = mirrorfs::verify::VerifyOptions::default();
    match mirrorfs::verify::compare(a, b, &opts) {
        Ok(report) if report.differences.is_empty() => {
            println!(
                "identical: {} entries, {} bytes compared",
                report.summary.entries, report.summary.bytes
            );
            ExitCode::SUCCESS
        }
        Ok(report) => {
            for d in &report.differences {
                println!("{d}");
            }
            println!(
                "{} differences in {} entries",
                report.differences.len(),
                report.summary.entries
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("mirrorfs: verify: {e}");
            ExitCode::from(2)
        }
    }
}
