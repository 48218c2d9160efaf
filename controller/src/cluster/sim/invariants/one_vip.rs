//! Never two nodes answering on the VIP: at no moment does the kernel of
//! both nodes hold the address (an address outlives its daemon until its
//! lifetime runs out).

use super::super::world::World;
use super::Violation;

pub(super) fn check(w: &World) -> Result<(), Violation> {
    if w.vip_held(0) && w.vip_held(1) {
        return Err(Violation::TwoVips(format!(
            "at {:.3} s both {} and {} hold the VIP",
            w.now as f64 / 1e6,
            w.nodes[0].name,
            w.nodes[1].name
        )));
    }
    Ok(())
}
