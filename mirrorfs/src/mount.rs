//! `mirrorfs mount` as a library call: [`run`] starts the mirror (connects,
//! or starts ALONE), the overlay, the resync workers, the activity-epoch
//! thread and the control socket, mounts the FUSE session and serves it until
//! the session ends (`fusermount3 -u`) or `shutdown` completes.
//!
//! On shutdown the mount is unmounted; if files are still open on it, it is
//! detached instead (new opens cannot reach it, the open files keep working)
//! and [`run`] returns once the last one is closed. Owns the threads and the
//! mount it starts; must not change anything process-wide: the caller sets the
//! umask (0), the open-files limit and the signal handlers.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tracing::{info, warn};

use crate::fs::fuse::MirrorFs;
use crate::fs::Overlay;
use crate::meta::{self, LockError, Meta, META_DIR};
use crate::mirror::{Mirror, MirrorConfig, MirrorRef, OnPeerLoss, StartError};

/// How a mount starts.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// The directory replicated (its contents appear at the mount point).
    pub backing: PathBuf,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// The replication: peer, identity, what to do on peer loss.
    pub mirror: MirrorConfig,
    /// The control socket (`--control`), if any.
    pub control: Option<PathBuf>,
    /// FUSE worker threads (1 to 256).
    pub threads: usize,
    /// Every open of a file is a FUSE OPEN request answered here (per-open
    /// handles; needed for passthrough). Off: the kernel opens files alone.
    pub open_requests: bool,
    /// With `open_requests`: serve read-only opens of large files through
    /// the kernel's passthrough where it has it.
    pub passthrough: bool,
    /// Mount even if the backing tree is marked inconsistent (the operator
    /// accepts its mix of old and new data); the mark is removed.
    pub accept_inconsistent: bool,
}

/// Why a mount could not start (or its session failed).
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The backing directory is missing or unreadable.
    #[error("--backing {path}: {source}: create the directory first")]
    Backing {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The mount point is missing or unreadable.
    #[error("--mountpoint {path}: {source}: create the directory first")]
    Mountpoint {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// One of the two is not a directory.
    #[error("--backing {backing} and --mountpoint {mountpoint} must both be directories")]
    NotDirectories {
        /// The backing directory.
        backing: PathBuf,
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// One lies inside the other.
    #[error("--backing {backing} and --mountpoint {mountpoint} must not contain each other")]
    Nested {
        /// The backing directory.
        backing: PathBuf,
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// The backing tree is marked inconsistent: a resync into it began and
    /// did not finish.
    #[error("{backing} is inconsistent: a resync into this directory from {from} began {since} and did not finish, so its data is a mix of old and new; it must not become a primary. Make the other node primary and let it resync this one; or, if the other node's data is gone, mount with --accept-inconsistent to take this tree as it is")]
    Inconsistent {
        /// The backing directory.
        backing: PathBuf,
        /// The primary the resync came from.
        from: String,
        /// When it began, as text.
        since: String,
    },
    /// The metadata area could not be read or written.
    #[error("{path}: {source}")]
    Meta {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The mirror could not start (peer unreachable or refused, metadata).
    #[error(transparent)]
    Start(#[from] StartError),
    /// Another mirrorfs process works on the backing directory.
    #[error("--backing: {0}")]
    Lock(#[from] LockError),
    /// The overlay could not open the backing directory.
    #[error("--backing {path}: {source}")]
    Overlay {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which one.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The control socket could not be set up.
    #[error("--control {path}: {source}")]
    Control {
        /// The socket's path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The FUSE mount failed.
    #[error("cannot mount at {path}: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The FUSE session ended with an error.
    #[error("the FUSE session failed: {0}")]
    Session(io::Error),
    /// `--stall-timeout` is shorter than `--peer-timeout`.
    #[error("--stall-timeout {stall} s is shorter than --peer-timeout {peer} s: a peer would be declared lost before it could show as stalled; raise --stall-timeout to at least {peer}")]
    StallTimeout {
        /// The stall timeout, seconds.
        stall: f64,
        /// The peer timeout, seconds.
        peer: f64,
    },
    /// `--hold-timeout` is not shorter than the kernel's FUSE request timeout.
    #[error("--hold-timeout {hold} s is not shorter than the kernel's FUSE request timeout, {kernel} s (/proc/sys/fs/fuse/default_request_timeout {default}, max_request_timeout {max}): the kernel would abort the held requests first; lower --hold-timeout below {kernel}, or raise those settings (0 means no timeout)")]
    HoldTimeout {
        /// The hold timeout, seconds.
        hold: f64,
        /// The kernel's effective request timeout, seconds.
        kernel: u64,
        /// `default_request_timeout`.
        default: u64,
        /// `max_request_timeout`.
        max: u64,
    },
}

/// The kernel's FUSE request timeout for a mount that asks for none, from
/// `/proc/sys/fs/fuse/default_request_timeout` and `max_request_timeout`
/// (0: none): the default applies, capped by the maximum. `None`: no
/// timeout, requests may wait forever.
pub fn fuse_request_timeout(default: u64, max: u64) -> Option<u64> {
    match (default, max) {
        (0, 0) => None,
        (d, 0) => Some(d),
        (0, m) => Some(m),
        (d, m) => Some(d.min(m)),
    }
}

/// Reads one of `/proc/sys/fs/fuse/*request_timeout` (0 when the kernel
/// has none).
fn kernel_setting(name: &str) -> u64 {
    std::fs::read_to_string(Path::new("/proc/sys/fs/fuse").join(name))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Checks the timeouts against each other and (with `hold`) against the
/// kernel's request timeout given as `(default, max)`.
pub fn check_timeouts(cfg: &MirrorConfig, kernel: (u64, u64)) -> Result<(), MountError> {
    let (stall, peer) = (cfg.link.stall_timeout, cfg.link.peer_timeout);
    if stall < peer {
        return Err(MountError::StallTimeout {
            stall: stall.as_secs_f64(),
            peer: peer.as_secs_f64(),
        });
    }
    let (default, max) = kernel;
    if cfg.on_peer_loss == OnPeerLoss::Hold {
        if let Some(limit) = fuse_request_timeout(default, max) {
            if cfg.hold_timeout >= Duration::from_secs(limit) {
                return Err(MountError::HoldTimeout {
                    hold: cfg.hold_timeout.as_secs_f64(),
                    kernel: limit,
                    default,
                    max,
                });
            }
        }
    }
    Ok(())
}

/// Checks the two directories and returns them canonical.
pub fn check_dirs(backing: &Path, mountpoint: &Path) -> Result<(PathBuf, PathBuf), MountError> {
    let b = backing
        .canonicalize()
        .map_err(|source| MountError::Backing {
            path: backing.to_owned(),
            source,
        })?;
    let m = mountpoint
        .canonicalize()
        .map_err(|source| MountError::Mountpoint {
            path: mountpoint.to_owned(),
            source,
        })?;
    if !b.is_dir() || !m.is_dir() {
        return Err(MountError::NotDirectories {
            backing: b,
            mountpoint: m,
        });
    }
    if b.starts_with(&m) || m.starts_with(&b) {
        return Err(MountError::Nested {
            backing: b,
            mountpoint: m,
        });
    }
    Ok((b, m))
}

/// Mounts and serves until the session ends or `shutdown` completes (see
/// the module doc). `shutdown` is polled on a thread of its own.
pub fn run(
    cfg: MountConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MountError> {
    crate::sys::warn_umask();
    check_timeouts(
        &cfg.mirror,
        (
            kernel_setting("default_request_timeout"),
            kernel_setting("max_request_timeout"),
        ),
    )?;
    let (backing, mountpoint) = check_dirs(&cfg.backing, &cfg.mountpoint)?;
    let meta_dir = backing.join(META_DIR);
    let meta_err = |source| MountError::Meta {
        path: meta_dir.clone(),
        source,
    };
    // Before anything is created or connected: an inconsistent tree must
    // not become a primary.
    let marked = meta::inspect(&backing).map_err(meta_err)?.inconsistent;
    if let Some(mark) = &marked {
        if !cfg.accept_inconsistent {
            return Err(MountError::Inconsistent {
                backing,
                from: mark.from.clone(),
                since: if mark.since_unix == 0 {
                    "at an unknown time".into()
                } else {
                    format!("at {}", crate::ctl::state::utc(mark.since_unix))
                },
            });
        }
    }
    std::fs::create_dir_all(&meta_dir).map_err(meta_err)?;
    // Held until the process ends: no second mount (nor a serve) on this
    // directory while this one may still write it.
    let _lock = Meta::open(&backing).map_err(meta_err)?.lock("mount")?;
    let peer = cfg.mirror.link.peer;
    let mirror = Mirror::start(&backing, cfg.mirror)?;
    if marked.is_some() {
        warn!(backing = %backing.display(), "mounting an inconsistent tree as the operator accepted (--accept-inconsistent): its data is a mix of old and new; the mark is removed");
        Meta::open(&backing)
            .and_then(|m| m.clear_inconsistent())
            .map_err(meta_err)?;
    }
    let overlay = Arc::new(
        Overlay::new(&backing, Arc::new(MirrorRef(mirror.clone()))).map_err(|source| {
            MountError::Overlay {
                path: backing.clone(),
                source,
            }
        })?,
    );
    {
        let (o, m) = (overlay.clone(), mirror.clone());
        thread::Builder::new()
            .name("mirrorfs-resync".into())
            .spawn(move || crate::fs::resync::run(o, m))
            .map_err(|source| MountError::Thread {
                what: "resync",
                source,
            })?;
    }
    {
        // Activity epochs: every 30 s, flush the backing filesystem, then drop
        // the older epoch (its mutations are now durable here).
        let (o, m, b) = (overlay.clone(), mirror.clone(), backing.clone());
        thread::Builder::new()
            .name("mirrorfs-epochs".into())
            .spawn(move || loop {
                for _ in 0..30 {
                    thread::sleep(Duration::from_secs(1));
                    if m.is_shut_down() {
                        return;
                    }
                }
                if let Err(e) = meta::syncfs(&b) {
                    warn!(error = %e, "syncfs of the backing filesystem failed");
                    continue;
                }
                let _g = o.sequence();
                m.rotate_activity();
            })
            .map_err(|source| MountError::Thread {
                what: "epoch",
                source,
            })?;
    }
    let control =
        match &cfg.control {
            Some(path) => Some(crate::ctl::server::serve(path, mirror.clone()).map_err(
                |source| MountError::Control {
                    path: path.clone(),
                    source,
                },
            )?),
            None => None,
        };
    let fs = MirrorFs::new(overlay, cfg.open_requests, cfg.passthrough);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("mirrorfs:{}", backing.display())),
        fuser::MountOption::Subtype("mirrorfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::Dev,
        fuser::MountOption::Suid,
    ];
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(cfg.threads.clamp(1, 256));
    config.clone_fd = true;
    let mut session =
        fuser::Session::new(fs, &mountpoint, &config).map_err(|source| MountError::Mount {
            path: mountpoint.clone(),
            source,
        })?;
    let stopper = Stopper::start(session.unmount_callable(), &mountpoint, shutdown)?;
    info!(backing = %backing.display(), mountpoint = %mountpoint.display(), %peer, "mounted");
    let ended = session.run().map_err(MountError::Session);
    info!("unmounted");
    stopper.finish();
    // On-sync: what was answered before the secondary had it goes on to it
    // before the process ends (bounded), as each-op's would have.
    mirror.drain();
    mirror.settle(&backing);
    mirror.shutdown();
    drop(control);
    ended
}

/// The thread that waits for the shutdown and then unmounts (or detaches).
struct Stopper {
    /// Tells the thread the session ended by itself.
    ended: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Stopper {
    fn start(
        mut unmounter: fuser::SessionUnmounter,
        mountpoint: &Path,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Self, MountError> {
        let target =
            std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()).map_err(|_| {
                MountError::Mount {
                    path: mountpoint.to_owned(),
                    source: io::Error::from(io::ErrorKind::InvalidInput),
                }
            })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|source| MountError::Thread {
                what: "shutdown",
                source,
            })?;
        let (ended, ended_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name("mirrorfs-shutdown".into())
            .spawn(move || {
                let stop = rt.block_on(async {
                    tokio::select! {
                        () = shutdown => true,
                        _ = ended_rx => false,
                    }
                });
                if !stop {
                    return;
                }
                info!("stopping: unmounting");
                if let Err(e) = unmounter.unmount() {
                    // Files are still open: detach the mount now (new opens
                    // cannot reach it); the open files keep working until
                    // they are closed, then the session ends.
                    warn!(error = %e, "busy: detaching the mount; the session ends when the last open file is closed");
                    // SAFETY: valid C string; umount2 has no memory effects.
                    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
                }
            })
            .map_err(|source| MountError::Thread {
                what: "shutdown",
                source,
            })?;
        Ok(Self {
            ended: Some(ended),
            thread: Some(thread),
        })
    }

    /// The session is over: the thread ends (without unmounting anything).
    fn finish(mut self) {
        if let Some(tx) = self.ended.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::client::LinkConfig;
    use crate::net::tls;

    fn config(on_peer_loss: OnPeerLoss, hold: u64, stall: u64, peer: u64) -> MirrorConfig {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = tls::keygen(dir.path(), "node1").unwrap();
        MirrorConfig {
            link: LinkConfig {
                peer: "127.0.0.1:7411".parse().unwrap(),
                identity: Arc::new(tls::load_identity(&key, &cert).unwrap()),
                pinned: tls::load_peer(&cert).unwrap(),
                peer_timeout: Duration::from_secs(peer),
                stall_timeout: Duration::from_secs(stall),
            },
            on_peer_loss,
            ack: crate::mirror::AckMode::EachOp,
            start_alone: false,
            full_resync: false,
            resync_rate_limit: None,
            resync_min_rate: 4_000_000,
            hold_timeout: Duration::from_secs(hold),
        }
    }

    #[test]
    fn the_kernel_request_timeout_is_the_smaller_setting_that_is_set() {
        assert_eq!(fuse_request_timeout(0, 0), None);
        assert_eq!(fuse_request_timeout(45, 0), Some(45));
        assert_eq!(fuse_request_timeout(0, 60), Some(60));
        assert_eq!(fuse_request_timeout(45, 20), Some(20));
        assert_eq!(fuse_request_timeout(20, 45), Some(20));
    }

    #[test]
    fn hold_timeout_must_be_shorter_than_the_kernels_and_stall_at_least_the_peer_timeout() {
        let hold = config(OnPeerLoss::Hold, 30, 30, 5);
        assert!(check_timeouts(&hold, (0, 0)).is_ok(), "no kernel timeout");
        assert!(check_timeouts(&hold, (45, 0)).is_ok());
        let e = check_timeouts(&hold, (0, 20)).unwrap_err().to_string();
        for want in [
            "--hold-timeout 30 s",
            "20 s",
            "lower --hold-timeout below 20",
        ] {
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
        assert!(check_timeouts(&hold, (30, 0)).is_err(), "equal is too long");
        // Without hold nothing waits for the controller: the kernel's
        // timeout does not matter here.
        let fail = config(OnPeerLoss::Fail, 30, 30, 5);
        assert!(check_timeouts(&fail, (10, 10)).is_ok());
        let e = check_timeouts(&config(OnPeerLoss::Fail, 30, 4, 5), (0, 0))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--stall-timeout 4 s") && e.contains("at least 5"),
            "{e}"
        );
    }
}
