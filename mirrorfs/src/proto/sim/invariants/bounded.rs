//! With `--ack=on-sync`, at most the bound of ops answered early await the
//! secondary at once (back-pressure, not growth), and the core counts
//! exactly the ones that do.

use super::Violation;
use crate::proto::sim::harness::Sim;

pub(super) fn check(sim: &Sim) -> Result<(), Violation> {
    let (ops, _) = sim.core.early_in_flight();
    if ops == sim.early_awaiting() && ops <= sim.bound.ops {
        return Ok(());
    }
    Err(Violation::Unbounded(format!(
        "the core counts {ops} early ops awaiting the secondary, {} do, the bound is {}; {sim:?}",
        sim.early_awaiting(),
        sim.bound.ops
    )))
}
