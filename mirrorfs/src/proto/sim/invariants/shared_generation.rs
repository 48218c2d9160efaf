//! A consistent secondary that holds the primary's current generation could
//! be promoted and would look up to date: it must then hold every
//! acknowledged change (so every acknowledgement of a change it lacks happens
//! in a generation it does not share). A secondary marked inconsistent (a
//! resync into it runs: its tree is a mix of old and new) is never promoted.

use super::Violation;
use crate::proto::sim::harness::Sim;

pub(super) fn check(sim: &Sim) -> Result<(), Violation> {
    if sim.sec_inconsistent || sim.sec_history.current() != sim.disk_history.current() {
        return Ok(());
    }
    for n in sim.oracle.names() {
        let theirs = sim.sec_content(n);
        if !sim.oracle.holds(n, theirs) {
            return Err(Violation::SharedGenerationMissesAck(format!(
                "{n}: acknowledged version {}, the secondary holds {theirs:?} at the shared generation {:?}; {sim:?}",
                sim.oracle.acked_version(n),
                sim.disk_history.current()
            )));
        }
    }
    Ok(())
}
