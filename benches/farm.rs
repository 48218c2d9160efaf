//! Farm benchmark: the throughput of the Apache farm module's VIP against
//! one node's own address and against haproxy in front of the same three
//! nodes, and how long the clients of a killed farm node go unserved.
//!
//! Run as root: `scripts/bench.sh farm`, or `cargo build --release
//! --workspace && cargo bench --bench farm`. It runs the `mirrorfarm`
//! binary at `$MIRRORFARM_BIN`, or beside the bench in the same target
//! directory (`target/release/mirrorfarm`). About 2 minutes on 2 cores.
//!
//! **The system under test** is the farm part of `mirrorfarm lab up --name
//! fm<pid>` ([`lab`]): farm1..3 (10.77.0.21-23), each a namespace on the
//! lab's bridge running Apache through the farm module `apache-farm`, VIP
//! 10.77.0.200 on every node, and the lab's client namespace (10.77.0.10).
//! The lab's module uses the rule `Address` (a client address always lands
//! on one node): one client address would load one node only, so the bench
//! rewrites the module file (`etc/farm-modules/apache-farm.ron`, one file
//! that the three daemons read) to `rule: AddressAndPort` and restarts the
//! three daemons with `mirrorfarm lab start farmN` before measuring: each
//! connection is then placed by its client address and port.
//!
//! 1. **Throughput** ([`load`]): `wrk -t2 -c32 -d10s --latency` (settings:
//!    `MIRRORFARM_BENCH_FARM_SECS`, `_CONNS`) from the client's namespace
//!    GETting `/node.txt` (a few bytes: the cost of the path, not of the
//!    copying), with keep-alive off (`Connection: close`: every request is a
//!    new connection, so every request pays the filter's placement and the
//!    farm's spread moves with every request) and on (32 long connections,
//!    spread by their ports once). Each is run (a) against farm1's own
//!    address (one Apache, no filter in the path: the baseline the goal
//!    names), (b) against the VIP (the three nodes each filter every frame:
//!    the switch floods the VIP's virtual MAC to all), (c) against haproxy
//!    (its own namespace `fm<pid>-hap`, 10.77.0.40, a veth on the lab's
//!    bridge; round-robin over the three nodes' own addresses; Debian's
//!    haproxy, default settings: keep-alive and connection reuse to the
//!    servers). A 2 s warm-up run precedes each. Reported: requests/s, p99
//!    latency, the split of the requests over the nodes (their Apache access
//!    logs), and the ratios farm/direct (goal ≥ 0.95) and farm/haproxy (goal
//!    > 1).
//! 2. **Takeover** ([`takeover`]): 24 clients, each a fixed source port of
//!    the client address, GET `/node.txt` of the VIP every 20 ms (200 ms
//!    for connect + answer, one at a time per client). Once every client
//!    has had 5 answers in a row from one node, and a seeded random 0–1 s
//!    later, every process of farm2's namespace is SIGKILLed (`ip netns
//!    pids`: its daemon and Apache). For each client farm2 had served: the
//!    time from the kill to the end of its first GET (started after the
//!    kill) answered by farm1 or farm3. The other clients must see nothing.
//!    farm2 is restarted with `mirrorfarm lab start farm2` and the bench
//!    waits until all three are UP again with their target shares.
//!    `MIRRORFARM_BENCH_FARM_RUNS` runs (default 5). Goal: every client
//!    back within the heartbeat timeout + 0.5 s.
//!
//! The tables are printed and written as Markdown, with the machine, to
//! `bench-farm.md` in the target directory. Everything the run makes (the
//! lab, haproxy's namespace and process, the scratch directory
//! /var/tmp/mffarm-<pid>) is removed at the end, on a panic, and on
//! Ctrl-C/SIGTERM, by drop guards.

#[path = "common/mod.rs"]
mod common;
#[path = "farm/lab.rs"]
mod lab;
#[path = "farm/load.rs"]
mod load;
#[path = "farm/takeover.rs"]
mod takeover;

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::Scratch;
use common::report::{loadavg, median, Goal, Table};
use common::rng::Rng;
use common::{env_u64, sys};
use lab::FarmLab;
use load::{Haproxy, Wrk, WrkResult};
use takeover::Clients;

fn main() {
    common::main("farm", run);
}

/// How long the farm gets to settle (after the rule change, after a restart).
const SETTLE: Duration = Duration::from_secs(120);
/// How long the killed node's clients may stay unserved before the run counts as failed.
const LIMIT: Duration = Duration::from_secs(30);
/// How long the clients are watched after the last one is back.
const TAIL: Duration = Duration::from_secs(1);
/// The clients of the takeover runs.
const CLIENTS: u16 = 24;
/// Answers in a row from one node before the kill.
const STEADY: usize = 5;
/// The kill comes a random 0 to this long after the clients are steady.
const JITTER_MS: u64 = 1000;
const SEED: u64 = 0xfa4d_0b1e;
/// The node killed in the takeover runs.
const VICTIM: usize = 1;
/// The warm-up before each measured wrk run.
const WARMUP_SECS: u64 = 2;

struct Config {
    runs: u64,
    wrk: Wrk,
    mirrorfarm: PathBuf,
    haproxy: Option<PathBuf>,
    markdown: PathBuf,
}

impl Config {
    fn from_env(notes: &mut Vec<String>) -> Self {
        let exe = std::env::current_exe().expect("cannot find the bench executable's path");
        let target_dir = exe
            .parent()
            .and_then(|d| d.parent())
            .and_then(|d| d.parent())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
        let mirrorfarm = match std::env::var_os("MIRRORFARM_BIN") {
            Some(p) => PathBuf::from(p),
            None => target_dir.join("release").join("mirrorfarm"),
        };
        if !mirrorfarm.is_file() {
            panic!(
                "no mirrorfarm binary at {}: build it first with `cargo build --release --workspace` \
                 (with the same CARGO_TARGET_DIR), or set MIRRORFARM_BIN",
                mirrorfarm.display()
            );
        }
        if let Some(w) = common::older_than_sources(
            &mirrorfarm,
            &["controller", "mirrorfs", "filter"],
            "cargo build --release --workspace",
        ) {
            eprintln!("farm: WARNING: {w}");
            notes.push(w);
        }
        let wrk = sys::which("wrk")
            .unwrap_or_else(|| panic!("no wrk on PATH: scripts/setup.sh installs it"));
        Self {
            runs: env_u64("MIRRORFARM_BENCH_FARM_RUNS", 5, 1),
            wrk: Wrk {
                bin: wrk,
                threads: 2,
                conns: env_u64("MIRRORFARM_BENCH_FARM_CONNS", 32, 2) as u32,
                secs: env_u64("MIRRORFARM_BENCH_FARM_SECS", 10, 1),
            },
            mirrorfarm,
            haproxy: sys::which("haproxy"),
            markdown: target_dir.join("bench-farm.md"),
        }
    }
}

/// One wrk measurement.
struct Load {
    target: &'static str,
    keepalive: bool,
    result: Result<WrkResult, String>,
    /// Requests each farm node's Apache logged during the run.
    split: Vec<u64>,
}

/// One takeover run.
struct TakeoverRun {
    /// Seconds until each of the victim's clients was served again (None: never).
    back: Vec<Option<f64>>,
    /// Failed GETs of the victim's clients before they were back.
    failed: usize,
    /// Failed GETs of the other clients after the kill.
    others_failed: usize,
    /// Clients of the victim, of all.
    victims: usize,
    note: Option<String>,
}

fn run() {
    let started = Instant::now();
    let mut notes = Vec::new();
    let cfg = Config::from_env(&mut notes);
    let load_start = loadavg();
    eprintln!(
        "farm: {} takeover runs, wrk {} s; load average {load_start}",
        cfg.runs, cfg.wrk.secs
    );
    let scratch = Scratch::create("mffarm");
    let mut loads = Vec::new();
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    let settings;
    let haproxy_version = cfg.haproxy.as_deref().map(Haproxy::version);
    {
        let name = format!("fm{}", std::process::id());
        let lab = FarmLab::up(&cfg.mirrorfarm, &name, &scratch.log("lab"));
        notes.push(format!(
            "lab module file as built: {}; the bench set `rule: AddressAndPort` and restarted the \
             three farm daemons (`mirrorfarm lab start farmN`)",
            lab.settings()
        ));
        eprintln!("--- rule AddressAndPort: rewriting the module file, restarting farm1..3");
        if let Err(e) = lab.set_rule("AddressAndPort") {
            panic!("changing the farm's rule: {e}");
        }
        match lab.wait_settled(SETTLE) {
            Ok(shares) => notes.push(format!("shares (buckets of 256) when settled: {shares:?}")),
            Err(e) => panic!("{e}\n{}", lab.logs_tail()),
        }
        settings = lab.settings();
        let hap = cfg
            .haproxy
            .as_deref()
            .map(|bin| Haproxy::start(bin, &lab, &scratch.path));
        if hap.is_none() {
            notes.push(
                "haproxy is not installed (scripts/setup.sh installs it): no baseline".into(),
            );
        }
        // wrk closes each connection itself after a `Connection: close`
        // answer, so every request leaves a TIME_WAIT port in the client:
        // 10 s at 10 000 requests/s would exhaust the ephemeral ports.
        lab.client_sysctl("net.ipv4.tcp_tw_reuse", "1");
        notes.push(
            "the client namespace has net.ipv4.tcp_tw_reuse=1 (wrk closes every `Connection: close` \
             connection itself; without it the TIME_WAIT ports run out within seconds)"
                .into(),
        );
        throughput(&lab, &cfg, hap.is_some(), &mut loads);
        drop(hap);
        let mut rng = Rng(SEED);
        for run in 1..=cfg.runs {
            eprintln!("--- takeover run {run}");
            match takeover_run(&lab, &mut rng) {
                Ok(r) => runs.push(r),
                Err(e) => {
                    eprintln!("[takeover] run {run}: {e}");
                    failures.push(format!("run {run}: {e}"));
                    break;
                }
            }
            if let Err(e) = lab.start(VICTIM) {
                failures.push(format!("run {run}: restarting farm2: {e}"));
                break;
            }
            if let Err(e) = lab.wait_settled(SETTLE) {
                failures.push(format!("run {run}: after restarting farm2: {e}"));
                break;
            }
        }
    }
    let (interval, timeout) = timing(&settings);
    let goal_s = timeout.map(|t| t + 0.5);
    let t1 = throughput_table(&loads);
    let t2 = takeover_table(&runs, cfg.runs, goal_s);
    notes.extend(throughput_notes(&loads, &cfg.wrk));
    notes.extend(takeover_notes(&runs, &failures));
    notes.push(format!(
        "module settings during the measurements: {settings} (heartbeat interval {} ms, timeout {} ms; \
         takeover goal: timeout + 0.5 s)",
        interval.map_or("?".into(), |v| format!("{v:.0}")),
        timeout.map_or("?".into(), |v| format!("{:.0}", v * 1000.0)),
    ));
    notes.push(format!(
        "takeover clients: {CLIENTS} source ports {}..{} of the client address, a GET of /node.txt \
         every {} ms each (one at a time per port), {} ms for connect + answer, closed with a reset; \
         the time is from the SIGKILL to the end of the first GET started after it that another node \
         answered (resolution: a GET that times out hides a recovery for up to {} ms)",
        takeover::FIRST_PORT,
        takeover::FIRST_PORT + CLIENTS - 1,
        takeover::PERIOD.as_millis(),
        takeover::TIMEOUT.as_millis(),
        (takeover::TIMEOUT + takeover::PERIOD).as_millis(),
    ));
    report(
        &cfg,
        &t1,
        &t2,
        &notes,
        &load_start,
        started.elapsed(),
        haproxy_version,
    );
    if !failures.is_empty() {
        panic!("takeover runs failed: {}", failures.join("; "));
    }
}

/// The wrk runs: keep-alive off, then on; direct, farm, haproxy each.
fn throughput(lab: &FarmLab, cfg: &Config, haproxy: bool, loads: &mut Vec<Load>) {
    let direct = format!("http://{}/node.txt", lab.nodes[0].addr);
    let farm = format!("http://{}/node.txt", lab.vip);
    let hap = format!("http://{}/node.txt", load::HAPROXY_ADDR);
    for keepalive in [false, true] {
        let mut targets = vec![
            ("direct (farm1's own address)", &direct),
            ("farm VIP", &farm),
        ];
        if haproxy {
            targets.push(("haproxy (round-robin over the 3 nodes)", &hap));
        }
        for (target, url) in targets {
            eprintln!("--- {} {url}", cfg.wrk.args(keepalive));
            let _ = cfg.wrk.run(&lab.client_ns, url, keepalive, WARMUP_SECS);
            sys::check_interrupt();
            let before = lab.access_counts();
            let result = cfg.wrk.run(&lab.client_ns, url, keepalive, cfg.wrk.secs);
            let after = lab.access_counts();
            let split = after
                .iter()
                .zip(&before)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect();
            match &result {
                Ok(r) => eprintln!(
                    "    {:.0} requests/s, p99 {:.2} ms, split {split:?}{}",
                    r.rps,
                    r.p99_ms,
                    r.errors
                        .as_deref()
                        .map(|e| format!(", {e}"))
                        .unwrap_or_default()
                ),
                Err(e) => eprintln!("    FAILED: {e}"),
            }
            loads.push(Load {
                target,
                keepalive,
                result,
                split,
            });
        }
    }
}

/// One takeover run: clients steady, SIGKILL of farm2, watch.
fn takeover_run(lab: &FarmLab, rng: &mut Rng) -> Result<TakeoverRun, String> {
    let victim = lab.nodes[VICTIM].name.clone();
    let mut clients = Clients::start(&lab.client_ns, lab.client_addr, lab.vip, CLIENTS);
    let nodes = clients.wait_steady(STEADY, Duration::from_secs(20))?;
    let mine: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i] == victim).collect();
    if mine.is_empty() {
        return Err(format!(
            "none of the {CLIENTS} clients is served by {victim} (served by {nodes:?})"
        ));
    }
    sys::nap(Duration::from_millis(rng.next() % JITTER_MS));
    let event = Instant::now();
    let killed = lab.kill_node(VICTIM);
    // Watch until every victim client is back, plus a tail, or the limit.
    let end = event + LIMIT;
    loop {
        let all_back = mine.iter().all(|&i| {
            takeover::seen(&clients.samples(i), event, &victim)
                .back
                .is_some()
        });
        if all_back {
            sys::nap(TAIL);
            break;
        }
        if Instant::now() > end {
            break;
        }
        sys::nap(Duration::from_millis(20));
    }
    clients.stop();
    let mut back = Vec::new();
    let mut later = 0;
    let mut failed = 0;
    let mut by = Vec::new();
    for &i in &mine {
        let s = takeover::seen(&clients.samples(i), event, &victim);
        back.push(s.back);
        later += s.later_failures;
        failed += s.failed;
        by.extend(s.by);
    }
    let mut others_failed = 0;
    let mut others = Vec::new();
    for i in (0..nodes.len()).filter(|i| !mine.contains(i)) {
        let samples = clients.samples(i);
        let after: Vec<_> = samples.iter().filter(|s| s.end >= event).collect();
        let failed: Vec<_> = after.iter().filter(|s| s.answer.is_err()).collect();
        others_failed += failed.len();
        let moved_to = after
            .iter()
            .rev()
            .find_map(|s| s.answer.as_ref().ok().filter(|n| **n != nodes[i]));
        if failed.is_empty() && moved_to.is_none() {
            continue;
        }
        let mut o = format!("client port {} ({}", clients.ports[i], nodes[i]);
        if let Some(m) = moved_to {
            let _ = write!(o, " → {m}");
        }
        o += ")";
        if let (Some(a), Some(b)) = (failed.first(), failed.last()) {
            let mut errors: Vec<&str> = failed
                .iter()
                .filter_map(|s| s.answer.as_ref().err().map(String::as_str))
                .collect();
            errors.sort_unstable();
            errors.dedup();
            let _ = write!(
                o,
                ": {} failed GETs from +{:.2} to +{:.2} s ({})",
                failed.len(),
                a.start.saturating_duration_since(event).as_secs_f64(),
                b.start.saturating_duration_since(event).as_secs_f64(),
                errors.join(", ")
            );
        }
        others.push(o);
    }
    let mut note = Vec::new();
    if later > 0 {
        note.push(format!(
            "{later} failed GETs of {victim}'s clients after they were served again"
        ));
    }
    if !others.is_empty() {
        note.push(format!("other clients: {}", others.join("; ")));
    }
    let f1 = by.iter().filter(|n| **n == lab.nodes[0].name).count();
    note.push(format!(
        "{victim}'s clients went to {} ({f1}) and {} ({})",
        lab.nodes[0].name,
        lab.nodes[2].name,
        by.len() - f1
    ));
    let b: Vec<String> = back
        .iter()
        .map(|b| b.map_or("never".into(), |s| format!("{s:.2}")))
        .collect();
    eprintln!(
        "[takeover] killed {killed} processes of {victim}; its {} clients back after s: {}; \
         other clients' failed GETs: {others_failed}",
        mine.len(),
        b.join(" ")
    );
    Ok(TakeoverRun {
        back,
        failed,
        others_failed,
        victims: mine.len(),
        note: Some(note.join("; ")),
    })
}

/// The heartbeat interval (ms) and timeout (s) from the settings line.
fn timing(settings: &str) -> (Option<f64>, Option<f64>) {
    let num = |key: &str| {
        let rest = &settings[settings.find(key)? + key.len()..];
        rest.trim_start_matches([':', ' '])
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse::<f64>()
            .ok()
    };
    (
        num("heartbeat_interval_ms"),
        num("heartbeat_timeout_ms").map(|ms| ms / 1000.0),
    )
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// A ratio as `0.97x`, or `-`.
fn times(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}x"))
}

fn find<'a>(loads: &'a [Load], target: &str, keepalive: bool) -> Option<&'a WrkResult> {
    loads
        .iter()
        .find(|l| l.target.starts_with(target) && l.keepalive == keepalive)
        .and_then(|l| l.result.as_ref().ok())
}

fn throughput_table(loads: &[Load]) -> Table {
    let head = [
        "target",
        "requests/s",
        "p99 ms",
        "vs direct",
        "vs haproxy",
        "goal",
        "met",
        "requests per node (farm1/farm2/farm3)",
    ];
    let mut t = Table::new(head.map(String::from).to_vec(), |i| (1..=4).contains(&i));
    for keepalive in [false, true] {
        t.section(if keepalive {
            "keep-alive on (32 long connections)".into()
        } else {
            "keep-alive off (Connection: close: a connection per request)".into()
        });
        let direct = find(loads, "direct", keepalive).map(|r| r.rps);
        let hap = find(loads, "haproxy", keepalive).map(|r| r.rps);
        for l in loads.iter().filter(|l| l.keepalive == keepalive) {
            let rps = l.result.as_ref().ok().map(|r| r.rps);
            let ratio = |base: Option<f64>| match (rps, base) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            let is_farm = l.target.starts_with("farm");
            let total: u64 = l.split.iter().sum();
            let split = if total == 0 {
                "-".to_string()
            } else {
                l.split
                    .iter()
                    .map(|n| format!("{:.0}%", *n as f64 * 100.0 / total as f64))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            let (goal, met) = if is_farm {
                let g = Goal::AtLeast(0.95);
                let vs_h = ratio(hap).map(|r| if r > 1.0 { "yes" } else { "NO" });
                (
                    "≥ 0.95× direct, > haproxy".to_string(),
                    format!(
                        "{}{}",
                        g.met(ratio(direct)),
                        vs_h.map(|h| format!(", {h}")).unwrap_or_default()
                    ),
                )
            } else {
                (String::new(), String::new())
            };
            t.row(vec![
                format!("  {}", l.target),
                fmt(rps, 0),
                fmt(l.result.as_ref().ok().map(|r| r.p99_ms), 2),
                if l.target.starts_with("direct") {
                    "1 (baseline)".into()
                } else {
                    times(ratio(direct))
                },
                if l.target.starts_with("haproxy") {
                    "1 (baseline)".into()
                } else {
                    times(ratio(hap))
                },
                goal,
                met,
                split,
            ]);
        }
    }
    t
}

fn takeover_table(runs: &[TakeoverRun], planned: u64, goal_s: Option<f64>) -> Table {
    let head = [
        "SIGKILL of farm2's namespace",
        "runs",
        "clients",
        "min s",
        "median s",
        "max s",
        "goal",
        "met",
    ];
    let mut t = Table::new(head.map(String::from).to_vec(), |i| (1..=5).contains(&i));
    let all: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.back.iter().flatten().copied())
        .collect();
    let clients: usize = runs.iter().map(|r| r.victims).sum();
    let lasts: Vec<f64> = runs
        .iter()
        .filter(|r| r.back.iter().all(Option::is_some))
        .filter_map(|r| r.back.iter().flatten().copied().reduce(f64::max))
        .collect();
    let firsts: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.back.iter().flatten().copied().reduce(f64::min))
        .collect();
    let goal = goal_s.map(Goal::AtMost);
    let row = |label: &str, v: &[f64], n: String, goal: Option<Goal>| {
        let min = v.iter().copied().reduce(f64::min);
        let max = v.iter().copied().reduce(f64::max);
        let complete = all.len() == clients && !runs.is_empty();
        vec![
            label.to_string(),
            format!("{}/{planned}", runs.len()),
            n,
            fmt(min, 2),
            fmt(median(v), 2),
            fmt(max, 2),
            goal.map(|g| g.text(" s (every client)"))
                .unwrap_or_default(),
            match goal {
                Some(g) if complete => g.met(max).to_string(),
                Some(_) if !runs.is_empty() => "NO".into(),
                _ => String::new(),
            },
        ]
    };
    t.row(row(
        "every client of farm2, every run: kill → served again",
        &all,
        format!("{}/{clients}", all.len()),
        goal,
    ));
    t.row(row(
        "per run, the first client back",
        &firsts,
        firsts.len().to_string(),
        None,
    ));
    t.row(row(
        "per run, the last client back",
        &lasts,
        lasts.len().to_string(),
        goal,
    ));
    t
}

fn throughput_notes(loads: &[Load], wrk: &Wrk) -> Vec<String> {
    let mut notes = vec![format!(
        "throughput: `{}` (keep-alive off) and `{}` (keep-alive on) from the client namespace, \
         GET /node.txt, after a {WARMUP_SECS} s warm-up each",
        wrk.args(false),
        wrk.args(true)
    )];
    for l in loads {
        match &l.result {
            Ok(r) => {
                if let Some(e) = &r.errors {
                    notes.push(format!(
                        "{} (keep-alive {}): {e}",
                        l.target,
                        if l.keepalive { "on" } else { "off" }
                    ));
                }
            }
            Err(e) => notes.push(format!(
                "{} (keep-alive {}): FAILED: {e}",
                l.target,
                if l.keepalive { "on" } else { "off" }
            )),
        }
    }
    notes
}

fn takeover_notes(runs: &[TakeoverRun], failures: &[String]) -> Vec<String> {
    let mut notes = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let b: Vec<String> = r
            .back
            .iter()
            .map(|b| b.map_or("NEVER".into(), |s| format!("{s:.2}")))
            .collect();
        let mut n = format!(
            "takeover run {}: farm2 served {} of {CLIENTS} clients; back after s: {} ({} failed GETs \
             before); failed GETs of the other clients after the kill: {}",
            i + 1,
            r.victims,
            b.join(", "),
            r.failed,
            r.others_failed
        );
        if let Some(x) = &r.note {
            let _ = write!(n, "; {x}");
        }
        notes.push(n);
    }
    for f in failures {
        notes.push(format!("FAILED takeover {f}"));
    }
    notes
}

fn report(
    cfg: &Config,
    t1: &Table,
    t2: &Table,
    notes: &[String],
    load_start: &str,
    elapsed: Duration,
    haproxy: Option<String>,
) {
    use common::report::{cpu_model, cpus, date_utc, kernel, memory};
    println!("\n{}\n{}", t1.text(), t2.text());
    for n in notes {
        println!("note: {n}");
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let mut commit = git(&["rev-parse", "--short", "HEAD"]);
    if !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        commit += " + uncommitted changes";
    }
    let mut md = format!("## Farm benchmark, {}\n\n", date_utc());
    let _ = writeln!(
        md,
        "Machine: {} CPUs ({}), {} memory, Linux {}; load average {load_start} at the start, \
         {} at the end; commit {commit}; mirrorfarm {}; {}; the run took {:.0} s.\n",
        cpus(),
        cpu_model(),
        memory(),
        kernel(),
        loadavg(),
        cfg.mirrorfarm.display(),
        haproxy.unwrap_or_else(|| "no haproxy".into()),
        elapsed.as_secs_f64()
    );
    let settings: String = [
        "MIRRORFARM_BENCH_FARM_RUNS",
        "MIRRORFARM_BENCH_FARM_SECS",
        "MIRRORFARM_BENCH_FARM_CONNS",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v} ")))
    .collect();
    let _ = writeln!(
        md,
        "Command: `{settings}cargo bench --bench farm` (as root).\n"
    );
    md += &t1.markdown();
    md += "\n";
    md += &t2.markdown();
    md += "\n";
    for n in notes {
        let _ = writeln!(md, "- {n}");
    }
    match fs::write(&cfg.markdown, &md) {
        Ok(()) => println!("\nMarkdown: {}", cfg.markdown.display()),
        Err(e) => eprintln!("farm: cannot write {}: {e}", cfg.markdown.display()),
    }
}
