//! No acknowledged write lost: a node that starts to mount (decides to
//! become the primary, whose data then replaces the peer's) holds every
//! write acknowledged so far, and at the end, in sync, both nodes do. Data on disk is never lost in the simulation, so this holds under
//! any combination of crashes, partitions and stalls (operators forcing a
//! side are not simulated).

use super::super::world::World;
use super::Violation;

/// Checks node `i`'s data as its mount starts.
pub(crate) fn on_mount(w: &World, i: usize) -> Result<(), Violation> {
    let data = &w.nodes[i].data.writes;
    let missing: Vec<(u64, usize)> = w
        .oracle
        .acked
        .iter()
        .filter(|(id, _)| !data.contains(id))
        .map(|(id, n)| (*id, *n))
        .take(5)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Violation::LostWrites(format!(
        "at {:.3} s {} mounts without acknowledged writes (id, acknowledged by node index) {missing:?}",
        w.now as f64 / 1e6,
        w.nodes[i].name
    )))
}

/// At the end of the liveness phase, both nodes (primary and in-sync
/// secondary) hold every write acknowledged during the run.
pub(crate) fn at_the_end(w: &World) -> Result<(), Violation> {
    for (i, n) in w.nodes.iter().enumerate() {
        let missing: Vec<u64> = w
            .oracle
            .acked
            .keys()
            .filter(|id| !n.data.writes.contains(id))
            .take(5)
            .copied()
            .collect();
        if !missing.is_empty() {
            return Err(Violation::LostWrites(format!(
                "at the end, in sync, node {i} ({}) lacks acknowledged writes {missing:?}",
                n.name
            )));
        }
    }
    Ok(())
}
