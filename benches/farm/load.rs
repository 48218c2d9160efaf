//! Throughput: `wrk` from the lab's client namespace, and the baseline,
//! haproxy in a namespace of its own on the lab's bridge, round-robin over
//! the three farm nodes' own addresses.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::name;
use crate::common::sys::output_within;
use crate::common::sys::{self, Proc};
use crate::lab::FarmLab;

/// The haproxy namespace's address on the lab's network (unused by the lab).
pub(crate) const HAPROXY_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 40);

/// One wrk run's figures.
#[derive(Clone, Debug, Default)]
pub(crate) struct WrkResult {
    pub(crate) rps: f64,
    /// 99th percentile latency, in ms.
    pub(crate) p99_ms: f64,
    pub(crate) requests: u64,
    /// `Socket errors: ...` and `Non-2xx or 3xx responses: N`, if any.
    pub(crate) errors: Option<String>,
}

/// wrk settings.
#[derive(Clone, Debug)]
pub(crate) struct Wrk {
    pub(crate) bin: PathBuf,
    pub(crate) threads: u32,
    pub(crate) conns: u32,
    pub(crate) secs: u64,
}

impl Wrk {
    /// The command line, for the report (without the URL).
    pub(crate) fn args(&self, keepalive: bool) -> String {
        format!(
            "wrk -t{} -c{} -d{}s --latency{}",
            self.threads,
            self.conns,
            self.secs,
            if keepalive {
                ""
            } else {
                " -H 'Connection: close'"
            }
        )
    }

    /// Runs wrk in `netns` against `url` for `secs` seconds.
    pub(crate) fn run(
        &self,
        netns: &str,
        url: &str,
        keepalive: bool,
        secs: u64,
    ) -> Result<WrkResult, String> {
        let mut cmd = sys::command_in(Some(netns), &self.bin);
        cmd.arg(format!("-t{}", self.threads))
            .arg(format!("-c{}", self.conns))
            .arg(format!("-d{secs}s"))
            .args(["--timeout", "2s", "--latency"]);
        if !keepalive {
            cmd.args(["-H", "Connection: close"]);
        }
        cmd.arg(url);
        let out = output_within(&mut cmd, Duration::from_secs(secs + 30))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!(
                "wrk failed ({}): {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        parse_wrk(&text)
    }
}

/// The figures of wrk's `--latency` output.
pub(crate) fn parse_wrk(text: &str) -> Result<WrkResult, String> {
    let mut r = WrkResult::default();
    let mut errors = Vec::new();
    let mut have = (false, false);
    for l in text.lines().map(str::trim) {
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            r.rps = v
                .trim()
                .parse()
                .map_err(|e| format!("wrk: Requests/sec {v:?}: {e}"))?;
            have.0 = true;
        } else if let Some(v) = l.strip_prefix("99%") {
            r.p99_ms = duration_ms(v.trim()).ok_or_else(|| format!("wrk: 99% {v:?}"))?;
            have.1 = true;
        } else if l.contains(" requests in ") {
            r.requests = l
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if l.starts_with("Socket errors:") || l.starts_with("Non-2xx or 3xx responses:") {
            errors.push(l.to_string());
        }
    }
    if !(have.0 && have.1) {
        return Err(format!("wrk: no Requests/sec or 99% line in:\n{text}"));
    }
    r.errors = (!errors.is_empty()).then(|| errors.join("; "));
    Ok(r)
}

/// `1.23ms`, `456.00us`, `1.01s`, `2.00m` in ms.
fn duration_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        _ => return None,
    })
}

/// haproxy in namespace `<lab>-hap` with a veth `<lab>-hp` on the lab's
/// bridge, address [`HAPROXY_ADDR`]; stopped and removed on drop.
pub(crate) struct Haproxy {
    pub(crate) netns: String,
    proc: Option<Proc>,
    created: bool,
}

impl Haproxy {
    /// Creates the namespace and link, writes the configuration to `dir`
    /// and starts haproxy in the foreground; waits until it serves.
    pub(crate) fn start(bin: &Path, lab: &FarmLab, dir: &Path) -> Self {
        let netns = format!("{}-hap", lab.lab_name());
        let port = format!("{}-hp", lab.lab_name());
        let sw = lab.switch_ns();
        let mut h = Self {
            netns: netns.clone(),
            proc: None,
            created: false,
        };
        sys::run(Command::new("ip").args(["netns", "add", &netns]));
        h.created = true;
        sys::run(Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]));
        // As the lab makes a host's link: the veth is created in the switch
        // namespace with its far end straight in the host's namespace as eth0.
        sys::run(Command::new("ip").args([
            "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &netns,
        ]));
        sys::run(Command::new("ip").args(["-n", &sw, "link", "set", &port, "master", "br0", "up"]));
        sys::run(Command::new("ip").args([
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{HAPROXY_ADDR}/24"),
            "dev",
            "eth0",
        ]));
        sys::run(Command::new("ip").args(["-n", &netns, "link", "set", "eth0", "up"]));
        let servers: String = lab
            .nodes
            .iter()
            .map(|n| format!("    server {} {}:80\n", n.name, n.addr))
            .collect();
        let cfg = format!(
            "# The farm bench's baseline: round-robin over the farm nodes' own addresses.\n\
             global\n    maxconn 4096\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\
             frontend web\n    bind {HAPROXY_ADDR}:80\n    default_backend farm\n\
             backend farm\n    balance roundrobin\n{servers}"
        );
        let conf = dir.join("haproxy.cfg");
        fs::write(&conf, cfg).unwrap_or_else(|e| panic!("{}: {e}", conf.display()));
        let mut cmd = sys::command_in(Some(&netns), bin);
        cmd.arg("-f").arg(&conf).arg("-db");
        let mut p = Proc::spawn("haproxy", &mut cmd, &dir.join("haproxy.log"));
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            p.check_alive();
            let client = lab.client_ns.clone();
            let ok = sys::in_netns(&client, || {
                std::net::TcpStream::connect_timeout(
                    &(HAPROXY_ADDR, 80).into(),
                    Duration::from_millis(500),
                )
                .is_ok()
            });
            if ok {
                break;
            }
            if Instant::now() > end {
                panic!(
                    "haproxy does not accept on {HAPROXY_ADDR}:80 within 20 s; its log ends:\n{}",
                    p.log_tail()
                );
            }
            sys::nap(Duration::from_millis(100));
        }
        h.proc = Some(p);
        h
    }

    /// haproxy's version line.
    pub(crate) fn version(bin: &Path) -> String {
        Command::new(bin)
            .arg("-v")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_else(|_| "haproxy (version unknown)".into())
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
        // Deleting the namespace deletes its end of the veth, and with it the pair.
        if self.created && !sys::run_quietly(Command::new("ip").args(["netns", "del", &self.netns]))
        {
            eprintln!("{}: could not remove namespace {}", name(), self.netns);
        }
    }
}
