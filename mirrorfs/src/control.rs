//! The control socket of a running `mirrorfs mount` (`--control PATH`).
//!
//! Owns the Unix socket (mode 0600, and every client's credentials checked:
//! root only) and its one-line protocol: the client sends a command name
//! (`status`), the server answers one line of JSON. `mirrorfs status` is the
//! client; the controller will be another. Must not change any state: the
//! socket only reports.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tracing::{debug, warn};

use crate::mirror::Mirror;

/// Removes the socket file when the mount ends.
#[derive(Debug)]
pub struct ControlGuard {
    path: PathBuf,
}

impl Drop for ControlGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on `path` and answers status requests from root.
pub fn serve(path: &Path, mirror: Arc<Mirror>) -> io::Result<ControlGuard> {
    match std::fs::symlink_metadata(path) {
        // A stale socket of an earlier run: replace it. Anything else: refuse.
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket: choose another --control path",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    thread::Builder::new()
        .name("mirrorfs-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        if let Err(e) = answer(c, &mirror) {
                            debug!(error = %e, "control client");
                        }
                    }
                    Err(e) => warn!(error = %e, "control socket accept"),
                }
            }
        })?;
    Ok(ControlGuard {
        path: path.to_owned(),
    })
}

fn peer_uid(s: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for the call.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

fn answer(stream: UnixStream, mirror: &Mirror) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = stream.try_clone()?;
    if peer_uid(&stream)? != 0 {
        writeln!(
            out,
            "{{\"error\":\"the control socket answers root only\"}}"
        )?;
        return Ok(());
    }
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    match line.trim() {
        "status" => {
            let json = serde_json::to_string(&mirror.status()).map_err(io::Error::other)?;
            writeln!(out, "{json}")
        }
        other => writeln!(
            out,
            "{}",
            serde_json::json!({ "error": format!("unknown command {other:?}: the commands are: status") })
        ),
    }
}

/// Client side: sends `command` and returns the one-line answer.
pub fn request(path: &Path, command: &str) -> io::Result<String> {
    let mut s = UnixStream::connect(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot reach the control socket {}: {e} (is `mirrorfs mount --control {}` running, and are you root?)",
                path.display(),
                path.display()
            ),
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(s, "{command}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line)
}
