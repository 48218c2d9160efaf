//! The control socket with a fake backend: each request kind through the
//! client, `watch` receiving a change, the legacy line, malformed and
//! oversized lines, the socket's mode, and a non-root client refused (a
//! child process that really runs as `nobody`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use pretty_assertions::assert_eq;
use serde_json::Value;

use super::*;
use crate::ctl::client::{Client, ClientError};
use crate::ctl::{AckMode, Changes, ResyncProgress, Role, Status, VERSION};

/// A backend whose status the test sets, and which records the orders.
struct Fake {
    status: Mutex<Status>,
    changes: Changes,
    orders: Mutex<Vec<String>>,
}

impl Fake {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            status: Mutex::new(Status {
                version: VERSION,
                role: Role::Prim,
                in_sync: true,
                connected: true,
                dirty_files: 0,
                dirty_bytes: 0,
                resync: None,
                generation: Some("0000000000000001".into()),
                history: vec!["0000000000000001".into()],
                stalled: false,
                pid: 1,
                last_error: None,
                peer: Some("10.0.0.2:7411".into()),
                peer_node: "node2".into(),
                role_secs: 0.0,
                ops_in_flight: Some(0),
                alone_secs_left: Some(None),
                held_ops: Some(0),
                primary_connected: None,
                last_applied: None,
                resync_running: None,
                inconsistent: None,
                ack: Some(AckMode::EachOp),
            }),
            changes: Changes::default(),
            orders: Mutex::new(Vec::new()),
        })
    }

    /// Changes the status and tells the watchers.
    fn set(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap());
        self.changes.bump();
    }

    fn order(&self, what: String, f: impl FnOnce(&mut Status)) -> Result<Status, CtlError> {
        self.orders.lock().unwrap().push(what);
        self.set(f);
        Ok(self.status())
    }
}

impl Control for Fake {
    fn status(&self) -> Status {
        self.status.lock().unwrap().clone()
    }

    fn wait_change(&self, seen: u64, timeout: Duration) -> u64 {
        self.changes.wait(seen, timeout)
    }

    fn alone(&self, seconds: f64) -> Result<Status, CtlError> {
        if seconds == 13.0 {
            return Err(CtlError::Refused(
                "thirteen is unlucky: ask for another length".into(),
            ));
        }
        self.order(format!("alone {seconds}"), |s| {
            s.role = Role::Alone;
            s.alone_secs_left = Some(Some(seconds));
        })
    }

    fn fence(&self) -> Result<Status, CtlError> {
        self.order("fence".into(), |s| s.role = Role::Fenced)
    }

    fn unfence(&self) -> Result<Status, CtlError> {
        self.order("unfence".into(), |s| s.role = Role::Hold)
    }
}

struct Running {
    _dir: tempfile::TempDir,
    path: PathBuf,
    fake: Arc<Fake>,
    server: Option<ControlServer>,
}

fn running() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    let fake = Fake::new();
    let server = serve(&path, fake.clone()).unwrap();
    Running {
        _dir: dir,
        path,
        fake,
        server: Some(server),
    }
}

/// Reads lines from `stream` on a thread, so that a test waits with a
/// deadline instead of hanging.
fn lines(stream: UnixStream) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    rx
}

const DEADLINE: Duration = Duration::from_secs(10);

fn next_json(rx: &mpsc::Receiver<String>) -> Value {
    let line = rx.recv_timeout(DEADLINE).expect("an answer line in time");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

#[test]
fn each_order_and_status_through_the_client_on_one_connection() {
    let r = running();
    let mut c = Client::connect(&r.path).unwrap();
    assert_eq!(c.request(&Request::Status).unwrap().role, Role::Prim);
    let st = c.request(&Request::Alone { seconds: 5.0 }).unwrap();
    assert_eq!(st.role, Role::Alone);
    assert_eq!(st.alone_secs_left, Some(Some(5.0)));
    assert_eq!(c.request(&Request::Fence).unwrap().role, Role::Fenced);
    assert_eq!(c.request(&Request::Unfence).unwrap().role, Role::Hold);
    match c.request(&Request::Alone { seconds: 13.0 }) {
        Err(ClientError::Refused(msg)) => assert!(msg.contains("unlucky"), "{msg}"),
        other => panic!("expected the backend's refusal, got {other:?}"),
    }
    // A refusal does not end the connection.
    assert_eq!(c.request(&Request::Status).unwrap().role, Role::Hold);
    assert_eq!(
        *r.fake.orders.lock().unwrap(),
        ["alone 5", "fence", "unfence"]
    );
    // An out-of-range grant never reaches the backend.
    let line = ErrorAnswer::encode(&alone::check_seconds(0.0).unwrap_err());
    assert!(line.contains("between 0 and 3600"), "{line}");
}

#[test]
fn watch_sends_the_status_at_once_then_each_change() {
    let r = running();
    let mut s = UnixStream::connect(&r.path).unwrap();
    writeln!(s, "{}", Request::Watch.encode()).unwrap();
    let rx = lines(s.try_clone().unwrap());
    assert_eq!(next_json(&rx)["role"], "PRIM");
    // A change of a field that is no change by itself is not sent; the
    // role's change is, at once.
    r.fake.set(|st| st.role_secs = 99.0);
    r.fake.set(|st| {
        st.role = Role::Hold;
        st.connected = false;
        st.in_sync = false;
    });
    let v = next_json(&rx);
    assert_eq!(
        (v["role"].as_str(), v["connected"].as_bool()),
        (Some("HOLD"), Some(false))
    );
    // Progress comes too (at most every 200 ms), carrying the latest.
    for done in 1..=3 {
        r.fake.set(|st| {
            st.role = Role::Resync;
            st.resync = Some(ResyncProgress {
                files_done: done,
                ..ResyncProgress::default()
            });
        });
    }
    let mut last = next_json(&rx);
    while last["resync"]["files_done"] != 3 {
        last = next_json(&rx);
    }
    assert_eq!(last["role"], "RESYNC");
    // The watcher ends once the client is gone.
    drop(rx);
    s.shutdown(std::net::Shutdown::Both).unwrap();
}

#[test]
fn the_legacy_line_malformed_and_oversized_requests() {
    let r = running();
    let mut s = UnixStream::connect(&r.path).unwrap();
    let rx = lines(s.try_clone().unwrap());
    // `mirrorfs status` of earlier versions sends the bare word.
    writeln!(s, "status").unwrap();
    assert_eq!(next_json(&rx)["role"], "PRIM");
    // Malformed: an error object naming the fix, and the connection goes on.
    writeln!(s, "{{\"request\":\"status\"}}").unwrap();
    let e = next_json(&rx);
    assert_eq!(e["version"], 1);
    assert!(
        e["error"].as_str().unwrap().contains("add \"version\":1"),
        "{e}"
    );
    writeln!(s, "{}", Request::Status.encode()).unwrap();
    assert_eq!(next_json(&rx)["role"], "PRIM");
    // Oversized: refused without being read whole, then closed.
    let long = format!("{{\"x\":\"{}\"}}\n", "a".repeat(MAX_LINE * 4));
    let _ = s.write_all(long.as_bytes());
    let e = next_json(&rx);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("longer than 4096 bytes"),
        "{e}"
    );
    assert!(
        rx.recv_timeout(DEADLINE).is_err(),
        "the connection is closed after an oversized line"
    );
}

#[test]
fn the_socket_is_0600_replaces_a_stale_one_and_goes_with_the_server() {
    let mut r = running();
    let mode = std::fs::metadata(&r.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Another server on the same path replaces the stale socket.
    drop(r.server.take());
    assert!(
        !r.path.exists(),
        "the socket file is removed with the server"
    );
    let again = serve(&r.path, r.fake.clone()).unwrap();
    assert!(Client::connect(&r.path).is_ok());
    drop(again);
    // A crash leaves the socket file behind.
    drop(UnixListener::bind(&r.path).unwrap());
    assert!(r.path.exists());
    let third = serve(&r.path, r.fake.clone()).unwrap();
    assert_eq!(
        Client::connect(&r.path)
            .unwrap()
            .request(&Request::Status)
            .unwrap()
            .role,
        Role::Prim
    );
    drop(third);
    // Something that is not a socket is never replaced.
    std::fs::write(&r.path, b"data").unwrap();
    let e = serve(&r.path, r.fake.clone()).unwrap_err().to_string();
    assert!(e.contains("not a socket"), "{e}");
    match Client::connect(&r.path.with_file_name("no-such.sock")) {
        Err(ClientError::Unreachable { .. }) => {}
        other => panic!("expected unreachable, got {other:?}"),
    }
}

#[test]
fn only_root_is_answered() {
    assert_eq!(authorize(0), Ok(()));
    let e = authorize(65534).unwrap_err().to_string();
    assert!(e.contains("root only") && e.contains("65534"), "{e}");

    // A real client running as nobody: the socket and its directory are
    // opened up for the test, so that only the uid check stands between.
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run a client as another user");
        return;
    }
    let r = running();
    let dir = r.path.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&r.path, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(
        run_as_nobody(&r.path),
        0,
        "see the exit codes of run_as_nobody"
    );
    // Root still is.
    assert!(Client::connect(&r.path)
        .unwrap()
        .request(&Request::Status)
        .is_ok());
}

/// Forks a child that becomes uid/gid 65534, connects to `path`, sends a
/// status request and reads the answer; its exit code: 0 the answer refuses
/// a non-root client, 1 another answer, 2 no answer, 3 setuid failed, 4 the
/// connection failed. The child makes raw system calls only (the test
/// process has other threads; nothing may allocate after the fork).
fn run_as_nobody(path: &Path) -> i32 {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: a zeroed sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let request = b"status\n";
    let want = b"root only";
    // SAFETY: the child only makes async-signal-safe system calls on memory
    // prepared before the fork, and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: raw system calls on valid buffers; see above.
        unsafe {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                libc::_exit(3);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0
                || libc::connect(
                    fd,
                    (&addr as *const libc::sockaddr_un).cast(),
                    size_of::<libc::sockaddr_un>() as libc::socklen_t,
                ) != 0
            {
                libc::_exit(4);
            }
            libc::write(fd, request.as_ptr().cast(), request.len());
            let mut buf = [0u8; 512];
            let mut got = 0usize;
            loop {
                let n = libc::read(fd, buf.as_mut_ptr().add(got).cast(), buf.len() - got);
                if n <= 0 {
                    break;
                }
                got += n as usize;
                // One answer line is all there is to read.
                if got == buf.len() || buf[got - 1] == b'\n' {
                    break;
                }
            }
            if got == 0 {
                libc::_exit(2);
            }
            let found = buf[..got].windows(want.len()).any(|w| w == want);
            libc::_exit(if found { 0 } else { 1 });
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    assert!(libc::WIFEXITED(status), "the child died: {status}");
    libc::WEXITSTATUS(status)
}

/// Found by the e2e test: a refused client whose request went out after the
/// server had answered and closed saw only "Broken pipe", not the refusal.
#[test]
fn a_refusal_sent_before_the_request_reaches_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (closed_tx, closed_rx) = mpsc::channel();
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let refusal = ErrorAnswer::encode(&CtlError::NotRoot { uid: 65534 });
        writeln!(s, "{refusal}").unwrap();
        drop(s);
        closed_tx.send(()).unwrap();
    });
    let mut c = Client::connect(&path).unwrap();
    closed_rx.recv_timeout(DEADLINE).unwrap();
    match c.request(&Request::Status) {
        Err(ClientError::Refused(msg)) => assert!(msg.contains("root only"), "{msg}"),
        other => panic!("expected the refusal, got {other:?}"),
    }
    server.join().unwrap();
}
