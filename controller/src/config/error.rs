//! Why a node file or a module file was refused.
//!
//! Owns: [`ConfigError`], one variant per rule (plus [`ConfigError::Invalid`] for the
//! one-off checks), and [`Place`], the `FILE:LINE:COL` every message starts with.
//! Each message names the place, the field path (`nodes[1].addrs[0]`), the bad value
//! and the fix, so that an operator can correct the file from the message alone.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use mirrorfs::net::tls::TlsError;

/// Where in which file a problem is: `FILE:LINE:COL`, or `FILE` alone when the
/// offending field could not be found in the text (e.g. a defaulted field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based line and column (in bytes, as `ron` counts them), if known.
    pub line_col: Option<(usize, usize)>,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line_col {
            Some((line, col)) => write!(f, "{}:{line}:{col}", self.file.display()),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// Why a configuration file was refused. Every message starts with the [`Place`]
/// and ends with what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file (or the modules directory) could not be read.
    #[error(
        "{}: cannot read it: {source}; check the path and that it is readable by root",
        path.display(),
    )]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file is not UTF-8 text.
    #[error(
        "{at}: the file is not UTF-8 text (invalid byte at offset {offset}); save it as UTF-8"
    )]
    NotUtf8 {
        /// The file, with the line of the first invalid byte.
        at: Place,
        /// Byte offset of the first invalid byte.
        offset: usize,
    },
    /// RON syntax error, unknown or missing field, or a value of the wrong type
    /// (the position is `ron`'s).
    #[error("{at}: {message}; {fix}")]
    Syntax {
        /// Where `ron` stopped.
        at: Place,
        /// What `ron` (or the value's parser) found wrong.
        message: String,
        /// How to correct it.
        fix: String,
    },
    /// The module file's name (without `.ron`) is not a valid module name.
    #[error(
        "{}: module name {name:?} (the file name without .ron) is invalid: a module name is 1 to \
         32 characters of a-z 0-9 _ - starting with a-z or 0-9; rename the file",
        file.display()
    )]
    ModuleName {
        /// The module file.
        file: PathBuf,
        /// The rejected stem.
        name: String,
    },
    /// A mirror module lists a number of nodes other than two.
    #[error(
        "{at}: nodes: a Mirror module has exactly 2 nodes, found {count}; list this node \
         and its peer"
    )]
    NodeCount {
        /// The `nodes` field.
        at: Place,
        /// How many were listed.
        count: usize,
    },
    /// Two nodes of a module have the same name.
    #[error(
        "{at}: {field}: node name {name:?} is listed twice; give each node its own name \
         (its certificate's CN)"
    )]
    DuplicateNode {
        /// The second occurrence.
        at: Place,
        /// Field path of the second occurrence.
        field: String,
        /// The repeated name.
        name: String,
    },
    /// This node (`name` in the node file) is not one of the module's nodes.
    #[error(
        "{at}: nodes: node {node:?} is not listed in nodes: {}; install this module only on its \
         nodes, or correct `name` in {}",
        quoted(listed),
        node_file.display()
    )]
    NodeNotListed {
        /// The `nodes` field.
        at: Place,
        /// This node's name.
        node: String,
        /// The names the module lists.
        listed: Vec<String>,
        /// The node file that names this node.
        node_file: PathBuf,
    },
    /// A node lists no address.
    #[error(
        "{at}: {field}: node {node:?} lists no address; give it one address per heartbeat \
         network, e.g. addrs: [\"10.0.0.1\"]"
    )]
    NoAddrs {
        /// The node's `addrs`.
        at: Place,
        /// Field path (`nodes[i].addrs`).
        field: String,
        /// The node.
        node: String,
    },
    /// The two nodes list different numbers of addresses.
    #[error(
        "{at}: {field}: node {node:?} lists {count} address(es) but node {other:?} lists \
         {other_count}; addrs[i] is the node's address on heartbeat network i, so both nodes list \
         the same number, in the same order"
    )]
    AddrCount {
        /// The second node's `addrs`.
        at: Place,
        /// Field path.
        field: String,
        /// The second node.
        node: String,
        /// Its count.
        count: usize,
        /// The first node.
        other: String,
        /// The first node's count.
        other_count: usize,
    },
    /// An address is listed twice (on one node or across both).
    #[error("{at}: {field}: address {addr} is listed twice; every node address is distinct")]
    DuplicateAddr {
        /// The second occurrence.
        at: Place,
        /// Field path of the second occurrence.
        field: String,
        /// The address.
        addr: IpAddr,
    },
    /// A certificate file is not a readable certificate.
    #[error("{at}: {field}: {source}")]
    Cert {
        /// The `cert` field.
        at: Place,
        /// Field path.
        field: String,
        /// Why loading it failed (the message names the file and the fix).
        #[source]
        source: TlsError,
    },
    /// A node's certificate is issued to another name.
    #[error(
        "{at}: {field}: {} is the certificate of {cn:?} (its CN), not of node {node:?}; point it at \
         {node}'s certificate (made by `mirrorfs keygen` on {node}) or correct the node name",
        path.display()
    )]
    CertName {
        /// The `cert` field.
        at: Place,
        /// Field path.
        field: String,
        /// The certificate file.
        path: PathBuf,
        /// Its CN.
        cn: String,
        /// The node it was given for.
        node: String,
    },
    /// The module pins, for this node, another certificate than the node's own.
    #[error(
        "{at}: {field}: {} is not this node's certificate {} (fingerprints differ); the peer would \
         refuse this node: copy this node's certificate to the module's path on both nodes",
        module_cert.display(),
        node_cert.display()
    )]
    OwnCert {
        /// The `cert` field of this node's entry.
        at: Place,
        /// Field path.
        field: String,
        /// The certificate the module names.
        module_cert: PathBuf,
        /// The node file's certificate.
        node_cert: PathBuf,
    },
    /// A port is zero.
    #[error(
        "{at}: {field}: port 0 is not allowed; choose a fixed port (1-65535) open between \
         the nodes"
    )]
    ZeroPort {
        /// The field.
        at: Place,
        /// Field path.
        field: String,
    },
    /// The replication ports `[mirrorfs_port, mirrorfs_port + dirs)` do not fit in
    /// 1..=65535.
    #[error(
        "{at}: mirrorfs_port ({mirrorfs_port}): dirs[i] replicates on mirrorfs_port + i, and with \
         {dirs} dir(s) that passes 65535; lower mirrorfs_port"
    )]
    PortRange {
        /// The `mirrorfs_port` field.
        at: Place,
        /// Its value.
        mirrorfs_port: u16,
        /// Number of dirs.
        dirs: usize,
    },
    /// The heartbeat port falls among the replication ports.
    #[error(
        "{at}: heartbeat_port ({heartbeat_port}) is one of the replication ports \
         {mirrorfs_port}..={last} (mirrorfs_port + i for each of the {dirs} dir(s)); move \
         heartbeat_port outside that range"
    )]
    PortOverlap {
        /// The `heartbeat_port` field.
        at: Place,
        /// Its value.
        heartbeat_port: u16,
        /// First replication port.
        mirrorfs_port: u16,
        /// Last replication port.
        last: u16,
        /// Number of dirs.
        dirs: usize,
    },
    /// The module replicates no directory.
    #[error(
        "{at}: dirs: a module replicates at least one directory; add (backing: \
         \"/var/lib/NAME/data\", mount: \"/srv/NAME/data\")"
    )]
    NoDirs {
        /// The `dirs` field.
        at: Place,
    },
    /// A path that must be absolute (and plain) is not.
    #[error(
        "{at}: {field}: {} is not an absolute path without `.`/`..` components; write it \
         in full from /",
        path.display(),
    )]
    NotAbsolute {
        /// The field.
        at: Place,
        /// Field path.
        field: String,
        /// The path.
        path: PathBuf,
    },
    /// Two replicated paths are equal or one contains the other.
    #[error(
        "{at}: {field} ({}) {relation} {other_field} ({}); backing and mount directories must be \
         distinct and not nested, within a dir and across dirs: choose separate directories",
        path.display(),
        other.display()
    )]
    DirOverlap {
        /// The later field.
        at: Place,
        /// Field path of the later path.
        field: String,
        /// The later path.
        path: PathBuf,
        /// "is the same as", "is inside" or "contains".
        relation: &'static str,
        /// Field path of the earlier path.
        other_field: String,
        /// The earlier path.
        other: PathBuf,
    },
    /// The VIP's prefix length is outside 1..=32.
    #[error(
        "{at}: {vip}.prefix ({prefix}) must be 1..=32; use the prefix length of the network \
         the nodes share, e.g. 24"
    )]
    VipPrefix {
        /// The `vip.prefix` field.
        at: Place,
        /// The VIP's field (`vip`, `farm.vips[0]`).
        vip: String,
        /// Its value.
        prefix: u8,
    },
    /// The VIP is not in the network of a node's first address.
    #[error(
        "{at}: {field}.addr ({vip}/{prefix}) is not in the network of node {node:?}'s first \
         address ({addr}); the VIP must be on the network the nodes' first addresses share: \
         choose a VIP in {network} or correct {field}.prefix"
    )]
    VipNetwork {
        /// The `vip.addr` field.
        at: Place,
        /// The VIP's field (`vip`, `farm.vips[0]`).
        field: String,
        /// The VIP.
        vip: Ipv4Addr,
        /// The prefix.
        prefix: u8,
        /// The node.
        node: String,
        /// The node's first address.
        addr: IpAddr,
        /// That address's network with the VIP's prefix (`10.77.0.0/24`).
        network: String,
    },
    /// The VIP is one of the nodes' own addresses.
    #[error(
        "{at}: {field}.addr ({vip}) is node {node:?}'s own address; a VIP is not any \
         node's own, so choose an unused address"
    )]
    VipIsNodeAddr {
        /// The `vip.addr` field.
        at: Place,
        /// The VIP's field (`vip`, `farm.vips[0]`).
        field: String,
        /// The VIP.
        vip: Ipv4Addr,
        /// The node owning it.
        node: String,
    },
    /// The heartbeat timing is unsafe or inconsistent.
    #[error("{at}: {problem}: {fix}")]
    Timing {
        /// The offending field.
        at: Place,
        /// What is wrong, with the values (e.g. "timing.heartbeat_timeout_ms (300)
        /// must be > 3 × …").
        problem: String,
        /// What to change.
        fix: String,
    },
    /// No witness and no acknowledgement of the split-brain risk.
    #[error(
        "{at}: witness: no witness is configured, so after a network split both nodes could become \
         primary and write (split brain); add witness: Some((addr: \"HOST:PORT\", cert: \
         \"/etc/mirrorfarm/certs/witness.crt\")) pointing at a `mirrorfarm witness` on a third \
         machine, or accept the risk with accept_split_brain_risk: true"
    )]
    SplitBrainRisk {
        /// The `witness` field (or the file).
        at: Place,
    },
    /// A witness is configured and the split-brain risk is accepted as well.
    #[error(
        "{at}: accept_split_brain_risk: true contradicts the configured witness (with a witness \
         there is no split-brain risk to accept); remove accept_split_brain_risk"
    )]
    NeedlessRiskAccepted {
        /// The `accept_split_brain_risk` field.
        at: Place,
    },
    /// A file that must be an executable regular file is not.
    #[error(
        "{at}: {field}: {} {why}; create it as an executable file (chmod 755) or correct \
         the path",
        path.display(),
    )]
    NotExecutable {
        /// The field.
        at: Place,
        /// Field path.
        field: String,
        /// The resolved path.
        path: PathBuf,
        /// "does not exist (…)", "is not a regular file" or "is not executable".
        why: String,
    },
    /// A duration that must be positive is zero.
    #[error("{at}: {field} is 0; give it a positive value{hint}")]
    ZeroDuration {
        /// The field.
        at: Place,
        /// Field path (with its unit suffix, e.g. `scripts.timeout_ms`).
        field: String,
        /// Extra advice, starting with a separator, or empty.
        hint: &'static str,
    },
    /// A count that must be at least 1 is zero.
    #[error("{at}: {field} is 0; it must be at least 1")]
    ZeroCount {
        /// The field.
        at: Place,
        /// Field path.
        field: String,
    },
    /// Two checkers have the same name.
    #[error(
        "{at}: {field}: checker name {name:?} is used twice; give each checker its own \
         name (it appears in logs and `mirrorfarm check`)"
    )]
    DuplicateChecker {
        /// The second occurrence.
        at: Place,
        /// Field path.
        field: String,
        /// The name.
        name: String,
    },
    /// A network interface name the kernel would refuse.
    #[error(
        "{at}: {field}: interface name {name:?} is invalid: {why}; use the name `ip link` \
         shows, e.g. eth0"
    )]
    Interface {
        /// The field.
        at: Place,
        /// Field path.
        field: String,
        /// The name.
        name: String,
        /// Which rule it breaks.
        why: &'static str,
    },
    /// A node file key that others may read.
    #[error(
        "{at}: key: {} is readable by every user (mode {mode:04o}); anyone could impersonate this \
         node: chmod 600 {}",
        path.display(),
        path.display()
    )]
    KeyReadable {
        /// The `key` field.
        at: Place,
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The node's key and certificate do not form a usable identity.
    #[error("{at}: key, cert: {source}")]
    Identity {
        /// The `key` field.
        at: Place,
        /// Why (the message names the files and the fix).
        #[source]
        source: TlsError,
    },
    /// A node's certificate CN differs from the node file's `name`.
    #[error(
        "{at}: name: this node is named {name:?} but its certificate {} is issued to {cn:?}; set \
         name: {cn:?} or generate a certificate for {name:?} (mirrorfs keygen)",
        cert.display()
    )]
    NodeName {
        /// The `name` field.
        at: Place,
        /// The configured name.
        name: String,
        /// The certificate.
        cert: PathBuf,
        /// Its CN.
        cn: String,
    },
    /// The module conflicts with another module loaded on this node.
    #[error(
        "{}: {what} is also used by module {other:?} ({}); {fix}",
        file.display(),
        other_file.display(),
    )]
    Clash {
        /// This module's file.
        file: PathBuf,
        /// What both use (e.g. "port 7421 (mirrorfs_port + 0)").
        what: String,
        /// The other module.
        other: String,
        /// Its file.
        other_file: PathBuf,
        /// What to change.
        fix: &'static str,
    },
    /// Any other invalid value: the field, the value, what is wrong and the fix.
    #[error("{at}: {field} ({value}) {problem}; {fix}")]
    Invalid {
        /// The field.
        at: Place,
        /// Field path.
        field: String,
        /// The bad value, as written.
        value: String,
        /// What is wrong with it.
        problem: String,
        /// What to change.
        fix: String,
    },
}

/// Formats a list of names as `"a", "b"`.
fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}
