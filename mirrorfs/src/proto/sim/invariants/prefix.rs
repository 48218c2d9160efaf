//! The secondary holds a prefix of the primary's changes: ops are applied
//! there in the order they were applied here, so a consistent secondary at
//! the primary's generation (one that could be promoted) holds a tree the
//! primary had at some point. A secondary that refused an op, or into which
//! a resync runs, is marked inconsistent (never promoted); one whose
//! generation is not the primary's lacks, knowingly, the changes made
//! without it. With `--ack=on-sync` this is what makes a failover lose at
//! most the unsynced tail.

use super::Violation;
use crate::proto::sim::harness::Sim;

pub(super) fn check(sim: &Sim) -> Result<(), Violation> {
    if sim.sec_inconsistent || sim.sec_history.current() != sim.disk_history.current() {
        return Ok(());
    }
    let tree: Vec<_> = sim.sec.iter().map(|(n, t)| (n.clone(), *t)).collect();
    if sim.states.contains(&tree) {
        return Ok(());
    }
    Err(Violation::NotAPrefix(format!(
        "the secondary holds {tree:?}, a tree the primary never had; {sim:?}"
    )))
}
