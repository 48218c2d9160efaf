//! The messages the cluster cores exchange: heartbeats between the two
//! nodes of a module ([`Beat`]) and reports to the witness with its answers
//! ([`Report`], [`Answer`]). Serialised as JSON in QUIC datagrams by the
//! drivers; the cores only build and read them. No I/O.

use serde::{Deserialize, Serialize};

use super::state::{ModuleState, RootInfo};

/// The version of the heartbeat and witness messages.
pub const VERSION: u32 = 1;

/// The largest message accepted, in bytes (a QUIC datagram fits ~1200).
pub const MAX_MESSAGE: usize = 1200;

/// One heartbeat: what a node tells its peer about a module, every interval,
/// on every network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    /// [`VERSION`].
    pub version: u32,
    /// The module.
    pub module: String,
    /// The sending node.
    pub from: String,
    /// The sender daemon's incarnation (its start time): a restarted
    /// daemon counts its beats from 1 again.
    pub incarnation: u64,
    /// Counts the sender's beats (the same beat goes on every network).
    pub seq: u64,
    /// The newest `seq` the sender has received from this peer: the peer
    /// knows the link worked both ways when the beat it sent then left.
    pub echo: Option<u64>,
    /// Microseconds between the echoed beat's arrival and this beat's
    /// departure (left out of the round trip the receiver measures).
    #[serde(default)]
    pub echo_held_us: u64,
    /// xxh3 of the sender's module file: a mismatch blocks a start.
    pub digest: u64,
    /// The sender's state.
    pub state: ModuleState,
    /// The state is settled (not in a transition).
    pub ready: bool,
    /// Mounts run on the sender: it is the primary and may write.
    pub primary: bool,
    /// (Primary) connected and in sync: this peer holds every acknowledged
    /// write.
    pub in_sync: bool,
    /// Serves run on the sender: a primary may connect to it.
    pub serving: bool,
    /// (Swap) the sender stepped down and serves: take over now.
    pub handover: bool,
    /// (Secondary) the operator asked for a swap on the sender.
    pub swap_requested: bool,
    /// The witness told the sender its data is behind this peer's.
    pub behind: bool,
    /// The sender's data, one entry per directory (empty when unknown); each
    /// history is cut to its newest generations.
    pub roots: Vec<RootInfo>,
    /// Per directory, the receiver's current generation as the sender last
    /// heard it, and whether the sender's whole history holds it (the
    /// receiver is then not newer there, however long the history cut
    /// from `roots`).
    #[serde(default)]
    pub knows: Vec<(String, bool)>,
}

/// A node's report to the witness, every interval: who it is and whether it
/// is primary, and (when it must write without its peer, or take over) a
/// request for the module's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// [`VERSION`].
    pub version: u32,
    /// The module.
    pub module: String,
    /// The reporting node.
    pub node: String,
    /// The other node of the module.
    pub peer: String,
    /// Counts the reporter's reports; the answer echoes it.
    pub seq: u64,
    /// The reporter runs the mounts (is primary).
    pub primary: bool,
    /// The reporter is primary, connected and in sync: both nodes hold the
    /// same data (the witness forgets which one was ahead).
    pub in_sync: bool,
    /// The reporter asks for (or renews) the lease.
    pub want_lease: bool,
    /// The reporter runs no mounts and asks for nothing: if it holds the
    /// lease, it gives it up (it cannot write any more).
    pub release: bool,
    /// The module's lease length, in milliseconds.
    pub lease_ms: u64,
    /// The module's heartbeat timeout, in milliseconds: how long a silent
    /// primary may still be alive.
    pub timeout_ms: u64,
}

/// The witness's answer to a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// [`VERSION`].
    pub version: u32,
    /// The module.
    pub module: String,
    /// The report's `seq`.
    pub seq: u64,
    /// What became of the lease request.
    pub lease: LeaseAnswer,
    /// The node holding the lease now, if any: a confirmation from the
    /// witness counts for the reporter only when it is none or itself.
    pub holder: Option<String>,
    /// The reporter's data is behind its peer's (the peer wrote alone
    /// since they were last in sync): it must not start as primary by itself.
    pub behind: bool,
}

/// The lease part of an [`Answer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseAnswer {
    /// No lease was asked for.
    NotAsked,
    /// The lease is the reporter's for `ms` from when the report was sent.
    Granted {
        /// The lease's length.
        ms: u64,
    },
    /// Refused; the reason names who keeps the service and why.
    Refused {
        /// Why.
        reason: String,
        /// The refusal is temporary and says nothing about the other node
        /// (a restarted witness's quiet time): ask again. Otherwise the
        /// other node keeps or takes the service.
        retry: bool,
    },
}

/// Why a received message was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsgError {
    /// Longer than [`MAX_MESSAGE`].
    #[error("message of {0} bytes, more than {MAX_MESSAGE}: dropped")]
    TooLong(usize),
    /// Not a message of this kind.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Another protocol version.
    #[error("message of version {got}, this node speaks {VERSION}: run the same mirrorfarm version on every node and the witness")]
    Version {
        /// The version received.
        got: u32,
    },
}

/// Encodes any message as JSON bytes.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Plain structs of strings, numbers and enums always serialise.
    serde_json::to_vec(msg).unwrap_or_default()
}

/// Decodes a message, checking its size first and its version after.
pub fn decode<T: for<'de> Deserialize<'de> + Versioned>(bytes: &[u8]) -> Result<T, MsgError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(MsgError::TooLong(bytes.len()));
    }
    let msg: T = serde_json::from_slice(bytes).map_err(|e| MsgError::Malformed(e.to_string()))?;
    if msg.version() != VERSION {
        return Err(MsgError::Version { got: msg.version() });
    }
    Ok(msg)
}

/// A message that carries a version.
pub trait Versioned {
    /// Its version field.
    fn version(&self) -> u32;
}

impl Versioned for Beat {
    fn version(&self) -> u32 {
        self.version
    }
}
impl Versioned for Report {
    fn version(&self) -> u32 {
        self.version
    }
}
impl Versioned for Answer {
    fn version(&self) -> u32 {
        self.version
    }
}

/// One farm heartbeat ([`FarmCore`](super::farm::FarmCore)): broadcast by
/// every member of a farm module to every other, every interval. JSON; the
/// bucket sets are 64 hex digits (the four 64-bit words of the bitmap,
/// bucket `b` = bit `b % 64` of word `b / 64`) so that the beat stays well
/// under [`MAX_MESSAGE`] whatever the sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FarmBeat {
    /// [`VERSION`].
    pub version: u32,
    /// The module.
    pub module: String,
    /// The sending node.
    pub from: String,
    /// The sender daemon's incarnation (its start time in ms).
    pub incarnation: u64,
    /// Counts the sender's beats, from `incarnation << 16`: always above
    /// what an earlier incarnation sent.
    pub seq: u64,
    /// Per member, the newest `seq` the sender received from it: the member
    /// knows its beat `seq` was heard, at the earliest when that beat left.
    pub echo: Vec<(String, u64)>,
    /// Per member, milliseconds since the sender last heard it (or since
    /// the sender started, if never), capped at 60 000.
    pub silent_ms: Vec<(String, u64)>,
    /// The members the sender hears both ways (itself included).
    pub view: Vec<String>,
    /// The sender is started, its application healthy and it holds the
    /// VIPs (it can serve a share): it counts in the map.
    pub eligible: bool,
    /// The sender's state.
    pub state: super::farm::FarmState,
    /// The buckets the sender's kernel holds (as last confirmed applied;
    /// all 256 while unknown).
    #[serde(with = "bucket_hex")]
    pub applied: filter::buckets::BucketSet,
    /// The buckets the sender holds or wants: no other member takes one of
    /// them from this beat's word.
    #[serde(with = "bucket_hex")]
    pub claim: filter::buckets::BucketSet,
    /// The members whose flooding probes (frames to the virtual MAC)
    /// reached the sender lately: the network floods from them to it. Not
    /// used by any decision; shown by `mirrorfarm state` and `check`.
    #[serde(default)]
    pub flood: Vec<String>,
}

impl Versioned for FarmBeat {
    fn version(&self) -> u32 {
        self.version
    }
}

/// A [`BucketSet`](filter::buckets::BucketSet) as 64 hex digits.
mod bucket_hex {
    use filter::buckets::BucketSet;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(set: &BucketSet, s: S) -> Result<S::Ok, S::Error> {
        let w = set.words();
        s.serialize_str(&format!(
            "{:016x}{:016x}{:016x}{:016x}",
            w[0], w[1], w[2], w[3]
        ))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BucketSet, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() != 64 || !s.is_ascii() {
            return Err(serde::de::Error::custom("a bucket set is 64 hex digits"));
        }
        let mut w = [0u64; 4];
        for (i, word) in w.iter_mut().enumerate() {
            *word = u64::from_str_radix(&s[i * 16..i * 16 + 16], 16)
                .map_err(serde::de::Error::custom)?;
        }
        Ok(BucketSet::from_words(w))
    }
}
