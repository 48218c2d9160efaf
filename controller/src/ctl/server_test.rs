//! The control socket with a fake daemon, through the client: state, orders
//! and refusals, a log and a followed log, malformed and oversized lines, the
//! socket's mode and directory, stale and live sockets, too many clients,
//! shutdown with a follower connected, and a client that is not root (the
//! test binary itself, run as `nobody`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use pretty_assertions::assert_eq;

use super::*;
use crate::ctl::client::{self, Client, ClientError, LogStream};
use crate::ctl::log::FROM_END;
use crate::ctl::{Answer, ModuleStatus, State};

/// How long any one answer may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// A daemon with two modules whose log the test appends to, and which
/// records the orders.
#[derive(Default)]
struct Fake {
    orders: Mutex<Vec<String>>,
    log: Mutex<Vec<String>>,
    appended: Condvar,
    /// How often a follower asked where the log ends (it starts there).
    asked_end: Mutex<u32>,
    asked: Condvar,
}

impl Fake {
    fn new() -> Arc<Self> {
        let fake = Self::default();
        fake.append(&["one", "two", "three"]);
        Arc::new(fake)
    }

    fn append(&self, lines: &[&str]) {
        let mut log = self.log.lock().unwrap();
        log.extend(lines.iter().map(|l| l.to_string()));
        self.appended.notify_all();
    }

    /// Waits until followers asked `n` times where the log ends.
    fn wait_asked_end(&self, n: u32) {
        let asked = self.asked_end.lock().unwrap();
        let (asked, _) = self
            .asked
            .wait_timeout_while(asked, DEADLINE, |a| *a < n)
            .unwrap();
        assert_eq!(*asked, n, "a follower starts in time");
    }

    fn module(name: &str, state: &str) -> ModuleStatus {
        ModuleStatus {
            module: name.into(),
            node: "node1".into(),
            peer: "node2".into(),
            state: state.into(),
            ready: true,
            reason: "test".into(),
            since_unix: 0.0,
            step: None,
            in_sync: None,
            resync: None,
            peer_state: None,
            peer_ready: None,
            peer_reachable: false,
            networks: vec![],
            witness: None,
            vip: None,
            dirs: vec![],
            last_transition: None,
            last_failover: None,
            config_mismatch: false,
            farm: None,
        }
    }

    fn known(module: &str) -> Result<(), String> {
        match module {
            "apache" | "files" => Ok(()),
            _ => Err(format!(
                "no module {module:?} on node1: the modules are apache, files"
            )),
        }
    }
}

impl Daemon for Fake {
    fn state(&self, module: Option<&str>) -> Result<State, String> {
        let all = vec![
            Self::module("apache", "PRIM"),
            Self::module("files", "STOP"),
        ];
        let modules = match module {
            None => all,
            Some(m) => {
                Self::known(m)?;
                all.into_iter().filter(|s| s.module == m).collect()
            }
        };
        Ok(State::new("node1", modules))
    }

    fn order(&self, req: &Request) -> Result<String, String> {
        let module = req.module().unwrap_or_default();
        Self::known(module)?;
        if matches!(req, Request::Swap { .. }) {
            return Err(format!(
                "{module}: cannot swap: node2 is unreachable; bring it back first"
            ));
        }
        self.orders
            .lock()
            .unwrap()
            .push(format!("{} {module}", req.name()));
        Ok(format!("{module}: {} done", req.name()))
    }

    fn log(&self, module: &str, lines: u32) -> Result<Vec<String>, String> {
        Self::known(module)?;
        let log = self.log.lock().unwrap();
        let from = log.len().saturating_sub(lines as usize);
        Ok(log[from..].to_vec())
    }

    fn follow(
        &self,
        module: &str,
        from_line: u64,
        timeout: Duration,
    ) -> Result<(Vec<String>, u64), String> {
        Self::known(module)?;
        let log = self.log.lock().unwrap();
        if from_line == FROM_END {
            *self.asked_end.lock().unwrap() += 1;
            self.asked.notify_all();
            return Ok((vec![], log.len() as u64));
        }
        let (log, _) = self
            .appended
            .wait_timeout_while(log, timeout, |log| log.len() as u64 <= from_line)
            .unwrap();
        let from = (from_line as usize).min(log.len());
        Ok((log[from..].to_vec(), log.len() as u64))
    }
}

/// A server on a socket in a fresh directory (`DIR/run/mirrorfarm.sock`: the
/// server makes `run/`). Dropping it stops the server.
struct Running {
    dir: tempfile::TempDir,
    path: PathBuf,
    fake: Arc<Fake>,
    shutdown: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Running {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("mirrorfarm.sock");
        let fake = Fake::new();
        let shutdown = Arc::new(AtomicBool::new(false));
        let handle = serve(&path, fake.clone(), shutdown.clone()).unwrap();
        Self {
            dir,
            path,
            fake,
            shutdown,
            handle: Some(handle),
        }
    }

    /// Stops the server and waits (bounded) for it to end.
    fn stop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || tx.send(handle.join().is_ok()));
            assert_eq!(
                rx.recv_timeout(DEADLINE),
                Ok(true),
                "the server ends once told to"
            );
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
    }
}

/// The lines a raw connection receives, read on a thread so that a test
/// waits with a deadline instead of hanging.
fn lines(stream: UnixStream) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The items of a log stream, read on a thread.
fn items(stream: LogStream) -> mpsc::Receiver<Result<String, String>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for item in stream {
            if tx.send(item.map_err(|e| e.to_string())).is_err() {
                return;
            }
        }
    });
    rx
}

fn next(rx: &mpsc::Receiver<String>) -> AnswerLine {
    let line = rx.recv_timeout(DEADLINE).expect("an answer line in time");
    AnswerLine::decode(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

fn error_text(answer: AnswerLine) -> String {
    match answer {
        AnswerLine::Error(e) => e,
        other => panic!("expected an error line, got {other:?}"),
    }
}

#[test]
fn state_of_all_and_of_one_module_and_an_unknown_one() {
    let r = Running::new();
    let Answer::State(all) = client::request(&r.path, &Request::State { module: None }).unwrap()
    else {
        panic!("a state");
    };
    let names: Vec<_> = all.modules.iter().map(|m| m.module.as_str()).collect();
    assert_eq!(names, ["apache", "files"]);
    assert_eq!(all.node, "node1");
    let one = client::request(
        &r.path,
        &Request::State {
            module: Some("files".into()),
        },
    )
    .unwrap();
    assert_eq!(
        one,
        Answer::State(Box::new(State::new(
            "node1",
            vec![Fake::module("files", "STOP")]
        )))
    );
    let unknown = client::request(
        &r.path,
        &Request::State {
            module: Some("apach".into()),
        },
    )
    .unwrap();
    assert_eq!(
        unknown,
        Answer::Error("no module \"apach\" on node1: the modules are apache, files".into())
    );
    assert_eq!(crate::ctl::exit_code(&unknown), 2);
}

#[test]
fn orders_and_refusals_on_one_connection() {
    let r = Running::new();
    let mut c = Client::connect(&r.path).unwrap();
    let start = Request::Start {
        module: "apache".into(),
    };
    assert_eq!(
        c.request(&start).unwrap(),
        Answer::Done("apache: start done".into())
    );
    let swap = Request::Swap {
        module: "apache".into(),
    };
    let refused = c.request(&swap).unwrap();
    assert_eq!(
        refused,
        Answer::Error("apache: cannot swap: node2 is unreachable; bring it back first".into())
    );
    assert_eq!(crate::ctl::exit_code(&refused), 2);
    // A refusal does not end the connection.
    let prim = Request::Prim {
        module: "files".into(),
    };
    assert_eq!(
        c.request(&prim).unwrap(),
        Answer::Done("files: prim done".into())
    );
    assert_eq!(
        *r.fake.orders.lock().unwrap(),
        ["start apache", "prim files"]
    );
}

#[test]
fn a_log_ends_with_its_last_lines() {
    let r = Running::new();
    let req = |lines| Request::Log {
        module: "apache".into(),
        follow: false,
        lines,
    };
    assert_eq!(
        client::request(&r.path, &req(2)).unwrap(),
        Answer::Log(vec!["two".into(), "three".into()])
    );
    assert_eq!(
        client::request(&r.path, &req(0)).unwrap(),
        Answer::Log(vec![])
    );
    let streamed: Vec<_> = client::log(&r.path, "apache", false, 10)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(streamed, ["one", "two", "three"]);
    // The raw lines, as a script reads them.
    let mut s = UnixStream::connect(&r.path).unwrap();
    let rx = lines(s.try_clone().unwrap());
    writeln!(s, "{}", req(1).encode()).unwrap();
    assert_eq!(
        rx.recv_timeout(DEADLINE).unwrap(),
        r#"{"version":1,"log":"three"}"#
    );
    assert_eq!(
        rx.recv_timeout(DEADLINE).unwrap(),
        r#"{"version":1,"end":true}"#
    );
    // An unknown module: the daemon's error, in the stream too.
    let mut bad = client::log(&r.path, "nope", false, 1).unwrap();
    match bad.next() {
        Some(Err(ClientError::Refused(e))) => assert!(e.contains("no module \"nope\""), "{e}"),
        other => panic!("expected the refusal, got {other:?}"),
    }
    assert!(bad.next().is_none());
    // A follow is no one-answer request.
    let follow = Request::Log {
        module: "apache".into(),
        follow: true,
        lines: 1,
    };
    assert!(matches!(
        client::request(&r.path, &follow),
        Err(ClientError::Follow)
    ));
}

#[test]
fn a_follower_gets_the_last_lines_then_each_new_one_in_order() {
    let r = Running::new();
    let rx = items(client::log(&r.path, "apache", true, 1).unwrap());
    let next = || rx.recv_timeout(DEADLINE).expect("a line in time");
    assert_eq!(next(), Ok("three".into()));
    r.fake.append(&["four"]);
    assert_eq!(next(), Ok("four".into()));
    r.fake.append(&["five", "six"]);
    assert_eq!(next(), Ok("five".into()));
    assert_eq!(next(), Ok("six".into()));
    // Nothing new: nothing comes (and no end).
    assert!(rx.recv_timeout(log::FOLLOW_TICK * 2).is_err());
    // Lines 0: only the lines written once the follower started.
    let rx = items(client::log(&r.path, "apache", true, 0).unwrap());
    r.fake.wait_asked_end(2);
    r.fake.append(&["seven"]);
    assert_eq!(
        rx.recv_timeout(DEADLINE).expect("a line in time"),
        Ok("seven".into())
    );
}

#[test]
fn shutdown_tells_a_follower_ends_idle_clients_and_removes_the_socket() {
    let mut r = Running::new();
    let mut follower = UnixStream::connect(&r.path).unwrap();
    let rx = lines(follower.try_clone().unwrap());
    let follow = Request::Log {
        module: "apache".into(),
        follow: true,
        lines: 0,
    };
    writeln!(follower, "{}", follow.encode()).unwrap();
    // An idle client, and one between requests.
    let _idle = UnixStream::connect(&r.path).unwrap();
    let mut c = Client::connect(&r.path).unwrap();
    c.request(&Request::State { module: None }).unwrap();
    // The follower is following once a new line reaches it.
    r.fake.wait_asked_end(1);
    r.fake.append(&["before"]);
    assert_eq!(next(&rx), AnswerLine::Log("before".into()));
    r.stop();
    let e = error_text(next(&rx));
    assert_eq!(e, CtlError::ShuttingDown.to_string());
    assert!(e.contains("stopping"), "{e}");
    assert!(!r.path.exists(), "the socket file is removed");
    assert!(matches!(
        Client::connect(&r.path),
        Err(ClientError::Unreachable { .. })
    ));
}

#[test]
fn malformed_lines_are_answered_and_too_long_a_line_ends_the_connection() {
    let r = Running::new();
    let mut s = UnixStream::connect(&r.path).unwrap();
    let rx = lines(s.try_clone().unwrap());
    writeln!(s, "state").unwrap();
    let e = error_text(next(&rx));
    assert!(e.starts_with("malformed request: not JSON"), "{e}");
    writeln!(s, r#"{{"version":1,"request":"reboot"}}"#).unwrap();
    let e = error_text(next(&rx));
    assert!(e.contains("the requests are state, start"), "{e}");
    s.write_all(b"\xff\xfe\n").unwrap();
    assert_eq!(
        error_text(next(&rx)),
        "malformed request: not UTF-8 text: send one JSON object per line"
    );
    // Blank lines are skipped; the connection goes on.
    writeln!(s).unwrap();
    writeln!(s, "{}", Request::State { module: None }.encode()).unwrap();
    assert!(matches!(next(&rx), AnswerLine::State(_)));
    // Too long: refused without being read whole, then closed.
    let long = format!("{{\"x\":\"{}\"}}\n", "a".repeat(MAX_LINE * 4));
    let _ = s.write_all(long.as_bytes());
    assert_eq!(
        error_text(next(&rx)),
        "request longer than 4096 bytes: send one JSON object per line"
    );
    assert!(
        rx.recv_timeout(DEADLINE).is_err(),
        "the connection is closed after too long a line"
    );
}

#[test]
fn the_socket_is_0600_in_a_0755_directory_made_for_it() {
    let r = Running::new();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&r.path), 0o600);
    assert_eq!(mode(&r.dir.path().join("run")), 0o755);
    // A directory that exists is left as it is.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let path = dir.path().join("ctl.sock");
    let shutdown = Arc::new(AtomicBool::new(false));
    let _h = serve(&path, Fake::new(), shutdown.clone()).unwrap();
    assert_eq!(mode(dir.path()), 0o711);
    assert_eq!(mode(&path), 0o600);
    shutdown.store(true, Ordering::SeqCst);
}

#[test]
fn a_stale_socket_is_replaced_a_live_one_and_other_files_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mirrorfarm.sock");
    let shutdown = Arc::new(AtomicBool::new(false));
    // A daemon that died left its socket behind: nothing answers on it.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let _h = serve(&path, Fake::new(), shutdown.clone()).unwrap();
    assert!(matches!(
        client::request(&path, &Request::State { module: None }),
        Ok(Answer::State(_))
    ));
    // Now one answers: a second daemon on the same socket is refused.
    let e = serve(&path, Fake::new(), shutdown.clone()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    let e = e.to_string();
    assert!(
        e.contains("another mirrorfarm daemon answers on") && e.contains("stop it first"),
        "{e}"
    );
    // And the first still answers.
    assert!(client::request(&path, &Request::State { module: None }).is_ok());
    shutdown.store(true, Ordering::SeqCst);
    // Something that is not a socket is never removed.
    let file = dir.path().join("file.sock");
    std::fs::write(&file, b"data").unwrap();
    let e = serve(&file, Fake::new(), Arc::new(AtomicBool::new(true)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("exists and is not a socket: remove it"), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
}

#[test]
fn a_client_that_cannot_reach_the_daemon_is_told_why_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.sock");
    let e = client::request(&path, &Request::State { module: None }).unwrap_err();
    assert_eq!(e.exit_code(), crate::ctl::EXIT_UNREACHABLE);
    let e = e.to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(
        e.contains("is `mirrorfarm daemon` running? are you root? (another socket: --socket PATH)"),
        "{e}"
    );
}

#[test]
fn too_many_clients_are_told_to_close_the_idle_ones() {
    let r = Running::new();
    let idle: Vec<_> = (0..MAX_CLIENTS)
        .map(|_| UnixStream::connect(&r.path).unwrap())
        .collect();
    let one_more = UnixStream::connect(&r.path).unwrap();
    let rx = lines(one_more);
    let e = error_text(next(&rx));
    assert!(
        e.starts_with("too many control clients at once (32)"),
        "{e}"
    );
    // Once one leaves, another is served.
    drop(idle);
    let started = Instant::now();
    loop {
        match client::request(&r.path, &Request::State { module: None }) {
            Ok(Answer::State(_)) => break,
            Ok(Answer::Error(e)) if e.starts_with("too many") => {}
            other => panic!("{other:?}"),
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the idle clients' threads end"
        );
        thread::yield_now();
    }
}

/// Environment variable that makes [`as_nobody_client`] a client.
const NOBODY_SOCKET: &str = "MIRRORFARM_CTL_TEST_NOBODY_SOCKET";

/// Not a test by itself: run by [`only_root_is_answered`] as a child process
/// under uid 65534, it asks the socket in [`NOBODY_SOCKET`] for the state and
/// prints the answer.
#[test]
fn as_nobody_client() {
    let Some(path) = std::env::var_os(NOBODY_SOCKET) else {
        return;
    };
    let answer = client::request(Path::new(&path), &Request::State { module: None });
    println!("ANSWER {answer:?}");
}

#[test]
fn only_root_is_answered() {
    assert_eq!(authorize(0), Ok(()));
    let e = authorize(65534).unwrap_err().to_string();
    assert_eq!(
        e,
        "the mirrorfarm control socket answers root only (this client runs as uid 65534): run the command as root"
    );
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run a client as another user");
        return;
    }
    // The socket and its directories are opened up for the test, so that
    // only the uid check stands between.
    let r = Running::new();
    for dir in [r.dir.path(), &r.dir.path().join("run")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&r.path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "ctl::server::tests::as_nobody_client",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(NOBODY_SOCKET, &r.path)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ANSWER Ok(Error(\"the mirrorfarm control socket answers root only (this client runs as uid 65534)"),
        "{stdout}"
    );
    // Root still is.
    assert!(matches!(
        client::request(&r.path, &Request::State { module: None }),
        Ok(Answer::State(_))
    ));
}

/// A refusal the daemon sends and closes on before the client's request
/// went out (not root, too many clients) is that request's answer, not a
/// "Broken pipe".
#[test]
fn a_refusal_sent_before_the_request_is_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (closed_tx, closed_rx) = mpsc::channel();
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        AnswerLine::error(&CtlError::NotRoot { uid: 65534 })
            .write_to(&mut s)
            .unwrap();
        drop(s);
        closed_tx.send(()).unwrap();
    });
    let mut c = Client::connect(&path).unwrap();
    closed_rx.recv_timeout(DEADLINE).unwrap();
    match c.request(&Request::State { module: None }) {
        Ok(Answer::Error(e)) => assert!(e.contains("root only"), "{e}"),
        other => panic!("expected the refusal, got {other:?}"),
    }
    server.join().unwrap();
}
