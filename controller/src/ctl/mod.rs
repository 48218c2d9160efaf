//! The daemon's control protocol: what `mirrorfarm state|start|stop|restart|
//! swap|prim|second|log MODULE` and operators' scripts send to `mirrorfarm
//! daemon`, and what they get back. JSON lines over a root-only Unix socket
//! (the node file's `socket`, default `/run/mirrorfarm/mirrorfarm.sock`).
//!
//! # Protocol (version 1)
//!
//! A client connects, sends one request per line and reads the answer; several
//! requests may follow each other on one connection (a `log` with `follow`
//! takes the connection over). A line is at most [`MAX_LINE`] bytes. Every
//! request and answer carries `"version":1`.
//!
//! Requests ([`Request`]); fields other than these are refused:
//!
//! ```text
//! {"version":1,"request":"state","module":null}       every module (module may be omitted)
//! {"version":1,"request":"state","module":"apache"}   one module
//! {"version":1,"request":"start","module":"apache"}   also stop, restart, swap, prim, second
//! {"version":1,"request":"log","module":"apache","follow":false,"lines":20}
//! ```
//!
//! (`follow` defaults to false and `lines` to [`log::DEFAULT_LINES`]; `lines`
//! is at most [`log::MAX_LINES`].) Answers, one JSON object per line
//! ([`AnswerLine`]):
//!
//! ```text
//! {"version":1,"ok":true,"message":"apache: swap done: node2 is primary"}    an order carried out
//! {"version":1,"error":"no module \"apach\": ..."}                           a refusal or failure
//! {"version":1,"node":"node1","modules":[{"module":"apache",...}]}          the answer to state
//! {"version":1,"log":"2025-12-05 08:42:02 start_prim: ..."}                 one log line
//! {"version":1,"end":true}                                                  the end of a log
//! ```
//!
//! The `state` object is [`State`]; its fields are listed there (a client
//! must ignore fields it does not know: later versions may add some). A
//! `log` is answered with its last `lines` lines, then `end`; with `follow`,
//! with those lines and then every new line as it is written, until the
//! client closes (no `end`). An error message names the problem and the fix.
//! A client that is not root gets an error line and the connection is closed.
//! Scripts may use `mirrorfarm` itself: `mirrorfarm state --json`, and its
//! exit code ([`exit_code`]: 0 done, 2 refused or failed).
//!
//! # Layout
//!
//! Owns: the types both ends share (here and in [`state`]), their codec, the
//! [`Daemon`] trait the daemon implements, the socket's [`server`] (mode
//! 0600, the parent directory made 0755, a stale socket replaced, every
//! client's uid checked, a thread per client, bounded lines) and [`client`],
//! one file per request kind ([`state`], [`order`] for the six orders that
//! share one shape, [`log`]), and the text the CLI prints ([`render`]).
//! Must not: decide anything. Orders go to the [`Daemon`], which carries them
//! out or says why not.

pub mod client;
pub mod log;
pub mod order;
pub mod render;
pub mod server;
pub mod state;

use std::io::{self, Write};
use std::time::Duration;

use serde_json::{Map, Value};

pub use self::state::{
    DirStatus, FailoverStatus, FarmMemberStatus, FarmStatus, ModuleStatus, NetworkStatus, Resync,
    State, TransitionStatus, WitnessStatus,
};

/// The version of the control protocol, carried by every request and answer.
pub const VERSION: u32 = 1;

/// The longest request line accepted, in bytes (a request is a few dozen).
pub const MAX_LINE: usize = 4096;

/// The exit code of a request that was answered: done, or a state (ready or
/// not).
pub const EXIT_OK: u8 = 0;
/// The exit code of a request that was refused or failed.
pub const EXIT_ERROR: u8 = 2;
/// The exit code when the daemon could not be asked (see
/// [`client::ClientError::exit_code`]).
pub const EXIT_UNREACHABLE: u8 = 3;

/// One request, as the CLI or a script sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The state of one module, or of every module (`None`).
    State {
        /// The module; `None`: all of this node's modules.
        module: Option<String>,
    },
    /// Start the module (see [`order`]).
    Start {
        /// The module.
        module: String,
    },
    /// Stop the module.
    Stop {
        /// The module.
        module: String,
    },
    /// Restart the module's application where it runs.
    Restart {
        /// The module.
        module: String,
    },
    /// Exchange the roles of the two nodes.
    Swap {
        /// The module.
        module: String,
    },
    /// Make this node the module's primary.
    Prim {
        /// The module.
        module: String,
    },
    /// Make this node the module's secondary.
    Second {
        /// The module.
        module: String,
    },
    /// The module's log.
    Log {
        /// The module.
        module: String,
        /// After the last lines, send every new line until the client
        /// closes.
        follow: bool,
        /// How many of the last lines to send (0: none, only new ones).
        lines: u32,
    },
}

impl Request {
    /// The request's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Self::State { .. } => "state",
            Self::Start { .. } => "start",
            Self::Stop { .. } => "stop",
            Self::Restart { .. } => "restart",
            Self::Swap { .. } => "swap",
            Self::Prim { .. } => "prim",
            Self::Second { .. } => "second",
            Self::Log { .. } => "log",
        }
    }

    /// The module the request is about (`None`: `state` of every module).
    pub fn module(&self) -> Option<&str> {
        match self {
            Self::State { module } => module.as_deref(),
            Self::Start { module }
            | Self::Stop { module }
            | Self::Restart { module }
            | Self::Swap { module }
            | Self::Prim { module }
            | Self::Second { module }
            | Self::Log { module, .. } => Some(module),
        }
    }

    /// True for the orders (everything but `state` and `log`).
    pub fn is_order(&self) -> bool {
        !matches!(self, Self::State { .. } | Self::Log { .. })
    }

    /// The request as one line of JSON (without the newline).
    pub fn encode(&self) -> String {
        let module = serde_json::to_string(&self.module()).unwrap_or_default();
        let extra = match self {
            Self::Log { follow, lines, .. } => format!(",\"follow\":{follow},\"lines\":{lines}"),
            _ => String::new(),
        };
        format!(
            "{{\"version\":{VERSION},\"request\":\"{}\",\"module\":{module}{extra}}}",
            self.name()
        )
    }

    /// Reads one request line (the newline may be there or not). Checks the
    /// length, the version, the request's name and its fields; every error
    /// says what to send instead.
    pub fn decode(line: &str) -> Result<Self, CtlError> {
        if line.len() > MAX_LINE {
            return Err(CtlError::TooLong);
        }
        let example = Self::State { module: None }.encode();
        let value: Value = serde_json::from_str(line.trim()).map_err(|e| {
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
            "state" => state::decode(&mut fields)?,
            "log" => log::decode(&mut fields)?,
            _ => match order::decode(&name, &mut fields)? {
                Some(order) => order,
                None => return Err(CtlError::UnknownRequest { name }),
            },
        };
        if let Some(field) = fields.keys().next() {
            return Err(CtlError::Malformed(format!(
                "{name} takes no {field:?}: send {} only",
                match request {
                    Self::Log { .. } =>
                        "\"version\", \"request\", \"module\", \"follow\" and \"lines\"",
                    _ => "\"version\", \"request\" and \"module\"",
                }
            )));
        }
        Ok(request)
    }

    /// How long the CLI waits for the answer: an order may run the module's
    /// scripts (each bounded by its own timeout in the module file).
    pub fn answer_timeout(&self) -> Duration {
        if self.is_order() {
            order::ANSWER_TIMEOUT
        } else {
            Duration::from_secs(30)
        }
    }
}

/// Why a request was not carried out (answered with an error line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CtlError {
    /// The line is not a well-formed request; the message says what to send.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The request names another protocol version.
    #[error("control protocol version {got} is not spoken here: this daemon speaks version {VERSION}; send \"version\":{VERSION} (or use the mirrorfarm CLI of the daemon's version)")]
    Version {
        /// The version the client sent.
        got: String,
    },
    /// No such request.
    #[error("unknown request {name:?}: the requests are state, start, stop, restart, swap, prim, second and log")]
    UnknownRequest {
        /// The name sent.
        name: String,
    },
    /// The request line is longer than [`MAX_LINE`].
    #[error("request longer than {MAX_LINE} bytes: send one JSON object per line")]
    TooLong,
    /// The client is not root.
    #[error(
        "the mirrorfarm control socket answers root only (this client runs as uid {uid}): run the command as root"
    )]
    NotRoot {
        /// The client's uid.
        uid: u32,
    },
    /// Too many clients at once.
    #[error("too many control clients at once ({max}): close the idle ones (e.g. `mirrorfarm log --follow`) and try again")]
    Busy {
        /// The limit.
        max: usize,
    },
    /// The daemon is stopping.
    #[error("the mirrorfarm daemon is stopping: ask again once it runs again")]
    ShuttingDown,
    /// The daemon refused the request or failed; its message says why and
    /// what to do.
    #[error("{0}")]
    Daemon(String),
}

/// What the daemon does for the socket. The server calls these from its own
/// threads, one per client; an `Err` is sent to the client as an error line,
/// so it names the problem and the fix (e.g. `no module "apach": the modules
/// are apache, files`).
pub trait Daemon: Send + Sync {
    /// The state of `module`, or of every module (`None`). Must be cheap: a
    /// snapshot, no waiting on scripts or mirrorfs.
    fn state(&self, module: Option<&str>) -> Result<State, String>;

    /// Carries out an order (`start`, `stop`, `restart`, `swap`, `prim`,
    /// `second`; never `state` or `log`), and says what was done.
    fn order(&self, req: &Request) -> Result<String, String>;

    /// The last `lines` lines of the module's log (fewer if it has fewer),
    /// oldest first.
    fn log(&self, module: &str, lines: u32) -> Result<Vec<String>, String>;

    /// The module's log lines from line number `from_line` on (the first line
    /// the log holds is 0), oldest first, and the number of the line after
    /// the last one returned (where to ask next). Returns at once when there
    /// are such lines (it may return a batch of them, not all); else waits up
    /// to `timeout` for one. [`log::FROM_END`] (or any number past the end)
    /// asks for no lines and the number of the next line to be written, at
    /// once. A line number older than the log keeps starts at its oldest line.
    fn follow(
        &self,
        module: &str,
        from_line: u64,
        timeout: Duration,
    ) -> Result<(Vec<String>, u64), String>;
}

/// One answer line, as the server writes it and a client reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum AnswerLine {
    /// An order was carried out; the message says what was done.
    Done(String),
    /// The request was refused or failed; the message says why and what to do.
    Error(String),
    /// The answer to `state`.
    State(Box<State>),
    /// One line of a module's log.
    Log(String),
    /// The end of a log (not sent with `follow`).
    End,
}

impl AnswerLine {
    /// The answer as one line of JSON (without the newline).
    pub fn encode(&self) -> String {
        // Strings always serialise; so does a struct of strings, numbers
        // and options.
        let text = |s: &str| serde_json::to_string(s).unwrap_or_default();
        match self {
            Self::Done(message) => format!(
                "{{\"version\":{VERSION},\"ok\":true,\"message\":{}}}",
                text(message)
            ),
            Self::Error(error) => format!("{{\"version\":{VERSION},\"error\":{}}}", text(error)),
            Self::State(state) => serde_json::to_string(state).unwrap_or_default(),
            Self::Log(line) => format!("{{\"version\":{VERSION},\"log\":{}}}", text(line)),
            Self::End => format!("{{\"version\":{VERSION},\"end\":true}}"),
        }
    }

    /// Writes the answer and its newline to `out` in one write.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let mut line = self.encode();
        line.push('\n');
        out.write_all(line.as_bytes())
    }

    /// The error line for `e`.
    pub fn error(e: &CtlError) -> Self {
        Self::Error(e.to_string())
    }

    /// Reads one answer line. Its kind is told by its keys: `error`, `ok`,
    /// `log`, `end`, else a state (`modules`); other keys are ignored.
    pub fn decode(line: &str) -> Result<Self, AnswerError> {
        let value: Value =
            serde_json::from_str(line.trim()).map_err(|e| AnswerError::NotJson(e.to_string()))?;
        let Value::Object(fields) = value else {
            return Err(AnswerError::Shape("not a JSON object".into()));
        };
        match fields.get("version") {
            Some(v) if v.as_u64() == Some(u64::from(VERSION)) => {}
            Some(v) => return Err(AnswerError::Version { got: v.to_string() }),
            None => return Err(AnswerError::Shape("no \"version\"".into())),
        }
        let text = |key: &str| match fields.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            other => Err(AnswerError::Shape(format!(
                "\"{key}\" is {}, not a string",
                other.map_or("missing".into(), Value::to_string)
            ))),
        };
        if fields.contains_key("error") {
            return text("error").map(Self::Error);
        }
        if fields.contains_key("ok") {
            return text("message").map(Self::Done);
        }
        if fields.contains_key("log") {
            return text("log").map(Self::Log);
        }
        if fields.get("end") == Some(&Value::Bool(true)) {
            return Ok(Self::End);
        }
        if fields.contains_key("modules") {
            return serde_json::from_value(Value::Object(fields))
                .map(|s| Self::State(Box::new(s)))
                .map_err(|e| AnswerError::Shape(format!("not a state: {e}")));
        }
        Err(AnswerError::Shape(format!(
            "none of \"ok\", \"error\", \"modules\", \"log\", \"end\" (keys: {})",
            keys(&fields)
        )))
    }
}

/// Why an answer line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Not JSON.
    #[error("not JSON ({0})")]
    NotJson(String),
    /// Another protocol version.
    #[error("protocol version {got}, this client speaks {VERSION}")]
    Version {
        /// The version the daemon sent.
        got: String,
    },
    /// JSON, but not an answer this client knows.
    #[error("{0}")]
    Shape(String),
}

/// The whole answer to one request, as [`client::request`] returns it.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// An order was carried out; what was done.
    Done(String),
    /// The request was refused or failed; why and what to do.
    Error(String),
    /// The answer to `state`.
    State(Box<State>),
    /// The lines of a log (without `follow`).
    Log(Vec<String>),
}

impl Answer {
    /// What the CLI prints on standard output (an error goes to standard
    /// error, prefixed with `error: `); ends with a newline unless empty.
    pub fn render_text(&self) -> String {
        let mut out = match self {
            Self::Done(message) => message.clone(),
            Self::Error(error) => format!("error: {error}"),
            Self::State(state) => return state.render_text(),
            Self::Log(lines) => lines.join("\n"),
        };
        if !out.is_empty() {
            out.push('\n');
        }
        out
    }
}

/// The exit code for an answer, for scripts: [`EXIT_OK`] (0) when the order
/// was carried out or the state (or log) answered — a module in transition is
/// no failure —, [`EXIT_ERROR`] (2) when the request was refused or failed.
pub fn exit_code(answer: &Answer) -> u8 {
    match answer {
        Answer::Error(_) => EXIT_ERROR,
        Answer::Done(_) | Answer::State(_) | Answer::Log(_) => EXIT_OK,
    }
}

/// The `module` field of a request that must name one: a non-empty string.
fn module_field(name: &str, fields: &mut Map<String, Value>) -> Result<String, CtlError> {
    let example =
        |m: &str| format!("{{\"version\":{VERSION},\"request\":\"{name}\",\"module\":\"{m}\"}}");
    match fields.remove("module") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m),
        Some(Value::String(_)) => Err(CtlError::Malformed(format!(
            "{name}'s \"module\" is empty: name a module, e.g. {}",
            example("apache")
        ))),
        None | Some(Value::Null) => Err(CtlError::Malformed(format!(
            "{name} needs \"module\": name a module, e.g. {}",
            example("apache")
        ))),
        Some(v) => Err(CtlError::Malformed(format!(
            "{name}'s \"module\" is {v}, not a string: e.g. {}",
            example("apache")
        ))),
    }
}

/// The keys of an object, sorted, for messages.
fn keys(fields: &Map<String, Value>) -> String {
    let mut keys: Vec<&str> = fields.keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys.join(", ")
}

#[cfg(test)]
#[path = "codec_test.rs"]
mod tests;
