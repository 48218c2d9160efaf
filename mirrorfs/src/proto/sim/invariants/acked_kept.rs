//! Every acknowledged change is on the secondary (its content there is the
//! acknowledged version or a later one) or durably recorded for the resync.
//! One exception, brief and safe: a secondary that refused an op marks
//! itself inconsistent at once (nobody promotes it), and ops the primary sent
//! behind the refused one may overwrite an acknowledged change there before
//! the primary hears of the refusal; every such name is then touched by an op
//! still in flight, which is recorded when its answer (or the loss of the
//! connection) comes.

use super::Violation;
use crate::proto::sim::harness::Sim;

pub(super) fn check(sim: &Sim) -> Result<(), Violation> {
    for n in sim.oracle.names() {
        let theirs = sim.sec_content(n);
        if sim.oracle.holds(n, theirs) || super::recorded(sim, n) {
            continue;
        }
        return Err(Violation::AckedLost(format!(
            "{n}: acknowledged version {}, the secondary holds {theirs:?}; {sim:?}",
            sim.oracle.acked_version(n)
        )));
    }
    Ok(())
}
