//! The farm filter's nftables text: pure functions from a [`FarmFilter`] to the
//! scripts `nft -f` runs. No I/O; golden-tested (`testdata/*.nft`,
//! regenerate with `UPDATE_GOLDEN=1 cargo test -p filter ruleset`).
//!
//! Owns: the names of this module's tables (`mirrorfarm_<module>` in the `inet`,
//! `netdev` and `arp` families) and everything inside them. Must not: name any
//! other table, or flush the ruleset.
//!
//! What the tables do, per node:
//! - `inet` (hook `input`, priority `filter`, so after defragmentation and
//!   conntrack): packets to a VIP jump to chain `vip`, which accepts established
//!   and related packets (conntrack: connections this node already owns survive
//!   a rebalance), drops invalid ones, drops a new TCP packet that is not a bare
//!   SYN (a mid-stream packet of a connection another node owns: dropping it
//!   means this node never answers it with a RST), then hashes the client into a
//!   bucket, `jhash … mod 256 seed S`, and drops the packet unless the bucket is
//!   in the named set `owned`. Balanced ports use the configured [`Rule`];
//!   **every other packet to a VIP** (ICMP, ports not listed) is hashed by the
//!   client address alone, so it too is accepted by exactly one node (a ping to
//!   the VIP gets one answer). Nothing is rejected: a node that does not own a
//!   packet stays silent.
//! - `netdev` (ingress on the interface): frames to the virtual MAC get
//!   `pkttype host`, so the IP stack takes them as addressed to it. They reach
//!   every node because no node ever sends from the virtual MAC, so switches
//!   never learn it and flood it. (On a physical NIC the MAC filter must let
//!   them in: promiscuous mode; veth and bridges deliver them anyway.)
//! - `arp`: incoming ARP requests for a VIP and outgoing ARP packets whose
//!   sender is a VIP are dropped: the kernel must neither answer for the VIP
//!   with the node's own MAC nor announce it; [`crate::arp`] answers instead.
//!
//! The set `owned` is typed `typeof numgen inc mod 256`: a 32-bit host-order
//! integer like the `jhash` result, which nft 1.0.x accepts in
//! `jhash … != @owned` (a `type mark` set is refused: "datatype mismatch"), so
//! no packet or conntrack mark is used and none is clobbered.
//!
//! Every node of a farm must use the same `seed`, or buckets disagree between
//! nodes and some clients get two answers or none.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::buckets::BucketSet;

/// Longest module name accepted (nft allows 256 bytes per table name; this
/// keeps `nft list` output readable).
pub const MAX_MODULE_LEN: usize = 32;

/// Prefix of every table the filter owns.
pub const TABLE_PREFIX: &str = "mirrorfarm_";

/// Name of the named set holding the buckets this node owns.
pub const OWNED_SET: &str = "owned";

/// Everything the filter of one farm module on one node needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FarmFilter {
    /// The farm module's name: `[A-Za-z0-9_]`, 1 to [`MAX_MODULE_LEN`] bytes.
    pub module: String,
    /// The interface the VIPs are on (as `ip link` names it).
    pub interface: String,
    /// The virtual IPs every node of the farm holds; at least one.
    pub vips: Vec<Ipv4Addr>,
    /// Balanced ports: new connections to them are hashed with [`Self::rule`].
    pub ports: Vec<(Proto, u16)>,
    /// How a client of a balanced port is hashed into a bucket.
    pub rule: Rule,
    /// The virtual MAC frames to the VIPs are sent to (see [`vmac`]).
    pub vmac: [u8; 6],
    /// `jhash` seed: the same on every node of the farm.
    pub seed: u32,
    /// The buckets this node accepts new clients of.
    pub owned: BucketSet,
}

/// Transport protocol of a balanced port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// How a new client is hashed into a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// By client address: one client always reaches the same node (session
    /// affinity).
    ByAddress,
    /// By client address and source port: each connection is placed on its
    /// own (stateless services; spreads one busy client over the nodes).
    ByAddressAndPort,
}

/// Why a [`FarmFilter`] cannot be rendered. Each message names the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesetError {
    /// The module name would not make a valid, unambiguous table name.
    #[error(
        "module name {module:?} cannot name an nftables table: use 1 to {MAX_MODULE_LEN} \
         letters, digits or `_`"
    )]
    InvalidModule { module: String },
    /// The interface name is empty, too long or holds characters nft cannot quote.
    #[error(
        "interface name {interface:?} is not valid: use the name `ip link` shows (1 to 15 bytes, \
         no quote, space, `/` or control character)"
    )]
    InvalidInterface { interface: String },
    /// No VIP: the filter would have nothing to filter.
    #[error("farm module {module}: no virtual IP given: list at least one VIP")]
    NoVip { module: String },
    /// The virtual MAC must be a locally administered unicast address.
    #[error(
        "virtual MAC {mac} is not a locally administered unicast address: use `vmac()` or a MAC \
         whose first byte has bit 1 set and bit 0 clear (e.g. 02:…)"
    )]
    InvalidVmac { mac: String },
    /// Port 0 cannot be balanced.
    #[error("farm module {module}: port 0 is not a port: remove it from the balanced ports")]
    PortZero { module: String },
}

/// Name of this module's tables (the same in each of the three families).
pub fn table_name(module: &str) -> Result<String, RulesetError> {
    check_module(module)?;
    Ok(format!("{TABLE_PREFIX}{module}"))
}

/// The virtual MAC of a farm module: `02:` followed by the first five bytes of
/// `xxh3_64("mirrorfarm vmac\0" + module + "\0" + first VIP's octets)`.
/// `02` marks it locally administered and unicast, so it can clash with no
/// vendor MAC; it is derived from the module and VIP only, so every node of the
/// farm computes the same one without coordination, and two modules (or two
/// farms on one segment with other VIPs) get different ones.
pub fn vmac(module: &str, first_vip: Ipv4Addr) -> [u8; 6] {
    let mut input = b"mirrorfarm vmac\0".to_vec();
    input.extend_from_slice(module.as_bytes());
    input.push(0);
    input.extend_from_slice(&first_vip.octets());
    let h = xxhash_rust::xxh3::xxh3_64(&input).to_be_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

/// The install script: one `nft -f` transaction that deletes any older copy
/// of this module's three tables (a daemon restart leaves no stale rule) and
/// creates them afresh with `owned` filled.
pub fn install_script(f: &FarmFilter) -> Result<String, RulesetError> {
    f.validate()?;
    let t = table_name(&f.module)?;
    let vips = list(f.vips.iter());
    let mut s = String::new();
    // `writeln!` into a String cannot fail: the results are ignored below.
    let _ = writeln!(s, "# mirrorfarm farm filter of module {}", f.module);
    s.push_str(&recreate("inet", &t));
    let _ = writeln!(s, "table inet {t} {{");
    let _ = writeln!(s, "\tset {OWNED_SET} {{");
    s.push_str("\t\ttypeof numgen inc mod 256\n\t\tflags interval\n");
    if !f.owned.is_empty() {
        let _ = writeln!(s, "\t\telements = {{ {} }}", elements(&f.owned));
    }
    s.push_str("\t}\n\n");
    s.push_str("\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n");
    let _ = writeln!(s, "\t\tip daddr {{ {vips} }} jump vip");
    s.push_str("\t}\n\n");
    s.push_str("\tchain vip {\n");
    s.push_str("\t\tct state established,related accept\n");
    s.push_str("\t\tct state invalid drop\n");
    s.push_str("\t\ttcp flags & (fin|syn|rst|ack) != syn drop\n");
    let seed = format!("seed {:#010x}", f.seed);
    let by_address = format!("jhash ip saddr mod 256 {seed} != @{OWNED_SET} drop");
    if f.rule == Rule::ByAddressAndPort {
        let by_port = format!("jhash ip saddr . th sport mod 256 {seed} != @{OWNED_SET} drop");
        for (name, proto) in [("tcp", Proto::Tcp), ("udp", Proto::Udp)] {
            let ports = f.ports_of(proto);
            if ports.is_empty() {
                continue;
            }
            let ports = list(ports.iter());
            let _ = writeln!(s, "\t\t{name} dport {{ {ports} }} {by_port}");
            let _ = writeln!(s, "\t\t{name} dport {{ {ports} }} accept");
        }
    }
    let _ = writeln!(s, "\t\t{by_address}");
    s.push_str("\t}\n}\n");

    s.push_str(&recreate("netdev", &t));
    let _ = writeln!(s, "table netdev {t} {{");
    s.push_str("\tchain ingress {\n");
    let _ = writeln!(
        s,
        "\t\ttype filter hook ingress device \"{}\" priority filter; policy accept;",
        f.interface
    );
    let _ = writeln!(
        s,
        "\t\tether daddr {} meta pkttype set host",
        crate::arp::format_mac(f.vmac)
    );
    s.push_str("\t}\n}\n");

    s.push_str(&recreate("arp", &t));
    let _ = writeln!(s, "table arp {t} {{");
    s.push_str("\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n");
    let _ = writeln!(
        s,
        "\t\tarp operation request arp daddr ip {{ {vips} }} drop"
    );
    s.push_str("\t}\n\n");
    s.push_str("\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n");
    let _ = writeln!(s, "\t\tarp saddr ip {{ {vips} }} drop");
    s.push_str("\t}\n}\n");
    Ok(s)
}

/// The set-update script: one transaction that replaces the owned buckets
/// (an empty set is allowed: the node then accepts no new client).
pub fn set_owned_script(module: &str, owned: &BucketSet) -> Result<String, RulesetError> {
    let t = table_name(module)?;
    let mut s = format!("flush set inet {t} {OWNED_SET}\n");
    if !owned.is_empty() {
        let _ = writeln!(
            s,
            "add element inet {t} {OWNED_SET} {{ {} }}",
            elements(owned)
        );
    }
    Ok(s)
}

/// The removal script: deletes this module's three tables; a table that is
/// already gone is not an error (it is declared empty first).
pub fn remove_script(module: &str) -> Result<String, RulesetError> {
    let t = table_name(module)?;
    Ok(["inet", "netdev", "arp"]
        .iter()
        .map(|family| recreate(family, &t))
        .collect())
}

impl FarmFilter {
    /// Checks every field the scripts embed, so no input can change the
    /// meaning of the nft text.
    pub fn validate(&self) -> Result<(), RulesetError> {
        check_module(&self.module)?;
        check_interface(&self.interface)?;
        if self.vips.is_empty() {
            return Err(RulesetError::NoVip {
                module: self.module.clone(),
            });
        }
        if self.vmac[0] & 0b11 != 0b10 {
            return Err(RulesetError::InvalidVmac {
                mac: crate::arp::format_mac(self.vmac),
            });
        }
        if self.ports.iter().any(|(_, p)| *p == 0) {
            return Err(RulesetError::PortZero {
                module: self.module.clone(),
            });
        }
        Ok(())
    }

    /// The balanced ports of one protocol, sorted, without duplicates.
    fn ports_of(&self, proto: Proto) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .ports
            .iter()
            .filter(|(p, _)| *p == proto)
            .map(|(_, port)| *port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// `table F T {}` then `delete table F T`: removes the table whether or not it
/// existed, inside the caller's transaction.
fn recreate(family: &str, table: &str) -> String {
    format!("table {family} {table} {{}}\ndelete table {family} {table}\n")
}

/// `0-84, 200`: the set's elements as nft ranges.
fn elements(owned: &BucketSet) -> String {
    owned
        .ranges()
        .into_iter()
        .map(|(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn list<T: ToString>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

fn check_module(module: &str) -> Result<(), RulesetError> {
    let ok = !module.is_empty()
        && module.len() <= MAX_MODULE_LEN
        && module
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(RulesetError::InvalidModule {
            module: module.to_owned(),
        })
    }
}

fn check_interface(interface: &str) -> Result<(), RulesetError> {
    let ok = !interface.is_empty()
        && interface.len() < libc::IFNAMSIZ
        && interface
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'/' | b'\\'));
    if ok {
        Ok(())
    } else {
        Err(RulesetError::InvalidInterface {
            interface: interface.to_owned(),
        })
    }
}

#[cfg(test)]
#[path = "ruleset_test.rs"]
mod tests;
