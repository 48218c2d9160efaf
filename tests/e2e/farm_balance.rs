//! The farm module end to end in the lab (`mirrorfarm lab up`: farm1..3 with
//! Apache behind the shared VIP, the client on the same bridge): every
//! client address gets exactly one answer, from its own node again and
//! again; a node killed or cut off has its clients served by the others while
//! a download on another node goes on; the node back takes its clients back
//! without breaking a connection the others hold; a node whose Apache fails
//! its checker leaves the farm until it passes again; a stopped daemon
//! leaves no filter and no VIP behind; `mirrorfarm check` tells whether
//! frames to the virtual MAC reach every node.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::util::farm::FarmLab;
use crate::util::{wait_for, Probe};

const FARM: [&str; 3] = ["farm1", "farm2", "farm3"];
/// Client addresses the tests add (the lab uses .1-.23, .100 and .200).
const CLIENTS: std::ops::RangeInclusive<u8> = 130..=169;
/// `big.bin` of the example's start_both.
const BIG: u64 = 64 * 1024 * 1024;

/// A farm node's field in `lab status --json`.
fn farm_field(lab: &FarmLab, node: &str, field: &str) -> String {
    lab.status["farm"]["nodes"][node][field]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn farm_vip(lab: &FarmLab) -> String {
    lab.status["farm"]["vip"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// `state apache-farm --json` of a farm node (its module entry), or None.
fn farm_module(lab: &FarmLab, node: &str) -> Option<Value> {
    let out = Command::new("ip")
        .args(["netns", "exec", &farm_field(lab, node, "netns")])
        .arg(&lab.bin)
        .args(["--socket", &farm_field(lab, node, "socket")])
        .args(["state", "apache-farm", "--json"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["modules"].get(0).cloned()
}

/// Waits until each of `nodes` is UP holding a share and the VIP, the
/// shares of all of them making the 256 buckets.
fn wait_up(lab: &FarmLab, nodes: &[&str], deadline: Duration) -> Result<()> {
    wait_for(
        deadline,
        &format!("{nodes:?} UP with all 256 buckets"),
        || {
            let mut seen = Vec::new();
            let mut total = 0;
            let mut all_up = true;
            for n in nodes {
                let m = farm_module(lab, n);
                let state = m
                    .as_ref()
                    .and_then(|m| m["state"].as_str().map(str::to_owned));
                let share = m.as_ref().and_then(|m| m["farm"]["share"].as_u64());
                let held = m.as_ref().and_then(|m| m["farm"]["vip_held"].as_bool());
                all_up &= state.as_deref() == Some("UP")
                    && share.is_some_and(|s| s > 0)
                    && held == Some(true);
                total += share.unwrap_or(0);
                seen.push(format!("{n} {state:?} share {share:?} vip_held {held:?}"));
            }
            if all_up && total == 256 {
                Probe::Ready(())
            } else {
                Probe::Pending(seen.join(", "))
            }
        },
    )
}

/// The client's namespace with the extra source addresses.
struct Clients<'a> {
    lab: &'a FarmLab,
    netns: String,
}

impl<'a> Clients<'a> {
    fn add(lab: &'a FarmLab) -> Result<Self> {
        let netns = lab.status["client"]["netns"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        for a in CLIENTS {
            let out = Command::new("ip")
                .args(["-n", &netns, "addr", "add", &format!("10.77.0.{a}/24")])
                .args(["dev", "eth0"])
                .output()?;
            ensure!(
                out.status.success(),
                "adding 10.77.0.{a} to the client: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self { lab, netns })
    }

    /// GET /node.txt from client address `a`, given at most `max_secs`:
    /// the node that answered.
    fn who(&self, a: u8, max_secs: u32) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, "curl", "-sf", "--max-time"])
            .arg(max_secs.to_string())
            .args(["--interface", &format!("10.77.0.{a}")])
            .arg(format!("http://{}/node.txt", farm_vip(self.lab)))
            .output()
            .ok()?;
        let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && FARM.contains(&body.as_str())).then_some(body)
    }

    /// Which node answers each client address (every one must answer, in
    /// 3 s: room for one ARP retransmission of an address that has not
    /// spoken yet, on a loaded machine).
    fn map(&self) -> Result<BTreeMap<u8, String>> {
        let mut m = BTreeMap::new();
        for a in CLIENTS {
            let node = self
                .who(a, 3)
                .with_context(|| format!("client 10.77.0.{a} got no answer through the VIP"))?;
            m.insert(a, node);
        }
        Ok(m)
    }

    /// A download of big.bin from client address `a`, slowed so that it
    /// lasts a few seconds; prints the bytes received.
    fn download(&self, a: u8) -> Result<Child> {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "curl",
                "-s",
                "-o",
                "/dev/null",
            ])
            .args(["--limit-rate", "12M", "--max-time", "60"])
            .args(["-w", "%{size_download}"])
            .args(["--interface", &format!("10.77.0.{a}")])
            .arg(format!("http://{}/big.bin", farm_vip(self.lab)))
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a download")
    }
}

/// Waits for a download; fails unless it received all of big.bin.
fn completed(child: Child, what: &str) -> Result<()> {
    let out = child.wait_with_output()?;
    let got: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    ensure!(
        out.status.success() && got == BIG,
        "{what}: the download ended with {} after {got} of {BIG} bytes",
        out.status
    );
    Ok(())
}

fn tally(map: &BTreeMap<u8, String>) -> BTreeMap<&str, usize> {
    let mut t = BTreeMap::new();
    for n in map.values() {
        *t.entry(n.as_str()).or_default() += 1;
    }
    t
}

/// Waits until every address of `addrs` is answered by a node other than
/// `gone`; returns how long that took.
fn wait_served_without(c: &Clients<'_>, addrs: &[u8], gone: &str) -> Result<Duration> {
    let t0 = Instant::now();
    wait_for(
        Duration::from_secs(20),
        &format!("{gone}'s clients served by the others"),
        || {
            let left: Vec<String> = addrs
                .iter()
                .filter_map(|a| match c.who(*a, 1) {
                    Some(n) if n != gone => None,
                    other => Some(format!("{a}: {other:?}")),
                })
                .collect();
            if left.is_empty() {
                Probe::Ready(t0.elapsed())
            } else {
                Probe::Pending(left.join(", "))
            }
        },
    )
}

#[test]
fn farm_spreads_clients_keeps_them_and_survives_a_node_kill_and_return() -> Result<()> {
    let lab = FarmLab::up_with_farm()?;
    wait_up(&lab, &FARM, Duration::from_secs(60))?;
    let c = Clients::add(&lab)?;
    let before = c.map()?;
    let t = tally(&before);
    ensure!(
        FARM.iter().all(|n| t.get(n).copied().unwrap_or(0) > 0),
        "every node serves some of {} clients: {t:?}",
        before.len()
    );
    // Affinity (rule Address): the same node again for every address.
    ensure!(c.map()? == before, "a client moved between two rounds");

    let on = |node: &str, map: &BTreeMap<u8, String>| -> Vec<u8> {
        map.iter()
            .filter(|(_, n)| n.as_str() == node)
            .map(|(a, _)| *a)
            .collect()
    };
    let farm2 = on("farm2", &before);
    let long_on_farm1 = *on("farm1", &before).first().context("no client on farm1")?;
    let download = c.download(long_on_farm1)?;

    lab.kill_node_ns(&farm_field(&lab, "farm2", "netns"));
    let took = wait_served_without(&c, &farm2, "farm2")?;
    eprintln!(
        "farm2's {} clients served by farm1/farm3 {took:?} after the kill",
        farm2.len()
    );
    wait_up(&lab, &["farm1", "farm3"], Duration::from_secs(20))?;
    let during = c.map()?;
    ensure!(
        !during.values().any(|n| n == "farm2"),
        "farm2 is dead but answers: {during:?}"
    );
    completed(download, "a download from farm1 while farm2 died")?;

    // A client of farm2 now on farm1 or farm3 downloads while farm2 comes
    // back and takes its bucket again: the connection stays where it is.
    let moved = farm2[0];
    let download = c.download(moved)?;
    let out = lab.lab(&["start", "farm2"])?;
    ensure!(
        out.status.success(),
        "lab start farm2: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_up(&lab, &FARM, Duration::from_secs(60))?;
    completed(
        download,
        "a download of a client whose bucket went back to farm2",
    )?;
    let after = c.map()?;
    ensure!(
        after == before,
        "farm2 back: every client on its node of before ({:?}), got {:?}",
        tally(&before),
        tally(&after)
    );

    // The preflight: `mirrorfarm check` on farm1 says whether frames to the
    // virtual MAC reach every node. The bridge stops flooding unknown
    // unicast to farm3's port (what a non-flooding switch does): it says so.
    let check = || -> Result<(bool, String)> {
        let out = Command::new(&lab.bin)
            .args(["check", "--config"])
            .arg(format!(
                "/var/lib/mirrorfarm-lab/{}/etc/farm1.ron",
                lab.name
            ))
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    };
    let flooded = |want_ok: bool, want: &str| {
        wait_for(Duration::from_secs(60), want, || match check() {
            Ok((ok, text)) if ok == want_ok && text.contains(want) => Probe::Ready(()),
            Ok((ok, text)) => Probe::Pending(format!("exit ok {ok}: {text}")),
            Err(e) => Probe::Fail(e),
        })
    };
    flooded(true, "reach every running member (3 of 3)")?;
    let sw = format!("{}-sw", lab.name);
    let port = format!("{}-f3", lab.name);
    let bridge = |flood: &str| -> Result<()> {
        let out = Command::new("ip")
            .args(["netns", "exec", &sw, "bridge", "link", "set", "dev", &port])
            .args(["flood", flood])
            .output()?;
        ensure!(
            out.status.success(),
            "bridge flood {flood}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    bridge("off")?;
    flooded(false, "do not reach farm3")?;
    bridge("on")?;
    flooded(true, "reach every running member (3 of 3)")?;
    Ok(())
}

#[test]
fn farm_node_cut_off_gives_up_and_one_whose_apache_fails_leaves_until_it_passes() -> Result<()> {
    let lab = FarmLab::up_with_farm()?;
    wait_up(&lab, &FARM, Duration::from_secs(60))?;
    let c = Clients::add(&lab)?;
    let before = c.map()?;
    let of = |node: &str| -> Vec<u8> {
        before
            .iter()
            .filter(|(_, n)| n.as_str() == node)
            .map(|(a, _)| *a)
            .collect()
    };

    // farm2 cut off from the other farm nodes (the client still reaches
    // it): alone it has no quorum, gives up its clients, the others take them.
    let peers = ["farm1", "farm3"].map(|n| farm_field(&lab, n, "addr"));
    let ns2 = farm_field(&lab, "farm2", "netns");
    nft(
        &ns2,
        &format!(
            "table inet cut {{ chain i {{ type filter hook input priority -5; ip saddr {{ {0} }} drop; }}; \
             chain o {{ type filter hook output priority -5; ip daddr {{ {0} }} drop; }}; }}",
            peers.join(", ")
        ),
    )?;
    let took = wait_served_without(&c, &of("farm2"), "farm2")?;
    eprintln!("farm2 cut off: its clients served by the others {took:?} later");
    let m = farm_module(&lab, "farm2").context("farm2's daemon answers")?;
    ensure!(m["state"] == "WAIT", "farm2 alone is {}", m["state"]);
    ensure!(
        m["farm"]["vip_held"] == false,
        "farm2 alone holds the VIP: {m}"
    );
    nft(&ns2, "delete table inet cut")?;
    wait_up(&lab, &FARM, Duration::from_secs(30))?;
    ensure!(
        c.map()? == before,
        "the cut healed: every client back on its node"
    );

    // farm3's Apache stops answering its checker (port 80 dropped on lo):
    // restarts do not help, so farm3 leaves; its clients go to the others.
    let ns3 = farm_field(&lab, "farm3", "netns");
    nft(
        &ns3,
        "table inet sick { chain i { type filter hook input priority -5; iif lo tcp dport 80 drop; }; }",
    )?;
    let took = wait_served_without(&c, &of("farm3"), "farm3").or_else(|_| {
        // The checker takes 4 rounds of 3 failed probes: allow for it.
        wait_for(
            Duration::from_secs(90),
            "farm3 out of the farm",
            || match farm_module(&lab, "farm3") {
                Some(m) if m["reason"] == "application failed" => Probe::Ready(()),
                Some(m) => Probe::Pending(format!("{} {}", m["state"], m["reason"])),
                None => Probe::Pending("farm3 unreachable".into()),
            },
        )?;
        wait_served_without(&c, &of("farm3"), "farm3")
    })?;
    eprintln!("farm3's Apache failing: its clients served by the others (last wait {took:?})");
    let m = farm_module(&lab, "farm3").context("farm3's daemon answers")?;
    ensure!(
        m["state"] == "WAIT" && m["reason"] == "application failed",
        "farm3 with a failing Apache: {} ({})",
        m["state"],
        m["reason"]
    );
    nft(&ns3, "delete table inet sick")?;
    wait_up(&lab, &FARM, Duration::from_secs(60))?;
    ensure!(
        c.map()? == before,
        "farm3 healthy again: every client back on its node"
    );

    // farm1's daemon stopped (SIGTERM): its filter and VIP go with it.
    let ns1 = farm_field(&lab, "farm1", "netns");
    let pid = lab.status_json()?["farm"]["nodes"]["farm1"]["pid"]
        .as_i64()
        .context("farm1's daemon pid")?;
    // SAFETY: kill has no memory effects; the pid is the lab's farm1 daemon.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    wait_for(
        Duration::from_secs(20),
        "farm1's daemon gone, nothing of its farm left",
        || {
            let tables = run_in(&ns1, &["nft", "list", "tables"]);
            let addrs = run_in(&ns1, &["ip", "-4", "addr", "show"]);
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let alive = !status.is_empty() && !status.contains("State:\tZ");
            if !alive && !tables.contains("mirrorfarm_") && !addrs.contains(&farm_vip(&lab)) {
                Probe::Ready(())
            } else {
                Probe::Pending(format!(
                    "alive {alive}; tables: {tables}; addresses: {addrs}"
                ))
            }
        },
    )?;
    wait_served_without(&c, &of("farm1"), "farm1")?;
    Ok(())
}

/// The output of a command in namespace `ns` (empty if it fails).
fn run_in(ns: &str, argv: &[&str]) -> String {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Runs an nft script in namespace `ns`.
fn nft(ns: &str, script: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", script])
        .output()?;
    if !out.status.success() {
        bail!("nft {script}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
