//! Issue 8: several modules per cluster, each with its own directories, VIP,
//! ports and scripts — active/active (node1 primary of one while node2 is
//! primary of the other) — and bad configurations refused with their
//! message.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::util::farm::{mirrorfarm_bin, FarmLab};
use crate::util::{wait_for, Probe};

/// The second module: a file server (python's http.server) on its own VIP,
/// with node2 listed first (so it starts there).
fn files_module(lab_dir: &str) -> String {
    format!(
        r#"// A second module of the lab, written by the test.
(
    kind: Mirror,
    nodes: [
        (name: "node2", cert: "{lab_dir}/certs/node2.crt", addrs: ["10.77.0.2"]),
        (name: "node1", cert: "{lab_dir}/certs/node1.crt", addrs: ["10.77.0.1"]),
    ],
    heartbeat_port: 7440,
    mirrorfs_port: 7441,
    dirs: [(backing: "/var/lib/files-mirror/data", mount: "/srv/files-mirror/data")],
    vip: Some((addr: "10.77.0.101", prefix: 24, interface: "eth0")),
    witness: Some((addr: "10.77.0.3:7430", cert: "{lab_dir}/certs/witness.crt")),
    timing: (heartbeat_interval_ms: 250, heartbeat_timeout_ms: 1500, lease_ms: 3000),
    scripts: (
        dir: "{lab_dir}/etc/modules/files",
        start_prim: Some("start_prim"),
        stop_prim: Some("stop_prim"),
    ),
)
"#
    )
}

const START: &str = r#"#!/bin/sh
# Serves the replicated directory on the module's VIP, port 8080.
set -e
cd "$MIRRORFARM_DIR_1"
setsid python3 -m http.server --bind "$MIRRORFARM_VIP" 8080 >"$MIRRORFARM_RUN_DIR/http.log" 2>&1 </dev/null &
echo $! >"$MIRRORFARM_RUN_DIR/http.pid"
"#;

const STOP: &str = r#"#!/bin/sh
pid=$(cat "$MIRRORFARM_RUN_DIR/http.pid" 2>/dev/null) || exit 0
kill "$pid" 2>/dev/null || true
rm -f "$MIRRORFARM_RUN_DIR/http.pid"
"#;

fn write_exec(path: &str, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| path.to_owned())?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// GET `url` from the client: the body, or None.
fn fetch(lab: &FarmLab, url: &str) -> Option<String> {
    let out = lab
        .client("curl")
        .args(["-sf", "--max-time", "2", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// issue_08: two modules, node1 primary of `apache` while node2 is primary
/// of `files`; each serves on its own VIP; when node2 dies, node1 takes
/// `files` over with its data.
#[test]
fn issue_08_active_active_two_modules_primary_on_different_nodes() -> Result<()> {
    let lab = FarmLab::up()?;
    let dir = format!("/var/lib/mirrorfarm-lab/{}", lab.name);
    fs::create_dir_all(format!("{dir}/etc/modules/files"))?;
    write_exec(&format!("{dir}/etc/modules/files/start_prim"), START)?;
    write_exec(&format!("{dir}/etc/modules/files/stop_prim"), STOP)?;
    fs::write(format!("{dir}/etc/modules/files.ron"), files_module(&dir))?;
    eprintln!("--- restart both daemons with the second module");
    for node in ["node1", "node2"] {
        let out = lab.lab(&["start", node])?;
        ensure!(
            out.status.success(),
            "lab start {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_for(
        Duration::from_secs(60),
        "apache on node1, files on node2",
        || {
            let s = [
                lab.state_of("node1", "apache"),
                lab.state_of("node2", "apache"),
                lab.state_of("node1", "files"),
                lab.state_of("node2", "files"),
            ];
            if s == ["PRIM", "SECOND", "SECOND", "PRIM"] {
                Probe::Ready(())
            } else {
                Probe::Pending(format!("{s:?}"))
            }
        },
    )?;
    // Write through node2's mount of `files`: replicated to node1.
    let mount2 = format!("{dir}/node2/srv/files-mirror/data");
    fs::write(format!("{mount2}/hello.txt"), "from node2\n")?;
    wait_for(Duration::from_secs(10), "both VIPs serving", || {
        match (
            fetch(&lab, "http://10.77.0.100/"),
            fetch(&lab, "http://10.77.0.101:8080/hello.txt"),
        ) {
            (Some(_), Some(b)) if b == "from node2\n" => Probe::Ready(()),
            other => Probe::Pending(format!("{other:?}")),
        }
    })?;
    // node1 has heard node2 say `files` is in sync (so it may take over).
    wait_for(
        Duration::from_secs(20),
        "node1 knows `files` is in sync",
        || match lab.module_named("node1", "files") {
            Some(m) if m["in_sync"] == serde_json::Value::Bool(true) => Probe::Ready(()),
            other => Probe::Pending(format!("{other:?}")),
        },
    )?;
    eprintln!("--- SIGKILL node2: node1 takes `files` over");
    lab.kill_node("node2");
    wait_for(Duration::from_secs(30), "node1 primary of both", || {
        let s = [
            lab.state_of("node1", "apache"),
            lab.state_of("node1", "files"),
        ];
        if (s[0] == "PRIM" || s[0] == "ALONE") && s[1] == "ALONE" {
            Probe::Ready(())
        } else {
            Probe::Pending(format!("{s:?}"))
        }
    })?;
    wait_for(
        Duration::from_secs(10),
        "files served by node1",
        || match fetch(&lab, "http://10.77.0.101:8080/hello.txt") {
            Some(b) if b == "from node2\n" => Probe::Ready(()),
            other => Probe::Pending(format!("{other:?}")),
        },
    )?;
    ensure!(
        fetch(&lab, "http://10.77.0.100/").is_some(),
        "apache still served"
    );
    Ok(())
}

/// issue_08: `mirrorfarm check` refuses a broken module with the file, line,
/// field and fix, exit 2; the daemon refuses to start on it, saying so.
#[test]
fn issue_08_bad_configurations_are_refused_with_their_message() -> Result<()> {
    crate::util::require_root()?;
    let bin = mirrorfarm_bin()?;
    let mirrorfs = crate::util::mirrorfs_bin()?;
    let tmp = tempfile::tempdir_in("/var/tmp")?;
    let d = tmp.path().display().to_string();
    for name in ["node1", "node2", "witness"] {
        let out = Command::new(&mirrorfs)
            .args(["keygen", "--dir", &format!("{d}/certs"), "--name", name])
            .output()?;
        ensure!(out.status.success(), "keygen {name}");
    }
    fs::create_dir_all(format!("{d}/modules/web"))?;
    write_exec(&format!("{d}/modules/web/start_prim"), START)?;
    write_exec(&format!("{d}/modules/web/stop_prim"), STOP)?;
    fs::write(
        format!("{d}/node.ron"),
        format!(
            "(name: \"node1\", key: \"{d}/certs/node1.key\", cert: \"{d}/certs/node1.crt\", modules: \"{d}/modules\", socket: \"{d}/mf.sock\", state_dir: \"{d}/state\")\n"
        ),
    )?;
    let good = files_module(&d).replace(
        &format!("{d}/etc/modules/files"),
        &format!("{d}/modules/web"),
    );
    fs::write(format!("{d}/modules/web.ron"), &good)?;
    let check = || {
        Command::new(&bin)
            .args(["check", "--config", &format!("{d}/node.ron")])
            .output()
    };
    let out = check()?;
    ensure!(
        out.status.success(),
        "a good module passes: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The heartbeat timeout must exceed three intervals.
    let bad = good.replace("heartbeat_timeout_ms: 1500", "heartbeat_timeout_ms: 500");
    fs::write(format!("{d}/modules/web.ron"), &bad)?;
    let out = check()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2),
        "check exits 2 on a bad module: {:?}",
        out.status
    );
    let line = bad
        .lines()
        .position(|l| l.contains("heartbeat_timeout_ms"))
        .unwrap_or(0)
        + 1;
    ensure!(
        err.contains(&format!("web.ron:{line}:"))
            && err.contains("heartbeat_timeout_ms")
            && err.contains("raise"),
        "the message names file:line, the field and the fix: {err}"
    );
    // The daemon refuses to start on it, with the same message.
    let out = Command::new(&bin)
        .args(["daemon", "--config", &format!("{d}/node.ron")])
        .output()?;
    let derr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2),
        "the daemon exits 2: {:?} {derr}",
        out.status
    );
    ensure!(
        derr.contains("heartbeat_timeout_ms"),
        "the daemon says why: {derr}"
    );

    // No witness without the acknowledgement of the split-brain risk.
    let bad = good.replace(
        &format!("witness: Some((addr: \"10.77.0.3:7430\", cert: \"{d}/certs/witness.crt\")),"),
        "witness: None,",
    );
    ensure!(bad != good, "the witness line was replaced");
    fs::write(format!("{d}/modules/web.ron"), &bad)?;
    let out = check()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2) && err.contains("accept_split_brain_risk"),
        "witness: None alone is refused, naming the acknowledgement: {err}"
    );
    Ok(())
}

/// issue_08: the daemon of the primary crashes (SIGKILL) and is started
/// again within the heartbeat timeout: it adopts its running mirrorfs
/// processes through their control sockets; the application keeps running
/// (same Apache), no failover happens. (An upgrade, SIGTERM, is the same.)
#[test]
fn issue_08_a_restarted_daemon_adopts_its_mirrorfs_and_the_service_stays() -> Result<()> {
    let lab = FarmLab::up()?;
    let dir = format!("/var/lib/mirrorfarm-lab/{}", lab.name);
    let apache_pids = || -> Vec<i32> {
        lab.pids("node1")
            .into_iter()
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "apache2")
            })
            .collect()
    };
    let before = apache_pids();
    ensure!(!before.is_empty(), "Apache runs on node1");
    let daemon: Vec<i32> = lab
        .pids("node1")
        .into_iter()
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                c.contains("daemon") && c.starts_with(&lab.bin.display().to_string())
            })
        })
        .collect();
    ensure!(daemon.len() == 1, "one daemon on node1: {daemon:?}");
    eprintln!("--- SIGKILL node1's daemon only, then start it again");
    // SAFETY: kill has no memory effects; the pid is the lab's daemon.
    unsafe { libc::kill(daemon[0], libc::SIGKILL) };
    // Gone, or a zombie: its parent (init, here: lab up has exited) may
    // take a while to reap it, but it holds no socket or port any more.
    wait_for(
        Duration::from_secs(5),
        "the daemon gone",
        || match fs::read_to_string(format!("/proc/{}/stat", daemon[0])) {
            Err(_) => Probe::Ready(()),
            Ok(st)
                if st
                    .rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z')) =>
            {
                Probe::Ready(())
            }
            Ok(_) => Probe::Pending("still running".into()),
        },
    )?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{dir}/logs/node1.log"))?;
    let mut cmd = lab.on("node1", &lab.bin.display().to_string());
    cmd.args(["daemon", "--config", &format!("{dir}/etc/node1.ron")])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; the daemon outlives the test's
    // process tree like the lab's own (lab down stops it).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            Ok(())
        });
    }
    let _child = cmd.spawn()?;
    lab.wait_states("PRIM", "SECOND", Duration::from_secs(20))?;
    ensure!(
        apache_pids() == before,
        "the same Apache runs: {before:?} then {:?}",
        apache_pids()
    );
    ensure!(lab.get("/").is_some(), "the page is served");
    let log = lab.module_log("node1");
    ensure!(
        log.contains("adopting the running mirrorfs processes (mounts)"),
        "adopted: {log}"
    );
    let log2 = lab.module_log("node2");
    ensure!(!log2.contains("takeover"), "no failover: {log2}");
    Ok(())
}

/// issue_08: `mirrorfarm stop` on the primary is announced: the secondary
/// takes over at once (well before a heartbeat timeout's detection).
#[test]
fn issue_08_a_clean_stop_of_the_primary_hands_over_at_once() -> Result<()> {
    let lab = FarmLab::up()?;
    let acked = crate::farm_failover::upload(&lab, "stop", 5);
    ensure!(acked.len() == 5, "uploads before the stop");
    let out = lab.mf("node1", &["stop", "apache"])?;
    ensure!(
        out.status.success(),
        "stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.wait_states("STOP", "ALONE", Duration::from_secs(20))?;
    let m = lab.module("node2").unwrap_or_default();
    ensure!(
        m["last_failover"]["cause"]
            .as_str()
            .is_some_and(|c| c.contains("node1 stopped")),
        "the takeover says node1 stopped: {m}"
    );
    crate::farm_failover::all_served(&lab, &acked)?;
    eprintln!("--- start it again: node1 returns as SECOND");
    let out = lab.mf("node1", &["start", "apache"])?;
    ensure!(
        out.status.success(),
        "start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.wait_states("SECOND", "PRIM", Duration::from_secs(60))?;
    Ok(())
}
