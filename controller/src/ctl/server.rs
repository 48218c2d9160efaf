//! The control socket's server side, in the daemon: listens on a Unix socket
//! (mode 0600, in a directory made 0755 if missing; a stale socket of an
//! earlier daemon is replaced, a live one is not), checks every client's
//! credentials (`SO_PEERCRED`: root only) and serves each client on its own
//! thread: request lines of at most [`MAX_LINE`] bytes, each answered in
//! order, until the client closes or has been idle for [`IDLE`]. A
//! malformed request is answered with an error line naming the fix, and the
//! connection goes on; a line that is too long ends it.
//!
//! Shutdown: once the `shutdown` flag is set, the accept thread stops
//! accepting, ends every client's reading (a follower gets an error line
//! saying the daemon stops), waits for the client threads (an order under
//! way is finished first), removes the socket file and returns.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::{log, order, AnswerLine, CtlError, Daemon, Request, MAX_LINE};

/// Clients served at once at most (each has a thread).
pub const MAX_CLIENTS: usize = 32;

/// A connection with no request for this long is closed.
pub const IDLE: Duration = Duration::from_secs(300);

/// How often the accept thread looks at the shutdown flag.
const SHUTDOWN_TICK: Duration = Duration::from_millis(100);

/// Listens on `path` and serves `daemon` to root clients until `shutdown` is
/// set; the handle's thread ends once every client's has (see the module
/// doc). Creates the socket's directory (0755) if missing. Refuses to start
/// when another daemon answers on `path` or `path` is not a socket; the
/// error names the path and the fix.
pub fn serve(
    path: &Path,
    daemon: Arc<dyn Daemon>,
    shutdown: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    make_parent(path)?;
    clear_stale(path)?;
    let listener = UnixListener::bind(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot listen on the control socket {}: {e}: check the node file's `socket` (an absolute path of at most 107 bytes on a local file system)",
                path.display()
            ),
        )
    })?;
    // Until this chmod the socket has the mode the umask leaves; a client
    // that connects in between is still checked by its uid.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let ours = std::fs::metadata(path).map(|m| (m.dev(), m.ino()))?;
    let socket = path.to_owned();
    let handle = thread::Builder::new()
        .name("mirrorfarm-ctl".into())
        .spawn(move || {
            accept_loop(&listener, &daemon, &shutdown);
            // Another daemon may have replaced the socket since: leave its.
            let still_ours = std::fs::metadata(&socket).map(|m| (m.dev(), m.ino()));
            if still_ours.ok() == Some(ours) {
                let _ = std::fs::remove_file(&socket);
            }
            info!(socket = %socket.display(), "control socket closed");
        })?;
    info!(socket = %path.display(), "control socket listening");
    Ok(handle)
}

/// Root only: every other uid is refused.
pub fn authorize(uid: u32) -> Result<(), CtlError> {
    if uid == 0 {
        Ok(())
    } else {
        Err(CtlError::NotRoot { uid })
    }
}

/// Creates the socket's directory, mode 0755, if it is missing.
fn make_parent(path: &Path) -> io::Result<()> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.exists() {
        return Ok(());
    }
    let context = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot create {}, the control socket's directory: {e}: create it (root, mode 0755) or choose another `socket` in the node file",
                dir.display()
            ),
        )
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(context)?;
    // The umask may have taken bits away.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(context)
}

/// Removes a socket that nothing answers on (left by a daemon that died);
/// refuses a live one and anything that is not a socket.
fn clear_stale(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "another mirrorfarm daemon answers on {}: stop it first (`mirrorfarm state` asks it), or give this one another `socket` in the node file",
                    path.display()
                ),
            )),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                info!(socket = %path.display(), "replacing a stale control socket");
                std::fs::remove_file(path)
            }
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot tell whether a daemon answers on {}: {e}: remove the file if none runs",
                    path.display()
                ),
            )),
        },
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket: remove it, or choose another `socket` in the node file",
                path.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The clients being served: a clone of each one's stream, to end its reading
/// at shutdown.
type Open = Arc<Mutex<BTreeMap<u64, UnixStream>>>;

fn accept_loop(listener: &UnixListener, daemon: &Arc<dyn Daemon>, shutdown: &Arc<AtomicBool>) {
    let open: Open = Arc::default();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id = 0u64;
    while !shutdown.load(Ordering::SeqCst) {
        match readable(listener, SHUTDOWN_TICK) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                warn!(error = %e, "control socket poll");
                thread::sleep(SHUTDOWN_TICK);
                continue;
            }
        }
        let mut stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "control socket accept");
                // EMFILE and the like: do not spin on them.
                thread::sleep(SHUTDOWN_TICK);
                continue;
            }
        };
        threads.retain(|t| !t.is_finished());
        let clone = stream.try_clone();
        let mut clients = open.lock().unwrap_or_else(|e| e.into_inner());
        let clone = match clone {
            Ok(c) if clients.len() < MAX_CLIENTS => c,
            Ok(_) => {
                drop(clients);
                let _ =
                    AnswerLine::error(&CtlError::Busy { max: MAX_CLIENTS }).write_to(&mut stream);
                continue;
            }
            Err(e) => {
                warn!(error = %e, "control client");
                continue;
            }
        };
        let id = next_id;
        next_id += 1;
        clients.insert(id, clone);
        drop(clients);
        let (daemon, shutdown, open2) = (daemon.clone(), shutdown.clone(), open.clone());
        let spawned = thread::Builder::new()
            .name("mirrorfarm-ctl-client".into())
            .spawn(move || {
                if let Err(e) = client(stream, &*daemon, &shutdown) {
                    debug!(error = %e, "control client");
                }
                open2.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                open.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                warn!(error = %e, "cannot start a control client thread");
            }
        }
    }
    // Wake every client blocked reading its next request (it reads the end
    // of the stream); a follower still writes why it ends.
    for s in open.lock().unwrap_or_else(|e| e.into_inner()).values() {
        let _ = s.shutdown(Shutdown::Read);
    }
    for t in threads {
        let _ = t.join();
    }
}

/// Serves one client until it closes.
fn client(mut stream: UnixStream, daemon: &dyn Daemon, shutdown: &AtomicBool) -> io::Result<()> {
    if let Err(e) = authorize(mirrorfs::ctl::server::peer_uid(&stream)?) {
        warn!(error = %e, "control client refused");
        return AnswerLine::error(&e).write_to(&mut stream);
    }
    stream.set_read_timeout(Some(IDLE))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    loop {
        let line = match read_line(&mut reader) {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(()),
            Err(Line::TooLong) => {
                return AnswerLine::error(&CtlError::TooLong).write_to(&mut stream)
            }
            Err(Line::NotText) => {
                let e = CtlError::Malformed("not UTF-8 text: send one JSON object per line".into());
                AnswerLine::error(&e).write_to(&mut stream)?;
                continue;
            }
            Err(Line::Io(e)) => return Err(e),
        };
        if line.trim().is_empty() {
            continue;
        }
        if shutdown.load(Ordering::SeqCst) {
            return AnswerLine::error(&CtlError::ShuttingDown).write_to(&mut stream);
        }
        let request = match Request::decode(&line) {
            Ok(r) => r,
            Err(e) => {
                AnswerLine::error(&e).write_to(&mut stream)?;
                continue;
            }
        };
        debug!(
            request = request.name(),
            module = request.module(),
            "control request"
        );
        let answer = match &request {
            Request::State { module } => match daemon.state(module.as_deref()) {
                Ok(state) => AnswerLine::State(Box::new(state)),
                Err(e) => AnswerLine::Error(e),
            },
            Request::Log {
                module,
                follow: false,
                lines,
            } => {
                log::send_tail(daemon, module, *lines, &mut stream)?;
                continue;
            }
            Request::Log {
                module,
                follow: true,
                lines,
            } => {
                let probe = stream.try_clone()?;
                return log::follow(daemon, module, *lines, &mut stream, shutdown, || {
                    client_gone(&probe)
                });
            }
            _ => order::apply(daemon, &request),
        };
        if let AnswerLine::Error(e) = &answer {
            info!(request = request.name(), module = request.module(), error = %e, "control request refused");
        }
        answer.write_to(&mut stream)?;
    }
}

/// Why a request line could not be read.
enum Line {
    TooLong,
    NotText,
    Io(io::Error),
}

/// The next line (without its newline), `None` at the end of the stream; a
/// line longer than [`MAX_LINE`] is refused without reading it whole.
fn read_line(reader: &mut impl BufRead) -> Result<Option<String>, Line> {
    let mut buf = Vec::new();
    let n = reader
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .map_err(Line::Io)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > MAX_LINE {
        return Err(Line::TooLong);
    }
    String::from_utf8(buf).map(Some).map_err(|_| Line::NotText)
}

/// Waits up to `timeout` for a client to connect; true when one is there.
fn readable(listener: &UnixListener, timeout: Duration) -> io::Result<bool> {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call.
    let n = unsafe { libc::poll(&mut fd, 1, timeout.as_millis() as libc::c_int) };
    match n {
        n if n > 0 => Ok(true),
        0 => Ok(false),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// True when the client has closed its end (or the connection failed, or
/// its reading was ended at shutdown).
fn client_gone(s: &UnixStream) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: b is valid for 1 byte; MSG_PEEK leaves any data in place.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock,
    }
}

#[cfg(test)]
#[path = "server_test.rs"]
mod tests;
