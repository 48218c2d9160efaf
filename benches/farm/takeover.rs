//! The takeover's client: many clients, each a fixed source port of the
//! client's address (with the farm's `AddressAndPort` rule a client is an
//! address and port), each GETting `/node.txt` of the VIP in a loop (a GET
//! every [`PERIOD`], one at a time per client: a client's port holds one
//! connection), [`TIMEOUT`] for connect + answer. Every connection is
//! closed with a reset (SO_LINGER 0) after the answer, so no TIME_WAIT
//! keeps the port: the next GET from it is a new connection of the same
//! client. All times come from one monotonic clock in this process.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::common::sys;

/// How often each client starts a GET (if the previous one has ended).
pub(crate) const PERIOD: Duration = Duration::from_millis(20);
/// A GET's limit for connect + send + the whole answer: short, since a GET
/// that times out (a SYN no node answers) hides a recovery for this long; an
/// answered GET takes a few ms here.
pub(crate) const TIMEOUT: Duration = Duration::from_millis(50);
/// The first source port of the clients: above the kernel's ephemeral
/// range (32768-60999 by default), so that no connection of wrk's (nor its
/// TIME_WAIT) holds one.
pub(crate) const FIRST_PORT: u16 = 61000;

/// A GET of `/node.txt` from `src` (or any port) to `vip:80`, within
/// `limit`; the node's name that answered.
pub(crate) fn get_node(
    vip: Ipv4Addr,
    src: Option<SocketAddrV4>,
    limit: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + limit;
    let mut s = connect(src, SocketAddrV4::new(vip, 80), limit)?;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("timed out after {} ms", limit.as_millis()))
    };
    let _ = s.set_nodelay(true);
    s.set_write_timeout(Some(left()?))
        .map_err(|e| format!("socket: {e}"))?;
    s.write_all(
        format!("GET /node.txt HTTP/1.1\r\nHost: {vip}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        s.set_read_timeout(Some(left()?))
            .map_err(|e| format!("socket: {e}"))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("incomplete answer ({} bytes)", answer.len()))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("status {:?}", head.lines().next().unwrap_or("")));
    }
    Ok(body.trim().to_string())
}

/// A TCP connection from `src` (SO_REUSEADDR, closed with a reset) to
/// `dst` within `limit`.
fn connect(
    src: Option<SocketAddrV4>,
    dst: SocketAddrV4,
    limit: Duration,
) -> Result<TcpStream, String> {
    let sin = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let err = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain syscalls on a descriptor we own; every pointer is to a
    // live local of the size passed. The descriptor goes into a TcpStream
    // (which closes it) right after socket() succeeds.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(err("socket"));
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
        if let Some(src) = src {
            let a = sin(src);
            if libc::bind(fd, (&a as *const libc::sockaddr_in).cast(), len) != 0 {
                return Err(err("bind"));
            }
        }
        let a = sin(dst);
        if libc::connect(fd, (&a as *const libc::sockaddr_in).cast(), len) != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(format!("connect: {e}"));
            }
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            let ms = limit.as_millis().min(i32::MAX as u128) as libc::c_int;
            let n = loop {
                let n = libc::poll(&mut p, 1, ms);
                if n >= 0
                    || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    break n;
                }
            };
            if n == 0 {
                return Err(format!("connect: timed out after {} ms", limit.as_millis()));
            }
            if n < 0 {
                return Err(err("poll"));
            }
            let mut so: libc::c_int = 0;
            let mut sl = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut so as *mut libc::c_int).cast(),
                &mut sl,
            );
            if so != 0 {
                return Err(format!(
                    "connect: {}",
                    std::io::Error::from_raw_os_error(so)
                ));
            }
        }
        stream
            .set_nonblocking(false)
            .map_err(|e| format!("socket: {e}"))?;
        Ok(stream)
    }
}

/// One GET of a client.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    /// The node that answered, or why it failed.
    pub(crate) answer: Result<String, String>,
}

/// The clients, each a thread in the client's namespace, until stopped
/// (or dropped).
pub(crate) struct Clients {
    stop: Arc<AtomicBool>,
    samples: Vec<Arc<Mutex<Vec<Sample>>>>,
    threads: Vec<JoinHandle<()>>,
    pub(crate) ports: Vec<u16>,
}

impl Clients {
    /// Starts `n` clients from `addr`, ports [`FIRST_PORT`]`..+n`.
    pub(crate) fn start(netns: &str, addr: Ipv4Addr, vip: Ipv4Addr, n: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut c = Self {
            stop: stop.clone(),
            samples: Vec::new(),
            threads: Vec::new(),
            ports: (FIRST_PORT..FIRST_PORT + n).collect(),
        };
        for &port in &c.ports {
            let samples = Arc::new(Mutex::new(Vec::new()));
            c.samples.push(samples.clone());
            let stop = stop.clone();
            c.threads.push(sys::spawn_in_netns(netns, move || {
                let src = SocketAddrV4::new(addr, port);
                let mut next = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    let start = Instant::now();
                    let answer = get_node(vip, Some(src), TIMEOUT);
                    let end = Instant::now();
                    if let Ok(mut v) = samples.lock() {
                        v.push(Sample { start, end, answer });
                    }
                    next = (next + PERIOD).max(Instant::now());
                    thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            }));
        }
        c
    }

    /// Client `i`'s samples so far.
    pub(crate) fn samples(&self, i: usize) -> Vec<Sample> {
        self.samples[i]
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Waits until every client's last `n` GETs (after now) were answered by
    /// one and the same node; returns that node per client.
    pub(crate) fn wait_steady(&self, n: usize, limit: Duration) -> Result<Vec<String>, String> {
        let since = Instant::now();
        let end = since + limit;
        loop {
            let mut nodes = Vec::new();
            let mut why = None;
            for i in 0..self.ports.len() {
                let s: Vec<Sample> = self
                    .samples(i)
                    .into_iter()
                    .filter(|s| s.start >= since)
                    .collect();
                let tail = &s[s.len().saturating_sub(n)..];
                match tail.first().map(|s| &s.answer) {
                    Some(Ok(node))
                        if tail.len() == n
                            && tail.iter().all(|s| s.answer.as_ref() == Ok(node)) =>
                    {
                        nodes.push(node.clone());
                    }
                    _ => {
                        why = Some(format!(
                            "client port {}: last {:?}",
                            self.ports[i],
                            s.last().map(|s| &s.answer)
                        ));
                        break;
                    }
                }
            }
            if why.is_none() {
                return Ok(nodes);
            }
            if Instant::now() > end {
                return Err(format!(
                    "the clients did not get {n} answers in a row from one node each within {} s ({})",
                    limit.as_secs(),
                    why.unwrap_or_default()
                ));
            }
            sys::nap(Duration::from_millis(20));
        }
    }

    /// Stops every client and waits for them.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What one client saw after the event.
pub(crate) struct Seen {
    /// Seconds from the event to the end of its first GET started after the
    /// event and answered by another node than `dead` (None: never).
    pub(crate) back: Option<f64>,
    /// Its failed GETs after the event.
    pub(crate) failed: usize,
    /// Failed GETs after it was served again.
    pub(crate) later_failures: usize,
    /// The node that served it again.
    pub(crate) by: Option<String>,
}

/// What client `samples` saw after `event`.
pub(crate) fn seen(samples: &[Sample], event: Instant, dead: &str) -> Seen {
    let after: Vec<&Sample> = samples.iter().filter(|s| s.end >= event).collect();
    let back = after
        .iter()
        .position(|s| s.start >= event && s.answer.as_ref().is_ok_and(|n| n != dead));
    let failed_in = |v: &[&Sample]| v.iter().filter(|s| s.answer.is_err()).count();
    match back {
        Some(b) => Seen {
            back: Some(after[b].end.duration_since(event).as_secs_f64()),
            failed: failed_in(&after[..b]),
            later_failures: failed_in(&after[b..]),
            by: after[b].answer.clone().ok(),
        },
        None => Seen {
            back: None,
            failed: failed_in(&after),
            later_failures: 0,
            by: None,
        },
    }
}
