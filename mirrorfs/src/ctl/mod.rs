//! The control protocol of a running `mirrorfs mount` or `mirrorfs serve`:
//! typed and versioned, JSON lines over a root-only Unix socket (`--control
//! PATH`). The socket takes orders: a controller that holds quorum grants a
//! primary that lost its peer the right to go on ALONE for a while, or fences
//! it; operators and scripts read the status.
//!
//! A client sends one request per line, e.g. `{"version":1,"request":"alone",
//! "seconds":5}` ([`Request`]); the bare line `status` of earlier versions is
//! still understood. Each answer is one line: the [`Status`] object, flat, or
//! `{"version":1,"error":"..."}` ([`ErrorAnswer`]) whose message names the
//! problem and the fix. `watch` answers with a status at once and another on
//! every change until the client closes. Several requests may follow each
//! other on one connection; `watch` takes the connection over.
//!
//! Owns: the types both ends share (requests, answers, [`Status`],
//! [`RootState`]) and their codec, the [`Control`] trait a mount or a serve
//! implements, the socket server ([`server`]: mode 0600, every client's uid
//! checked, a thread per client, bounded lines) and client ([`client`]); one
//! file per request kind ([`status`], [`watch`], [`alone`], [`fence`],
//! [`latency`]).
//! Must not: decide anything. Orders go to the backend, which decides and
//! answers with its status (or why it refused).

pub mod alone;
pub mod client;
pub mod fence;
pub mod latency;
mod mount;
pub mod server;
pub mod state;
pub mod status;
pub mod watch;

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use self::state::RootState;
pub use self::status::{AckMode, LastApplied, Role, Status};
pub use crate::mirror::ResyncProgress;

/// The version of the control protocol, carried by every request and answer.
pub const VERSION: u32 = 1;

/// The longest request line accepted, in bytes (a request is a few dozen).
pub const MAX_LINE: usize = 4096;

/// One request, as a client sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "lowercase")]
pub enum Request {
    /// Answer one [`Status`].
    Status,
    /// Answer a [`Status`] now and another on every change, until the client
    /// closes the connection.
    Watch,
    /// The controller holds quorum for `seconds` from now: a primary that
    /// lost its peer goes (or stays) ALONE until then; past it, it holds
    /// mutations again. Renewed by another `alone`.
    Alone {
        /// How long the grant lasts, from when it is received.
        seconds: f64,
    },
    /// Mutations fail with EIO from now on (until `unfence`).
    Fence,
    /// Lift a fence: back to HOLD, or to PRIM through a resync once the peer
    /// is back.
    Unfence,
    /// Answer where this process's replicated ops spent their time
    /// ([`latency::LatencyAnswer`]); with `reset`, forget it afterwards.
    Latency {
        /// Start counting afresh after answering.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        reset: bool,
    },
}

impl Request {
    /// The request's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Watch => "watch",
            Self::Alone { .. } => "alone",
            Self::Fence => "fence",
            Self::Unfence => "unfence",
            Self::Latency { .. } => "latency",
        }
    }

    /// The request as one line of JSON (without the newline).
    pub fn encode(&self) -> String {
        let extra = match self {
            Self::Alone { seconds } => format!(",\"seconds\":{}", Value::from(*seconds)),
            Self::Latency { reset: true } => ",\"reset\":true".to_owned(),
            _ => String::new(),
        };
        format!(
            "{{\"version\":{VERSION},\"request\":\"{}\"{extra}}}",
            self.name()
        )
    }

    /// Reads one request line (the newline may be there or not). Checks the
    /// version, the request's name and its fields; every error says what to
    /// send instead.
    pub fn decode(line: &str) -> Result<Self, CtlError> {
        let line = line.trim();
        // The one-word protocol of earlier versions (`mirrorfs status`).
        if line == "status" {
            return Ok(Self::Status);
        }
        let example = Self::Status.encode();
        let value: Value = serde_json::from_str(line).map_err(|e| {
            CtlError::Malformed(format!(
                "not JSON ({e}): send one JSON object per line, e.g. {example}"
            ))
        })?;
        let Value::Object(mut fields) = value else {
            return Err(CtlError::Malformed(format!(
                "{value} is not a JSON object: send one object per line, e.g. {example}"
            )));
        };
        match fields.remove("version") {
            Some(v) if v.as_u64() == Some(u64::from(VERSION)) => {}
            Some(v) => return Err(CtlError::Version { got: v.to_string() }),
            None => {
                return Err(CtlError::Malformed(format!(
                    "no \"version\": add \"version\":{VERSION}, e.g. {example}"
                )))
            }
        }
        let name = match fields.remove("request") {
            Some(Value::String(s)) => s,
            Some(v) => {
                return Err(CtlError::Malformed(format!(
                    "\"request\" is {v}, not a string: e.g. {example}"
                )))
            }
            None => {
                return Err(CtlError::Malformed(format!(
                    "no \"request\": e.g. {example}"
                )))
            }
        };
        let request = match name.as_str() {
            "status" => Self::Status,
            "watch" => Self::Watch,
            "alone" => Self::Alone {
                seconds: alone::seconds_field(fields.remove("seconds"))?,
            },
            "fence" => Self::Fence,
            "unfence" => Self::Unfence,
            "latency" => Self::Latency {
                reset: latency::reset_field(fields.remove("reset"))?,
            },
            _ => return Err(CtlError::UnknownRequest { name }),
        };
        if let Some(field) = fields.keys().next() {
            return Err(CtlError::Malformed(format!(
                "{name} takes no {field:?}: send {}",
                match request {
                    Self::Alone { .. } => "\"version\" and \"seconds\" only".to_owned(),
                    Self::Latency { .. } => "\"version\" and \"reset\" only".to_owned(),
                    _ => "\"version\" and \"request\" only".to_owned(),
                }
            )));
        }
        Ok(request)
    }
}

/// What a failed request is answered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    /// The protocol version ([`VERSION`]).
    pub version: u32,
    /// What went wrong and what to do about it.
    pub error: String,
}

impl ErrorAnswer {
    /// The answer to a request that failed with `e`, as one line of JSON.
    pub fn encode(e: &CtlError) -> String {
        let a = Self {
            version: VERSION,
            error: e.to_string(),
        };
        // A struct of a number and a string always serialises.
        serde_json::to_string(&a).unwrap_or_default()
    }
}

/// One answer line, as a client reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A status object.
    Status(Box<Status>),
    /// The figures of a `latency` request.
    Latency(latency::LatencyAnswer),
    /// The request failed; the message says why and what to do.
    Error(String),
}

impl Answer {
    /// Reads one answer line.
    pub fn decode(line: &str) -> Result<Self, serde_json::Error> {
        let value: Value = serde_json::from_str(line.trim())?;
        if value.get("error").is_some() {
            let e: ErrorAnswer = serde_json::from_value(value)?;
            return Ok(Self::Error(e.error));
        }
        if value.get("latency").is_some() {
            return Ok(Self::Latency(serde_json::from_value(value)?));
        }
        Ok(Self::Status(Box::new(serde_json::from_value(value)?)))
    }
}

/// Why a request was not carried out (answered as an [`ErrorAnswer`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CtlError {
    /// The line is not a well-formed request; the message says what to send.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The request names another protocol version.
    #[error("control protocol version {got} is not spoken here: this mirrorfs speaks version {VERSION}; send \"version\":{VERSION} (or use the mirrorfs of this version as the client)")]
    Version {
        /// The version the client sent.
        got: String,
    },
    /// No such request.
    #[error("unknown request {name:?}: the requests are status, watch, alone (with \"seconds\"), fence, unfence and latency (with \"reset\" if wanted)")]
    UnknownRequest {
        /// The name sent.
        name: String,
    },
    /// The request line is longer than [`MAX_LINE`].
    #[error("request longer than {MAX_LINE} bytes: send one JSON object per line")]
    TooLong,
    /// The client is not root.
    #[error(
        "the control socket answers root only (this client runs as uid {uid}): run it as root"
    )]
    NotRoot {
        /// The client's uid.
        uid: u32,
    },
    /// Too many clients at once.
    #[error("too many control clients at once ({max}): close the idle ones and try again")]
    Busy {
        /// The limit.
        max: usize,
    },
    /// The backend refused an order; the message says why and what to do.
    #[error("{0}")]
    Refused(String),
}

/// What the control socket drives: a primary's mount or a secondary's serve.
/// The socket calls these from its own threads, one per client.
pub trait Control: Send + Sync {
    /// The current status. Must be cheap (counters, no walk of the tree or
    /// the dirty files): a watcher asks after every change.
    fn status(&self) -> Status;

    /// Waits until the change count differs from `seen`, or `timeout`
    /// passes; returns the change count (or a value derived from it: the
    /// caller only compares it and passes it back). A change is anything a watcher is
    /// told of (see [`watch`]); changes that come with time alone (an op
    /// that now counts as stalled, a grant that ran out) count too. A
    /// spurious change is harmless.
    fn wait_change(&self, seen: u64, timeout: Duration) -> u64;

    /// The order `alone SECONDS`; answers the status once it took effect.
    fn alone(&self, seconds: f64) -> Result<Status, CtlError>;

    /// The order `fence`; answers the status once it took effect.
    fn fence(&self) -> Result<Status, CtlError>;

    /// The order `unfence`; answers the status once it took effect.
    fn unfence(&self) -> Result<Status, CtlError>;
}

/// A change counter with a condition variable: what a [`Control`] backend
/// bumps on every change, and what [`Control::wait_change`] waits on.
#[derive(Debug, Default)]
pub struct Changes {
    count: Mutex<u64>,
    cv: Condvar,
}

impl Changes {
    /// Counts one change and wakes the waiters.
    pub fn bump(&self) {
        *self.count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.cv.notify_all();
    }

    /// The changes counted so far.
    pub fn count(&self) -> u64 {
        *self.count.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the count differs from `seen` or `timeout` passes;
    /// returns the count.
    pub fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut count = self.count.lock().unwrap_or_else(|e| e.into_inner());
        while *count == seen {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            count = self
                .cv
                .wait_timeout(count, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *count
    }
}

#[cfg(test)]
#[path = "codec_test.rs"]
mod tests;
