//! The mount's state, from its control socket: the status, waiting until it
//! reaches a state, and the predicates the bench waits for.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::lab::FuseMount;
use crate::common::sys::nap;

/// What `mirrorfs status --control SOCK --json` prints: the control socket's
/// one-line answer to `status`, asked here directly (no process per poll).
pub(crate) fn status(control: &Path) -> io::Result<Value> {
    let mut s = UnixStream::connect(control)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(s, "status")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(io::Error::other)
}

/// Polls the status every 25 ms until `done` holds; returns that status and
/// when it was seen. Panics after `limit` with the last status.
pub(crate) fn wait_status(
    control: &Path,
    mount: &mut FuseMount,
    what: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> (Value, Instant) {
    let end = Instant::now() + limit;
    let mut last = Value::Null;
    loop {
        mount.check_alive();
        if let Ok(v) = status(control) {
            let now = Instant::now();
            if done(&v) {
                return (v, now);
            }
            last = v;
        }
        if Instant::now() > end {
            panic!("{what}: not reached within {limit:?}; last status: {last}");
        }
        nap(Duration::from_millis(25));
    }
}

pub(crate) fn role(v: &Value) -> &str {
    v["role"].as_str().unwrap_or("")
}

/// `mirrorfs status` shows PRIM and nothing dirty: in sync.
pub(crate) fn in_sync(v: &Value) -> bool {
    role(v) == "PRIM" && v["dirty_files"].as_u64() == Some(0)
}
