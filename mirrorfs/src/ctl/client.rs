//! The control socket's client side, used by `mirrorfs ctl`, `mirrorfs
//! status` and the controller: connects, sends requests, reads answers.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Answer, Request, Status};

/// How long an answer to a request (not a watch) may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request got no status.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket, or it is not ours to open.
    #[error("cannot reach the control socket {path}: {source} (is `mirrorfs mount --control {path}` or `mirrorfs serve --control {path}` running, and are you root?)")]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Sending or receiving failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The server answered with an error; the message says why and what to do.
    #[error("{0}")]
    Refused(String),
    /// The server's answer is not one this client understands.
    #[error("control socket {path}: unexpected answer {line:?} ({why}): use the mirrorfs of the same version as the mount or serve")]
    BadAnswer {
        /// The socket.
        path: PathBuf,
        /// The line received.
        line: String,
        /// What is wrong with it.
        why: String,
    },
    /// The server closed the connection.
    #[error("control socket {path}: closed by the server (did the mount or serve stop?)")]
    Closed {
        /// The socket.
        path: PathBuf,
    },
}

/// A connection to a control socket.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    stream: UnixStream,
    reader: BufReader<UnixStream>,
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
        })
    }

    /// Sends `request` (a `watch` has no answer timeout; the others
    /// [`ANSWER_TIMEOUT`]).
    pub fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let timeout = (*request != Request::Watch).then_some(ANSWER_TIMEOUT);
        let mut line = request.encode();
        line.push('\n');
        self.stream
            .set_read_timeout(timeout)
            .map_err(|source| self.io(source))?;
        match self.stream.write_all(line.as_bytes()) {
            Ok(()) => Ok(()),
            // The server may have refused this client (not root, too many
            // clients) and closed before the request went out: its answer
            // says why.
            Err(e) => match self.answer() {
                Err(refused @ ClientError::Refused(_)) => Err(refused),
                _ => Err(self.io(e)),
            },
        }
    }

    /// The next answer: the line as received (without its newline) and the
    /// status it holds; an error answer is [`ClientError::Refused`], the end
    /// of the stream [`ClientError::Closed`].
    pub fn answer(&mut self) -> Result<(String, Status), ClientError> {
        match self.next_answer()? {
            (line, Answer::Status(st)) => Ok((line, *st)),
            (line, _) => Err(self.unexpected(line, "latency figures where a status was expected")),
        }
    }

    /// Sends `latency` (with `reset`) and returns its answer line and
    /// figures.
    pub fn latency(
        &mut self,
        reset: bool,
    ) -> Result<(String, super::latency::LatencyAnswer), ClientError> {
        self.send(&Request::Latency { reset })?;
        match self.next_answer()? {
            (line, Answer::Latency(a)) => Ok((line, a)),
            (line, _) => Err(self.unexpected(line, "a status where latency figures were expected")),
        }
    }

    /// Reads and decodes the next answer line (without its newline); an
    /// error answer is [`ClientError::Refused`], the end of the stream
    /// [`ClientError::Closed`], an undecodable line
    /// [`ClientError::BadAnswer`].
    fn next_answer(&mut self) -> Result<(String, Answer), ClientError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| self.io(source))?;
        if n == 0 {
            return Err(ClientError::Closed {
                path: self.path.clone(),
            });
        }
        let line = line.trim_end().to_owned();
        match Answer::decode(&line) {
            Ok(Answer::Error(e)) => Err(ClientError::Refused(e)),
            Ok(a) => Ok((line, a)),
            Err(e) => {
                let why = e.to_string();
                Err(self.unexpected(line, &why))
            }
        }
    }

    /// An answer of the wrong kind, or none at all.
    fn unexpected(&self, line: String, why: &str) -> ClientError {
        ClientError::BadAnswer {
            path: self.path.clone(),
            line,
            why: why.into(),
        }
    }

    /// Sends `request` (not `watch`) and returns its answer.
    pub fn request(&mut self, request: &Request) -> Result<Status, ClientError> {
        self.send(request)?;
        self.answer().map(|(_, st)| st)
    }

    fn io(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// Connects to `path`, sends `request` (not `watch`) and returns its answer.
pub fn request(path: &Path, request: &Request) -> Result<Status, ClientError> {
    Client::connect(path)?.request(request)
}
