//! The Prometheus endpoint (`metrics: Some("127.0.0.1:9480")` in node.ron):
//! `GET /metrics` answers the text exposition format the daemon renders.
//!
//! Owns: one listening socket and the thread that serves it, one request at a
//! time (a scrape every few seconds needs no more). Must not: block the daemon
//! (it runs on its own thread; `render` is the only call into the daemon) or
//! let a client hold it for long (requests are bounded in size and time).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Largest request head read; longer ones get 431.
pub const MAX_REQUEST: usize = 8192;

/// How long one client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How long, after answering, input from the client is still drained.
const LINGER: Duration = Duration::from_millis(500);

/// How much input from the client is drained after answering, at most.
const MAX_DRAIN: usize = 64 * 1024;

/// How often the accept loop looks at `shutdown` while idle.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);

/// Renders the metrics text (every line ends with `\n`).
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Listens on `addr` (port 0 picks one) and serves from a new thread until
/// `shutdown` is set (seen within ~100 ms). Returns the bound address and the
/// thread, which the caller joins after setting `shutdown`.
pub fn serve(
    addr: SocketAddr,
    render: Render,
    shutdown: Arc<AtomicBool>,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let handle = thread::Builder::new()
        .name("metrics".into())
        .spawn(move || accept_loop(&listener, &*render, &shutdown))?;
    tracing::info!(addr = %local, "metrics endpoint listening");
    Ok((local, handle))
}

fn accept_loop(
    listener: &TcpListener,
    render: &(dyn Fn() -> String + Send + Sync),
    shutdown: &AtomicBool,
) {
    while !shutdown.load(Ordering::Relaxed) {
        match wait_readable(listener, SHUTDOWN_POLL) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: poll failed; stopping it");
                return;
            }
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = handle(stream, render) {
                    tracing::debug!(%peer, error = %e, "metrics request failed");
                }
            }
            // The client may have gone between poll and accept; a lack of
            // descriptors is passing: keep serving.
            Err(e) => tracing::debug!(error = %e, "metrics endpoint: accept failed"),
        }
    }
    tracing::debug!("metrics endpoint stopped");
}

/// Waits up to `timeout` for a connection to accept.
fn wait_readable(listener: &TcpListener, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    match rc {
        rc if rc > 0 => Ok(true),
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

/// Reads one request head and answers it; the connection is then closed.
fn handle(mut stream: TcpStream, render: &(dyn Fn() -> String + Send + Sync)) -> io::Result<()> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() > MAX_REQUEST {
            break false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head too slow",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    let response = if complete {
        respond(&head, render)
    } else {
        Response::text(
            431,
            "Request Header Fields Too Large",
            "request too large\n",
        )
    };
    stream.write_all(&response.encode())?;
    linger(&mut stream, deadline);
    Ok(())
}

/// Closes our side, then reads and drops what the client still sends (the
/// rest of an oversized request, a body) until it closes too. Closing with
/// unread input would make the kernel send a reset, and the client could lose
/// the answer we just wrote.
fn linger(stream: &mut TcpStream, deadline: Instant) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = deadline.min(Instant::now() + LINGER);
    let mut buf = [0u8; 4096];
    let mut drained = 0;
    while drained < MAX_DRAIN {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => drained += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The answer to one request head.
fn respond(head: &[u8], render: &(dyn Fn() -> String + Send + Sync)) -> Response {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::text(400, "Bad Request", "bad request line\n");
    };
    if !version.starts_with("HTTP/1.") {
        return Response::text(400, "Bad Request", "HTTP/1.x only\n");
    }
    let path = target.split('?').next().unwrap_or(target);
    if path != "/metrics" {
        return Response::text(404, "Not Found", "not found: the metrics are at /metrics\n");
    }
    match method {
        "GET" | "HEAD" => Response {
            status: 200,
            reason: "OK",
            content_type: CONTENT_TYPE,
            body: render(),
            head_only: method == "HEAD",
        },
        _ => Response::text(405, "Method Not Allowed", "GET /metrics only\n"),
    }
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    /// A HEAD request: the headers of the GET answer, no body.
    head_only: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Self {
        Self {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.to_owned(),
            head_only: false,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

#[cfg(test)]
#[path = "metrics_test.rs"]
mod tests;
