//! Never two writers: at no moment can both nodes' mounts acknowledge a
//! write (connected to the peer's replica, or alone under a grant).

use super::super::world::World;
use super::Violation;

pub(super) fn check(w: &World) -> Result<(), Violation> {
    if w.can_ack(0) && w.can_ack(1) {
        return Err(Violation::TwoWriters(format!(
            "at {:.3} s both {} and {} acknowledge writes",
            w.now as f64 / 1e6,
            w.nodes[0].name,
            w.nodes[1].name
        )));
    }
    Ok(())
}
