//! The `watch` request: a [`Status`] at once, then one on every change, until
//! the client closes the connection (or the socket's server stops).
//!
//! A change is one of: the role, connected, the dirty counts, stalled, the
//! last error, in sync, the generation or history, whether an `alone` grant
//! is held, the held ops, and on a serve: primary connected, resync running,
//! inconsistent. Those are sent at once. Progress (the resync's counters, a
//! serve's last applied op) is sent at most every [`PROGRESS_EVERY`]. The
//! rest (ops in flight, seconds in the role, seconds left of a grant) is
//! carried by the next object sent but is no change by itself. The backend
//! wakes the watcher ([`Control::wait_change`]); nothing polls it.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Control, Status};

/// Progress is sent at most this often.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// While nothing changes, how often the watcher checks that its client is
/// still there (and that the server is not stopping).
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// True when `a` and `b` differ in a field whose change is sent at once.
fn differ_at_once(a: &Status, b: &Status) -> bool {
    let grant = |s: &Status| s.alone_secs_left.map(|g| g.is_some());
    a.role != b.role
        || a.connected != b.connected
        || a.dirty_files != b.dirty_files
        || a.dirty_bytes != b.dirty_bytes
        || a.stalled != b.stalled
        || a.last_error != b.last_error
        || a.in_sync != b.in_sync
        || a.generation != b.generation
        || a.history != b.history
        || a.resync.is_some() != b.resync.is_some()
        || grant(a) != grant(b)
        || a.held_ops != b.held_ops
        || a.primary_connected != b.primary_connected
        || a.resync_running != b.resync_running
        || a.inconsistent != b.inconsistent
}

/// True when `a` and `b` differ in progress (sent at most every
/// [`PROGRESS_EVERY`]).
fn progress_moved(a: &Status, b: &Status) -> bool {
    let resync = |s: &Status| {
        s.resync
            .as_ref()
            .map(|r| (r.files_done, r.files_left, r.bytes_sent))
    };
    let applied = |s: &Status| s.last_applied.flatten().map(|l| l.seq);
    resync(a) != resync(b) || applied(a) != applied(b)
}

/// Streams status lines to `out` until the client closes, a write fails or
/// `stop` is set.
pub(super) fn run(
    backend: &dyn Control,
    out: &mut UnixStream,
    stop: &AtomicBool,
) -> io::Result<()> {
    // The count first: a change after it is then seen by the first wait.
    let mut seen = backend.wait_change(0, Duration::ZERO);
    let mut last = backend.status();
    send(out, &last)?;
    let mut sent_at = Instant::now();
    // Progress changed since the last line, not sent yet (too soon).
    let mut progress_due = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let timeout = if progress_due {
            PROGRESS_EVERY.saturating_sub(sent_at.elapsed())
        } else {
            CHECK_EVERY
        };
        let now_seen = backend.wait_change(seen, timeout);
        let changed = now_seen != seen;
        seen = now_seen;
        let progress_time = progress_due && sent_at.elapsed() >= PROGRESS_EVERY;
        if !changed && !progress_time {
            if client_gone(out) {
                return Ok(());
            }
            continue;
        }
        let st = backend.status();
        let at_once = differ_at_once(&st, &last);
        let moved = progress_moved(&st, &last);
        if at_once || ((moved || progress_due) && sent_at.elapsed() >= PROGRESS_EVERY) {
            send(out, &st)?;
            last = st;
            sent_at = Instant::now();
            progress_due = false;
        } else if moved {
            progress_due = true;
        }
    }
}

fn send(out: &mut UnixStream, st: &Status) -> io::Result<()> {
    let mut line = serde_json::to_string(st).map_err(io::Error::other)?;
    line.push('\n');
    out.write_all(line.as_bytes())
}

/// True when the client has closed its end (or the socket failed).
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
