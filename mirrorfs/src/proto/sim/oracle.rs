//! The oracle: every content each name has had on the primary, in order, and
//! the newest version of each name the application saw acknowledged.
//!
//! A name's versions only grow; the secondary holds an acknowledged change
//! when its content for the name is that version's or a later one's.

use std::collections::BTreeMap;

use crate::proto::path::RelPath;

/// What a name holds: a content token, or nothing (absent).
pub(super) type Content = Option<u64>;

/// Versions per name, and what was acknowledged.
#[derive(Debug, Default)]
pub(super) struct Oracle {
    versions: BTreeMap<RelPath, Vec<Content>>,
    acked: BTreeMap<RelPath, usize>,
}

impl Oracle {
    /// Names that start absent.
    pub(super) fn new(names: &[RelPath]) -> Self {
        Self {
            versions: names.iter().map(|n| (n.clone(), vec![None])).collect(),
            acked: BTreeMap::new(),
        }
    }

    /// The primary changed `name` to `content` locally: its new version.
    pub(super) fn changed(&mut self, name: &RelPath, content: Content) -> usize {
        let v = self
            .versions
            .entry(name.clone())
            .or_insert_with(|| vec![None]);
        v.push(content);
        v.len() - 1
    }

    /// The application saw these versions acknowledged.
    pub(super) fn acked(&mut self, effects: &[(RelPath, usize)]) {
        for (n, v) in effects {
            let a = self.acked.entry(n.clone()).or_default();
            *a = (*a).max(*v);
        }
    }

    /// True when `content` is `name`'s acknowledged version or a later one.
    pub(super) fn holds(&self, name: &RelPath, content: Content) -> bool {
        let from = self.acked.get(name).copied().unwrap_or(0);
        self.versions
            .get(name)
            .is_some_and(|v| v[from..].contains(&content))
    }

    /// True when `content` is `version` of `name` or a later one.
    pub(super) fn at_least(&self, name: &RelPath, version: usize, content: Content) -> bool {
        self.versions
            .get(name)
            .is_some_and(|v| v.get(version..).is_some_and(|v| v.contains(&content)))
    }

    /// Every name with a version.
    pub(super) fn names(&self) -> impl Iterator<Item = &RelPath> {
        self.versions.keys()
    }

    /// The acknowledged version of `name` (0: none).
    pub(super) fn acked_version(&self, name: &RelPath) -> usize {
        self.acked.get(name).copied().unwrap_or(0)
    }
}
