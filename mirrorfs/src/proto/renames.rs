//! Renames made while apart, sans-IO: for each new name, the name the
//! secondary still knows the object by.
//!
//! Owns the bookkeeping that lets a resync move a renamed file or directory
//! on the secondary instead of sending it again: `mv app.log app.log.1` or
//! `mv release release.old` while the peer is away costs one rename, not a
//! copy. Only an optimisation: the resync compares the new name in full
//! afterwards (it is recorded as a tree), so a wrong or stale entry costs
//! bytes, never correctness. Chains (`a` to `b` to `c`) and renames into or
//! out of renamed directories resolve to the oldest name.

use std::collections::{BTreeMap, BTreeSet};

use super::path::RelPath;

/// New name → the name the secondary knows the object by, and the reverse.
#[derive(Debug, Default, Clone)]
pub struct Renames {
    origin: BTreeMap<RelPath, RelPath>,
    /// Old name → the new names of the objects known by it.
    targets: BTreeMap<RelPath, BTreeSet<RelPath>>,
}

/// `p` with its prefix `old` replaced by `new` (`p` is `old` or below it).
fn rebase(p: &RelPath, old: &RelPath, new: &RelPath) -> Option<RelPath> {
    let rest = p.as_bytes().get(old.as_bytes().len()..)?;
    if new.is_root() {
        return RelPath::new(rest.strip_prefix(b"/").unwrap_or(rest).to_vec()).ok();
    }
    RelPath::new([new.as_bytes(), rest].concat()).ok()
}

/// `p` and its ancestors, nearest first.
fn self_and_ancestors(p: &RelPath) -> impl Iterator<Item = RelPath> + '_ {
    std::iter::once(p.clone()).chain(p.ancestors())
}

impl Renames {
    fn put(&mut self, to: RelPath, origin: RelPath) {
        self.targets
            .entry(origin.clone())
            .or_default()
            .insert(to.clone());
        if let Some(old) = self.origin.insert(to.clone(), origin) {
            self.forget_target(&old, &to);
        }
    }

    fn take(&mut self, to: &RelPath) -> Option<RelPath> {
        let origin = self.origin.remove(to)?;
        self.forget_target(&origin, to);
        Some(origin)
    }

    fn forget_target(&mut self, origin: &RelPath, to: &RelPath) {
        if let Some(ts) = self.targets.get_mut(origin) {
            ts.remove(to);
            if ts.is_empty() {
                self.targets.remove(origin);
            }
        }
    }

    /// The new names at or below `p`.
    fn keys_at_or_below(&self, p: &RelPath) -> Vec<RelPath> {
        let mut keys: Vec<RelPath> = self
            .origin
            .get_key_value(p)
            .map(|(k, _)| k.clone())
            .into_iter()
            .collect();
        match p.below() {
            Some((lo, hi)) => keys.extend(self.origin.range(lo..hi).map(|(k, _)| k.clone())),
            // The root: everything.
            None => keys = self.origin.keys().cloned().collect(),
        }
        keys
    }

    /// The name the secondary knows what is now at `p` by.
    pub fn origin_of(&self, p: &RelPath) -> RelPath {
        if let Some(o) = self.origin.get(p) {
            return o.clone();
        }
        p.ancestors()
            .find_map(|a| {
                let o = self.origin.get(&a)?;
                rebase(p, &a, o)
            })
            .unwrap_or_else(|| p.clone())
    }

    /// `from` was renamed to `to` (anything at `to` replaced).
    pub fn renamed(&mut self, from: &RelPath, to: &RelPath) {
        let origin = self.origin_of(from);
        // What was at `to` is gone; what was below `from` moves below `to`.
        for k in self.keys_at_or_below(to) {
            self.take(&k);
        }
        self.take(from);
        for k in self.keys_at_or_below(from) {
            let Some(v) = self.take(&k) else { continue };
            match rebase(&k, from, to) {
                Some(nk) if nk != v => self.put(nk, v),
                _ => {}
            }
        }
        if origin != *to {
            self.put(to.clone(), origin);
        }
    }

    /// The names the secondary may hold the object renamed to `p` under:
    /// its old name, and that name moved along with a renamed directory
    /// above it (whose move the resync may have made first). Empty when `p`
    /// was not renamed.
    pub fn old_names(&self, p: &RelPath) -> Vec<RelPath> {
        let Some(o) = self.origin.get(p) else {
            return Vec::new();
        };
        let mut names = vec![o.clone()];
        for o2 in o.ancestors() {
            for t2 in self.targets.get(&o2).into_iter().flatten() {
                names.extend(rebase(o, &o2, t2));
            }
        }
        names
    }

    /// The old names (of every renamed object) that `p` is, or is below
    /// (each once). Called for every path the resync finds gone, so it looks
    /// up `p`'s ancestors rather than walking every entry.
    pub fn old_names_above(&self, p: &RelPath) -> Vec<RelPath> {
        // Old names themselves.
        let mut out: Vec<RelPath> = self_and_ancestors(p)
            .filter(|a| self.targets.contains_key(a))
            .collect();
        // Old names moved along with a renamed directory `t2` above `p`
        // (known by `o2`): those of the objects whose old name is below `o2`.
        for t2 in p.ancestors() {
            let Some(o2) = self.origin.get(&t2) else {
                continue;
            };
            let Some(q) = rebase(p, &t2, o2) else {
                continue;
            };
            for a in self_and_ancestors(&q).take_while(|a| a != o2) {
                if self.targets.contains_key(&a) {
                    out.extend(rebase(&a, o2, &t2));
                }
            }
        }
        out
    }

    /// True when the visit of `p` must wait for that of another renamed
    /// object still to be visited (`pending`): one whose old name is `p`,
    /// `p`'s own old name, or below either. Its visit moves it out of there
    /// on the secondary; a visit of `p` first would overwrite it (a log
    /// rotated while apart: `log` rewritten before `log.1` is moved from
    /// it), remove it from a directory listing (a file moved out of a
    /// renamed directory), or move it along with its directory (inner
    /// renames are replayed before outer ones). Renames in a cycle wait for
    /// each other: the caller then visits one anyway (only bytes are at
    /// stake).
    pub fn waits_for(&self, p: &RelPath, pending: impl Fn(&RelPath) -> bool) -> bool {
        let waits_below = |x: &RelPath| {
            let at = self.targets.get_key_value(x).into_iter();
            let below = x.below().map(|(lo, hi)| self.targets.range(lo..hi));
            at.chain(below.into_iter().flatten())
                .any(|(_, ts)| ts.iter().any(|t| t != p && pending(t)))
        };
        waits_below(p) || self.origin.get(p).is_some_and(waits_below)
    }

    /// The resync visited `p` (the object renamed to it was moved there on
    /// the secondary, or sent again): where it came from no longer matters.
    /// Without this, objects renamed in a cycle while apart (`a` and `b`
    /// swapped through a third name) had each other as old names, and each
    /// visit, finding the other's old name made again here, queued the other
    /// again: the resync never ended.
    pub fn visited(&mut self, p: &RelPath) {
        self.take(p);
    }

    /// In sync again: nothing to remember.
    pub fn clear(&mut self) {
        self.origin.clear();
        self.targets.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_swap_through_a_third_name_is_forgotten_once_visited() {
        let mut r = Renames::default();
        r.renamed(&p("a"), &p("t"));
        r.renamed(&p("b"), &p("a"));
        r.renamed(&p("t"), &p("b"));
        assert_eq!(r.old_names(&p("a")), vec![p("b")]);
        assert_eq!(r.old_names(&p("b")), vec![p("a")]);
        r.visited(&p("a"));
        assert!(r.old_names(&p("a")).is_empty());
        assert_eq!(r.old_names(&p("b")), vec![p("a")]);
        r.visited(&p("b"));
        assert!(r.old_names(&p("b")).is_empty());
        assert!(r.old_names_above(&p("a")).is_empty());
    }

    fn p(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).expect("valid path")
    }

    #[test]
    fn chains_resolve_to_the_oldest_name_and_renaming_back_forgets() {
        let mut r = Renames::default();
        r.renamed(&p("a"), &p("b"));
        r.renamed(&p("b"), &p("c"));
        assert_eq!(r.old_names(&p("c")), vec![p("a")]);
        assert_eq!(r.old_names(&p("b")), Vec::<RelPath>::new());
        r.renamed(&p("c"), &p("a"));
        assert_eq!(
            r.old_names(&p("a")),
            Vec::<RelPath>::new(),
            "back where it was"
        );
    }

    #[test]
    fn renames_into_and_out_of_renamed_directories() {
        let mut r = Renames::default();
        r.renamed(&p("d"), &p("e"));
        assert_eq!(r.origin_of(&p("e/x")), p("d/x"));
        r.renamed(&p("e/x"), &p("y"));
        assert_eq!(r.old_names(&p("y")), vec![p("d/x"), p("e/x")]);
        r.renamed(&p("z"), &p("e/sub/z"));
        r.renamed(&p("e"), &p("f"));
        assert_eq!(r.old_names(&p("f")), vec![p("d")]);
        assert_eq!(r.old_names(&p("f/sub/z")), vec![p("z")], "moved along");
        assert_eq!(r.old_names(&p("e/sub/z")), Vec::<RelPath>::new());
    }

    #[test]
    fn a_rename_over_a_name_forgets_what_was_there() {
        let mut r = Renames::default();
        r.renamed(&p("a"), &p("t"));
        r.renamed(&p("b"), &p("t"));
        assert_eq!(r.old_names(&p("t")), vec![p("b")]);
        assert_eq!(r.old_names_above(&p("a/deep")), Vec::<RelPath>::new());
        assert_eq!(r.old_names_above(&p("b/deep")), vec![p("b")]);
        assert_eq!(r.old_names_above(&p("b")), vec![p("b")]);
        assert_eq!(r.old_names_above(&p("bb")), Vec::<RelPath>::new());
        r.clear();
        assert_eq!(r.old_names(&p("t")), Vec::<RelPath>::new());
    }

    #[test]
    fn a_file_moved_out_of_a_moved_directory_has_two_old_names() {
        let mut r = Renames::default();
        r.renamed(&p("d"), &p("e"));
        r.renamed(&p("e/f1"), &p("moved"));
        assert_eq!(r.old_names(&p("moved")), vec![p("d/f1"), p("e/f1")]);
        let mut above = r.old_names_above(&p("e/f1"));
        above.sort();
        assert_eq!(above, vec![p("e/f1")]);
        assert_eq!(r.old_names(&p("e")), vec![p("d")]);
    }

    /// The definitions, by brute force over every entry.
    fn old_names_brute(r: &Renames, p: &RelPath) -> Vec<RelPath> {
        let Some(o) = r.origin.get(p) else {
            return Vec::new();
        };
        let mut names = vec![o.clone()];
        for (t2, o2) in &r.origin {
            if t2 != p && o.ancestors().any(|a| &a == o2) {
                names.extend(rebase(o, o2, t2));
            }
        }
        names
    }

    fn at_or_below(p: &RelPath, base: &RelPath) -> bool {
        p == base || p.ancestors().any(|a| &a == base)
    }

    fn path_strategy() -> impl proptest::strategy::Strategy<Value = RelPath> {
        use proptest::prelude::*;
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..4)
            .prop_map(|parts| p(&parts.join("/")))
    }

    proptest::proptest! {
        #[test]
        fn indexed_lookups_match_the_definitions(
            renames in proptest::collection::vec((path_strategy(), path_strategy()), 0..12),
            probes in proptest::collection::vec(path_strategy(), 1..8),
        ) {
            let mut r = Renames::default();
            for (from, to) in &renames {
                if !at_or_below(to, from) {
                    r.renamed(from, to);
                }
            }
            for (t, o) in &r.origin {
                proptest::prop_assert!(r.targets.get(o).is_some_and(|ts| ts.contains(t)));
            }
            proptest::prop_assert_eq!(
                r.targets.values().map(BTreeSet::len).sum::<usize>(),
                r.origin.len()
            );
            for q in &probes {
                let mut got = r.old_names(q);
                let mut want = old_names_brute(&r, q);
                got.sort();
                want.sort();
                proptest::prop_assert_eq!(got, want);
                let mut got = r.old_names_above(q);
                let mut want: Vec<RelPath> = r
                    .origin
                    .keys()
                    .flat_map(|t| old_names_brute(&r, t))
                    .filter(|o| at_or_below(q, o))
                    .collect();
                got.sort();
                want.sort();
                // As sets: an old name shared by two new names counts once.
                got.dedup();
                want.dedup();
                proptest::prop_assert_eq!(got, want);
            }
        }
    }
}
