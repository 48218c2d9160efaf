//! The endpoint on 127.0.0.1:0 with raw HTTP clients: exact answers, limits,
//! and shutdown.

use std::sync::atomic::AtomicUsize;

use pretty_assertions::assert_eq;

use super::*;

const BODY: &str = "# TYPE mirrorfarm_up gauge\nmirrorfarm_up 1\n";

/// A running endpoint that counts renders; shut down and joined on drop.
struct Endpoint {
    addr: SocketAddr,
    renders: Arc<AtomicUsize>,
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    fn start() -> Self {
        let renders = Arc::new(AtomicUsize::new(0));
        let shutdown = Arc::new(AtomicBool::new(false));
        let count = renders.clone();
        let render: Render = Arc::new(move || {
            count.fetch_add(1, Ordering::SeqCst);
            BODY.to_owned()
        });
        let (addr, thread) =
            serve("127.0.0.1:0".parse().unwrap(), render, shutdown.clone()).unwrap();
        Self {
            addr,
            renders,
            shutdown,
            thread: Some(thread),
        }
    }

    /// Sends `request` and reads the answer to EOF.
    fn ask(&self, request: &[u8]) -> String {
        let mut conn = TcpStream::connect(self.addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(request).unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        answer
    }

    fn stop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn plain(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn get_metrics() {
    let ep = Endpoint::start();
    let want = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    assert_eq!(ep.ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), want);
    assert_eq!(ep.ask(b"GET /metrics?name[]=up HTTP/1.0\r\n\r\n"), want);
    // Bare LF line ends (nc, hand-typed) are accepted too.
    assert_eq!(ep.ask(b"GET /metrics HTTP/1.0\n\n"), want);
    assert_eq!(ep.renders.load(Ordering::SeqCst), 3);
}

#[test]
fn head_has_no_body() {
    let ep = Endpoint::start();
    assert_eq!(
        ep.ask(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            BODY.len()
        )
    );
}

#[test]
fn other_requests() {
    let ep = Endpoint::start();
    assert_eq!(
        ep.ask(b"GET / HTTP/1.1\r\n\r\n"),
        plain("404 Not Found", "not found: the metrics are at /metrics\n")
    );
    assert_eq!(
        ep.ask(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        plain("405 Method Not Allowed", "GET /metrics only\n")
    );
    assert_eq!(
        ep.ask(b"hello\r\n\r\n"),
        plain("400 Bad Request", "bad request line\n")
    );
    assert_eq!(
        ep.ask(b"GET /metrics SPDY/3\r\n\r\n"),
        plain("400 Bad Request", "HTTP/1.x only\n")
    );
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.resize(MAX_REQUEST + 2000, b'a');
    assert_eq!(
        ep.ask(&huge),
        plain("431 Request Header Fields Too Large", "request too large\n")
    );
    assert_eq!(ep.renders.load(Ordering::SeqCst), 0);
}

#[test]
fn a_silent_client_is_dropped_and_others_served_after_it() {
    let ep = Endpoint::start();
    let mut silent = TcpStream::connect(ep.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    // The server closes it without an answer once REQUEST_TIMEOUT passed.
    assert_eq!(silent.read_to_end(&mut rest).unwrap(), 0);
    let took = started.elapsed();
    assert!(
        took >= REQUEST_TIMEOUT - Duration::from_millis(100) && took < REQUEST_TIMEOUT * 3,
        "{took:?}"
    );
    assert!(ep
        .ask(b"GET /metrics HTTP/1.0\r\n\r\n")
        .starts_with("HTTP/1.1 200 OK\r\n"));
}

#[test]
fn shutdown_stops_the_thread_and_closes_the_port() {
    let mut ep = Endpoint::start();
    assert!(ep
        .ask(b"GET /metrics HTTP/1.0\r\n\r\n")
        .starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    ep.stop();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let err = TcpStream::connect(ep.addr).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
}

#[test]
fn a_taken_port_is_an_error() {
    let ep = Endpoint::start();
    let render: Render = Arc::new(String::new);
    let err = serve(ep.addr, render, Arc::new(AtomicBool::new(false))).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
}
