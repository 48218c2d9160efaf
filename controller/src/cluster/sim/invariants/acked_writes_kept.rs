//! No acknowledged write lost: a node that mounts (becomes the primary,
//! whose data then replaces the peer's) holds every write acknowledged so
//! far. Data on disk is never lost in the simulation, so this holds under
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
