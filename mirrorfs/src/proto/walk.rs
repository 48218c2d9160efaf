//! The resync walk, sans-IO: which paths a resync still has to visit, which
//! ones workers are visiting now, and which path a free worker may take next.
//!
//! Owns the scheduling rule that lets several workers visit paths at once
//! without racing each other on the secondary: a path is never handed out
//! while one of its ancestors is still to be visited or being visited (the
//! secondary may not hold the directory yet), nor while the path itself or
//! anything below it is being visited (its outcome may remove or replace that
//! subtree). Must not lose a path: one handed out stays accounted for until
//! the worker releases it, and [`Walk::is_idle`] is true only when nothing is
//! pending or in flight.

use std::collections::{BTreeMap, BTreeSet};

use super::path::RelPath;

/// Pending paths looked at per [`Walk::take`]. The first ones are normally
/// free; a long blocked prefix only costs parallelism, never progress: with
/// nothing in flight the first pending path is always free (its ancestors,
/// which sort before it, are not pending).
const SCAN: usize = 256;

/// The paths of one resync.
#[derive(Debug, Default)]
pub struct Walk {
    /// Still to visit.
    pending: BTreeSet<RelPath>,
    /// Visited now, with the connection epoch they were handed out under.
    in_flight: BTreeMap<RelPath, u64>,
    /// Pending directories whose children are all compared (suspects).
    full_dirs: BTreeSet<RelPath>,
    /// Paths below which everything is compared (swapped directories).
    full_trees: BTreeSet<RelPath>,
}

/// True when `p` or an ancestor of it is in a set (`has`), or something
/// strictly below it (`has_in`, given the bounds of that range; never for the
/// root, which cannot be renamed or removed).
fn near(
    p: &RelPath,
    has: impl Fn(&RelPath) -> bool,
    has_in: impl Fn(RelPath, RelPath) -> bool,
) -> bool {
    has(p) || p.ancestors().any(|a| has(&a)) || p.below().is_some_and(|(lo, hi)| has_in(lo, hi))
}

impl Walk {
    /// A new resync over `pending`, comparing every child of `full_dirs`.
    /// Paths of an earlier walk still in flight are forgotten: their workers
    /// use a connection that is gone.
    pub fn restart(&mut self, pending: BTreeSet<RelPath>, full_dirs: BTreeSet<RelPath>) {
        self.pending = pending;
        self.full_dirs = full_dirs;
        self.full_trees.clear();
        self.in_flight.clear();
    }

    /// Visits `p` and compares everything below it.
    pub fn insert_tree(&mut self, p: RelPath) {
        self.full_trees.insert(p.clone());
        self.pending.insert(p);
    }

    /// Forgets what workers of an old connection are visiting.
    pub fn forget_in_flight(&mut self) {
        self.in_flight.clear();
    }

    /// Adds a path to visit.
    pub fn insert(&mut self, p: RelPath) {
        self.pending.insert(p);
    }

    /// Adds paths to visit.
    pub fn extend(&mut self, paths: impl IntoIterator<Item = RelPath>) {
        self.pending.extend(paths);
    }

    /// Nothing left to hand out (workers may still be busy).
    pub fn nothing_pending(&self) -> bool {
        self.pending.is_empty()
    }

    /// Nothing left to hand out and no worker busy: the walk is over.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.in_flight.is_empty()
    }

    /// A worker is visiting something.
    pub fn busy(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Paths left: pending and in flight.
    pub fn left(&self) -> usize {
        self.pending.len() + self.in_flight.len()
    }

    /// True when `p`, one of its ancestors or (unless `p` is the root) one of
    /// its descendants is still to be visited: a change there is carried by
    /// the walk.
    pub fn pending_near(&self, p: &RelPath) -> bool {
        near(
            p,
            |x| self.pending.contains(x),
            |lo, hi| self.pending.range(lo..hi).next().is_some(),
        )
    }

    /// True when `p`, one of its ancestors or (unless `p` is the root) one of
    /// its descendants is being visited now. A worker that finds its path
    /// renamed or removed under it gives up on that path, so a rename of it
    /// (or above it) must put the new name in the walk: the secondary holds a
    /// half-visited copy there.
    pub fn in_flight_near(&self, p: &RelPath) -> bool {
        near(
            p,
            |x| self.in_flight.contains_key(x),
            |lo, hi| self.in_flight.range(lo..hi).next().is_some(),
        )
    }

    /// True when `p` must wait (see the module doc).
    fn blocked(&self, p: &RelPath) -> bool {
        p.ancestors().any(|a| self.pending.contains(&a))
            || self.in_flight_near(p)
            || (p.is_root() && !self.in_flight.is_empty())
    }

    /// Hands out the first path a worker may visit now, under connection
    /// `epoch`, with whether all its children are to be compared (a suspect
    /// directory, or anything in or below a tree).
    pub fn take(&mut self, epoch: u64) -> Option<(RelPath, bool)> {
        self.take_ready(epoch, |_| true)
    }

    /// [`Walk::take`], among the paths `ready` accepts (a path that just
    /// failed waits out its retry pause).
    pub fn take_ready(
        &mut self,
        epoch: u64,
        ready: impl Fn(&RelPath) -> bool,
    ) -> Option<(RelPath, bool)> {
        let p = self.find_ready(ready)?;
        Some(self.take_found(p, epoch))
    }

    /// The path [`Walk::take_ready`] would hand out, without handing it out.
    pub fn find_ready(&self, ready: impl Fn(&RelPath) -> bool) -> Option<RelPath> {
        self.pending
            .iter()
            .take(SCAN)
            .find(|p| ready(p) && !self.blocked(p))
            .cloned()
    }

    /// True when `p` is still to visit or being visited.
    pub fn pending_or_in_flight(&self, p: &RelPath) -> bool {
        self.pending.contains(p) || self.in_flight.contains_key(p)
    }

    /// Hands out `p`, found by [`Walk::find_ready`], under `epoch`.
    pub fn take_found(&mut self, p: RelPath, epoch: u64) -> (RelPath, bool) {
        self.pending.remove(&p);
        self.in_flight.insert(p.clone(), epoch);
        let full = self.full_dirs.remove(&p)
            || self.full_trees.contains(&p)
            || p.ancestors().any(|a| self.full_trees.contains(&a));
        (p, full)
    }

    /// The worker given `p` under `epoch` is done with it (whatever the
    /// outcome: a failed path is [`Walk::insert`]ed again).
    pub fn release(&mut self, p: &RelPath, epoch: u64) {
        if self.in_flight.get(p) == Some(&epoch) {
            self.in_flight.remove(p);
        }
    }
}

#[cfg(test)]
#[path = "walk_test.rs"]
mod tests;
