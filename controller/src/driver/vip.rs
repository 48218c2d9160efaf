//! The mirror module's virtual IP on this node: added (and renewed) on the
//! primary, announced with gratuitous ARP, removed on stop.
//!
//! Owns: running iproute2's `ip` for the one address (a child process, in the
//! calling thread's network namespace) and reading its answers. Must not: touch
//! any other address, route or link.
//!
//! The address is added with a finite lifetime (`valid_lft`/`preferred_lft`)
//! and the daemon renews it periodically ([`renew`], or [`add`] again). If the
//! daemon dies without removing it (SIGKILL, a kernel hang of the process), the
//! kernel drops the address when the lifetime expires, so the node stops
//! answering for it on its own: the lifetime must be shorter than the time the
//! peer waits before taking the address over.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

/// The virtual IP: address, prefix length and interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipSpec {
    /// The address clients connect to.
    pub addr: Ipv4Addr,
    /// Its prefix length on the interface (the network's, e.g. 24).
    pub prefix: u8,
    /// The interface that carries it (`eth0`).
    pub interface: String,
}

impl fmt::Display for VipSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} on {}", self.addr, self.prefix, self.interface)
    }
}

/// Why the VIP could not be added, removed or queried.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// `ip` is not installed (or not on PATH).
    #[error("cannot run `ip` ({source}): install iproute2 (apt install iproute2)")]
    IpMissing {
        #[source]
        source: io::Error,
    },
    /// The interface does not exist in this node's network namespace.
    #[error(
        "VIP {spec}: no interface {} here ({stderr}): fix the VIP's `interface` in the module \
         file (see `ip link`)", spec.interface
    )]
    NoSuchInterface { spec: VipSpec, stderr: String },
    /// Changing addresses needs root or CAP_NET_ADMIN.
    #[error("VIP {spec}: {stderr}: run the daemon as root (or give it CAP_NET_ADMIN)")]
    NotPermitted { spec: VipSpec, stderr: String },
    /// Any other refusal by `ip`, with its command line and stderr.
    #[error(
        "VIP {spec}: `ip {args}` failed: {stderr}: check the VIP's address, prefix and interface"
    )]
    IpFailed {
        spec: VipSpec,
        args: String,
        stderr: String,
    },
    /// `ip -j` printed something this code does not understand.
    #[error("VIP {spec}: cannot read the output of `ip {args}` ({reason}): is iproute2 older than 4.13?")]
    BadOutput {
        spec: VipSpec,
        args: String,
        reason: String,
    },
    /// The address is on the interface but the gratuitous ARP failed: peers
    /// may keep the old MAC until their ARP caches expire.
    #[error("VIP {spec} added, but announcing it failed: {source}")]
    Announce {
        spec: VipSpec,
        #[source]
        source: filter::arp::ArpError,
    },
}

/// Adds (or renews) the VIP with the given lifetime, then announces it with
/// gratuitous ARP. The lifetime is rounded up to whole seconds, at least 1.
pub fn add(spec: &VipSpec, lifetime: Duration) -> Result<(), VipError> {
    renew(spec, lifetime)?;
    filter::arp::announce(&spec.interface, spec.addr).map_err(|source| VipError::Announce {
        spec: spec.clone(),
        source,
    })?;
    tracing::info!(vip = %spec, lifetime_s = lifetime_secs(lifetime), "VIP added and announced");
    Ok(())
}

/// Adds the VIP or renews its lifetime, without announcing it (the periodic
/// renewal: the neighbours already know the MAC).
pub fn renew(spec: &VipSpec, lifetime: Duration) -> Result<(), VipError> {
    let secs = lifetime_secs(lifetime).to_string();
    let cidr = cidr(spec);
    ip(
        spec,
        &[
            "addr",
            "replace",
            &cidr,
            "dev",
            &spec.interface,
            "valid_lft",
            &secs,
            "preferred_lft",
            &secs,
        ],
    )?;
    tracing::debug!(vip = %spec, lifetime_s = secs, "VIP lifetime renewed");
    Ok(())
}

/// Removes the VIP. An address that is not there (or an interface that is
/// gone, taking it along) is not an error.
pub fn remove(spec: &VipSpec) -> Result<(), VipError> {
    match present(spec) {
        Ok(false) => return Ok(()),
        Ok(true) => {}
        Err(VipError::NoSuchInterface { .. }) => {
            tracing::warn!(vip = %spec, "VIP interface is gone: nothing to remove");
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    let cidr = cidr(spec);
    match ip(spec, &["addr", "del", &cidr, "dev", &spec.interface]) {
        Ok(_) => {
            tracing::info!(vip = %spec, "VIP removed");
            Ok(())
        }
        // Removed meanwhile (it expired, or an operator did it): the goal holds.
        Err(e) if !present(spec).unwrap_or(true) => {
            tracing::debug!(vip = %spec, error = %e, "VIP was already gone");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Whether the VIP's address is on its interface (with any prefix length).
pub fn present(spec: &VipSpec) -> Result<bool, VipError> {
    let args = ["-j", "-4", "addr", "show", "dev", spec.interface.as_str()];
    let out = ip(spec, &args)?;
    let bad = |reason: String| VipError::BadOutput {
        spec: spec.clone(),
        args: args.join(" "),
        reason,
    };
    let json: serde_json::Value =
        serde_json::from_str(out.trim()).map_err(|e| bad(e.to_string()))?;
    let links = json
        .as_array()
        .ok_or_else(|| bad("not a JSON array".into()))?;
    let want = spec.addr.to_string();
    Ok(links
        .iter()
        .filter_map(|link| link.get("addr_info")?.as_array())
        .flatten()
        .any(|a| a.get("local").and_then(|l| l.as_str()) == Some(want.as_str())))
}

/// The IPv4 networks (`address/prefix`) of the VIP's interface, the VIP's
/// own address left out.
pub fn networks(spec: &VipSpec) -> Result<Vec<(Ipv4Addr, u8)>, VipError> {
    let args = ["-j", "-4", "addr", "show", "dev", spec.interface.as_str()];
    let out = ip(spec, &args)?;
    let bad = |reason: String| VipError::BadOutput {
        spec: spec.clone(),
        args: args.join(" "),
        reason,
    };
    let json: serde_json::Value =
        serde_json::from_str(out.trim()).map_err(|e| bad(e.to_string()))?;
    let links = json
        .as_array()
        .ok_or_else(|| bad("not a JSON array".into()))?;
    Ok(links
        .iter()
        .filter_map(|link| link.get("addr_info")?.as_array())
        .flatten()
        .filter_map(|a| {
            let local: Ipv4Addr = a.get("local")?.as_str()?.parse().ok()?;
            let prefix = u8::try_from(a.get("prefixlen")?.as_u64()?).ok()?;
            (local != spec.addr).then_some((local, prefix))
        })
        .collect())
}

/// Whether `addr` lies in the network `net/prefix`.
pub fn within(addr: Ipv4Addr, (net, prefix): (Ipv4Addr, u8)) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    u32::from(addr) & mask == u32::from(net) & mask
}

fn cidr(spec: &VipSpec) -> String {
    format!("{}/{}", spec.addr, spec.prefix)
}

/// Whole seconds, rounded up, within what the kernel takes as finite
/// (1 ..= 2^32 − 2; 2^32 − 1 means forever).
fn lifetime_secs(lifetime: Duration) -> u64 {
    let secs = lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0);
    secs.clamp(1, u64::from(u32::MAX - 1))
}

/// Runs `ip ARGS`; returns its stdout, or the error that names the fix.
fn ip(spec: &VipSpec, args: &[&str]) -> Result<String, VipError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| VipError::IpMissing { source })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let spec = spec.clone();
    Err(
        if stderr.contains("Cannot find device") || stderr.contains("does not exist") {
            VipError::NoSuchInterface { spec, stderr }
        } else if stderr.contains("Operation not permitted") {
            VipError::NotPermitted { spec, stderr }
        } else {
            VipError::IpFailed {
                spec,
                args: args.join(" "),
                stderr,
            }
        },
    )
}

#[cfg(test)]
#[path = "vip_test.rs"]
mod tests;
