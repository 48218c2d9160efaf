//! The control socket's client side, used by the `mirrorfarm` CLI, the lab
//! and tests: connects to the daemon's socket, sends requests and reads their
//! answers; [`log`] streams a log (`mirrorfarm log MODULE --follow`).
//!
//! An error answer is an [`Answer::Error`] (the request reached the daemon,
//! which refused it or failed); a [`ClientError`] means the daemon could not
//! be asked, and names the socket and the fix.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Answer, AnswerLine, Request, EXIT_ERROR, EXIT_UNREACHABLE};

/// Why the daemon gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket, or it is not ours to open.
    #[error("cannot reach the mirrorfarm daemon at {path}: {source}: is `mirrorfarm daemon` running? are you root? (another socket: --socket PATH)")]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Sending or receiving failed.
    #[error("control socket {path}: {source}: is `mirrorfarm daemon` still running?")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The answer did not come in time.
    #[error("no answer from the mirrorfarm daemon at {path} within {secs} s to `{request}`: it may still be carrying it out; see `mirrorfarm state` and `mirrorfarm log MODULE`")]
    TimedOut {
        /// The socket.
        path: PathBuf,
        /// How long the client waited.
        secs: u64,
        /// The request's name.
        request: &'static str,
    },
    /// The daemon closed the connection before its answer was complete.
    #[error("the mirrorfarm daemon at {path} closed the connection before answering: did it stop? start it again and ask `mirrorfarm state`")]
    Closed {
        /// The socket.
        path: PathBuf,
    },
    /// The daemon's answer is not one this client understands.
    #[error("unexpected answer from the mirrorfarm daemon at {path}: {line:?} ({why}): use the mirrorfarm CLI of the daemon's version")]
    BadAnswer {
        /// The socket.
        path: PathBuf,
        /// The line received.
        line: String,
        /// What is wrong with it.
        why: String,
    },
    /// In a log stream: the daemon's error (the message says why and what to
    /// do).
    #[error("{0}")]
    Refused(String),
    /// [`request`] was called for a `log` with `follow`, which never ends.
    #[error("a log with follow never ends: read it with client::log, not client::request")]
    Follow,
}

impl ClientError {
    /// The CLI's exit code: [`EXIT_ERROR`] (2) when the daemon refused,
    /// [`EXIT_UNREACHABLE`] (3) when it could not be asked.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Refused(_) => EXIT_ERROR,
            _ => EXIT_UNREACHABLE,
        }
    }
}

/// A connection to the daemon's socket; requests on it are answered in
/// order.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    /// The request whose answer is being read (for timeout messages).
    pending: &'static str,
    /// Its answer timeout (`None`: a follow, no timeout).
    timeout: Option<Duration>,
    /// An error line read when the request could not be sent: the next
    /// answer.
    early: Option<AnswerLine>,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Unreachable {
            path: path.to_owned(),
            source,
        })?;
        let reader = stream
            .try_clone()
            .map(BufReader::new)
            .map_err(|source| ClientError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            path: path.to_owned(),
            stream,
            reader,
            pending: "",
            timeout: None,
            early: None,
        })
    }

    /// Sends `request`; its answer lines are then read with
    /// [`Self::next_line`] (each within [`Request::answer_timeout`], without
    /// a limit for a `log` with `follow`).
    pub fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let follow = matches!(request, Request::Log { follow: true, .. });
        self.timeout = (!follow).then(|| request.answer_timeout());
        self.pending = request.name();
        self.stream
            .set_read_timeout(self.timeout)
            .map_err(|source| self.io(source))?;
        let mut line = request.encode();
        line.push('\n');
        match self.stream.write_all(line.as_bytes()) {
            Ok(()) => Ok(()),
            // The daemon may have refused this client (not root, too many
            // clients) and closed before the request went out: its answer
            // says why, and is this request's.
            Err(e) => match self.next_line() {
                Ok(refusal @ AnswerLine::Error(_)) => {
                    self.early = Some(refusal);
                    Ok(())
                }
                _ => Err(self.io(e)),
            },
        }
    }

    /// The next answer line; the end of the stream is [`ClientError::Closed`].
    pub fn next_line(&mut self) -> Result<AnswerLine, ClientError> {
        if let Some(early) = self.early.take() {
            return Ok(early);
        }
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(|e| {
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                ClientError::TimedOut {
                    path: self.path.clone(),
                    secs: self.timeout.unwrap_or_default().as_secs(),
                    request: self.pending,
                }
            } else {
                self.io(e)
            }
        })?;
        if n == 0 {
            return Err(ClientError::Closed {
                path: self.path.clone(),
            });
        }
        AnswerLine::decode(&line).map_err(|e| self.bad(&line, e.to_string()))
    }

    /// Sends `request` and reads its whole answer (a `log` up to its end).
    pub fn request(&mut self, request: &Request) -> Result<Answer, ClientError> {
        if matches!(request, Request::Log { follow: true, .. }) {
            return Err(ClientError::Follow);
        }
        self.send(request)?;
        let mut log = Vec::new();
        loop {
            let line = self.next_line()?;
            let answer = match (request, line) {
                (_, AnswerLine::Error(e)) => Answer::Error(e),
                (Request::State { .. }, AnswerLine::State(s)) => Answer::State(s),
                (Request::Log { .. }, AnswerLine::Log(l)) => {
                    log.push(l);
                    continue;
                }
                (Request::Log { .. }, AnswerLine::End) => Answer::Log(log),
                (r, AnswerLine::Done(m)) if r.is_order() => Answer::Done(m),
                (r, other) => {
                    let why = format!("not an answer to {}", r.name());
                    return Err(self.bad(&other.encode(), why));
                }
            };
            return Ok(answer);
        }
    }

    fn io(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn bad(&self, line: &str, why: String) -> ClientError {
        ClientError::BadAnswer {
            path: self.path.clone(),
            line: line.trim_end().to_owned(),
            why,
        }
    }
}

/// Connects to `path`, sends `request` (not a `log` with `follow`: see
/// [`log`]) and returns its whole answer.
pub fn request(path: &Path, request: &Request) -> Result<Answer, ClientError> {
    Client::connect(path)?.request(request)
}

/// Asks for `module`'s log: its last `lines` lines, and with `follow` every
/// new line after them. The stream yields each line as it comes; it ends
/// after the last line (without `follow`), or with an error: the daemon's
/// ([`ClientError::Refused`]) or the connection's.
pub fn log(path: &Path, module: &str, follow: bool, lines: u32) -> Result<LogStream, ClientError> {
    let mut client = Client::connect(path)?;
    client.send(&Request::Log {
        module: module.to_owned(),
        follow,
        lines,
    })?;
    Ok(LogStream {
        client,
        done: false,
    })
}

/// A module's log as it comes from the daemon (see [`log`]).
#[derive(Debug)]
pub struct LogStream {
    client: Client,
    done: bool,
}

impl Iterator for LogStream {
    type Item = Result<String, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = match self.client.next_line() {
            Ok(AnswerLine::Log(line)) => return Some(Ok(line)),
            Ok(AnswerLine::End) => None,
            Ok(AnswerLine::Error(e)) => Some(Err(ClientError::Refused(e))),
            Ok(other) => Some(Err(self
                .client
                .bad(&other.encode(), "not a log line".into()))),
            Err(e) => Some(Err(e)),
        };
        self.done = true;
        item
    }
}
