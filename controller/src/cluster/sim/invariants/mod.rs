//! The properties checked after every simulated millisecond, one per file,
//! each a [`Violation`] variant with a message that says what broke.

mod acked_writes_kept;
mod one_vip;
mod one_writer;

use super::world::World;

pub(crate) use acked_writes_kept::{at_the_end, on_mount};

/// A broken property.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Violation {
    /// Both nodes could acknowledge writes at the same moment.
    #[error("two writers: {0}")]
    TwoWriters(String),
    /// Both nodes held the virtual IP at the same moment.
    #[error("two nodes hold the VIP: {0}")]
    TwoVips(String),
    /// A node became primary without every acknowledged write.
    #[error("acknowledged writes lost: {0}")]
    LostWrites(String),
    /// The faults healed and the module did not return to PRIM + SECOND.
    #[error("not live: {0}")]
    NotLive(String),
}

/// Checks the properties that hold at every moment.
pub(crate) fn check(w: &World) -> Result<(), Violation> {
    one_writer::check(w)?;
    one_vip::check(w)?;
    Ok(())
}
