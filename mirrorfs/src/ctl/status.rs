//! The `status` request and its answer, the [`Status`] object: one flat JSON
//! object (no envelope) that a mount and a serve both answer with, and its
//! text for `mirrorfs status`.
//!
//! Fields every status has come first; the mount's and the serve's own
//! fields are skipped when absent, so a reader tells the two apart by
//! `role` (SECOND is a serve) or by which fields are there.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use super::ResyncProgress;
pub use crate::proto::primary::AckMode;

/// The role of a mirrorfs process, as operators read it (and as the JSON
/// spells it: upper case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Role {
    /// Mount, connected and in sync: every mutation is applied by the
    /// secondary before it returns.
    Prim,
    /// Mount, connected, bringing the secondary up to date while mutations
    /// keep being replicated.
    Resync,
    /// Mount without its peer: mutations are applied here and recorded for
    /// the resync.
    Alone,
    /// Mount without its peer (`--on-peer-loss=fail`): mutations fail with
    /// EIO until it is back.
    Lost,
    /// Mount without its peer (`--on-peer-loss=hold`): mutations wait for
    /// the controller's order (`alone` or `fence`) or `--hold-timeout`.
    Hold,
    /// Mount, fenced: mutations fail with EIO until `unfence`.
    Fenced,
    /// Serve: the secondary, applying what the primary sends.
    Second,
}

impl Role {
    /// What the role means for the application, for the text status.
    pub fn meaning(self) -> &'static str {
        match self {
            Self::Prim => "",
            Self::Resync => "bringing the secondary up to date",
            Self::Alone => "no peer: changes are recorded for the resync",
            Self::Lost => "peer lost: writes fail with EIO until it is back",
            Self::Hold => "peer lost: writes wait for the controller's order",
            Self::Fenced => "fenced: writes fail with EIO until unfence",
            Self::Second => "secondary: applies the primary's operations",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Prim => "PRIM",
            Self::Resync => "RESYNC",
            Self::Alone => "ALONE",
            Self::Lost => "LOST",
            Self::Hold => "HOLD",
            Self::Fenced => "FENCED",
            Self::Second => "SECOND",
        })
    }
}

/// The last operation a secondary applied.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LastApplied {
    /// Its sequence number on the connection it came on (each connection
    /// counts from 1).
    pub seq: u64,
    /// When it was applied, seconds since the Unix epoch.
    pub unix_secs: f64,
}

/// The answer to `status` (and to every order, and each line of `watch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The control protocol version ([`super::VERSION`]).
    pub version: u32,
    /// The role (upper case: PRIM, RESYNC, ALONE, LOST, HOLD, FENCED on a
    /// mount; SECOND on a serve).
    pub role: Role,
    /// PRIM, connected, nothing dirty and no resync: the secondary holds
    /// everything acknowledged. Always false on a serve (only the primary
    /// knows; ask it).
    pub in_sync: bool,
    /// Connected to the peer now (a serve: a primary is connected).
    pub connected: bool,
    /// Paths recorded as possibly different on the secondary (0 on a serve).
    pub dirty_files: u64,
    /// Their size on this side: the most a resync sends (0 on a serve).
    pub dirty_bytes: u64,
    /// The resync's progress while one runs (a mount), else null.
    pub resync: Option<ResyncProgress>,
    /// The current data generation, 16 hex digits (null: this tree was never
    /// part of a mirror).
    pub generation: Option<String>,
    /// The generation history, current first, 16 hex digits each.
    pub history: Vec<String>,
    /// Alive but making no progress: an operation has been waiting on the
    /// disk or the peer for longer than it may (a hung disk shows here).
    pub stalled: bool,
    /// The process id of the mount or serve.
    pub pid: u32,
    /// The last problem (connection, refusal, failed operation), if any.
    pub last_error: Option<String>,
    /// A mount: the secondary's address (`--peer`). A serve: the connected
    /// primary's address, null when none is.
    pub peer: Option<String>,
    /// The peer's node name (from its pinned certificate).
    pub peer_node: String,
    /// Seconds in the current role.
    pub role_secs: f64,
    /// A mount: operations sent to the secondary and not yet acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_in_flight: Option<u64>,
    /// A mount under a controller (`--on-peer-loss=hold`): seconds left of
    /// the controller's `alone` grant, null when there is none. Absent
    /// otherwise.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub alone_secs_left: Option<Option<f64>>,
    /// A mount under a controller: mutations waiting for its decision
    /// (HOLD). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_ops: Option<u64>,
    /// A serve: a primary is connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_connected: Option<bool>,
    /// A serve: the last operation applied, null before the first.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub last_applied: Option<Option<LastApplied>>,
    /// A serve: a resync into this replica runs (begun and not finished on
    /// the current connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync_running: Option<bool>,
    /// A serve: this replica is marked inconsistent (a resync into it began
    /// and has not finished: its data is a mix of old and new).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inconsistent: Option<bool>,
    /// A mount: when mutations return (`--ack`): `each-op` (once the
    /// secondary applied them) or `on-sync` (fsync and O_SYNC writes wait
    /// for everything before them to be durable there; other ops return
    /// once queued). Absent on a serve (and from a mount older than it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<AckMode>,
}

/// A field that is present (even as null) becomes `Some`, so that "absent"
/// and "null" stay apart in an `Option<Option<T>>`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl Status {
    /// The text `mirrorfs status` prints: one `name: value` line each.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let mut line = |name: &str, value: String| {
            out.push_str(&format!("{:<12} {value}\n", format!("{name}:")));
        };
        let meaning = self.role.meaning();
        if meaning.is_empty() {
            line("role", self.role.to_string());
        } else {
            line("role", format!("{} ({meaning})", self.role));
        }
        let yes = |b: bool| if b { "yes" } else { "no" }.to_owned();
        line("in sync", yes(self.in_sync));
        line(
            "peer",
            format!(
                "{} ({})",
                self.peer.as_deref().unwrap_or("none connected"),
                self.peer_node
            ),
        );
        line("connected", yes(self.connected));
        line(
            "generation",
            self.generation.clone().unwrap_or_else(|| "none".into()),
        );
        if self.history.len() > 1 {
            line("history", self.history[1..].join(" "));
        }
        if self.role != Role::Second {
            line(
                "dirty",
                format!("{} files, {} bytes", self.dirty_files, self.dirty_bytes),
            );
        }
        if let Some(ack) = self.ack {
            line(
                "ack",
                match ack {
                    AckMode::EachOp => "each-op (every write waits for the secondary)".into(),
                    AckMode::OnSync => {
                        "on-sync (fsync and O_SYNC writes wait for the secondary)".into()
                    }
                },
            );
        }
        if let Some(n) = self.ops_in_flight {
            line("in flight", format!("{n} ops"));
        }
        line("in role", format!("{:.0} s", self.role_secs));
        if let Some(r) = &self.resync {
            line(
                "resync",
                format!(
                    "{} done, {} left, {} bytes sent, {:.1} MB/s, ETA {}{}",
                    r.files_done,
                    r.files_left,
                    r.bytes_sent,
                    r.rate_bytes_per_sec / 1e6,
                    r.eta_secs.map_or("unknown".into(), |s| format!("{s:.0} s")),
                    if r.full {
                        " (full: every file by checksum)"
                    } else {
                        ""
                    }
                ),
            );
        }
        if let Some(left) = self.alone_secs_left {
            line(
                "alone grant",
                left.map_or("none".into(), |s| format!("{s:.1} s left")),
            );
        }
        if let Some(n) = self.held_ops {
            line("held ops", n.to_string());
        }
        if let Some(c) = self.primary_connected {
            line(
                "primary",
                if c { "connected" } else { "not connected" }.into(),
            );
        }
        if let Some(last) = self.last_applied {
            line(
                "last applied",
                last.map_or("nothing yet".into(), |l| {
                    format!("op {} at {:.3} (unix time)", l.seq, l.unix_secs)
                }),
            );
        }
        if let Some(r) = self.resync_running {
            line("resync", if r { "running" } else { "not running" }.into());
        }
        if let Some(i) = self.inconsistent {
            line(
                "consistent",
                if i {
                    "NO: a resync into this replica has not finished".into()
                } else {
                    "yes".into()
                },
            );
        }
        line("stalled", yes(self.stalled));
        line("pid", self.pid.to_string());
        if let Some(e) = &self.last_error {
            line("last error", e.clone());
        }
        out
    }
}
