//! A change the secondary does not hold is acknowledged only where allowed:
//! with `alone`, always (it is recorded, in a new generation: the other
//! invariants); with `hold`, while the controller's grant runs; never once
//! the controller fenced the mount, and otherwise (`fail`, or `hold`
//! without a grant) only in the middle of a resync — the secondary is marked inconsistent, so
//! no one promotes it, and the change is durably recorded, so the resync
//! brings it.

use super::Violation;
use crate::proto::path::RelPath;
use crate::proto::primary::OnPeerLoss;
use crate::proto::sim::harness::Sim;

/// `effects`: the acknowledged changes the secondary does not hold.
pub(in crate::proto::sim) fn unreplicated_ack_allowed(
    sim: &Sim,
    effects: &[(RelPath, usize)],
) -> Result<(), Violation> {
    let granted = sim.grant.is_some_and(|d| sim.now < d);
    let resyncing = sim.sec_inconsistent && effects.iter().all(|(n, _)| super::recorded(sim, n));
    let allowed = resyncing
        || (!sim.fenced_by_order
            && match sim.mode {
                OnPeerLoss::Fail => false,
                OnPeerLoss::Alone => true,
                OnPeerLoss::Hold => granted,
            });
    if allowed {
        return Ok(());
    }
    Err(Violation::UnreplicatedAck(format!(
        "{effects:?} acknowledged in mode {:?} (grant until {:?}, now {:?}, fenced {}); {sim:?}",
        sim.mode,
        sim.grant.map(|g| g.saturating_duration_since(sim.now)),
        sim.now,
        sim.fenced_by_order
    )))
}
