//! The simulation's invariants, one per file, checked after every step
//! against the oracle; each violation is a [`Violation`] with what was seen.

mod acked_kept;
mod bounded;
mod generations_grow;
mod in_sync_equal;
mod prefix;
mod quorum;
mod shared_generation;

use std::fmt;

use super::harness::Sim;

pub(super) use generations_grow::generations_only_grow;
pub(super) use quorum::unreplicated_ack_allowed;

/// A broken invariant, with what was observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Violation {
    /// An acknowledged change is neither on the secondary nor durably
    /// recorded for the resync.
    AckedLost(String),
    /// The status says in sync (and nothing is in flight) but the trees differ.
    InSyncButDifferent(String),
    /// The secondary shares the primary's generation (it could be promoted
    /// and look up to date) but lacks an acknowledged change.
    SharedGenerationMissesAck(String),
    /// A change the secondary does not hold was acknowledged where the
    /// configuration or the controller does not allow it.
    UnreplicatedAck(String),
    /// A mutation was admitted after the controller fenced the mount.
    BeganWhileFenced(String),
    /// A saved history does not extend the one before.
    HistoryRewritten(String),
    /// Without faults, the pair did not come back in sync with equal trees.
    NotSettled(String),
    /// A consistent secondary at the primary's generation holds a tree the
    /// primary never had (not a prefix of its ops).
    NotAPrefix(String),
    /// More early-answered ops await the secondary than the bound allows,
    /// or the core miscounts them.
    Unbounded(String),
    /// A data write sent while a worker visited its file, before the
    /// worker's copy made the file there, failed for the file's absence:
    /// the copy brings the write over.
    FailedBeforeAVisit(String),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, detail) = match self {
            Self::AckedLost(d) => (
                "an acknowledged change is neither on the secondary nor recorded",
                d,
            ),
            Self::InSyncButDifferent(d) => ("in sync reported while the trees differ", d),
            Self::SharedGenerationMissesAck(d) => (
                "the secondary shares the current generation but lacks an acknowledged change",
                d,
            ),
            Self::UnreplicatedAck(d) => {
                ("an unreplicated change was acknowledged without leave", d)
            }
            Self::BeganWhileFenced(d) => ("a mutation began while fenced", d),
            Self::HistoryRewritten(d) => ("the generation history was rewritten", d),
            Self::NotSettled(d) => ("no return to sync without faults", d),
            Self::NotAPrefix(d) => ("the secondary is not a prefix of the primary", d),
            Self::Unbounded(d) => ("the early-answered ops are not bounded", d),
            Self::FailedBeforeAVisit(d) => {
                ("a write the visit of its file brings over was failed", d)
            }
        };
        write!(f, "{what}: {detail}")
    }
}

/// True when the resync will bring `n` over: it is durably recorded; or the
/// metadata disk failed to record it and the primary keeps it in memory
/// (after a crash the activity log, not modelled here, makes the resync
/// compare it); or the secondary marked itself inconsistent after refusing
/// an op and an op on `n` is still in flight (see `acked_kept`).
fn recorded(sim: &Sim, n: &crate::proto::path::RelPath) -> bool {
    sim.disk_dirty.contains(n)
        || sim.core.volatile().contains(n)
        || (sim.sec_inconsistent && sim.in_flight_touches(n))
}

/// Every invariant of a step.
pub(super) fn check(sim: &mut Sim) -> Result<(), Violation> {
    if let Some(v) = sim.deferred.take() {
        return Err(v);
    }
    acked_kept::check(sim)?;
    in_sync_equal::check(sim)?;
    shared_generation::check(sim)?;
    prefix::check(sim)?;
    bounded::check(sim)?;
    Ok(())
}

/// After the liveness phase: equal trees, nothing recorded, one generation.
pub(super) fn check_settled(sim: &mut Sim) -> Result<(), Violation> {
    check(sim)?;
    if sim.primary != sim.sec
        || !sim.disk_dirty.is_empty()
        || sim.sec_history.current() != sim.disk_history.current()
    {
        return Err(Violation::NotSettled(format!("settled as {sim:?}")));
    }
    Ok(())
}
