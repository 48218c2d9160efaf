//! Checker probes: one blocking check of the application's health, whose
//! failure text says what was seen. The daemon runs them on its own thread at
//! each checker's interval and feeds the results to `cluster::checker`.
//!
//! Owns: the probes themselves (process table, TCP connect, an HTTP/1.0 GET,
//! a custom command, an interface's state). Must not: change anything; the
//! command probe kills only the command's own process group, past its timeout.
//!
//! Everything is read in the calling thread's network namespace, so that a node
//! of the one-machine lab (`nsenter --net`, sharing the host's mount namespace
//! and so its `/sys`) sees its own processes and interfaces only.

use std::fs;
use std::io::{self, Read, Write};
use std::mem;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::driver::scripts::{kill_group, wait_timeout};

/// One kind of health check, with its target: the module file's
/// [`Check`](crate::config::Check) itself. `Process` looks only at processes
/// in this network namespace; `Http` resolves a host name with the system
/// resolver, whose wait the timeout does not bound (use an address for a
/// local service); `Interface` means up with a carrier.
pub type Probe = crate::config::Check;

/// Runs one probe, taking at most about `timeout`. `Err` says what was seen.
pub fn probe(p: &Probe, timeout: Duration) -> Result<(), String> {
    match p {
        Probe::Process { name } => process(name),
        Probe::Tcp { addr } => tcp(*addr, timeout).map(drop),
        Probe::Http { url, expect_status } => http(url, *expect_status, timeout),
        Probe::Command { path, args } => command(path, args, timeout),
        Probe::Interface { name } => interface(name),
    }
}

fn process(name: &str) -> Result<(), String> {
    let own_net = fs::read_link("/proc/thread-self/ns/net")
        .map_err(|e| format!("cannot read /proc/thread-self/ns/net: {e}"))?;
    let entries = fs::read_dir("/proc").map_err(|e| format!("cannot list /proc: {e}"))?;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // A process may exit while we look: skip it, whatever the error.
        let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if comm.trim_end_matches('\n') != name {
            continue;
        }
        match fs::read_link(format!("/proc/{pid}/ns/net")) {
            Ok(net) if net == own_net => return Ok(()),
            _ => continue,
        }
    }
    Err(format!("no process named {name}"))
}

fn tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    TcpStream::connect_timeout(&addr, timeout.max(Duration::from_millis(1))).map_err(|e| {
        let seen = match e.kind() {
            io::ErrorKind::ConnectionRefused => "refused".to_owned(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                format!("no answer within {} ms", timeout.as_millis())
            }
            _ => e.to_string(),
        };
        format!("connect {addr}: {seen}")
    })
}

fn http(url: &str, expect: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let target = HttpTarget::parse(url)?;
    let addr = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", target.host))?;
    let mut stream = tcp(addr, timeout)?;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let timed_out = |what: &str, e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("{what} {url}: no answer within {} ms", timeout.as_millis())
        }
        _ => format!("{what} {url}: {e}"),
    };
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: mirrorfarm-checker\r\nConnection: close\r\n\r\n",
        target.path, target.host_header
    );
    stream
        .set_write_timeout(Some(left()))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| timed_out("sending the request to", e))?;

    // Only the status line matters; read until its end (bounded).
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        stream
            .set_read_timeout(Some(left()))
            .map_err(|e| format!("{url}: {e}"))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(timed_out("reading the answer from", e)),
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    let status = parse_status_line(&head).ok_or_else(|| {
        format!(
            "no HTTP status line from {url} (got {:?})",
            first_line(&head)
        )
    })?;
    if status == expect {
        Ok(())
    } else {
        Err(format!("HTTP {status} from {url} (expected {expect})"))
    }
}

/// `HTTP/1.x NNN …` → NNN.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = first_line(head);
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?.trim_end_matches('\r');
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

fn first_line(head: &[u8]) -> String {
    let end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    String::from_utf8_lossy(&head[..end.min(200)])
        .trim_end_matches('\r')
        .to_owned()
}

/// The parts of an `http://` URL the probe needs.
#[derive(Debug, PartialEq, Eq)]
struct HttpTarget {
    /// Host name or address, without brackets.
    host: String,
    /// `Host:` header value (with brackets and a non-default port).
    host_header: String,
    port: u16,
    /// Path and query, at least `/`.
    path: String,
}

impl HttpTarget {
    fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!(
                "{url}: only http:// URLs can be checked (probe TLS services with Tcp or Command)"
            )
        })?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_owned()),
        };
        let bad = || format!("{url}: cannot parse the host and port");
        if url.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{url:?}: spaces and control characters must be %-encoded"
            ));
        }
        if authority.is_empty() || authority.contains('@') {
            return Err(bad());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(bad)?),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => 80,
            Some(p) => p.parse().map_err(|_| bad())?,
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_owned(),
            host_header: authority.to_owned(),
            port,
            path,
        })
    }
}

fn command(path: &Path, args: &[String], timeout: Duration) -> Result<(), String> {
    let shown = path.display();
    let mut child = Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own group, so that a timeout also ends what it started.
        .process_group(0)
        .spawn()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => format!("{shown} not found"),
            io::ErrorKind::PermissionDenied => format!("{shown} is not executable (chmod +x)"),
            _ => format!("cannot run {shown}: {e}"),
        })?;
    match wait_timeout(&mut child, timeout) {
        Ok(Some(status)) if status.success() => Ok(()),
        Ok(Some(status)) => Err(match (status.code(), status.signal()) {
            (Some(code), _) => format!("{shown} exited with status {code}"),
            (None, Some(sig)) => format!("{shown} killed by signal {sig}"),
            (None, None) => format!("{shown} failed"),
        }),
        Ok(None) => {
            // Not reaped yet, so the group id is still its own.
            let _ = kill_group(child.id(), libc::SIGKILL);
            let _ = child.wait();
            Err(format!(
                "{shown} did not finish within {} ms (killed)",
                timeout.as_millis()
            ))
        }
        Err(e) => {
            let _ = kill_group(child.id(), libc::SIGKILL);
            let _ = child.wait();
            Err(format!("waiting for {shown} failed: {e}"))
        }
    }
}

/// Up means administratively up and operationally up (`IFF_RUNNING`: operstate
/// "up", or "unknown" as loopback and carrier-less drivers report, which the
/// kernel only keeps while the carrier is on). Asked with SIOCGIFFLAGS on a
/// socket rather than read from `/sys/class/net`, which shows the network
/// namespace of whoever mounted `/sys`, not ours.
fn interface(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', '\0']) {
        return Err(format!("{name:?}: not an interface name"));
    }
    // SAFETY: plain socket(2), checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("{name}: socket: {}", io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: req holds a NUL-terminated name (length checked above).
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENODEV) => format!("{name}: no such interface"),
            _ => format!("{name}: {e}"),
        });
    }
    // SAFETY: the kernel filled ifru_flags for SIOCGIFFLAGS.
    let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
    if flags & libc::IFF_UP == 0 {
        Err(format!("{name}: administratively down"))
    } else if flags & libc::IFF_RUNNING == 0 {
        Err(format!("{name}: link down"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
#[path = "checkers_test.rs"]
mod tests;
