//! The properties checked after every simulated millisecond, one per file.

mod one_accepting_owner;
mod state_sanity;

use super::world::World;

/// A broken property.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Violation {
    /// Two nodes accepted the same bucket at the same moment.
    #[error("two accepting owners: {0}")]
    TwoOwners(String),
    /// A core's belief contradicts the world.
    #[error("state sanity: {0}")]
    Insane(String),
    /// The faults healed and the farm did not converge.
    #[error("not live: {0}")]
    NotLive(String),
}

/// Checks the properties that hold at every moment.
pub(crate) fn check(w: &World) -> Result<(), Violation> {
    one_accepting_owner::check(w)?;
    state_sanity::check(w)?;
    Ok(())
}
