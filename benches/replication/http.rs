//! Reads through HTTP: our own Apache instance (Debian's apache2, event MPM,
//! sendfile and mmap on, no access log, no .htaccess lookups) serving the
//! directory under test, loaded by `wrk` from the same network namespace.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::sys::{self, Proc};

/// TCP port of the benchmark's Apache inside node 1's namespace.
pub(crate) const HTTP_PORT: u16 = 8080;

/// The HTTP tools, when both are installed.
pub(crate) struct Tools {
    pub(crate) apache2: PathBuf,
    pub(crate) wrk: PathBuf,
}

impl Tools {
    pub(crate) fn find() -> Result<Self, String> {
        match (sys::which("apache2"), sys::which("wrk")) {
            (Some(apache2), Some(wrk)) => Ok(Self { apache2, wrk }),
            (a, w) => Err(format!(
                "HTTP reads skipped: {} not installed (apt-get install apache2 wrk)",
                [("apache2", a.is_none()), ("wrk", w.is_none())]
                    .iter()
                    .filter(|(_, missing)| *missing)
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(" and ")
            )),
        }
    }
}

/// A running Apache, stopped (by PID) on drop.
pub(crate) struct Apache {
    proc: Proc,
    addr: SocketAddr,
    netns: String,
    work: PathBuf,
    error_log: PathBuf,
}

impl Apache {
    /// Starts Apache in `netns` on `addr`, serving `docroot`, with its config,
    /// pid file and logs in `work`; waits (up to 20 s) until it serves `probe`.
    pub(crate) fn start(
        tools: &Tools,
        netns: &str,
        addr: SocketAddr,
        docroot: &Path,
        work: &Path,
        probe: &str,
    ) -> Self {
        fs::create_dir_all(work).unwrap_or_else(|e| panic!("mkdir {}: {e}", work.display()));
        let conf = work.join("apache2.conf");
        let error_log = work.join("error.log");
        fs::write(&conf, config(addr, docroot, work, &error_log))
            .unwrap_or_else(|e| panic!("write {}: {e}", conf.display()));
        let mut cmd = sys::command_in(Some(netns), &tools.apache2);
        cmd.arg("-f").arg(&conf).arg("-DFOREGROUND");
        let proc = Proc::spawn("apache2", &mut cmd, &work.join("apache2.out"));
        let mut a = Self {
            proc,
            addr,
            netns: netns.to_string(),
            work: work.to_path_buf(),
            error_log,
        };
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            a.proc.check_alive();
            match a.get(probe) {
                Ok(200) => return a,
                Ok(code) => panic!("Apache answers {code} for {probe} (is it readable by www-data?); error log:\n{}",
                    sys::log_tail(&a.error_log, 8)),
                Err(e) if Instant::now() > end => panic!("Apache not serving {probe} on {addr} within 20 s ({e}); error log:\n{}",
                    sys::log_tail(&a.error_log, 8)),
                Err(_) => sys::nap(Duration::from_millis(50)),
            }
        }
    }

    /// The URL of `path` on this server.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// One GET from inside the namespace; the status code.
    fn get(&self, path: &str) -> Result<u16, String> {
        let addr = self.addr;
        let req = format!("GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n");
        sys::in_netns(&self.netns, move || -> Result<u16, String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
            let mut head = [0u8; 12];
            s.read_exact(&mut head).map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&head);
            text.get(9..12)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("bad status line {text:?}"))
        })
    }

    /// `wrk -t2 -c32 -d{secs}s` against `path`: requests/s. An error if any
    /// response was not a success (the figure would be meaningless).
    pub(crate) fn wrk(&mut self, tools: &Tools, path: &str, secs: u64) -> Result<f64, String> {
        let log = &self.work.join("wrk.out");
        let mut cmd = sys::command_in(Some(&self.netns), &tools.wrk);
        cmd.args([
            "-t2",
            "-c32",
            &format!("-d{secs}s"),
            "--timeout",
            "5s",
            &self.url(path),
        ]);
        let _ = fs::remove_file(log);
        let mut p = Proc::spawn("wrk", &mut cmd, log);
        if p.wait_exit(Duration::from_secs(secs + 30)).is_none() {
            return Err(format!("wrk did not finish within {} s", secs + 30));
        }
        self.proc.check_alive();
        let out = fs::read_to_string(log).map_err(|e| format!("read {}: {e}", log.display()))?;
        let flat = || out.split_whitespace().collect::<Vec<_>>().join(" ");
        if out.contains("Non-2xx or 3xx responses") {
            return Err(format!(
                "wrk got error responses for {path}: {}; Apache's error log ends: {}",
                flat(),
                sys::log_tail(&self.error_log, 2).replace('\n', " | ")
            ));
        }
        out.lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("no Requests/sec in wrk's output: {}", flat()))
    }
}

/// A minimal Apache config: only what serving static files needs.
fn config(addr: SocketAddr, docroot: &Path, work: &Path, error_log: &Path) -> String {
    let m = "/usr/lib/apache2/modules";
    let (docroot, work) = (docroot.display(), work.display());
    let mut c = String::new();
    for (name, file) in [
        ("mpm_event", "mod_mpm_event"),
        ("authz_core", "mod_authz_core"),
        ("mime", "mod_mime"),
    ] {
        let _ = writeln!(c, "LoadModule {name}_module {m}/{file}.so");
    }
    let _ = write!(
        c,
        "ServerName bench.invalid
Listen {addr}
User www-data
Group www-data
PidFile {work}/httpd.pid
DefaultRuntimeDir {work}
Mutex file:{work} default
ErrorLog {}
LogLevel warn
TypesConfig /etc/mime.types
EnableSendfile On
EnableMMAP On
KeepAlive On
MaxKeepAliveRequests 0
DocumentRoot {docroot}
<Directory />
    Options FollowSymLinks
    AllowOverride None
    Require all denied
</Directory>
<Directory {docroot}>
    Require all granted
</Directory>
",
        error_log.display()
    );
    c
}

impl Drop for Apache {
    fn drop(&mut self) {
        self.proc.stop();
        // Its workers are in the process group we made for it and exit with it
        // on SIGTERM; kill any straggler so none keeps a file open on a mount.
        // SAFETY: signals the process group we created for it (pgid = its pid).
        unsafe { libc::kill(-(self.proc.pid() as libc::pid_t), libc::SIGKILL) };
    }
}
