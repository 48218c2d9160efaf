//! At most one accepting owner per bucket: a node accepts bucket `b` while
//! its kernel set holds `b` and its VIP is valid (a crashed daemon's kernel
//! set stays; its VIP runs out by itself).

use super::super::world::World;
use super::Violation;

pub(super) fn check(w: &World) -> Result<(), Violation> {
    let mut seen = filter::buckets::BucketSet::empty();
    for n in &w.nodes {
        let acc = w.accepting(n);
        let both = seen.intersection(&acc);
        if let Some(b) = both.iter().next() {
            let owners: Vec<&str> = w
                .nodes
                .iter()
                .filter(|m| w.accepting(m).contains(b))
                .map(|m| m.name.as_str())
                .collect();
            return Err(Violation::TwoOwners(format!(
                "at {:.3} s bucket {b} is accepted by {owners:?} ({} buckets in all)",
                w.now as f64 / 1e6,
                both.len()
            )));
        }
        seen = seen.union(&acc);
    }
    Ok(())
}
