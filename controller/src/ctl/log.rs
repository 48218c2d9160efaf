//! The `log` request: `{"version":1,"request":"log","module":M,"follow":B,
//! "lines":N}`, answered with the module's last `N` log lines, one
//! `{"version":1,"log":LINE}` each, oldest first, then
//! `{"version":1,"end":true}`. With `follow` there is no end: after those
//! lines every new line is sent as it is written, until the client closes
//! the connection (or the daemon stops, which is answered with an error
//! line). `follow` defaults to false, `lines` to [`DEFAULT_LINES`].
//!
//! A follower never misses or repeats a line: it asks [`Daemon::follow`] for
//! the end of the log first, and reads on from `lines` before it by line
//! number; the daemon's log may grow meanwhile.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Map, Value};

use super::{module_field, AnswerLine, CtlError, Daemon, Request};

/// The lines sent when a request does not say (`mirrorfarm log MODULE`).
pub const DEFAULT_LINES: u32 = 20;

/// The most lines one request may ask for.
pub const MAX_LINES: u32 = 100_000;

/// The line number that asks [`Daemon::follow`] for the end of the log.
pub const FROM_END: u64 = u64::MAX;

/// How long one [`Daemon::follow`] call waits for a new line before the
/// server checks that the client is still there and the daemon not stopping.
pub(super) const FOLLOW_TICK: Duration = Duration::from_millis(500);

/// The fields of a `log` request.
pub(super) fn decode(fields: &mut Map<String, Value>) -> Result<Request, CtlError> {
    let module = module_field("log", fields)?;
    let follow = match fields.remove("follow") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(v) => {
            return Err(CtlError::Malformed(format!(
                "log's \"follow\" is {v}: send true or false"
            )))
        }
    };
    let lines = match fields.remove("lines") {
        None | Some(Value::Null) => DEFAULT_LINES,
        Some(v) => match v.as_u64() {
            Some(n) if n <= u64::from(MAX_LINES) => n as u32,
            _ => {
                return Err(CtlError::Malformed(format!(
                    "log's \"lines\" is {v}: send a whole number from 0 to {MAX_LINES}"
                )))
            }
        },
    };
    Ok(Request::Log {
        module,
        follow,
        lines,
    })
}

/// Answers a `log` without `follow`: the last `lines` lines, then the end.
pub(super) fn send_tail(
    daemon: &dyn Daemon,
    module: &str,
    lines: u32,
    out: &mut impl Write,
) -> io::Result<()> {
    match daemon.log(module, lines) {
        Ok(tail) => {
            for line in tail {
                AnswerLine::Log(line).write_to(out)?;
            }
            AnswerLine::End.write_to(out)
        }
        Err(e) => AnswerLine::Error(e).write_to(out),
    }
}

/// Answers a `log` with `follow`: the last `lines` lines, then each new one,
/// until `client_gone` says so, `stop` is set (answered with an error line),
/// a write fails or the daemon fails (answered with its error).
pub(super) fn follow(
    daemon: &dyn Daemon,
    module: &str,
    lines: u32,
    out: &mut impl Write,
    stop: &AtomicBool,
    mut client_gone: impl FnMut() -> bool,
) -> io::Result<()> {
    let mut next = match daemon.follow(module, FROM_END, Duration::ZERO) {
        Ok((_, end)) => end.saturating_sub(u64::from(lines)),
        Err(e) => return AnswerLine::Error(e).write_to(out),
    };
    loop {
        if stop.load(Ordering::SeqCst) {
            return AnswerLine::error(&CtlError::ShuttingDown).write_to(out);
        }
        if client_gone() {
            return Ok(());
        }
        // Returns at once while there are lines to catch up on.
        let (batch, after) = match daemon.follow(module, next, FOLLOW_TICK) {
            Ok(x) => x,
            Err(e) => return AnswerLine::Error(e).write_to(out),
        };
        for line in batch {
            AnswerLine::Log(line).write_to(out)?;
        }
        next = after;
    }
}
