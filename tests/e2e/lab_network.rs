//! Tests of the test lab: if these fail, no e2e result means anything.

use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;

use crate::util::lab::{Direction, Lab};
use crate::util::{cmd, run_ok, wait_for, Probe};

#[test]
fn lab_nodes_reach_each_other() -> Result<()> {
    let lab = Lab::builder().node("a").node("b").build()?;
    let (a, b) = (lab.node("a"), lab.node("b"));
    assert_ne!(a.ip, b.ip);
    for (from, to) in [(a, b), (b, a)] {
        let what = format!("{} to answer ping from {}", to.name, from.name);
        wait_for(Duration::from_secs(5), &what, || match from.pings(to.ip) {
            Ok(true) => Probe::Ready(()),
            Ok(false) => Probe::Pending("no reply".into()),
            Err(e) => Probe::Fail(e),
        })?;
    }
    Ok(())
}

#[test]
fn lab_partition_blocks_and_heals() -> Result<()> {
    let lab = Lab::builder().node("a").node("b").build()?;
    let (a, b) = (lab.node("a"), lab.node("b"));
    let reply = |want: bool, what: &str| {
        wait_for(Duration::from_secs(5), what, || match a.pings(b.ip) {
            Ok(got) if got == want => Probe::Ready(()),
            Ok(got) => Probe::Pending(format!(
                "ping answered: {got}; ruleset of a:\n{}",
                a.ruleset().unwrap_or_default()
            )),
            Err(e) => Probe::Fail(e),
        })
    };
    reply(true, "a to reach b")?;
    a.block(b, Direction::Inbound)?;
    reply(false, "replies from b to be dropped")?;
    a.unblock(b, Direction::Inbound)?;
    reply(true, "a to reach b again")?;
    a.block(b, Direction::Both)?;
    reply(false, "the partition to drop pings")?;
    assert!(!b.pings(a.ip)?, "b still reaches a across the partition");
    a.unblock(b, Direction::Both)?;
    reply(true, "a to reach b after healing")?;
    Ok(())
}

#[test]
fn lab_cleans_up_on_panic() -> Result<()> {
    let made: Mutex<(Vec<String>, Option<u32>)> = Mutex::new((Vec::new(), None));
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let lab = Lab::builder().node("a").node("b").build().expect("lab");
        let sleeper = lab
            .node("a")
            .spawn("sleep", ["sleep", "600"])
            .expect("spawn");
        *made.lock().unwrap() = (lab.namespaces().to_vec(), Some(sleeper.pid()));
        panic!("a test failing while it holds a lab");
    }));
    assert!(result.is_err(), "the closure was meant to panic");
    let (namespaces, pid) = made.into_inner().unwrap();
    assert_eq!(
        namespaces.len(),
        3,
        "a switch and two nodes: {namespaces:?}"
    );
    let listed = String::from_utf8(run_ok(&mut cmd("ip", ["netns", "list"]))?.stdout)?;
    for ns in &namespaces {
        assert!(
            !listed.split_whitespace().any(|n| n == ns),
            "namespace {ns} survived the panic:\n{listed}"
        );
        assert!(!Path::new("/run/netns").join(ns).exists());
    }
    let pid = pid.expect("the sleeper was started");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} spawned in the lab survived the panic"
    );
    Ok(())
}
