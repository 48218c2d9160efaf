//! A module, validated: the types the daemon runs on, and the conversion from
//! [`RawModule`] that checks every rule once.
//!
//! Owns: [`Module`] and its parts, and every rule about a module file (node list,
//! addresses, certificates, ports, directories, VIP, timing, witness, scripts,
//! checkers). A `Module` exists only if all of them hold; no other code re-checks.
//! Paths in a `Module` are absolute; files it names (certificates, scripts, check
//! commands) were found usable at load time.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use mirrorfs::ctl::AckMode;
use mirrorfs::net::tls::{self, PinnedPeer};

use super::error::ConfigError;
use super::locate::Src;
use super::node::NodeConfig;
use super::raw::{
    RawAck, RawCheck, RawChecker, RawDir, RawFarm, RawKind, RawMaxLoop, RawModule, RawNodeSpec,
    RawOnFailure, RawProto, RawRule, RawScripts, RawThen, RawTiming, RawVip, RawWitness,
};

/// A validated module: one application made highly available by its nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The module's name: the file's stem (`apache` for `apache.ron`).
    pub name: String,
    /// The file it was loaded from (absolute).
    pub file: PathBuf,
    /// xxh3_64 of the file's bytes; the nodes compare it to detect differing files.
    pub digest: u64,
    /// What kind of module.
    pub kind: ModuleKind,
    /// Its nodes (Mirror: exactly 2; Farm: 2 to [`MAX_FARM_NODES`]; distinct
    /// names, this node among them).
    pub nodes: Vec<NodeSpec>,
    /// Port of the heartbeats on every heartbeat network (non-zero).
    pub heartbeat_port: u16,
    /// Mirror: first replication port, `dirs[i]` replicates on `mirrorfs_port + i`
    /// (all within 1..=65535, none equal to `heartbeat_port`). Farm: 0.
    pub mirrorfs_port: u16,
    /// Mirror: the replicated directories (at least one; all paths absolute,
    /// distinct, not nested). Farm: none.
    pub dirs: Vec<DirSpec>,
    /// Mirror: when the mounts answer writes (`mirrorfs mount --ack`;
    /// default each-op). Farm: each-op (unused).
    pub ack: AckMode,
    /// Mirror: the virtual IP that follows the primary. Farm: `None` (see `farm`).
    pub vip: Option<Vip>,
    /// Farm: the shared virtual IPs, balanced ports and rule. Mirror: `None`.
    pub farm: Option<FarmSpec>,
    /// The witness granting the lease; `None` only if the file accepted the
    /// split-brain risk.
    pub witness: Option<WitnessSpec>,
    /// Heartbeat and lease timing.
    pub timing: Timing,
    /// The application's scripts.
    pub scripts: Scripts,
    /// Health checks of the application on the primary (distinct names).
    pub checkers: Vec<Checker>,
    /// Failover loop protection.
    pub maxloop: MaxLoop,
}

/// What kind of module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ModuleKind {
    /// Two nodes, one primary; the directories are replicated and the VIP and the
    /// application follow the primary.
    Mirror,
    /// Two or more nodes, all holding the same virtual IPs; each accepts its
    /// share of the clients (its buckets) and the application runs on all.
    Farm,
}

/// The most nodes a farm module may list.
pub const MAX_FARM_NODES: usize = 64;

/// A farm module's shared addresses and how clients are shared out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FarmSpec {
    /// The virtual IPs every serving node holds (at least one, distinct; each
    /// validated as a mirror's `vip`).
    pub vips: Vec<Vip>,
    /// The balanced ports (at least one, distinct, non-zero).
    pub ports: Vec<(Proto, u16)>,
    /// How a client is mapped to a bucket.
    pub rule: Rule,
}

/// A transport protocol of a balanced port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// How a farm maps a client to a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// The client's address: a client always reaches the same node (affinity).
    Address,
    /// The client's address and source port: each connection on its own.
    AddressAndPort,
}

/// One node of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The node's name; equal to its certificate's CN.
    pub name: String,
    /// The node's certificate, pinned by its peers (absolute path, a readable
    /// certificate whose CN is `name`).
    pub cert: PathBuf,
    /// `addrs[i]` is the node's address on heartbeat network `i` (same count and
    /// family per network on every node, all distinct); `addrs[0]` also carries the
    /// replication.
    pub addrs: Vec<IpAddr>,
    /// Farm: the node's share relative to the others' (0: standby). Mirror: 1.
    pub weight: u32,
}

/// One replicated directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSpec {
    /// The real directory on each node.
    pub backing: PathBuf,
    /// Where the application reads and writes it while the node is primary.
    pub mount: PathBuf,
}

/// The module's virtual IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    /// The address: inside both nodes' first network, not a node address.
    pub addr: Ipv4Addr,
    /// Prefix length, 1..=32.
    pub prefix: u8,
    /// The interface it is added to (a valid Linux interface name).
    pub interface: String,
}

/// The witness of a mirror module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessSpec {
    /// Where `mirrorfarm witness` listens.
    pub addr: SocketAddr,
    /// Its certificate, pinned (absolute path, a readable certificate).
    pub cert: PathBuf,
}

/// Heartbeat and lease timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Interval between heartbeats (≥ 10 ms).
    pub heartbeat_interval: Duration,
    /// Silence on every network after which the peer is lost (> 3 × interval).
    pub heartbeat_timeout: Duration,
    /// Length of the witness lease (≥ heartbeat_timeout).
    pub lease: Duration,
}

/// The application's scripts; each named one is an executable regular file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scripts {
    /// The scripts' directory (absolute).
    pub dir: PathBuf,
    /// Run on both nodes before the module starts.
    pub prestart: Option<PathBuf>,
    /// Starts the application on the new primary.
    pub start_prim: Option<PathBuf>,
    /// Stops the application on the primary.
    pub stop_prim: Option<PathBuf>,
    /// Run on both nodes after the module stopped.
    pub poststop: Option<PathBuf>,
    /// Farm: starts the application on a node joining the farm.
    pub start_both: Option<PathBuf>,
    /// Farm: stops the application on a node leaving the farm.
    pub stop_both: Option<PathBuf>,
    /// Limit for start scripts (> 0).
    pub timeout: Duration,
    /// Limit for stop scripts (> 0).
    pub stop_timeout: Duration,
}

/// One health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checker {
    /// Unique within the module.
    pub name: String,
    /// What it checks.
    pub check: Check,
    /// Time between checks (> 0).
    pub interval: Duration,
    /// Limit for one check (> 0).
    pub timeout: Duration,
    /// Consecutive failures that trigger `on_failure` (≥ 1).
    pub failures: u32,
    /// What to do then.
    pub on_failure: OnFailure,
}

/// What a checker checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A process with this name runs.
    Process {
        /// Process name as `/proc/PID/comm` shows it (non-empty).
        name: String,
    },
    /// A TCP connection to `addr` succeeds.
    Tcp {
        /// Where to connect (non-zero port).
        addr: SocketAddr,
    },
    /// An HTTP GET of `url` answers `expect_status`.
    Http {
        /// An `http://` URL.
        url: String,
        /// The expected status (100..=599).
        expect_status: u16,
    },
    /// A command exits 0.
    Command {
        /// The executable (absolute; relative names are taken in the scripts dir).
        path: PathBuf,
        /// Its arguments.
        args: Vec<String>,
    },
    /// A network interface is up.
    Interface {
        /// A valid interface name.
        name: String,
    },
}

/// What to do when a checker failed `failures` times in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Restart the application up to `times` within `window`, then `then`.
    Restart {
        /// Restarts allowed in the window (≥ 1).
        times: u32,
        /// The window (> 0).
        window: Duration,
        /// What to do when the restarts are used up.
        then: Then,
    },
    /// Hand over to the peer (mirror).
    Swap,
    /// Stop the module.
    Stop,
    /// Leave the farm until the check passes again (farm).
    Leave,
}

/// What to do once restarts are used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Hand over to the peer (mirror).
    Swap,
    /// Stop the module.
    Stop,
    /// Leave the farm until the check passes again (farm).
    Leave,
}

/// Failover loop protection: more than `count` failovers within `window` stop the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxLoop {
    /// Failovers allowed in the window (≥ 1).
    pub count: u32,
    /// The window (> 0).
    pub window: Duration,
}

impl Module {
    /// The index of node `name` in [`Module::nodes`].
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The other node of a mirror module, if `name` is one of its nodes.
    pub fn peer_of(&self, name: &str) -> Option<&NodeSpec> {
        self.node_index(name)?;
        self.nodes.iter().find(|n| n.name != name)
    }

    /// The dirs with `node`'s `path_prefix` applied (unchanged without one): with
    /// prefix `/lab/node1`, `/var/www` becomes `/lab/node1/var/www`.
    pub fn dirs_for(&self, node: &NodeConfig) -> Vec<DirSpec> {
        let Some(prefix) = &node.path_prefix else {
            return self.dirs.clone();
        };
        // Validated paths are absolute, so stripping "/" leaves a relative path.
        let under = |p: &Path| prefix.join(p.strip_prefix("/").unwrap_or(p));
        self.dirs
            .iter()
            .map(|d| DirSpec {
                backing: under(&d.backing),
                mount: under(&d.mount),
            })
            .collect()
    }
}

/// The module's identity and source, gathered by the loader.
pub(crate) struct Loaded<'a> {
    /// The validated module name (file stem).
    pub(crate) name: String,
    /// xxh3_64 of the file's bytes.
    pub(crate) digest: u64,
    /// The file and its text.
    pub(crate) src: Src<'a>,
}

/// Checks every rule on `raw` and builds the [`Module`]; `node` supplies this
/// node's name and the default scripts directory.
pub(crate) fn validate(
    raw: RawModule,
    loaded: Loaded<'_>,
    node: &NodeConfig,
) -> Result<Module, ConfigError> {
    let src = loaded.src;
    // The file is absolute, so it has a parent.
    let base = src.file.parent().unwrap_or(Path::new("/"));
    let kind = match raw.kind {
        RawKind::Mirror => ModuleKind::Mirror,
        RawKind::Farm => ModuleKind::Farm,
    };
    kind_fields(&src, kind, &raw)?;
    let nodes = nodes(&src, base, raw.nodes, node, kind)?;
    if raw.heartbeat_port == 0 {
        return Err(ConfigError::ZeroPort {
            at: src.at("heartbeat_port"),
            field: "heartbeat_port".to_owned(),
        });
    }
    let (mirrorfs_port, dirs) = match raw.mirrorfs_port {
        Some(port) => {
            if port == 0 {
                return Err(ConfigError::ZeroPort {
                    at: src.at("mirrorfs_port"),
                    field: "mirrorfs_port".to_owned(),
                });
            }
            let dirs = dirs(&src, raw.dirs)?;
            ports(&src, raw.heartbeat_port, port, dirs.len())?;
            (port, dirs)
        }
        None => (0, Vec::new()),
    };
    let vip = raw.vip.map(|v| vip(&src, "vip", v, &nodes)).transpose()?;
    let farm = raw.farm.map(|f| farm(&src, f, &nodes)).transpose()?;
    let witness = match kind {
        ModuleKind::Mirror => {
            witness(&src, base, raw.witness, raw.accept_split_brain_risk, &nodes)?
        }
        // kind_fields refused a witness and the risk flag for a farm.
        ModuleKind::Farm => None,
    };
    let timing = timing(&src, &raw.timing)?;
    if vip.is_some() {
        vip_timing(&src, &timing)?;
    }
    if farm.is_some() {
        farm_timing(&src, &timing)?;
    }
    let scripts_dir = match &raw.scripts.dir {
        Some(dir) => resolve(base, dir),
        None => node.modules.join(&loaded.name),
    };
    let scripts = scripts(&src, scripts_dir, raw.scripts)?;
    let checkers = checkers(&src, &scripts.dir, raw.checkers, kind)?;
    let maxloop = maxloop(&src, raw.maxloop)?;
    Ok(Module {
        name: loaded.name,
        file: src.file.to_path_buf(),
        digest: loaded.digest,
        kind,
        nodes,
        heartbeat_port: raw.heartbeat_port,
        mirrorfs_port,
        dirs,
        ack: match raw.ack {
            None | Some(RawAck::EachOp) => AckMode::EachOp,
            Some(RawAck::OnSync) => AckMode::OnSync,
        },
        vip,
        farm,
        witness,
        timing,
        scripts,
        checkers,
        maxloop,
    })
}

/// The fields of one kind are absent from the other's file: a field that would
/// be ignored is an error, not a surprise.
fn kind_fields(src: &Src<'_>, kind: ModuleKind, raw: &RawModule) -> Result<(), ConfigError> {
    let not_here = |field: &str, fix: &str| {
        invalid(
            src,
            field,
            "set",
            format!("is not a field of a {kind:?} module"),
            fix,
        )
    };
    let weighted = raw.nodes.iter().position(|n| n.weight.is_some());
    let s = &raw.scripts;
    match kind {
        ModuleKind::Mirror => {
            if raw.mirrorfs_port.is_none() {
                return Err(invalid(
                    src,
                    "kind",
                    "Mirror",
                    "needs `mirrorfs_port`, the first replication port",
                    "add `mirrorfs_port: …` (dirs[i] replicates on mirrorfs_port + i)",
                ));
            }
            if raw.farm.is_some() {
                return Err(not_here("farm", "remove it, or write `kind: Farm`"));
            }
            if let Some(i) = weighted {
                return Err(not_here(
                    &format!("nodes[{i}].weight"),
                    "remove it: a mirror's primary serves every client",
                ));
            }
            for (field, set) in [
                ("scripts.start_both", s.start_both.is_some()),
                ("scripts.stop_both", s.stop_both.is_some()),
            ] {
                if set {
                    return Err(not_here(
                        field,
                        "use start_prim and stop_prim: the application runs on the primary",
                    ));
                }
            }
        }
        ModuleKind::Farm => {
            if raw.farm.is_none() {
                return Err(invalid(
                    src,
                    "kind",
                    "Farm",
                    "needs `farm: (vips: [...], ports: [...])`",
                    "add the farm's virtual IPs and balanced ports; see examples/apache-farm/",
                ));
            }
            let fix = "remove it: a farm replicates no directory";
            if raw.mirrorfs_port.is_some() {
                return Err(not_here("mirrorfs_port", fix));
            }
            if raw.ack.is_some() {
                return Err(not_here("ack", fix));
            }
            if !raw.dirs.is_empty() {
                return Err(not_here("dirs", fix));
            }
            if raw.vip.is_some() {
                return Err(not_here(
                    "vip",
                    "list the farm's virtual IPs in `farm.vips`",
                ));
            }
            if raw.witness.is_some() || raw.accept_split_brain_risk {
                let field = if raw.witness.is_some() {
                    "witness"
                } else {
                    "accept_split_brain_risk"
                };
                return Err(not_here(
                    field,
                    "remove it: a farm decides by a majority of its own nodes (a node that \
                     sees fewer than half of them gives up its clients)",
                ));
            }
            for (field, set) in [
                ("scripts.start_prim", s.start_prim.is_some()),
                ("scripts.stop_prim", s.stop_prim.is_some()),
            ] {
                if set {
                    return Err(not_here(
                        field,
                        "use start_both and stop_both: the application runs on every node",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Nodes: two for a mirror, 2 to [`MAX_FARM_NODES`] for a farm, named, this
/// node among them, addresses consistent, certificates readable and issued to
/// the node's name.
fn nodes(
    src: &Src<'_>,
    base: &Path,
    raw: Vec<RawNodeSpec>,
    node: &NodeConfig,
    kind: ModuleKind,
) -> Result<Vec<NodeSpec>, ConfigError> {
    match kind {
        ModuleKind::Mirror if raw.len() != 2 => {
            return Err(ConfigError::NodeCount {
                at: src.at("nodes"),
                count: raw.len(),
            });
        }
        ModuleKind::Farm if !(2..=MAX_FARM_NODES).contains(&raw.len()) => {
            return Err(invalid(
                src,
                "nodes",
                format!("{} listed", raw.len()),
                format!("is not 2 to {MAX_FARM_NODES}, the nodes a Farm module may have"),
                "list every node of the farm, this one included",
            ));
        }
        _ => {}
    }
    for (i, n) in raw.iter().enumerate() {
        let field = format!("nodes[{i}].name");
        if n.name.trim().is_empty() {
            return Err(invalid(
                src,
                &field,
                format!("{:?}", n.name),
                "is empty",
                "give the node its name (its certificate's CN)",
            ));
        }
        if raw[..i].iter().any(|m| m.name == n.name) {
            return Err(ConfigError::DuplicateNode {
                at: src.at(&field),
                field,
                name: n.name.clone(),
            });
        }
    }
    if !raw.iter().any(|n| n.name == node.name) {
        return Err(ConfigError::NodeNotListed {
            at: src.at("nodes"),
            node: node.name.clone(),
            listed: raw.iter().map(|n| n.name.clone()).collect(),
            node_file: node.file.clone(),
        });
    }
    addrs(src, &raw)?;

    // Compare with our own certificate only if that one loads (load_node checked
    // it; a hand-made NodeConfig in a test may not point at a real one).
    let own = tls::load_peer(&node.cert).ok();
    let mut nodes = Vec::with_capacity(raw.len());
    for (i, n) in raw.into_iter().enumerate() {
        let field = format!("nodes[{i}].cert");
        let cert = resolve(base, &n.cert);
        let peer = load_cert(src, &field, &cert)?;
        if peer.name != n.name {
            return Err(ConfigError::CertName {
                at: src.at(&field),
                field,
                path: cert,
                cn: peer.name,
                node: n.name,
            });
        }
        if let Some(own) = own.as_ref().filter(|_| n.name == node.name) {
            if own.fingerprint != peer.fingerprint {
                return Err(ConfigError::OwnCert {
                    at: src.at(&field),
                    field,
                    module_cert: cert,
                    node_cert: node.cert.clone(),
                });
            }
        }
        nodes.push(NodeSpec {
            name: n.name,
            cert,
            addrs: n.addrs,
            weight: n.weight.unwrap_or(1),
        });
    }
    Ok(nodes)
}

/// Addresses: at least one per node, the same count and family per network,
/// usable unicast, all distinct.
fn addrs(src: &Src<'_>, raw: &[RawNodeSpec]) -> Result<(), ConfigError> {
    let mut seen: Vec<IpAddr> = Vec::new();
    for (i, n) in raw.iter().enumerate() {
        let field = format!("nodes[{i}].addrs");
        if n.addrs.is_empty() {
            return Err(ConfigError::NoAddrs {
                at: src.at(&field),
                field,
                node: n.name.clone(),
            });
        }
        let first = &raw[0];
        if n.addrs.len() != first.addrs.len() {
            return Err(ConfigError::AddrCount {
                at: src.at(&field),
                field,
                node: n.name.clone(),
                count: n.addrs.len(),
                other: first.name.clone(),
                other_count: first.addrs.len(),
            });
        }
        for (j, addr) in n.addrs.iter().enumerate() {
            let field = format!("nodes[{i}].addrs[{j}]");
            if let Some(problem) = not_unicast(addr) {
                return Err(invalid(
                    src,
                    &field,
                    addr,
                    problem,
                    "give the node's own address on that network",
                ));
            }
            if seen.contains(addr) {
                return Err(ConfigError::DuplicateAddr {
                    at: src.at(&field),
                    field,
                    addr: *addr,
                });
            }
            let other = first.addrs[j];
            if addr.is_ipv4() != other.is_ipv4() {
                return Err(invalid(
                    src,
                    &field,
                    addr,
                    format!(
                        "is not of the same IP version as nodes[0].addrs[{j}] ({other}) on \
                         heartbeat network {j}"
                    ),
                    "list the addresses in the same network order on both nodes",
                ));
            }
            seen.push(*addr);
        }
    }
    Ok(())
}

/// Why `addr` cannot be a node's address, if it cannot.
fn not_unicast(addr: &IpAddr) -> Option<&'static str> {
    if addr.is_unspecified() {
        Some("is the unspecified address")
    } else if addr.is_multicast() {
        Some("is a multicast address")
    } else if matches!(addr, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("is the broadcast address")
    } else {
        None
    }
}

/// Dirs: at least one; every path absolute and plain; no two paths equal or nested.
fn dirs(src: &Src<'_>, raw: Vec<RawDir>) -> Result<Vec<DirSpec>, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::NoDirs { at: src.at("dirs") });
    }
    let mut seen: Vec<(String, PathBuf)> = Vec::new();
    for (i, d) in raw.iter().enumerate() {
        for (name, path) in [("backing", &d.backing), ("mount", &d.mount)] {
            let field = format!("dirs[{i}].{name}");
            if !is_plain_absolute(path) {
                return Err(ConfigError::NotAbsolute {
                    at: src.at(&field),
                    field,
                    path: path.clone(),
                });
            }
            for (other_field, other) in &seen {
                let relation = if path == other {
                    "is the same as"
                } else if path.starts_with(other) {
                    "is inside"
                } else if other.starts_with(path) {
                    "contains"
                } else {
                    continue;
                };
                return Err(ConfigError::DirOverlap {
                    at: src.at(&field),
                    field,
                    path: path.clone(),
                    relation,
                    other_field: other_field.clone(),
                    other: other.clone(),
                });
            }
            seen.push((field, path.clone()));
        }
    }
    Ok(raw
        .into_iter()
        .map(|d| DirSpec {
            backing: d.backing,
            mount: d.mount,
        })
        .collect())
}

/// Ports: `[mirrorfs_port, mirrorfs_port + dirs)` fits in u16 and excludes the
/// heartbeat port (both already known non-zero).
fn ports(src: &Src<'_>, heartbeat: u16, mirrorfs: u16, dirs: usize) -> Result<(), ConfigError> {
    let last = u64::from(mirrorfs) + dirs as u64 - 1;
    let Ok(last) = u16::try_from(last) else {
        return Err(ConfigError::PortRange {
            at: src.at("mirrorfs_port"),
            mirrorfs_port: mirrorfs,
            dirs,
        });
    };
    if (mirrorfs..=last).contains(&heartbeat) {
        return Err(ConfigError::PortOverlap {
            at: src.at("heartbeat_port"),
            heartbeat_port: heartbeat,
            mirrorfs_port: mirrorfs,
            last,
            dirs,
        });
    }
    Ok(())
}

/// Farm: at least one VIP (each checked as a mirror's `vip`), distinct; at
/// least one port, non-zero, distinct.
fn farm(src: &Src<'_>, raw: RawFarm, nodes: &[NodeSpec]) -> Result<FarmSpec, ConfigError> {
    if raw.vips.is_empty() {
        return Err(invalid(
            src,
            "farm.vips",
            "[]",
            "is empty",
            "list the virtual IPs the farm serves, e.g. [(addr: \"10.78.0.100\", prefix: 24, \
             interface: \"eth0\")]",
        ));
    }
    let mut vips: Vec<Vip> = Vec::with_capacity(raw.vips.len());
    for (i, v) in raw.vips.into_iter().enumerate() {
        let field = format!("farm.vips[{i}]");
        let v = vip(src, &field, v, nodes)?;
        if let Some(first) = vips.first().filter(|f| f.interface != v.interface) {
            return Err(invalid(
                src,
                &format!("{field}.interface"),
                &v.interface,
                format!(
                    "differs from farm.vips[0].interface ({}): one farm filters one interface",
                    first.interface
                ),
                "put the farm's VIPs on one interface, or make a module per interface",
            ));
        }
        if vips.iter().any(|w| w.addr == v.addr) {
            return Err(invalid(
                src,
                &format!("{field}.addr"),
                v.addr,
                "is listed twice",
                "list each virtual IP once",
            ));
        }
        vips.push(v);
    }
    if raw.ports.is_empty() {
        return Err(invalid(
            src,
            "farm.ports",
            "[]",
            "is empty",
            "list the balanced ports, e.g. [(proto: Tcp, port: 80)]",
        ));
    }
    let mut ports: Vec<(Proto, u16)> = Vec::with_capacity(raw.ports.len());
    for (i, p) in raw.ports.iter().enumerate() {
        let field = format!("farm.ports[{i}].port");
        if p.port == 0 {
            return Err(ConfigError::ZeroPort {
                at: src.at(&field),
                field,
            });
        }
        let proto = match p.proto {
            RawProto::Tcp => Proto::Tcp,
            RawProto::Udp => Proto::Udp,
        };
        if ports.contains(&(proto, p.port)) {
            return Err(invalid(
                src,
                &field,
                p.port,
                format!("is listed twice for {proto:?}"),
                "list each port once",
            ));
        }
        ports.push((proto, p.port));
    }
    let rule = match raw.rule {
        RawRule::Address => Rule::Address,
        RawRule::AddressAndPort => Rule::AddressAndPort,
    };
    Ok(FarmSpec { vips, ports, rule })
}

/// VIP (at `field`): prefix 1..=32, inside every node's first network, a host
/// address of it, not a node address, on a valid interface name.
fn vip(src: &Src<'_>, field: &str, raw: RawVip, nodes: &[NodeSpec]) -> Result<Vip, ConfigError> {
    let at = |sub: &str| format!("{field}.{sub}");
    if !(1..=32).contains(&raw.prefix) {
        return Err(ConfigError::VipPrefix {
            at: src.at(&at("prefix")),
            vip: field.to_owned(),
            prefix: raw.prefix,
        });
    }
    let mask = u32::MAX << (32 - u32::from(raw.prefix));
    let vip = u32::from(raw.addr);
    for n in nodes {
        let addr = n.addrs[0];
        let IpAddr::V4(first) = addr else {
            return Err(invalid(
                src,
                &at("addr"),
                raw.addr,
                format!(
                    "is IPv4 but node {:?}'s first address ({addr}) is IPv6",
                    n.name
                ),
                "list the nodes' IPv4 addresses first (the VIP goes on that network)",
            ));
        };
        if u32::from(first) & mask != vip & mask {
            let network = format!("{}/{}", Ipv4Addr::from(u32::from(first) & mask), raw.prefix);
            return Err(ConfigError::VipNetwork {
                at: src.at(&at("addr")),
                field: field.to_owned(),
                vip: raw.addr,
                prefix: raw.prefix,
                node: n.name.clone(),
                addr,
                network,
            });
        }
    }
    if let Some(n) = nodes
        .iter()
        .find(|n| n.addrs.contains(&IpAddr::V4(raw.addr)))
    {
        return Err(ConfigError::VipIsNodeAddr {
            at: src.at(&at("addr")),
            field: field.to_owned(),
            vip: raw.addr,
            node: n.name.clone(),
        });
    }
    if raw.prefix <= 30 && (vip & !mask == 0 || vip & !mask == !mask) {
        return Err(invalid(
            src,
            &at("addr"),
            raw.addr,
            format!(
                "is the network or broadcast address of {}/{}",
                Ipv4Addr::from(vip & mask),
                raw.prefix
            ),
            "choose a host address of that network",
        ));
    }
    interface(src, &at("interface"), &raw.interface)?;
    Ok(Vip {
        addr: raw.addr,
        prefix: raw.prefix,
        interface: raw.interface,
    })
}

/// Witness: present (with a readable certificate and a usable address that is not
/// a node's) unless the split-brain risk is accepted, and the risk not accepted if
/// present.
fn witness(
    src: &Src<'_>,
    base: &Path,
    raw: Option<RawWitness>,
    accept_risk: bool,
    nodes: &[NodeSpec],
) -> Result<Option<WitnessSpec>, ConfigError> {
    let Some(raw) = raw else {
        if accept_risk {
            return Ok(None);
        }
        return Err(ConfigError::SplitBrainRisk {
            at: src.at("witness"),
        });
    };
    if accept_risk {
        return Err(ConfigError::NeedlessRiskAccepted {
            at: src.at("accept_split_brain_risk"),
        });
    }
    if raw.addr.port() == 0 {
        return Err(ConfigError::ZeroPort {
            at: src.at("witness.addr"),
            field: "witness.addr".to_owned(),
        });
    }
    if let Some(problem) = not_unicast(&raw.addr.ip()) {
        return Err(invalid(
            src,
            "witness.addr",
            raw.addr,
            problem,
            "give the witness machine's address",
        ));
    }
    if let Some(n) = nodes.iter().find(|n| n.addrs.contains(&raw.addr.ip())) {
        return Err(invalid(
            src,
            "witness.addr",
            raw.addr,
            format!("is on node {:?}", n.name),
            "run the witness on a third machine: on a node, losing that node also loses the \
             witness and the survivor cannot take over",
        ));
    }
    let cert = resolve(base, &raw.cert);
    load_cert(src, "witness.cert", &cert)?;
    Ok(Some(WitnessSpec {
        addr: raw.addr,
        cert,
    }))
}

/// Timing: interval ≥ 10 ms, timeout > 3 × interval, lease ≥ timeout.
fn timing(src: &Src<'_>, raw: &RawTiming) -> Result<Timing, ConfigError> {
    let RawTiming {
        heartbeat_interval_ms: interval,
        heartbeat_timeout_ms: timeout,
        lease_ms: lease,
    } = *raw;
    if interval < 10 {
        return Err(ConfigError::Timing {
            at: src.at("timing.heartbeat_interval_ms"),
            problem: format!("timing.heartbeat_interval_ms ({interval}) must be ≥ 10"),
            fix: "raise heartbeat_interval_ms (the default is 250)".to_owned(),
        });
    }
    if u128::from(timeout) <= 3 * u128::from(interval) {
        return Err(ConfigError::Timing {
            at: src.at("timing.heartbeat_timeout_ms"),
            problem: format!(
                "timing.heartbeat_timeout_ms ({timeout}) must be > 3 × heartbeat_interval_ms \
                 ({interval})"
            ),
            fix: "raise heartbeat_timeout_ms or lower heartbeat_interval_ms".to_owned(),
        });
    }
    if lease < timeout {
        return Err(ConfigError::Timing {
            at: src.at("timing.lease_ms"),
            problem: format!(
                "timing.lease_ms ({lease}) must be ≥ heartbeat_timeout_ms ({timeout})"
            ),
            fix: "raise lease_ms or lower heartbeat_timeout_ms".to_owned(),
        });
    }
    Ok(Timing {
        heartbeat_interval: Duration::from_millis(interval),
        heartbeat_timeout: Duration::from_millis(timeout),
        lease: Duration::from_millis(lease),
    })
}

/// The kernel keeps a virtual IP for [`VIP_LIFE`] after its last renewal
/// (iproute2's `valid_lft` counts whole seconds): a node whose daemon died
/// answers on it that long, and the peer must not be able to take over
/// sooner. The daemon renews it only while its quorum lasts that long more,
/// which needs a timeout of at least that plus two heartbeat intervals.
fn vip_timing(src: &Src<'_>, t: &Timing) -> Result<(), ConfigError> {
    let need = VIP_LIFE + t.heartbeat_interval * 2;
    if t.heartbeat_timeout < need {
        return Err(ConfigError::Timing {
            at: src.at("timing.heartbeat_timeout_ms"),
            problem: format!(
                "timing.heartbeat_timeout_ms ({}) must be ≥ {} (1000 + 2 × heartbeat_interval_ms) \
                 with a vip: the kernel keeps a VIP 1 s after its last renewal (whole seconds), \
                 and it must be gone from a dead node before the peer can take over",
                t.heartbeat_timeout.as_millis(),
                need.as_millis()
            ),
            fix: format!(
                "raise heartbeat_timeout_ms to {} or lower heartbeat_interval_ms",
                need.as_millis()
            ),
        });
    }
    Ok(())
}

pub use crate::cluster::module::VIP_LIFE;

/// A farm: timeout ≥ VIP lifetime + its slack + 3 intervals. A member keeps
/// its VIPs only while the others' echoes of its beats are fresh, and must
/// stop renewing a lifetime before its peers may take its clients on its
/// silence; with a shorter timeout the core would wait longer than the file
/// says (`FarmCore::window`).
fn farm_timing(src: &Src<'_>, t: &Timing) -> Result<(), ConfigError> {
    let need = VIP_LIFE + crate::cluster::farm::VIP_SLACK + t.heartbeat_interval * 3;
    if t.heartbeat_timeout < need {
        return Err(ConfigError::Timing {
            at: src.at("timing.heartbeat_timeout_ms"),
            problem: format!(
                "timing.heartbeat_timeout_ms ({}) must be ≥ {} (1050 + 3 × heartbeat_interval_ms) \
                 in a farm: a member must stop holding the VIPs a lifetime (1 s) before the others \
                 may take its clients, and it learns that it is heard only between beats",
                t.heartbeat_timeout.as_millis(),
                need.as_millis()
            ),
            fix: format!(
                "raise heartbeat_timeout_ms to {} or lower heartbeat_interval_ms (150 ms with \
                 1500 ms, 100 ms with 1350 ms)",
                need.as_millis()
            ),
        });
    }
    Ok(())
}

/// Scripts: each named one an executable regular file in `dir` (or absolute);
/// timeouts positive.
fn scripts(src: &Src<'_>, dir: PathBuf, raw: RawScripts) -> Result<Scripts, ConfigError> {
    let script = |name: &str, file: Option<PathBuf>| -> Result<Option<PathBuf>, ConfigError> {
        let Some(file) = file else {
            return Ok(None);
        };
        let path = resolve(&dir, &file);
        executable(src, &format!("scripts.{name}"), &path)?;
        Ok(Some(path))
    };
    let prestart = script("prestart", raw.prestart)?;
    let start_prim = script("start_prim", raw.start_prim)?;
    let stop_prim = script("stop_prim", raw.stop_prim)?;
    let poststop = script("poststop", raw.poststop)?;
    let start_both = script("start_both", raw.start_both)?;
    let stop_both = script("stop_both", raw.stop_both)?;
    let timeout = positive_ms(src, "scripts.timeout_ms", raw.timeout_ms)?;
    let stop_timeout = positive_ms(src, "scripts.stop_timeout_ms", raw.stop_timeout_ms)?;
    Ok(Scripts {
        dir,
        prestart,
        start_prim,
        stop_prim,
        poststop,
        start_both,
        stop_both,
        timeout,
        stop_timeout,
    })
}

/// Checkers: named uniquely, positive timings, a usable check and action.
fn checkers(
    src: &Src<'_>,
    scripts_dir: &Path,
    raw: Vec<RawChecker>,
    kind: ModuleKind,
) -> Result<Vec<Checker>, ConfigError> {
    // Swap hands a mirror over; Leave takes a farm node out. Each fits one kind.
    let fits = |field: String, action: &str| -> Result<(), ConfigError> {
        let (wrong, fix) = match kind {
            ModuleKind::Mirror => (
                "Leave",
                "use Swap (hand over to the peer) or Stop: a mirror has no farm to leave",
            ),
            ModuleKind::Farm => (
                "Swap",
                "use Leave (this node leaves the farm until the check passes) or Stop",
            ),
        };
        if action == wrong {
            return Err(invalid(
                src,
                &field,
                action,
                format!("is not an action of a {kind:?} module"),
                fix,
            ));
        }
        Ok(())
    };
    let default_then = match kind {
        ModuleKind::Mirror => Then::Swap,
        ModuleKind::Farm => Then::Leave,
    };
    let mut checkers: Vec<Checker> = Vec::with_capacity(raw.len());
    for (i, c) in raw.into_iter().enumerate() {
        let at = |field: &str| format!("checkers[{i}].{field}");
        if c.name.trim().is_empty() {
            return Err(invalid(
                src,
                &at("name"),
                format!("{:?}", c.name),
                "is empty",
                "name the checker (it appears in logs and `mirrorfarm check`)",
            ));
        }
        if checkers.iter().any(|k| k.name == c.name) {
            let field = at("name");
            return Err(ConfigError::DuplicateChecker {
                at: src.at(&field),
                field,
                name: c.name,
            });
        }
        let check = check(src, &at("check"), scripts_dir, c.check)?;
        let interval = positive_ms(src, &at("interval_ms"), c.interval_ms)?;
        let timeout = positive_ms(src, &at("timeout_ms"), c.timeout_ms)?;
        if c.failures == 0 {
            return Err(zero_count(src, &at("failures")));
        }
        let on_failure = match c.on_failure {
            RawOnFailure::Restart {
                times,
                window_s,
                then,
            } => {
                if times == 0 {
                    return Err(zero_count(src, &at("on_failure.times")));
                }
                let then = match then {
                    None => default_then,
                    Some(RawThen::Swap) => Then::Swap,
                    Some(RawThen::Stop) => Then::Stop,
                    Some(RawThen::Leave) => Then::Leave,
                };
                fits(at("on_failure.then"), &format!("{then:?}"))?;
                OnFailure::Restart {
                    times,
                    window: positive_s(src, &at("on_failure.window_s"), window_s)?,
                    then,
                }
            }
            RawOnFailure::Swap => OnFailure::Swap,
            RawOnFailure::Stop => OnFailure::Stop,
            RawOnFailure::Leave => OnFailure::Leave,
        };
        fits(at("on_failure"), &format!("{on_failure:?}"))?;
        checkers.push(Checker {
            name: c.name,
            check,
            interval,
            timeout,
            failures: c.failures,
            on_failure,
        });
    }
    Ok(checkers)
}

/// One check's own rules; `field` is `checkers[i].check`.
fn check(
    src: &Src<'_>,
    field: &str,
    scripts_dir: &Path,
    raw: RawCheck,
) -> Result<Check, ConfigError> {
    Ok(match raw {
        RawCheck::Process { name } => {
            if name.trim().is_empty() {
                return Err(invalid(
                    src,
                    &format!("{field}.name"),
                    format!("{name:?}"),
                    "is empty",
                    "give the process name as `ps -o comm` shows it, e.g. apache2",
                ));
            }
            Check::Process { name }
        }
        RawCheck::Tcp { addr } => {
            if addr.port() == 0 {
                let field = format!("{field}.addr");
                return Err(ConfigError::ZeroPort {
                    at: src.at(&field),
                    field,
                });
            }
            Check::Tcp { addr }
        }
        RawCheck::Http { url, expect_status } => {
            let host = url.strip_prefix("http://").unwrap_or("");
            if host.is_empty() || host.starts_with('/') {
                return Err(invalid(
                    src,
                    &format!("{field}.url"),
                    format!("{url:?}"),
                    "is not an http:// URL with a host",
                    "write it as http://HOST[:PORT]/PATH (https is not supported by this check)",
                ));
            }
            if !(100..=599).contains(&expect_status) {
                return Err(invalid(
                    src,
                    &format!("{field}.expect_status"),
                    expect_status,
                    "is not an HTTP status",
                    "use a status in 100..=599, e.g. 200",
                ));
            }
            Check::Http { url, expect_status }
        }
        RawCheck::Command { path, args } => {
            let path = resolve(scripts_dir, &path);
            executable(src, &format!("{field}.path"), &path)?;
            Check::Command { path, args }
        }
        RawCheck::Interface { name } => {
            interface(src, &format!("{field}.name"), &name)?;
            Check::Interface { name }
        }
    })
}

/// Maxloop: count ≥ 1, window > 0.
fn maxloop(src: &Src<'_>, raw: RawMaxLoop) -> Result<MaxLoop, ConfigError> {
    if raw.count == 0 {
        return Err(zero_count(src, "maxloop.count"));
    }
    Ok(MaxLoop {
        count: raw.count,
        window: positive_s(src, "maxloop.window_s", raw.window_s)?,
    })
}

/// Loads a certificate to pin, mapping the failure to `field`.
fn load_cert(src: &Src<'_>, field: &str, path: &Path) -> Result<PinnedPeer, ConfigError> {
    tls::load_peer(path).map_err(|source| ConfigError::Cert {
        at: src.at(field),
        field: field.to_owned(),
        source,
    })
}

/// Checks that `path` is an executable regular file.
pub(crate) fn executable(src: &Src<'_>, field: &str, path: &Path) -> Result<(), ConfigError> {
    let why = match fs::metadata(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => "does not exist".to_owned(),
        Err(err) => format!("cannot be used ({err})"),
        Ok(meta) if !meta.is_file() => "is not a regular file".to_owned(),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => format!(
            "is not executable (mode {:04o})",
            meta.permissions().mode() & 0o7777
        ),
        Ok(_) => return Ok(()),
    };
    Err(ConfigError::NotExecutable {
        at: src.at(field),
        field: field.to_owned(),
        path: path.to_path_buf(),
        why,
    })
}

/// Checks a Linux interface name as the kernel does (`dev_valid_name`).
pub(crate) fn interface(src: &Src<'_>, field: &str, name: &str) -> Result<(), ConfigError> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.len() > 15 {
        "it is longer than 15 bytes"
    } else if name == "." || name == ".." {
        "it is . or .."
    } else if name.contains('/') {
        "it contains '/'"
    } else if name.contains(':') {
        "it contains ':' (an address label, not an interface)"
    } else if name.chars().any(char::is_whitespace) {
        "it contains whitespace"
    } else {
        return Ok(());
    };
    Err(ConfigError::Interface {
        at: src.at(field),
        field: field.to_owned(),
        name: name.to_owned(),
        why,
    })
}

/// `path` if absolute, else `base/path`.
pub(crate) fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// Absolute and without `..` (which would defeat the nesting checks).
pub(crate) fn is_plain_absolute(path: &Path) -> bool {
    path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// A general [`ConfigError::Invalid`] at `field`.
pub(crate) fn invalid(
    src: &Src<'_>,
    field: &str,
    value: impl std::fmt::Display,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        at: src.at(field),
        field: field.to_owned(),
        value: value.to_string(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

fn zero_count(src: &Src<'_>, field: &str) -> ConfigError {
    ConfigError::ZeroCount {
        at: src.at(field),
        field: field.to_owned(),
    }
}

fn positive_ms(src: &Src<'_>, field: &str, ms: u64) -> Result<Duration, ConfigError> {
    if ms == 0 {
        return Err(ConfigError::ZeroDuration {
            at: src.at(field),
            field: field.to_owned(),
            hint: " (in milliseconds)",
        });
    }
    Ok(Duration::from_millis(ms))
}

fn positive_s(src: &Src<'_>, field: &str, s: u64) -> Result<Duration, ConfigError> {
    if s == 0 {
        return Err(ConfigError::ZeroDuration {
            at: src.at(field),
            field: field.to_owned(),
            hint: " (in seconds)",
        });
    }
    Ok(Duration::from_secs(s))
}
