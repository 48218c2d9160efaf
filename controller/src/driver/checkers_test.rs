//! Each probe against the real thing: processes, loopback listeners, a tiny
//! in-test HTTP responder, commands, and interfaces in a network namespace
//! private to the test thread.

use std::net::TcpListener;
use std::os::unix::fs::symlink;
use std::sync::mpsc;
use std::thread;

use pretty_assertions::assert_eq;

use super::*;

const T: Duration = Duration::from_secs(5);

#[test]
fn process_by_name_in_this_network_namespace_only() {
    let dir = tempfile::tempdir().unwrap();
    // comm is the name the program was exec'ed by: a symlink gives a unique one.
    let name = format!("mfchk{}", std::process::id() % 1_000_000);
    let link = dir.path().join(&name);
    symlink("/bin/sleep", &link).unwrap();
    let probe_it = {
        let name = name.clone();
        move || probe(&Probe::Process { name: name.clone() }, T)
    };
    assert_eq!(probe_it(), Err(format!("no process named {name}")));

    let mut child = Command::new(&link).arg("30").spawn().unwrap();
    // spawn() returns once the child's exec replaced its memory, which the
    // kernel does just before it sets the new name: wait for the name.
    let end = Instant::now() + T;
    while let Err(e) = probe_it() {
        assert!(Instant::now() < end, "{e} (it runs as pid {})", child.id());
        thread::sleep(Duration::from_millis(5));
    }
    // Another network namespace does not see it.
    let other = {
        let probe_it = probe_it.clone();
        in_private_netns(probe_it)
    };
    assert_eq!(other, Err(format!("no process named {name}")));

    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(probe_it(), Err(format!("no process named {name}")));
}

#[test]
fn tcp_accepted_and_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    assert_eq!(probe(&Probe::Tcp { addr }, T), Ok(()));
    drop(listener);
    assert_eq!(
        probe(&Probe::Tcp { addr }, T),
        Err(format!("connect {addr}: refused"))
    );
}

#[test]
fn http_status_matches() {
    let (addr, requests) = responder(vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        b"HTTP/1.0 500 Internal Server Error\r\n\r\n".to_vec(),
        b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(),
    ]);
    let url = format!("http://{addr}/health?full=1");
    let http = |expect_status| Probe::Http {
        url: url.clone(),
        expect_status,
    };
    assert_eq!(probe(&http(200), T), Ok(()));
    assert_eq!(
        probe(&http(200), T),
        Err(format!("HTTP 500 from {url} (expected 200)"))
    );
    assert_eq!(
        probe(&http(200), T),
        Err(format!(
            "no HTTP status line from {url} (got \"SSH-2.0-OpenSSH_9.2\")"
        ))
    );
    let first = requests.recv().unwrap();
    assert_eq!(
        first,
        format!(
            "GET /health?full=1 HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: mirrorfarm-checker\r\n\
             Connection: close\r\n\r\n"
        )
    );
}

#[test]
fn http_silence_is_a_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepted by the kernel (backlog) but never answered.
    let url = format!("http://{addr}/");
    let started = Instant::now();
    let res = probe(
        &Probe::Http {
            url: url.clone(),
            expect_status: 200,
        },
        Duration::from_millis(300),
    );
    assert_eq!(
        res,
        Err(format!(
            "reading the answer from {url}: no answer within 300 ms"
        ))
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(listener);
}

#[test]
fn http_refused_and_bad_urls() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let http = |url: &str| Probe::Http {
        url: url.into(),
        expect_status: 200,
    };
    assert_eq!(
        probe(&http(&format!("http://{addr}/")), T),
        Err(format!("connect {addr}: refused"))
    );
    let err = probe(&http("https://127.0.0.1/"), T).unwrap_err();
    assert!(err.contains("only http:// URLs"), "{err}");
}

#[test]
fn url_parsing() {
    let t = |url: &str| HttpTarget::parse(url).map(|t| (t.host, t.host_header, t.port, t.path));
    let ok = |h: &str, hh: &str, port, p: &str| Ok((h.into(), hh.into(), port, p.into()));
    assert_eq!(
        t("http://127.0.0.1/"),
        ok("127.0.0.1", "127.0.0.1", 80, "/")
    );
    assert_eq!(t("http://localhost"), ok("localhost", "localhost", 80, "/"));
    assert_eq!(
        t("http://10.0.0.1:8080/a/b?c=d"),
        ok("10.0.0.1", "10.0.0.1:8080", 8080, "/a/b?c=d")
    );
    assert_eq!(t("http://h?x=1"), ok("h", "h", 80, "/?x=1"));
    assert_eq!(t("http://[::1]:81/x"), ok("::1", "[::1]:81", 81, "/x"));
    assert_eq!(t("http://[::1]/"), ok("::1", "[::1]", 80, "/"));
    for bad in [
        "http://",
        "http://:80/",
        "http://h:port/",
        "http://[::1/",
        "http://u@h/",
        "http://h/a b",
        "http://h/\r\nX: y",
        "ftp://h/",
    ] {
        assert!(t(bad).is_err(), "{bad:?} parsed");
    }
}

#[test]
fn status_lines() {
    assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r\n"), Some(204));
    assert_eq!(parse_status_line(b"HTTP/1.0 404\r\n"), Some(404));
    assert_eq!(parse_status_line(b"HTTP/1.1 2000 x\r\n"), None);
    assert_eq!(parse_status_line(b"<html>"), None);
    assert_eq!(parse_status_line(b""), None);
}

#[test]
fn command_exit_status_and_timeout() {
    let cmd = |script: &str| Probe::Command {
        path: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
    };
    assert_eq!(probe(&cmd("exit 0"), T), Ok(()));
    assert_eq!(
        probe(&cmd("exit 3"), T),
        Err("/bin/sh exited with status 3".to_owned())
    );
    assert_eq!(
        probe(&cmd("kill -TERM $$"), T),
        Err("/bin/sh killed by signal 15".to_owned())
    );

    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let started = Instant::now();
    let res = probe(
        &cmd(&format!("sleep 30 & echo $! > {}; wait", pidfile.display())),
        Duration::from_millis(300),
    );
    assert_eq!(
        res,
        Err("/bin/sh did not finish within 300 ms (killed)".to_owned())
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Its child went with it (it was in the command's group).
    let pid: i32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let end = Instant::now() + T;
    while alive(pid) {
        assert!(Instant::now() < end, "the command's child {pid} survived");
        thread::sleep(Duration::from_millis(10));
    }

    let missing = Probe::Command {
        path: dir.path().join("nope"),
        args: vec![],
    };
    let err = probe(&missing, T).unwrap_err();
    assert!(err.ends_with("nope not found"), "{err}");
}

#[test]
fn interface_states() {
    in_private_netns(|| {
        let iface = |name: &str| probe(&Probe::Interface { name: name.into() }, T);
        assert_eq!(iface("lo"), Err("lo: administratively down".to_owned()));
        ip(&["link", "set", "lo", "up"]);
        // Loopback reports operstate "unknown" with a carrier: up.
        assert_eq!(iface("lo"), Ok(()));

        ip(&["link", "add", "ia0", "type", "veth", "peer", "name", "ib0"]);
        ip(&["link", "set", "ia0", "up"]);
        // The peer is down: no carrier.
        assert_eq!(iface("ia0"), Err("ia0: link down".to_owned()));
        ip(&["link", "set", "ib0", "up"]);
        let end = Instant::now() + T;
        while iface("ia0").is_err() {
            assert!(
                Instant::now() < end,
                "ia0 never came up: {:?}",
                iface("ia0")
            );
            thread::sleep(Duration::from_millis(10));
        }

        assert_eq!(
            iface("nosuch0"),
            Err("nosuch0: no such interface".to_owned())
        );
        assert!(iface("../x").is_err());
    });
}

/// Answers one connection per canned response, in order; sends each request
/// it read (up to the blank line) on the channel.
fn responder(responses: Vec<Vec<u8>>) -> (SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for response in responses {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(T)).unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 512];
            while !request.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            let _ = tx.send(String::from_utf8_lossy(&request).into_owned());
            conn.write_all(&response).unwrap();
        }
    });
    (addr, rx)
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next()),
            Some(Some('Z' | 'X'))
        ),
        Err(_) => false,
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread with a fresh network namespace of its own (freed with
/// the thread, even on panic) and returns its result.
fn in_private_netns<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let res = thread::spawn(move || {
        // SAFETY: unshare(2) changes only this thread's namespace membership.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!(
                "unshare(CLONE_NEWNET): {} (these tests need root)",
                io::Error::last_os_error()
            );
        }
        f()
    })
    .join();
    match res {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
