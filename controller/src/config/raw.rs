//! The files as written: serde structs for `node.ron` and `MODULE.ron`.
//!
//! Owns: the file schema (field names, which are optional, their defaults) and the
//! RON parse into it. Unknown fields are refused (`deny_unknown_fields`) so that a
//! misspelt optional field is an error, not a silently ignored line. Nothing here
//! checks values: [`super::module`] and [`super::node`] turn these into the
//! validated types.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::node::{DEFAULT_SOCKET, DEFAULT_STATE_DIR};

/// `node.ron`: this node's own settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    /// This node's name: its certificate's CN, as the modules list it.
    pub(crate) name: String,
    /// This node's private key (PEM); mode 0600.
    pub(crate) key: PathBuf,
    /// This node's certificate (PEM), the one its peers pin.
    pub(crate) cert: PathBuf,
    /// The directory holding the module files (a plain path in the file);
    /// default `<dir of this file>/modules`.
    #[serde(default, deserialize_with = "present_path")]
    pub(crate) modules: Option<PathBuf>,
    /// The daemon's control socket; default `/run/mirrorfarm/mirrorfarm.sock`.
    #[serde(default = "default_socket")]
    pub(crate) socket: PathBuf,
    /// Where the daemon keeps its state; default `/var/lib/mirrorfarm`.
    #[serde(default = "default_state_dir")]
    pub(crate) state_dir: PathBuf,
    /// The `mirrorfs` binary; default: beside the daemon's binary, then `PATH`.
    #[serde(default)]
    pub(crate) mirrorfs: Option<PathBuf>,
    /// Where to serve metrics; default: not served.
    #[serde(default)]
    pub(crate) metrics: Option<SocketAddr>,
    /// Lab only: prefixed to every module dir's backing and mount on this node.
    #[serde(default)]
    pub(crate) path_prefix: Option<PathBuf>,
}

/// `MODULE.ron`: one module, the same file on all its nodes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModule {
    /// What the module is: `Mirror` or `Farm`.
    pub(crate) kind: RawKind,
    /// The module's nodes.
    pub(crate) nodes: Vec<RawNodeSpec>,
    /// UDP port of the heartbeats, on every heartbeat network.
    pub(crate) heartbeat_port: u16,
    /// Mirror: first replication port, `dirs[i]` replicates on
    /// `mirrorfs_port + i` (required). Farm: not allowed.
    #[serde(default, deserialize_with = "present")]
    pub(crate) mirrorfs_port: Option<u16>,
    /// Mirror: the replicated directories (at least one). Farm: not allowed.
    #[serde(default)]
    pub(crate) dirs: Vec<RawDir>,
    /// Mirror: when the mounts answer the application's writes (`mirrorfs
    /// mount --ack`): `EachOp` (the default) or `OnSync`. Farm: not allowed.
    #[serde(default, deserialize_with = "present")]
    pub(crate) ack: Option<RawAck>,
    /// Mirror: the virtual IP that follows the primary; default none. Farm: not
    /// allowed (`farm.vips`).
    #[serde(default)]
    pub(crate) vip: Option<RawVip>,
    /// Farm: the shared virtual IPs, ports and balancing rule (required).
    /// Mirror: not allowed.
    #[serde(default)]
    pub(crate) farm: Option<RawFarm>,
    /// The witness granting the lease; default none (then
    /// `accept_split_brain_risk: true` is required).
    #[serde(default)]
    pub(crate) witness: Option<RawWitness>,
    /// Acknowledges that without a witness both nodes may become primary after a
    /// network split; default false.
    #[serde(default)]
    pub(crate) accept_split_brain_risk: bool,
    /// Heartbeat and lease timing; defaults 250 / 1500 / 3000 ms.
    #[serde(default)]
    pub(crate) timing: RawTiming,
    /// The application's scripts; default none.
    #[serde(default)]
    pub(crate) scripts: RawScripts,
    /// Health checks of the application on the primary; default none.
    #[serde(default)]
    pub(crate) checkers: Vec<RawChecker>,
    /// Failover loop protection; default 3 per 3600 s.
    #[serde(default)]
    pub(crate) maxloop: RawMaxLoop,
}

/// `ack`.
#[derive(Debug, Deserialize, Clone, Copy)]
pub(crate) enum RawAck {
    /// Every write returns once the secondary applied it.
    EachOp,
    /// Writes return once queued for the secondary; fsync and O_SYNC
    /// writes once everything before them is durable there.
    OnSync,
}

/// `kind`.
#[derive(Debug, Deserialize)]
pub(crate) enum RawKind {
    /// Two nodes, one primary, replicated directories.
    Mirror,
    /// Two or more nodes sharing virtual IPs, each serving its share of the clients.
    Farm,
}

/// `farm`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFarm {
    /// The virtual IPs every serving node holds (at least one).
    pub(crate) vips: Vec<RawVip>,
    /// The balanced ports (at least one).
    pub(crate) ports: Vec<RawPort>,
    /// How clients are shared out; default `Address`.
    #[serde(default = "default_rule")]
    pub(crate) rule: RawRule,
}

/// `farm.ports[i]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPort {
    /// `Tcp` or `Udp`.
    pub(crate) proto: RawProto,
    /// The port (non-zero).
    pub(crate) port: u16,
}

/// `farm.ports[i].proto`.
#[derive(Debug, Deserialize, Clone, Copy)]
pub(crate) enum RawProto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// `farm.rule`.
#[derive(Debug, Deserialize, Clone, Copy)]
pub(crate) enum RawRule {
    /// By client address: a client always reaches the same node (affinity).
    Address,
    /// By client address and source port: each connection on its own.
    AddressAndPort,
}

/// One entry of `nodes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNodeSpec {
    /// The node's name (its certificate's CN).
    pub(crate) name: String,
    /// The node's certificate, pinned by its peer; relative to the module file's directory.
    pub(crate) cert: PathBuf,
    /// One address per heartbeat network, in the same order on every node; the
    /// first also carries the replication.
    pub(crate) addrs: Vec<IpAddr>,
    /// Farm: the node's share of the clients relative to the others (0: standby);
    /// default 1. Mirror: not allowed.
    #[serde(default, deserialize_with = "present")]
    pub(crate) weight: Option<u32>,
}

/// One entry of `dirs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDir {
    /// The real directory on each node (absolute).
    pub(crate) backing: PathBuf,
    /// Where the application sees it while the node is primary (absolute).
    pub(crate) mount: PathBuf,
}

/// `vip`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVip {
    /// The virtual IPv4 address.
    pub(crate) addr: Ipv4Addr,
    /// Its prefix length (1..=32).
    pub(crate) prefix: u8,
    /// The interface it is added to on the primary.
    pub(crate) interface: String,
}

/// `witness`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWitness {
    /// Where `mirrorfarm witness` listens.
    pub(crate) addr: SocketAddr,
    /// The witness's certificate, pinned; relative to the module file's directory.
    pub(crate) cert: PathBuf,
}

/// `timing`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTiming {
    /// Interval between heartbeats, ms; default 250.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub(crate) heartbeat_interval_ms: u64,
    /// Silence on every network after which the peer is lost, ms; default 1500.
    #[serde(default = "default_heartbeat_timeout_ms")]
    pub(crate) heartbeat_timeout_ms: u64,
    /// Length of the witness lease, ms; default 3000.
    #[serde(default = "default_lease_ms")]
    pub(crate) lease_ms: u64,
}

impl Default for RawTiming {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            heartbeat_timeout_ms: default_heartbeat_timeout_ms(),
            lease_ms: default_lease_ms(),
        }
    }
}

/// `scripts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScripts {
    /// The scripts' directory (a plain path in the file); default `<modules
    /// dir>/<module name>`; relative to the module file's directory.
    #[serde(default, deserialize_with = "present_path")]
    pub(crate) dir: Option<PathBuf>,
    /// Run on both nodes before the module starts.
    #[serde(default)]
    pub(crate) prestart: Option<PathBuf>,
    /// Starts the application on the new primary.
    #[serde(default)]
    pub(crate) start_prim: Option<PathBuf>,
    /// Stops the application on the primary.
    #[serde(default)]
    pub(crate) stop_prim: Option<PathBuf>,
    /// Run on both nodes after the module stopped.
    #[serde(default)]
    pub(crate) poststop: Option<PathBuf>,
    /// Farm: starts the application on a node joining the farm.
    #[serde(default)]
    pub(crate) start_both: Option<PathBuf>,
    /// Farm: stops the application on a node leaving the farm.
    #[serde(default)]
    pub(crate) stop_both: Option<PathBuf>,
    /// Limit for start scripts, ms; default 30000.
    #[serde(default = "default_script_timeout_ms")]
    pub(crate) timeout_ms: u64,
    /// Limit for stop scripts, ms; default 10000.
    #[serde(default = "default_stop_timeout_ms")]
    pub(crate) stop_timeout_ms: u64,
}

impl Default for RawScripts {
    fn default() -> Self {
        Self {
            dir: None,
            prestart: None,
            start_prim: None,
            stop_prim: None,
            poststop: None,
            start_both: None,
            stop_both: None,
            timeout_ms: default_script_timeout_ms(),
            stop_timeout_ms: default_stop_timeout_ms(),
        }
    }
}

/// One entry of `checkers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawChecker {
    /// The checker's name, unique in the module.
    pub(crate) name: String,
    /// What it checks.
    pub(crate) check: RawCheck,
    /// Time between checks, ms; default 1000.
    #[serde(default = "default_check_interval_ms")]
    pub(crate) interval_ms: u64,
    /// Limit for one check, ms; default 2000.
    #[serde(default = "default_check_timeout_ms")]
    pub(crate) timeout_ms: u64,
    /// Consecutive failures that trigger `on_failure`; default 3.
    #[serde(default = "default_failures")]
    pub(crate) failures: u32,
    /// What to do then; default `Restart(times: 3, window_s: 300)`.
    #[serde(default = "default_on_failure")]
    pub(crate) on_failure: RawOnFailure,
}

/// `checkers[i].check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) enum RawCheck {
    /// A process with this name runs.
    Process {
        /// The process name (as `/proc/PID/comm` shows it).
        name: String,
    },
    /// A TCP connection to this address succeeds.
    Tcp {
        /// Where to connect.
        addr: SocketAddr,
    },
    /// An HTTP GET answers with this status.
    Http {
        /// `http://…` URL.
        url: String,
        /// Expected status; default 200.
        #[serde(default = "default_expect_status")]
        expect_status: u16,
    },
    /// A command exits 0.
    Command {
        /// The executable; relative to the scripts dir.
        path: PathBuf,
        /// Its arguments; default none.
        #[serde(default)]
        args: Vec<String>,
    },
    /// A network interface is up.
    Interface {
        /// The interface.
        name: String,
    },
}

/// `checkers[i].on_failure`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) enum RawOnFailure {
    /// Restart the application (stop_prim, start_prim) up to `times` within
    /// `window_s`, then do `then`.
    Restart {
        /// Restarts allowed in the window; default 3.
        #[serde(default = "default_restart_times")]
        times: u32,
        /// The window, s; default 300.
        #[serde(default = "default_restart_window_s")]
        window_s: u64,
        /// What to do when restarts are used up; default `Swap` (mirror) or
        /// `Leave` (farm).
        #[serde(default, deserialize_with = "present")]
        then: Option<RawThen>,
    },
    /// Hand over to the peer.
    Swap,
    /// Stop the module.
    Stop,
    /// Farm: leave the farm until the check passes again.
    Leave,
}

/// `Restart(then: …)`.
#[derive(Debug, Deserialize)]
pub(crate) enum RawThen {
    /// Hand over to the peer.
    Swap,
    /// Stop the module.
    Stop,
    /// Farm: leave the farm until the check passes again.
    Leave,
}

/// `maxloop`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMaxLoop {
    /// Failovers allowed within the window before the module stops; default 3.
    #[serde(default = "default_maxloop_count")]
    pub(crate) count: u32,
    /// The window, s; default 3600.
    #[serde(default = "default_maxloop_window_s")]
    pub(crate) window_s: u64,
}

impl Default for RawMaxLoop {
    fn default() -> Self {
        Self {
            count: default_maxloop_count(),
            window_s: default_maxloop_window_s(),
        }
    }
}

/// A field written as a plain path whose absence (`None`) selects a default that
/// depends on context.
fn present_path<'de, D: Deserializer<'de>>(de: D) -> Result<Option<PathBuf>, D::Error> {
    PathBuf::deserialize(de).map(Some)
}

/// A field written as a plain value (`weight: 2`, not `Some(2)`) whose
/// absence selects a default that depends on context.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(de: D) -> Result<Option<T>, D::Error> {
    T::deserialize(de).map(Some)
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_heartbeat_interval_ms() -> u64 {
    250
}
fn default_heartbeat_timeout_ms() -> u64 {
    1500
}
fn default_lease_ms() -> u64 {
    3000
}
fn default_script_timeout_ms() -> u64 {
    30_000
}
fn default_stop_timeout_ms() -> u64 {
    10_000
}
fn default_check_interval_ms() -> u64 {
    1000
}
fn default_check_timeout_ms() -> u64 {
    2000
}
fn default_failures() -> u32 {
    3
}
fn default_expect_status() -> u16 {
    200
}
fn default_restart_times() -> u32 {
    3
}
fn default_restart_window_s() -> u64 {
    300
}
fn default_on_failure() -> RawOnFailure {
    RawOnFailure::Restart {
        times: default_restart_times(),
        window_s: default_restart_window_s(),
        then: None,
    }
}
fn default_rule() -> RawRule {
    RawRule::Address
}
fn default_maxloop_count() -> u32 {
    3
}
fn default_maxloop_window_s() -> u64 {
    3600
}
