//! The mount's side of the control socket: [`Control`] for the primary's
//! [`Mirror`]. The status comes from [`Mirror::status`]; the orders are the
//! hold core's to carry out (issue 7) and are refused until it is there.

use std::time::Duration;

use super::{Control, CtlError, Status};
use crate::mirror::Mirror;

/// The answer to an order this mount cannot carry out yet.
fn not_yet(order: &str) -> CtlError {
    CtlError::Refused(format!(
        "{order} is not implemented yet: this mirrorfs takes no orders on peer loss; use --on-peer-loss=alone or fail"
    ))
}

impl Control for Mirror {
    fn status(&self) -> Status {
        // The inherent method (inherent items come before trait ones).
        Self::status(self)
    }

    fn wait_change(&self, seen: u64, timeout: Duration) -> u64 {
        Self::wait_change(self, seen, timeout)
    }

    fn alone(&self, _seconds: f64) -> Result<Status, CtlError> {
        Err(not_yet("alone"))
    }

    fn fence(&self) -> Result<Status, CtlError> {
        Err(not_yet("fence"))
    }

    fn unfence(&self) -> Result<Status, CtlError> {
        Err(not_yet("unfence"))
    }
}
