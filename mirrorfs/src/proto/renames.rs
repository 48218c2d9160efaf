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

use std::collections::BTreeMap;

use super::path::RelPath;

/// New name → the name the secondary knows the object by.
#[derive(Debug, Default, Clone)]
pub struct Renames {
    origin: BTreeMap<RelPath, RelPath>,
}

/// `p` with its prefix `old` replaced by `new` (`p` is `old` or below it).
fn rebase(p: &RelPath, old: &RelPath, new: &RelPath) -> Option<RelPath> {
    let rest = p.as_bytes().get(old.as_bytes().len()..)?;
    if new.is_root() {
        return RelPath::new(rest.strip_prefix(b"/").unwrap_or(rest).to_vec()).ok();
    }
    RelPath::new([new.as_bytes(), rest].concat()).ok()
}

/// True when `p` is `base` or below it.
fn at_or_below(p: &RelPath, base: &RelPath) -> bool {
    p == base || p.ancestors().any(|a| &a == base)
}

impl Renames {
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
        self.origin.retain(|k, _| !at_or_below(k, to));
        self.origin.remove(from);
        let moved: Vec<(RelPath, RelPath)> = self
            .origin
            .iter()
            .filter(|(k, _)| at_or_below(k, from))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in moved {
            self.origin.remove(&k);
            match rebase(&k, from, to) {
                Some(nk) if nk != v => {
                    self.origin.insert(nk, v);
                }
                _ => {}
            }
        }
        if origin != *to {
            self.origin.insert(to.clone(), origin);
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
        for (t2, o2) in &self.origin {
            if t2 != p && o.ancestors().any(|a| &a == o2) {
                names.extend(rebase(o, o2, t2));
            }
        }
        names
    }

    /// The old names (of every renamed object) that `p` is, or is below.
    pub fn old_names_above(&self, p: &RelPath) -> Vec<RelPath> {
        self.origin
            .keys()
            .flat_map(|t| self.old_names(t))
            .filter(|o| at_or_below(p, o))
            .collect()
    }

    /// In sync again: nothing to remember.
    pub fn clear(&mut self) {
        self.origin.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
