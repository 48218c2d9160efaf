//! The dirty set, sans-IO: which paths may differ between this side and its
//! peer, and for files changed only by data writes, which blocks.
//!
//! Owns the bookkeeping behind the durable dirty log (`meta::DirtyLog` writes
//! the same records to disk): a path is dirty as a whole (created, renamed,
//! chmod... anything), or only in some [`DIRTY_BLOCK`]-sized blocks when data
//! writes are all that changed it, or as a *tree* (the path and everything
//! below it are compared in full, as after a directory was swapped with
//! another). What is new is computed first ([`DirtySet::marks_for`]) so that
//! it can be made durable before it counts ([`DirtySet::apply`]). No I/O.

use std::collections::{BTreeMap, BTreeSet};

use super::path::RelPath;

/// Granularity of the dirty blocks of a file.
pub const DIRTY_BLOCK: u64 = 1 << 20;

/// New records for the dirty set, to be made durable (in this order: trees,
/// whole paths, then the one range) before they are applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marks {
    /// Paths to compare down to every file.
    pub trees: Vec<RelPath>,
    /// Paths dirty as a whole.
    pub whole: Vec<RelPath>,
    /// A path whose bytes `[offset, offset + len)` changed (and nothing else).
    pub range: Option<(RelPath, u64, u64)>,
}

impl Marks {
    /// True when nothing is to be recorded.
    pub fn is_empty(&self) -> bool {
        self.trees.is_empty() && self.whole.is_empty() && self.range.is_none()
    }

    /// Adds `other`'s records.
    pub fn extend(&mut self, other: Self) {
        self.trees.extend(other.trees);
        self.whole.extend(other.whole);
        if other.range.is_some() {
            self.range = other.range;
        }
    }
}

/// The paths that may differ from the peer.
#[derive(Debug, Clone, Default)]
pub struct DirtySet {
    /// Every dirty path, whole or partial.
    set: BTreeSet<RelPath>,
    /// The paths dirty only in these blocks.
    partial: BTreeMap<RelPath, BTreeSet<u64>>,
    /// The paths whose whole subtree is to be compared.
    trees: BTreeSet<RelPath>,
}

impl DirtySet {
    /// A set holding what a durable log held.
    pub fn from_parts<'a>(
        whole_or_partial: impl IntoIterator<Item = &'a RelPath>,
        blocks: impl Fn(&RelPath) -> Option<BTreeSet<u64>>,
        trees: impl IntoIterator<Item = &'a RelPath>,
    ) -> Self {
        let mut s = Self::default();
        for p in whole_or_partial {
            if let Some(b) = blocks(p) {
                s.partial.insert(p.clone(), b);
            }
            s.set.insert(p.clone());
        }
        for t in trees {
            s.trees.insert(t.clone());
            s.partial.remove(t);
            s.set.insert(t.clone());
        }
        s
    }

    /// True when `p` is dirty as a whole.
    pub fn whole(&self, p: &RelPath) -> bool {
        self.set.contains(p) && !self.partial.contains_key(p)
    }

    /// The records not yet held among: `trees` as trees, `whole` as whole
    /// paths, and `range` as the blocks of one path.
    pub fn marks_for(
        &self,
        trees: &[RelPath],
        whole: &[RelPath],
        range: Option<(&RelPath, u64, u64)>,
    ) -> Marks {
        let mut m = Marks::default();
        for t in trees {
            if !self.trees.contains(t) && !m.trees.contains(t) {
                m.trees.push(t.clone());
            }
        }
        for p in whole {
            if !self.whole(p) && !m.trees.contains(p) && !m.whole.contains(p) {
                m.whole.push(p.clone());
            }
        }
        if let Some((p, offset, len)) = range {
            if !self.new_blocks(p, offset, len).is_empty() && !m.whole.contains(p) {
                m.range = Some((p.clone(), offset, len));
            }
        }
        m
    }

    /// The blocks of `[offset, offset + len)` of `p` not yet recorded (none
    /// when `p` is dirty as a whole).
    fn new_blocks(&self, p: &RelPath, offset: u64, len: u64) -> Vec<u64> {
        if self.whole(p) || len == 0 {
            return Vec::new();
        }
        let first = offset / DIRTY_BLOCK;
        let last = offset.saturating_add(len - 1) / DIRTY_BLOCK;
        let known = self.partial.get(p);
        (first..=last)
            .filter(|b| !known.is_some_and(|k| k.contains(b)))
            .collect()
    }

    /// Holds `marks` (now durable).
    pub fn apply(&mut self, marks: &Marks) {
        for t in &marks.trees {
            self.trees.insert(t.clone());
            self.set_whole(t.clone());
        }
        for p in &marks.whole {
            self.set_whole(p.clone());
        }
        if let Some((p, offset, len)) = &marks.range {
            for b in self.new_blocks(p, *offset, *len) {
                self.partial.entry(p.clone()).or_default().insert(b);
                self.set.insert(p.clone());
            }
        }
    }

    fn set_whole(&mut self, p: RelPath) {
        self.partial.remove(&p);
        self.set.insert(p);
    }

    /// The dirty blocks of `p` when only data blocks changed; `None` when the
    /// whole path is dirty (or it is not dirty).
    pub fn blocks(&self, p: &RelPath) -> Option<&BTreeSet<u64>> {
        self.partial.get(p)
    }

    /// True when `p` is recorded.
    pub fn contains(&self, p: &RelPath) -> bool {
        self.set.contains(p)
    }

    /// The recorded paths, parents before children.
    pub fn paths(&self) -> &BTreeSet<RelPath> {
        &self.set
    }

    /// The paths whose whole subtree is to be compared.
    pub fn trees(&self) -> &BTreeSet<RelPath> {
        &self.trees
    }

    /// Number of recorded paths.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Forgets everything (both sides hold the same data again).
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;

    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn only_new_records_are_marked() {
        let mut d = DirtySet::default();
        let m = d.marks_for(&[], &[p("a"), p("a")], Some((&p("big"), 10, 5)));
        assert_eq!(
            m,
            Marks {
                trees: vec![],
                whole: vec![p("a")],
                range: Some((p("big"), 10, 5)),
            }
        );
        d.apply(&m);
        assert!(d
            .marks_for(&[], &[p("a")], Some((&p("big"), 20, 5)))
            .is_empty());
        let m = d.marks_for(&[], &[], Some((&p("big"), 3 * DIRTY_BLOCK - 1, 2)));
        d.apply(&m);
        assert_eq!(d.blocks(&p("big")), Some(&[0, 2, 3].into()));
        let m = d.marks_for(&[p("a")], &[p("big")], None);
        assert_eq!(m.trees, vec![p("a")]);
        assert_eq!(m.whole, vec![p("big")]);
        d.apply(&m);
        assert_eq!(d.blocks(&p("big")), None, "whole replaces blocks");
        assert!(d.marks_for(&[], &[], Some((&p("big"), 0, 1))).is_empty());
        assert_eq!(d.trees(), &[p("a")].into());
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn a_range_at_the_end_of_the_offsets_does_not_overflow() {
        let d = DirtySet::default();
        let m = d.marks_for(&[], &[], Some((&p("f"), u64::MAX - 1, 10)));
        assert!(m.range.is_some());
    }
}
