//! The orders `fence` and `unfence`, accepted at any time. `fence`: mutations
//! fail with EIO from now on (ops that were held are refused, and having been
//! applied locally they are recorded dirty for the next resync). `unfence`:
//! back to HOLD, or to PRIM through a resync once the peer is back. The
//! backend decides; a serve refuses both (orders go to the primary).

use super::{Control, CtlError, Status};

/// Carries out `fence` on `backend`.
pub(super) fn apply_fence(backend: &dyn Control) -> Result<Status, CtlError> {
    backend.fence()
}

/// Carries out `unfence` on `backend`.
pub(super) fn apply_unfence(backend: &dyn Control) -> Result<Status, CtlError> {
    backend.unfence()
}
