//! The control socket's server side: listens on a Unix socket (mode 0600),
//! checks every client's credentials (`SO_PEERCRED`: root only), and serves
//! each client on its own thread: request lines of at most [`MAX_LINE`]
//! bytes, each answered with one line, until the client closes (or asks to
//! `watch`, which streams until then). A malformed request is answered with
//! an error object naming the fix, and the connection goes on.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::{alone, fence, watch, Control, CtlError, ErrorAnswer, Request, MAX_LINE};

/// Clients served at once at most (each has a thread).
pub const MAX_CLIENTS: usize = 32;

/// A connection with no request for this long is closed.
const IDLE: Duration = Duration::from_secs(300);

/// The running control socket. Dropping it stops accepting, tells the
/// watchers to end and removes the socket file.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    listener: Arc<UnixListener>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop, blocked in accept(2) (which then fails with
        // EINVAL), so that it sees `stop`; this works even when the socket
        // file is gone.
        // SAFETY: shutdown(2) on a descriptor the listener owns until the
        // accept thread and we drop it.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on `path` (mode 0600; a stale socket there is replaced, anything
/// else is refused) and serves `backend` to root clients.
pub fn serve(path: &Path, backend: Arc<dyn Control>) -> io::Result<ControlServer> {
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
    let listener = Arc::new(UnixListener::bind(path)?);
    // Until this chmod the socket has the mode the umask leaves; a client
    // that connects in between is still checked by its uid.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let stop = Arc::new(AtomicBool::new(false));
    let accept = {
        let (stop, listener) = (stop.clone(), listener.clone());
        thread::Builder::new()
            .name("mirrorfs-control".into())
            .spawn(move || accept_loop(&listener, &backend, &stop))?
    };
    info!(socket = %path.display(), "control socket listening");
    Ok(ControlServer {
        path: path.to_owned(),
        listener,
        stop,
        accept: Some(accept),
    })
}

/// Root only: every other uid is refused.
pub fn authorize(uid: u32) -> Result<(), CtlError> {
    if uid == 0 {
        Ok(())
    } else {
        Err(CtlError::NotRoot { uid })
    }
}

/// The uid of the process at the other end of `s` (`SO_PEERCRED`).
pub fn peer_uid(s: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for the call and len is cred's size.
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

fn accept_loop(listener: &UnixListener, backend: &Arc<dyn Control>, stop: &Arc<AtomicBool>) {
    let clients = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "control socket accept");
                // EMFILE and the like: do not spin on them.
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            clients.fetch_sub(1, Ordering::SeqCst);
            let _ = answer_error(&mut stream, &CtlError::Busy { max: MAX_CLIENTS });
            continue;
        }
        let (backend, stop, n) = (backend.clone(), stop.clone(), clients.clone());
        let spawned = thread::Builder::new()
            .name("mirrorfs-ctl-client".into())
            .spawn(move || {
                if let Err(e) = client(stream, &*backend, &stop) {
                    debug!(error = %e, "control client");
                }
                n.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            clients.fetch_sub(1, Ordering::SeqCst);
            warn!(error = %e, "cannot start a control client thread");
        }
    }
}

/// Serves one client until it closes.
fn client(mut stream: UnixStream, backend: &dyn Control, stop: &AtomicBool) -> io::Result<()> {
    if let Err(e) = authorize(peer_uid(&stream)?) {
        warn!(error = %e, "control client refused");
        return answer_error(&mut stream, &e);
    }
    stream.set_read_timeout(Some(IDLE))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    loop {
        let line = match read_line(&mut reader) {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(()),
            Err(Line::TooLong) => return answer_error(&mut stream, &CtlError::TooLong),
            Err(Line::NotText) => {
                answer_error(
                    &mut stream,
                    &CtlError::Malformed("not UTF-8 text: send one JSON object per line".into()),
                )?;
                continue;
            }
            Err(Line::Io(e)) => return Err(e),
        };
        if line.trim().is_empty() {
            continue;
        }
        let request = match Request::decode(&line) {
            Ok(r) => r,
            Err(e) => {
                answer_error(&mut stream, &e)?;
                continue;
            }
        };
        debug!(request = request.name(), "control request");
        let answer = match request {
            Request::Watch => return watch::run(backend, &mut stream, stop),
            Request::Status => Ok(backend.status()),
            Request::Alone { seconds } => alone::apply(backend, seconds),
            Request::Fence => fence::apply_fence(backend),
            Request::Unfence => fence::apply_unfence(backend),
            Request::Latency { reset } => {
                let a = super::latency::answer(reset);
                let mut json = serde_json::to_string(&a).map_err(io::Error::other)?;
                json.push('\n');
                stream.write_all(json.as_bytes())?;
                continue;
            }
        };
        match answer {
            Ok(st) => {
                let mut json = serde_json::to_string(&st).map_err(io::Error::other)?;
                json.push('\n');
                stream.write_all(json.as_bytes())?;
            }
            Err(e) => {
                info!(request = request.name(), error = %e, "control order refused");
                answer_error(&mut stream, &e)?;
            }
        }
    }
}

fn answer_error(stream: &mut UnixStream, e: &CtlError) -> io::Result<()> {
    let mut line = ErrorAnswer::encode(e);
    line.push('\n');
    stream.write_all(line.as_bytes())
}

/// Why a request line could not be read.
enum Line {
    TooLong,
    NotText,
    Io(io::Error),
}

/// The next line (without its newline), `None` at the end of the stream; a
/// line longer than [`MAX_LINE`] is refused without reading it whole.
fn read_line(reader: &mut BufReader<UnixStream>) -> Result<Option<String>, Line> {
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

#[cfg(test)]
#[path = "server_test.rs"]
mod tests;
