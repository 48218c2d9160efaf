//! State sanity: a running core's idea of its kernel set is the kernel's
//! when no order is in flight, and a node UP has a valid VIP and its
//! kernel set is exactly what the core believes.

use super::super::world::World;
use super::Violation;
use crate::cluster::farm::FarmState;

pub(super) fn check(w: &World) -> Result<(), Violation> {
    for n in &w.nodes {
        let Some(core) = &n.core else { continue };
        if n.apply.is_none() {
            if let Some(a) = core.applied() {
                if a != n.kernel {
                    return Err(Violation::Insane(format!(
                        "at {:.3} s {} believes its kernel holds {a} but it holds {}",
                        w.now as f64 / 1e6,
                        n.name,
                        n.kernel
                    )));
                }
            }
        }
        if core.state() == FarmState::Up && core.applied() != Some(n.kernel) {
            return Err(Violation::Insane(format!(
                "at {:.3} s {} is UP with a kernel set it has not confirmed",
                w.now as f64 / 1e6,
                n.name
            )));
        }
    }
    Ok(())
}
