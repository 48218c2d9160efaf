//! The client's side of the failover benchmark: a tiny HTTP/1.1 client (GET
//! and PUT, one connection per request, `Connection: close`), the prober that
//! starts a GET every 20 ms from the client's network namespace, and the
//! outage computed from its samples.
//!
//! Requests start on a fixed schedule, each on its own thread, whether or not
//! the earlier ones have finished: a request stuck in its 0.5 s timeout (a
//! SYN sent to the MAC address of a node that no longer holds the VIP) does
//! not hold back the next one, so a recovery is seen within 20 ms of when it
//! happens, not up to 0.5 s later. Every time comes from one clock
//! (`Instant`, monotonic) in this process.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::common::sys;

/// How often the prober starts a GET.
pub(crate) const PERIOD: Duration = Duration::from_millis(20);
/// A GET's limit for connect + send + the whole answer.
pub(crate) const TIMEOUT: Duration = Duration::from_millis(500);

/// An HTTP answer.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

/// One request to `addr` (`method path`, with `body` if not empty), all of it
/// within `limit`; the answer is read until the server closes.
pub(crate) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    limit: Duration,
) -> Result<Response, String> {
    let deadline = Instant::now() + limit;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("timed out after {} ms", limit.as_millis()))
    };
    let mut s = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: mirrorfarm-failover-bench\r\n",
        addr.ip()
    );
    if !body.is_empty() || method == "PUT" {
        req += &format!("Content-Length: {}\r\n", body.len());
    }
    req += "\r\n";
    let mut out = req.into_bytes();
    out.extend_from_slice(body);
    s.set_write_timeout(Some(left()?))
        .map_err(|e| format!("socket: {e}"))?;
    s.write_all(&out).map_err(|e| format!("send: {e}"))?;
    let _ = s.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
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
    parse(&answer)
}

/// A GET's status and body, or why it failed.
pub(crate) fn get(addr: SocketAddr, path: &str, limit: Duration) -> Result<Response, String> {
    request(addr, "GET", path, &[], limit)
}

fn parse(answer: &[u8]) -> Result<Response, String> {
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("incomplete answer ({} bytes)", answer.len()))?;
    let head = String::from_utf8_lossy(&answer[..head_end]);
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {:?}", head.lines().next()))?;
    Ok(Response {
        status,
        body: answer[head_end + 4..].to_vec(),
    })
}

/// One GET of the prober.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    /// Answered 200 within the timeout.
    pub(crate) ok: bool,
    /// Why it failed (`connect: Connection refused (os error 111)`, ...).
    pub(crate) error: Option<String>,
}

/// GETs `/` of `target` every [`PERIOD`] from a network namespace until
/// stopped (or dropped).
pub(crate) struct Prober {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    scheduler: Option<JoinHandle<()>>,
}

impl Prober {
    pub(crate) fn start(netns: &str, target: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stop2, samples2) = (stop.clone(), samples.clone());
        // Threads spawned by the scheduler inherit its network namespace.
        let scheduler = sys::spawn_in_netns(netns, move || {
            let mut inflight: Vec<JoinHandle<()>> = Vec::new();
            let mut next = Instant::now();
            while !stop2.load(Ordering::SeqCst) {
                let samples = samples2.clone();
                inflight.retain(|h| !h.is_finished());
                inflight.push(thread::spawn(move || {
                    let start = Instant::now();
                    let r = get(target, "/", TIMEOUT);
                    let error = match r {
                        Ok(r) if r.status == 200 => None,
                        Ok(r) => Some(format!("status {}", r.status)),
                        Err(e) => Some(e),
                    };
                    let s = Sample {
                        start,
                        end: Instant::now(),
                        ok: error.is_none(),
                        error,
                    };
                    if let Ok(mut v) = samples.lock() {
                        v.push(s);
                    }
                }));
                // A late wake-up does not make a burst: the schedule restarts from now.
                next = (next + PERIOD).max(Instant::now());
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            for h in inflight {
                let _ = h.join();
            }
        });
        Self {
            stop,
            samples,
            scheduler: Some(scheduler),
        }
    }

    /// The samples so far, by start time.
    pub(crate) fn samples(&self) -> Vec<Sample> {
        let mut v = self.samples.lock().map(|v| v.clone()).unwrap_or_default();
        v.sort_by_key(|s| s.start);
        v
    }

    /// Waits until `n` GETs in a row have succeeded (after `since`).
    pub(crate) fn wait_good(&self, n: usize, limit: Duration) -> Result<(), String> {
        let since = Instant::now();
        let end = since + limit;
        loop {
            let s = self.samples();
            let tail: Vec<&Sample> = s.iter().filter(|s| s.start >= since).collect();
            if tail.len() >= n && tail[tail.len() - n..].iter().all(|s| s.ok) {
                return Ok(());
            }
            if Instant::now() > end {
                let last = tail.iter().rev().find_map(|s| s.error.clone());
                return Err(format!(
                    "the client did not get {n} good answers in a row within {} s (last error: {})",
                    limit.as_secs(),
                    last.unwrap_or_else(|| "none".into())
                ));
            }
            sys::nap(Duration::from_millis(20));
        }
    }

    /// Stops the schedule, waits for the requests in flight, returns every sample.
    pub(crate) fn stop(mut self) -> Vec<Sample> {
        self.halt();
        self.samples()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.scheduler.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.halt();
    }
}

/// What the client saw of one event.
#[derive(Clone, Debug, Default)]
pub(crate) struct Outage {
    /// From the start of the first failed GET to the start of the first
    /// good one after it; 0 if none failed; None if the service did not come
    /// back.
    pub(crate) secs: Option<f64>,
    /// Failed GETs within the outage.
    pub(crate) failed: usize,
    /// Failed GETs after the service came back (a flapping VIP).
    pub(crate) later_failures: usize,
    /// When the service came back, if it did (or the event, if nothing failed).
    pub(crate) back: Option<Instant>,
    /// The distinct errors seen, with their counts.
    pub(crate) errors: Vec<(String, usize)>,
}

/// The outage after `event` in `samples` (sorted by start): GETs still in
/// flight at the event count, since the event may be what failed them.
pub(crate) fn outage(samples: &[Sample], event: Instant) -> Outage {
    let after: Vec<&Sample> = samples.iter().filter(|s| s.end >= event).collect();
    let Some(first_fail) = after.iter().position(|s| !s.ok) else {
        return Outage {
            secs: Some(0.0),
            back: Some(event),
            ..Outage::default()
        };
    };
    let mut errors: Vec<(String, usize)> = Vec::new();
    for s in &after[first_fail..] {
        if let Some(e) = &s.error {
            // "connect: Connection refused (os error 111)" → one kind per message.
            match errors.iter_mut().find(|(k, _)| k == e) {
                Some((_, n)) => *n += 1,
                None => errors.push((e.clone(), 1)),
            }
        }
    }
    let t0 = after[first_fail].start;
    let back = after[first_fail..].iter().position(|s| s.ok);
    match back {
        None => Outage {
            secs: None,
            failed: after.len() - first_fail,
            later_failures: 0,
            back: None,
            errors,
        },
        Some(b) => {
            let b = first_fail + b;
            let back_at = after[b].start;
            Outage {
                secs: Some(back_at.duration_since(t0).as_secs_f64()),
                failed: after[first_fail..b].iter().filter(|s| !s.ok).count(),
                later_failures: after[b..].iter().filter(|s| !s.ok).count(),
                back: Some(back_at),
                errors,
            }
        }
    }
}

/// Probes until the service has come back after `event` and stayed observed
/// for `tail`, or until `limit`; returns every sample.
pub(crate) fn observe(
    prober: Prober,
    event: Instant,
    tail: Duration,
    limit: Duration,
) -> Vec<Sample> {
    let end = event + limit;
    loop {
        let o = outage(&prober.samples(), event);
        let now = Instant::now();
        let done = match o.back {
            // Nothing failed yet: keep watching for a while (a takeover may
            // take seconds to start failing requests, e.g. a stopping Apache).
            Some(b) if o.failed == 0 && o.secs == Some(0.0) => {
                now >= b + tail.max(Duration::from_secs(10))
            }
            Some(b) => now >= b + tail,
            None => false,
        };
        if done || now >= end {
            return prober.stop();
        }
        sys::nap(Duration::from_millis(20));
    }
}
