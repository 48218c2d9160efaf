//! The oracle: every write the application saw acknowledged, and where.

use std::collections::BTreeMap;

/// What the application saw acknowledged.
#[derive(Debug, Default)]
pub(crate) struct Oracle {
    /// Write id → the node that acknowledged it.
    pub(crate) acked: BTreeMap<u64, usize>,
}

impl Oracle {
    /// Write `w` was acknowledged by node `node`.
    pub(crate) fn acked(&mut self, w: u64, node: usize) {
        self.acked.insert(w, node);
    }
}
