//! The `state` request and its answer, the [`State`] object: this node's view
//! of one module or of all of them, as `mirrorfarm state --json` prints it
//! and as the text of `mirrorfarm state` is made from ([`super::render`]).
//!
//! Every field is always there (`null` when it does not apply), so that a
//! script reads `.modules[0].in_sync` without checking for the key first. A
//! reader ignores fields it does not know: a later daemon may add some.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{CtlError, Request, VERSION};

/// The answer to `state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The control protocol version ([`VERSION`]).
    pub version: u32,
    /// The node that answers (its name in the node file).
    pub node: String,
    /// The modules asked for (all of this node's, sorted by name, or the one
    /// named).
    pub modules: Vec<ModuleStatus>,
}

impl State {
    /// A state of the current protocol version.
    pub fn new(node: impl Into<String>, modules: Vec<ModuleStatus>) -> Self {
        Self {
            version: VERSION,
            node: node.into(),
            modules,
        }
    }
}

/// One module on the node that answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleStatus {
    /// The module's name (its file name without `.ron`).
    pub module: String,
    /// The node that answers.
    pub node: String,
    /// The other node of the mirror.
    pub peer: String,
    /// This node's state: STOP, WAIT, ALONE, PRIM or SECOND.
    pub state: String,
    /// Settled in `state`; false while a transition (scripts, mounts, the
    /// VIP) is under way.
    pub ready: bool,
    /// Why the module is in this state, or what it waits for.
    pub reason: String,
    /// When it entered the state, seconds since the Unix epoch.
    pub since_unix: f64,
    /// The step running now (e.g. `start_prim script`), if any.
    pub step: Option<String>,
    /// On the primary: connected to the secondary and nothing left to
    /// resynchronise (every acknowledged write is on both). On the
    /// secondary: the primary's last heartbeat said so (this node could
    /// take over). `null` elsewhere.
    pub in_sync: Option<bool>,
    /// A resynchronisation's progress while one runs.
    pub resync: Option<Resync>,
    /// The peer's state as last heard (`null`: never heard).
    pub peer_state: Option<String>,
    /// Whether the peer is settled in `peer_state` (`null`: never heard).
    pub peer_ready: Option<bool>,
    /// The peer is heard on at least one heartbeat network.
    pub peer_reachable: bool,
    /// The heartbeat networks, in the module file's order (the peer's address
    /// on each).
    pub networks: Vec<NetworkStatus>,
    /// The witness (`null`: the module has none).
    pub witness: Option<WitnessStatus>,
    /// The virtual IP while this node holds it, e.g. `10.77.0.100/24 on
    /// eth0` (`null`: not here, or the module has none).
    pub vip: Option<String>,
    /// The replicated directories, in the module file's order.
    pub dirs: Vec<DirStatus>,
    /// The last change of state on this node.
    pub last_transition: Option<TransitionStatus>,
    /// The last failover of this module seen by this node.
    pub last_failover: Option<FailoverStatus>,
    /// The peer's module file differs from this node's (its digest does).
    pub config_mismatch: bool,
    /// A farm module's members and shares (`null` for a mirror).
    #[serde(default)]
    pub farm: Option<FarmStatus>,
}

/// A farm module on the node that answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FarmStatus {
    /// The virtual IPs, e.g. `10.78.0.100/24 on eth0`.
    pub vips: Vec<String>,
    /// Whether this node holds them now (renewed, serving its buckets).
    pub vip_held: bool,
    /// `Address` or `AddressAndPort`.
    pub rule: String,
    /// Buckets (of 256) this node's kernel accepts now (`null`: not known yet).
    pub share: Option<usize>,
    /// Those buckets as ranges, e.g. `{0-84, 200}`.
    pub buckets: Option<String>,
    /// Buckets this node should hold in its current view of the farm.
    pub target: usize,
    /// Every configured member, in the module file's order.
    pub members: Vec<FarmMemberStatus>,
    /// Frames to the virtual MAC that do not reach a member (the network
    /// does not flood them), one line each: empty when every member that
    /// runs hears every other's probes. Empty too in the first seconds after
    /// the daemon started.
    #[serde(default)]
    pub flood_problems: Vec<String>,
    /// Whether flooding has been tested: the daemon has run long enough for
    /// every member's probes to arrive, and listens for them.
    #[serde(default)]
    pub flood_tested: bool,
}

/// One member of a farm as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FarmMemberStatus {
    /// Its node name.
    pub name: String,
    /// Its weight (0: standby).
    pub weight: u32,
    /// Its state as last heard (`null`: never heard).
    pub state: Option<String>,
    /// Seconds since its last heartbeat (`null`: never, or the answering node).
    pub heard_secs_ago: Option<f64>,
    /// Buckets its kernel accepted as last heard (`null`: unknown).
    pub share: Option<usize>,
    /// Heard both ways: it counts in the answering node's map.
    pub in_view: bool,
    /// The members whose flooding probes (frames to the virtual MAC) reached
    /// it lately, as it last said (`null`: never heard).
    #[serde(default)]
    pub flood_from: Option<Vec<String>>,
}

/// A resynchronisation's progress (the sum over the module's directories).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resync {
    /// Paths synchronised so far.
    pub files_done: u64,
    /// Paths still to do (grows while directories are walked).
    pub files_left: u64,
    /// Data bytes sent.
    pub bytes_sent: u64,
    /// Estimated seconds left (`null`: not known yet).
    pub eta_secs: Option<f64>,
}

/// One heartbeat network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// The peer's address on it.
    pub addr: String,
    /// Seconds since the peer was last heard on it (`null`: never).
    pub heard_secs_ago: Option<f64>,
    /// The last heartbeat round trip on it, in milliseconds (`null`: none
    /// measured yet).
    #[serde(default)]
    pub rtt_ms: Option<f64>,
}

/// The witness of a module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WitnessStatus {
    /// Its address.
    pub addr: String,
    /// It answered recently.
    pub reachable: bool,
    /// Seconds left of the lease this node holds (`null`: it holds none).
    pub lease_secs_left: Option<f64>,
    /// Why the witness last refused this node a lease, if it did.
    pub refused: Option<String>,
}

/// One replicated directory on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirStatus {
    /// Where the application sees it (the mirrorfs mount on the primary).
    pub mount: String,
    /// The real directory.
    pub backing: String,
    /// The role of its mirrorfs process (PRIM, RESYNC, ALONE, HOLD, FENCED,
    /// SECOND...; `null`: none runs).
    pub role: Option<String>,
    /// Its current data generation, 16 hex digits (`null`: unknown or never
    /// replicated).
    pub generation: Option<String>,
    /// False while a resync into it is unfinished (`null`: unknown).
    pub consistent: Option<bool>,
    /// Bytes written on this primary that the secondary lacks (what a resync
    /// would send; `null` on a secondary or without an answer).
    #[serde(default)]
    pub dirty_bytes: Option<u64>,
    /// Operations sent to the secondary and not acknowledged yet (the
    /// replication lag; `null` on a secondary or without an answer).
    #[serde(default)]
    pub ops_in_flight: Option<u64>,
}

/// A change of state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionStatus {
    /// The state before.
    pub from: String,
    /// The state after.
    pub to: String,
    /// Why.
    pub reason: String,
    /// When, seconds since the Unix epoch.
    pub at_unix: f64,
}

/// A failover: the secondary took over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverStatus {
    /// The node that became primary.
    pub to: String,
    /// What caused it (peer lost, checker failed, swap...).
    pub cause: String,
    /// When, seconds since the Unix epoch.
    pub at_unix: f64,
}

/// The fields of a `state` request: `module` a string, or null or absent for
/// every module.
pub(super) fn decode(fields: &mut Map<String, Value>) -> Result<Request, CtlError> {
    let module = match fields.get("module") {
        None | Some(Value::Null) => {
            fields.remove("module");
            None
        }
        Some(_) => Some(super::module_field("state", fields)?),
    };
    Ok(Request::State { module })
}
