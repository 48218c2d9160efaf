//! The `mirrorfs` command: `keygen`, `serve` (secondary), `mount` (primary),
//! `status`/`ctl` (the control socket's client), `state`, `discard` and
//! `verify`. Parses flags, sets up logging and everything process-wide (the
//! umask, the open-files limit, the signal handlers that turn SIGINT/SIGTERM
//! into the library's shutdown), and hands over to the library.
//!
//! Exit codes: 0 success; 1 `verify` found differences; 2 the command could not
//! do its job (bad flags or files, peer unreachable or refused, mount failed,
//! an order refused, a control socket unreachable).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tracing::{error, info, warn};

use mirrorfs::ctl::client::{Client, ClientError};
use mirrorfs::ctl::{Request, RootState};
use mirrorfs::meta::META_DIR;
use mirrorfs::mirror::{AckMode, MirrorConfig, OnPeerLoss};
use mirrorfs::mount::{self, MountConfig};
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
    /// Show the state of a running mount or serve (role, peer, generation,
    /// dirty files, resync).
    Status {
        /// The control socket (the mount's or serve's --control).
        #[arg(long)]
        control: PathBuf,
        /// Print JSON (for scripts) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send one request to a control socket and print each answer as one
    /// line of JSON (the controller's interface; exit 2 on an error answer).
    Ctl(CtlArgs),
    /// Show a replicated directory's generation history and consistency,
    /// without a mount and without changing anything (also while a serve or
    /// mount runs on it).
    State {
        /// The replicated directory (a backing or replica root).
        #[arg(long)]
        root: PathBuf,
        /// Print JSON (for scripts) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks: answer `mirrorfs rtt` round trips on --listen (until
    /// killed), from the peer of --peer-cert only.
    #[command(hide = true, name = "rtt-serve")]
    RttServe {
        /// UDP address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        #[command(flatten)]
        id: Identity,
    },
    /// Benchmarks: the bare QUIC round trip to a `mirrorfs rtt-serve`, with
    /// replication's TLS and transport settings; prints one JSON line.
    #[command(hide = true)]
    Rtt {
        /// The `rtt-serve` address.
        #[arg(long)]
        peer: SocketAddr,
        #[command(flatten)]
        id: Identity,
        /// Bytes sent per round trip (the answer is 16 bytes, as an ack).
        #[arg(long, default_value_t = 4096)]
        size: usize,
        /// Round trips measured.
        #[arg(long, default_value_t = 2000)]
        count: usize,
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
struct CtlArgs {
    /// The control socket (the mount's or serve's --control).
    #[arg(long)]
    control: PathBuf,
    #[command(subcommand)]
    request: CtlRequest,
}

#[derive(Subcommand, Debug)]
enum CtlRequest {
    /// One status object.
    Status,
    /// A status object now and one on every change, until interrupted.
    Watch,
    /// The controller holds quorum for SECONDS: a primary that lost its peer
    /// goes on ALONE until then (renew with another `alone`).
    Alone {
        /// How long the grant lasts, from now.
        #[arg(value_parser = parse_grant)]
        seconds: f64,
    },
    /// Mutations fail with EIO from now on (until `unfence`).
    Fence,
    /// Lift the fence: back to HOLD, or to PRIM through a resync once the
    /// peer is back.
    Unfence,
    /// Where this mount's or serve's replicated ops spent their time, stage
    /// by stage, per class of op (microseconds: mean, p50, p90, p99).
    Latency {
        /// Forget the figures after answering (start a new measurement).
        #[arg(long)]
        reset: bool,
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
    /// Control socket for `mirrorfs status` and `mirrorfs ctl` (root only,
    /// mode 0600).
    #[arg(long)]
    control: Option<PathBuf>,
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
    /// When the peer is lost: `fail` (the default: mutations fail with EIO
    /// until it is back), `alone` (carry on ALONE, record every change,
    /// resync when it returns) or `hold` (under a controller: mutations wait
    /// for its order on the control socket, `alone SECONDS` or `fence`, or
    /// for --hold-timeout).
    #[arg(long = "on-peer-loss", value_parser = parse_on_peer_loss)]
    on_peer_loss: Option<OnPeerLoss>,
    /// When a mutation returns: `each-op` (the default: once the secondary
    /// applied it) or `on-sync` (once applied here and queued, in order, for
    /// the secondary; fsync, fdatasync, msync and O_SYNC/O_DSYNC writes
    /// return once everything before them is applied and durable there: a
    /// failover loses at most what was never synced).
    #[arg(long, default_value = "each-op", value_parser = parse_ack)]
    ack: AckMode,
    /// With --on-peer-loss=hold: seconds mutations wait for the controller's
    /// order before the mount fences itself (must be shorter than the
    /// kernel's FUSE request timeout, if one is set).
    #[arg(long = "hold-timeout", default_value_t = 30.0, value_parser = parse_secs)]
    hold_timeout: f64,
    /// Seconds ops may wait on a secondary that is alive but reports no
    /// progress: the status says `stalled` from --peer-timeout on, and the
    /// peer is lost after this long (at least --peer-timeout).
    #[arg(long = "stall-timeout", default_value_t = DEFAULT_STALL_TIMEOUT.as_secs_f64(), value_parser = parse_secs)]
    stall_timeout: f64,
    /// Start ALONE without waiting for the peer (implies --on-peer-loss=alone
    /// unless --on-peer-loss=hold is given: a promoted secondary under a
    /// controller); connect and resync when it appears.
    #[arg(long)]
    alone: bool,
    /// Mount even if this tree is marked inconsistent (a resync into it
    /// began and did not finish: its data is a mix of old and new). Only
    /// when the other node's data is gone.
    #[arg(long = "accept-inconsistent")]
    accept_inconsistent: bool,
    /// Compare every file by checksum at the next resync (first start, doubt).
    #[arg(long)]
    full: bool,
    /// Cap the resync's data rate, in MB/s (it also yields to the application
    /// by itself: while the application writes, one resync block at a time).
    #[arg(long = "resync-rate-limit")]
    resync_rate_limit: Option<u64>,
    /// The resync's floor, in MB/s: once the application has written for
    /// 10 s without a break, however much it suffers from the resync, the
    /// resync still sends a large file's data at this rate (small files: one
    /// per 32 KiB of it), so that it ends. 0: no floor (it may yield down to
    /// 20 pieces or files a second). --resync-rate-limit wins where lower.
    #[arg(long = "resync-min-rate", default_value_t = 4)]
    resync_min_rate: u64,
    /// Control socket for `mirrorfs status` and `mirrorfs ctl`: reports, and
    /// takes the controller's orders (root only, mode 0600).
    #[arg(long)]
    control: Option<PathBuf>,
    /// FUSE worker threads (concurrent operations served).
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// Answer every open and close of a file (FUSE OPEN and RELEASE), so that
    /// read-only opens of large files can use the kernel's passthrough. By
    /// default the kernel opens files alone, with no request at all.
    #[arg(long = "open-requests")]
    open_requests: bool,
    /// With --open-requests: serve read-only opens through mirrorfs even
    /// where the kernel offers passthrough (without it there is no
    /// passthrough anyway).
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

fn parse_ack(s: &str) -> Result<AckMode, String> {
    s.parse()
}

fn parse_on_peer_loss(s: &str) -> Result<OnPeerLoss, String> {
    match s {
        "fail" => Ok(OnPeerLoss::Fail),
        "alone" => Ok(OnPeerLoss::Alone),
        "hold" => Ok(OnPeerLoss::Hold),
        _ => Err(format!("{s:?}: use `fail`, `alone` or `hold`")),
    }
}

fn parse_grant(s: &str) -> Result<f64, String> {
    let v = s
        .parse::<f64>()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    mirrorfs::ctl::alone::check_seconds(v).map_err(|e| e.to_string())
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
        Cmd::Ctl(a) => return ctl(a),
        Cmd::State { root, json } => return state(&root, json),
        Cmd::Discard { root } => discard(&root),
        Cmd::RttServe { listen, id } => {
            load_identity(&id).and_then(|(me, peer)| mirrorfs::net::rtt::serve(listen, &me, &peer))
        }
        Cmd::Rtt {
            peer,
            id,
            size,
            count,
        } => load_identity(&id).and_then(|(me, pinned)| {
            let f = mirrorfs::net::rtt::measure(peer, &me, &pinned, size, count)?;
            println!("{}", serde_json::to_string(&f).map_err(|e| e.to_string())?);
            Ok(())
        }),
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

/// Installs the SIGINT/SIGTERM handler: the first signal completes the
/// returned shutdown (a clean stop; a mount with files still open detaches
/// and ends when the last one is closed); a second one exits at once.
fn stop_signals() -> Result<impl std::future::Future<Output = ()> + Send + 'static, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    ctrlc::set_handler(move || match tx.lock().ok().and_then(|mut t| t.take()) {
        Some(tx) => {
            let _ = tx.send(());
        }
        None => {
            warn!("second stop signal: exiting now (files may still be open on a detached mount)");
            std::process::exit(0);
        }
    })
    .map_err(|e| format!("cannot install the signal handler: {e}"))?;
    Ok(async move {
        let _ = rx.await;
    })
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
        control: a.control,
    };
    // Modes arrive exactly as the primary applied them.
    mirrorfs::sys::set_umask(0);
    let stop = stop_signals()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(server::run(cfg, stop))
        .map_err(|e| e.to_string())
}

/// The mount's configuration from its flags (what the flags alone decide;
/// [`mount::run`] checks the rest).
fn mount_config(a: &MountArgs) -> Result<MountConfig, String> {
    let on_peer_loss = match (a.alone, a.on_peer_loss) {
        (false, choice) => choice.unwrap_or(OnPeerLoss::Fail),
        (true, None | Some(OnPeerLoss::Alone)) => OnPeerLoss::Alone,
        // A promoted secondary under a controller: ALONE now, and on the
        // next loss the controller decides again.
        (true, Some(OnPeerLoss::Hold)) => OnPeerLoss::Hold,
        (true, Some(OnPeerLoss::Fail)) => {
            return Err(
                "--alone writes without the peer, --on-peer-loss=fail refuses to: drop one of them (with a controller: --alone --on-peer-loss=hold)"
                    .into(),
            )
        }
    };
    let (identity, pinned) = load_identity(&a.id)?;
    Ok(MountConfig {
        backing: a.backing.clone(),
        mountpoint: a.mountpoint.clone(),
        mirror: MirrorConfig {
            link: LinkConfig {
                peer: a.peer,
                identity: Arc::new(identity),
                pinned,
                peer_timeout: Duration::from_secs_f64(a.peer_timeout),
                stall_timeout: Duration::from_secs_f64(a.stall_timeout),
            },
            on_peer_loss,
            ack: a.ack,
            start_alone: a.alone,
            full_resync: a.full,
            resync_rate_limit: a.resync_rate_limit.map(|mb| mb * 1_000_000),
            resync_min_rate: a.resync_min_rate.saturating_mul(1_000_000),
            hold_timeout: Duration::from_secs_f64(a.hold_timeout),
        },
        control: a.control.clone(),
        threads: a.threads,
        open_requests: a.open_requests,
        passthrough: !a.no_passthrough,
        accept_inconsistent: a.accept_inconsistent,
    })
}

fn mount(a: MountArgs) -> Result<(), String> {
    let cfg = mount_config(&a)?;
    // Process-wide settings are the binary's: modes arrive already masked
    // by the application's umask; the inode table holds a descriptor per
    // known inode.
    mirrorfs::sys::set_umask(0);
    if let Err(e) = mirrorfs::sys::raise_nofile_limit() {
        info!(error = %e, "could not raise the open-files limit");
    }
    let stop = stop_signals()?;
    mount::run(cfg, stop).map_err(|e| e.to_string())
}

/// Starts `mount --foreground` in a new session, waits until it has mounted
/// (or failed, relaying its error), then returns.
fn detach(a: MountArgs) -> Result<(), String> {
    // Flags first: a mistake is reported here, not only in the log.
    mount_config(&a)?;
    let (backing, mountpoint) =
        mount::check_dirs(&a.backing, &a.mountpoint).map_err(|e| e.to_string())?;
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
    // (The flag may be given already: clap refuses it twice.)
    if !args.iter().any(|a| a == "--outlive-parent") {
        args.push("--outlive-parent".into());
    }
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
    let answer = Client::connect(control).and_then(|mut c| {
        c.send(&Request::Status)?;
        c.answer()
    });
    match answer {
        Ok((line, _)) if json => println!("{line}"),
        Ok((_, st)) => print!("{}", st.render_text()),
        Err(e) => {
            eprintln!("mirrorfs: status: {e}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

/// `mirrorfs ctl`: one request, each answer printed as a line of JSON as it
/// comes; an error answer, or the end of a watch, exits 2.
fn ctl(a: CtlArgs) -> ExitCode {
    let request = match a.request {
        CtlRequest::Status => Request::Status,
        CtlRequest::Watch => Request::Watch,
        CtlRequest::Alone { seconds } => Request::Alone { seconds },
        CtlRequest::Fence => Request::Fence,
        CtlRequest::Unfence => Request::Unfence,
        CtlRequest::Latency { reset } => Request::Latency { reset },
    };
    let fail = |e: ClientError| {
        eprintln!("mirrorfs: ctl {}: {e}", request.name());
        ExitCode::from(2)
    };
    let mut client = match Client::connect(&a.control) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Request::Latency { reset } = request {
        return match client.latency(reset) {
            Ok((line, _)) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        };
    }
    if let Err(e) = client.send(&request) {
        return fail(e);
    }
    let mut out = std::io::stdout().lock();
    loop {
        match client.answer() {
            Ok((line, _)) => {
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    // Whoever reads our output is gone (e.g. `| head -1`).
                    return ExitCode::SUCCESS;
                }
                if request != Request::Watch {
                    return ExitCode::SUCCESS;
                }
            }
            Err(e) => return fail(e),
        }
    }
}

fn state(root: &Path, json: bool) -> ExitCode {
    let st = match RootState::read(root) {
        Ok(st) => st,
        Err(e) => {
            eprintln!(
                "mirrorfs: state: {}: {e}: name a replicated directory (a backing or replica root) you may read",
                root.display()
            );
            return ExitCode::from(2);
        }
    };
    if json {
        match serde_json::to_string(&st) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("mirrorfs: state: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", st.render_text());
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
