//! The lab's network: one namespace per host and a switch namespace holding a
//! bridge. Each host's veth is created inside the switch namespace with its
//! far end placed straight into the host's namespace as `eth0`, so nothing
//! ever appears on the machine's own network, and labs of different names are
//! isolated by their own switch (they may all use 10.77.0.0/24).

use super::layout::{Host, Lab, BRIDGE, PREFIX_LEN};
use super::sys::{self, ip};
use super::LabError;

/// Builds the namespaces of `hosts` (the mirror part's, and the farm's
/// unless `--no-farm`), the bridge and the links, with `lo` up everywhere.
/// Stops at the first error and leaves what it made (`down` removes it).
pub(crate) fn build(lab: &Lab, hosts: &[Host]) -> Result<(), LabError> {
    let sw = lab.switch_netns();
    add_netns(&sw)?;
    ip(["-n", &sw, "link", "add", BRIDGE, "type", "bridge"])?;
    ip(["-n", &sw, "link", "set", BRIDGE, "up"])?;
    for &host in hosts {
        let ns = lab.netns(host);
        add_netns(&ns)?;
        let port = lab.port(host);
        ip([
            "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(["-n", &sw, "link", "set", &port, "master", BRIDGE, "up"])?;
        let cidr = format!("{}/{PREFIX_LEN}", host.addr());
        ip(["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(["-n", &ns, "link", "set", "eth0", "up"])?;
    }
    Ok(())
}

/// Removes the lab's namespaces that exist (their links go with them) and
/// any of its bridge ports found on the host. Returns what could not be
/// removed.
pub(crate) fn remove(lab: &Lab) -> Vec<String> {
    let mut problems = Vec::new();
    for ns in lab.namespaces() {
        if sys::netns_exists(&ns) {
            if let Err(e) = ip(["netns", "del", &ns]) {
                problems.push(e.to_string());
            }
        }
    }
    for port in host_side_ports(lab) {
        if let Err(e) = ip(["link", "del", &port]) {
            problems.push(e.to_string());
        }
    }
    problems
}

/// The lab's bridge ports found in the machine's own namespace. [`build`]
/// never makes them there; `down` still looks, so that it also clears a lab
/// whose links were made there (by hand, or half-moved) and leaves nothing.
pub(crate) fn host_side_ports(lab: &Lab) -> Vec<String> {
    Host::ALL
        .iter()
        .map(|&h| lab.port(h))
        .filter(|p| std::path::Path::new("/sys/class/net").join(p).exists())
        .collect()
}

fn add_netns(ns: &str) -> Result<(), LabError> {
    ip(["netns", "add", ns])?;
    ip(["-n", ns, "link", "set", "lo", "up"])
}
