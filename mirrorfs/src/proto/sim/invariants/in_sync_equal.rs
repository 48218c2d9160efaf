//! "In sync" is reported only when the secondary equals the primary: once
//! nothing is in flight (no op applied here and unanswered, nothing on the
//! link), an in-sync status means equal trees.

use super::Violation;
use crate::proto::sim::harness::Sim;

pub(super) fn check(sim: &Sim) -> Result<(), Violation> {
    let snap = sim.core.snapshot(sim.now);
    if snap.in_sync && !sim.link_busy() && !sim.ops_unanswered() && sim.primary != sim.sec {
        return Err(Violation::InSyncButDifferent(format!("{sim:?}")));
    }
    Ok(())
}
