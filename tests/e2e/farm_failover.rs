//! Issue 8 (controller: the mirrorfarm daemon and CLI — mirror modules with
//! failover, quorum, scripts, checkers, virtual IP, and the one-machine lab):
//! the whole cluster in the lab, driven as an operator would.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use crate::util::farm::{FarmLab, Overlap};
use crate::util::{wait_for, Probe};

/// Uploads `n` files through the VIP; returns those acknowledged (name,
/// content).
pub(crate) fn upload(lab: &FarmLab, prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .filter_map(|i| {
            let (name, body) = (format!("{prefix}{i}.txt"), format!("{prefix} {i}\n"));
            lab.put(&format!("/uploads/{name}"), &body)
                .then_some((name, body))
        })
        .collect()
}

/// Every acknowledged upload is served through the VIP with its content.
pub(crate) fn all_served(lab: &FarmLab, acked: &[(String, String)]) -> Result<()> {
    for (name, want) in acked {
        let got = lab.get(&format!("/uploads/{name}"));
        ensure!(
            got.as_deref() == Some(want.as_str()),
            "upload {name}: served {got:?}, want {want:?}"
        );
    }
    Ok(())
}

/// Measures, from the client, the time from the first failed request after
/// `since` to the next good one (GET / every 20 ms), up to `limit`.
fn outage(lab: &FarmLab, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut first_fail: Option<Instant> = None;
    while start.elapsed() < limit {
        let t = Instant::now();
        let ok = lab.get("/").is_some();
        match (ok, first_fail) {
            (false, None) => first_fail = Some(t),
            (true, Some(f)) => return t - f,
            (true, None) if start.elapsed() > Duration::from_secs(1) => return Duration::ZERO,
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20).saturating_sub(t.elapsed()));
    }
    limit
}

/// issue_08: SIGKILL of every process of the primary: the secondary takes
/// over with every acknowledged write, the outage is measured; the node
/// returns as SECOND through an incremental resync; `swap` moves the service
/// back, running stop_prim on the old primary before start_prim on the new.
#[test]
fn issue_08_sigkill_of_the_primary_fails_over_with_every_acknowledged_write() -> Result<()> {
    let lab = FarmLab::up()?;
    lab.wait_in_sync("node1", Duration::from_secs(30))?;
    let acked = upload(&lab, "before", 20);
    ensure!(
        acked.len() == 20,
        "only {} of 20 uploads acknowledged before the kill",
        acked.len()
    );
    let overlap = Overlap::watch(&lab);

    eprintln!("--- SIGKILL every process of node1");
    lab.kill_node("node1");
    let t = Instant::now();
    let down = outage(&lab, Duration::from_secs(20));
    eprintln!(
        "client-visible outage after the kill: {down:?} (took over {:?} after the kill)",
        t.elapsed()
    );
    lab.wait_states("UNREACHABLE", "ALONE", Duration::from_secs(20))?;
    all_served(&lab, &acked)?;
    let during = upload(&lab, "alone", 10);
    ensure!(
        during.len() == 10,
        "node2 ALONE acknowledged {} of 10 uploads",
        during.len()
    );
    let m = lab.module("node2").unwrap_or_default();
    ensure!(
        m["last_failover"]["cause"]
            .as_str()
            .is_some_and(|c| c.contains("node1 lost")),
        "the failover's cause is shown: {m}"
    );

    eprintln!("--- node1 returns");
    let out = lab.lab(&["start", "node1"])?;
    ensure!(
        out.status.success(),
        "lab start node1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.wait_states("SECOND", "PRIM", Duration::from_secs(60))?;
    lab.wait_in_sync("node2", Duration::from_secs(60))?;
    let log2 = std::fs::read_to_string(format!(
        "/var/lib/mirrorfarm-lab/{}/node2/state/modules/apache/mirrorfs-dir2.log",
        lab.name
    ))
    .unwrap_or_default();
    ensure!(
        log2.contains("resync complete"),
        "node2's mount resynced node1 (its log): {log2}"
    );

    eprintln!("--- swap back to node1");
    lab.swap("node2")?;
    lab.wait_states("PRIM", "SECOND", Duration::from_secs(60))?;
    all_served(&lab, &acked)?;
    all_served(&lab, &during)?;
    let overlaps = overlap.finish();
    ensure!(overlaps.is_empty(), "seen: {overlaps:?}");

    // The swap stopped the application on node2 before starting it on node1.
    let stopped = last_line_time(&lab.module_log("node2"), "done: script stop_prim");
    let started = last_line_time(&lab.module_log("node1"), "start: script start_prim");
    ensure!(
        stopped.is_some() && started.is_some() && stopped < started,
        "stop_prim on node2 ({stopped:?}) ends before start_prim on node1 ({started:?})"
    );
    Ok(())
}

/// The time stamp (text, sortable) of the last log line containing `what`.
fn last_line_time(log: &str, what: &str) -> Option<String> {
    log.lines()
        .rfind(|l| l.contains(what))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_owned)
}

/// issue_08: a 30 s CPU and I/O stall of the primary's machine (stress-ng in
/// the primary's namespace, all cores) causes no failover.
#[test]
fn issue_08_a_stall_of_the_primary_causes_no_failover() -> Result<()> {
    let lab = FarmLab::up()?;
    lab.wait_in_sync("node1", Duration::from_secs(30))?;
    let before = lab
        .module_log("node2")
        .lines()
        .filter(|l| l.contains(" -> "))
        .count();
    eprintln!("--- stress-ng: every core busy, and I/O, for 30 s");
    let mut stress = lab
        .on("node1", "stress-ng")
        .args([
            "--cpu",
            "0",
            "--io",
            "2",
            "--hdd",
            "1",
            "--hdd-bytes",
            "64M",
            "--timeout",
            "30s",
            "--quiet",
        ])
        .current_dir("/var/tmp")
        .spawn()?;
    let end = Instant::now() + Duration::from_secs(31);
    let mut samples = 0;
    while Instant::now() < end {
        let (a, b) = (lab.state("node1"), lab.state("node2"));
        ensure!(
            a == "PRIM" && b == "SECOND",
            "during the stall: node1 {a}, node2 {b}"
        );
        samples += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = stress.wait();
    let after = lab
        .module_log("node2")
        .lines()
        .filter(|l| l.contains(" -> "))
        .count();
    ensure!(
        after == before,
        "node2 changed state during the stall:\n{}",
        lab.module_log("node2")
    );
    ensure!(samples > 20, "sampled the states {samples} times");
    Ok(())
}

/// issue_08: the checker restarts a killed Apache (scripts only, no
/// failover); past `times` restarts in the window, the next failure swaps.
#[test]
fn issue_08_apache_killed_is_restarted_by_the_checker_then_swapped() -> Result<()> {
    let lab = FarmLab::up()?;
    lab.wait_in_sync("node1", Duration::from_secs(30))?;
    let kill_apache = || {
        for pid in lab.pids("node1") {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "apache2" {
                // SAFETY: kill has no memory effects; the pid is the lab's.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    };
    // The example's checker: 3 failures (1 s apart) → restart, up to 3 times
    // in 300 s, then swap.
    for round in 1..=3 {
        eprintln!("--- kill Apache on node1 (round {round})");
        kill_apache();
        wait_for(Duration::from_secs(30), "the checker's restart", || {
            let n = lab
                .module_log("node1")
                .lines()
                .filter(|l| l.contains("checker apache-http: failed 3 times: Restart"))
                .count();
            if n >= round && lab.get("/").is_some() {
                Probe::Ready(())
            } else {
                Probe::Pending(format!("{n} restarts"))
            }
        })?;
        // A restart, not a failover: node1 stays primary.
        lab.wait_states("PRIM", "SECOND", Duration::from_secs(30))?;
    }
    eprintln!("--- kill Apache on node1 a fourth time: a swap");
    kill_apache();
    lab.wait_states("SECOND", "PRIM", Duration::from_secs(60))?;
    wait_for(
        Duration::from_secs(20),
        "node2's Apache through the VIP",
        || {
            if lab.get("/").is_some() {
                Probe::Ready(())
            } else {
                Probe::Pending("no page".into())
            }
        },
    )?;
    Ok(())
}
