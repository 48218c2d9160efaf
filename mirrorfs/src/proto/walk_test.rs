//! The walk's scheduling rule, by example and by property: workers taking and
//! releasing paths in any order never hold a path together with an ancestor or
//! descendant, never take a path while an ancestor is pending, and every path
//! is handed out before the walk is idle.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

fn p(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).expect("valid path")
}

fn related(a: &RelPath, b: &RelPath) -> bool {
    a == b || a.ancestors().any(|x| &x == b) || b.ancestors().any(|x| &x == a)
}

#[test]
fn ancestors_run_from_the_parent_to_the_root() {
    let got: Vec<RelPath> = p("a/b/c").ancestors().collect();
    assert_eq!(got, vec![p("a/b"), p("a"), RelPath::root()]);
    assert_eq!(
        p("a").ancestors().collect::<Vec<_>>(),
        vec![RelPath::root()]
    );
    assert_eq!(RelPath::root().ancestors().count(), 0);
}

#[test]
fn children_wait_for_their_directory() {
    let mut w = Walk::default();
    w.restart([p("d"), p("d/x"), p("e")].into(), BTreeSet::new());
    assert_eq!(w.take(1), Some((p("d"), false)));
    // d/x waits for d; e is free.
    assert_eq!(w.take(1), Some((p("e"), false)));
    assert_eq!(w.take(1), None);
    w.release(&p("d"), 1);
    assert_eq!(w.take(1), Some((p("d/x"), false)));
    assert!(!w.is_idle());
    w.release(&p("d/x"), 1);
    w.release(&p("e"), 1);
    assert!(w.is_idle());
}

#[test]
fn the_root_waits_for_everything_and_everything_for_the_root() {
    let mut w = Walk::default();
    w.restart([p("a")].into(), BTreeSet::new());
    assert_eq!(w.take(7), Some((p("a"), false)));
    w.insert(RelPath::root());
    w.insert(p("b"));
    // The root waits for a; b waits for the pending root.
    assert_eq!(w.take(7), None);
    w.release(&p("a"), 7);
    assert_eq!(w.take(7), Some((RelPath::root(), false)));
    assert_eq!(w.take(7), None);
}

#[test]
fn a_directory_waits_for_what_is_visited_below_it() {
    let mut w = Walk::default();
    w.restart([p("a/b")].into(), BTreeSet::new());
    assert_eq!(w.take(1), Some((p("a/b"), false)));
    w.insert(p("a"));
    w.insert(p("ab"));
    // "ab" sorts after "a/b" but is no relative of it.
    assert_eq!(w.take(1), Some((p("ab"), false)));
    assert_eq!(w.take(1), None);
}

#[test]
fn full_dirs_are_reported_once_and_a_new_connection_forgets_old_workers() {
    let mut w = Walk::default();
    w.restart([p("s")].into(), [p("s")].into());
    assert_eq!(w.take(1), Some((p("s"), true)));
    w.restart([p("s")].into(), BTreeSet::new());
    // The old worker's release does not free the new connection's visit.
    assert_eq!(w.take(2), Some((p("s"), false)));
    w.release(&p("s"), 1);
    assert!(!w.is_idle());
    w.release(&p("s"), 2);
    assert!(w.is_idle());
}

#[test]
fn everything_in_and_below_a_tree_is_compared_in_full() {
    let mut w = Walk::default();
    w.restart(BTreeSet::new(), BTreeSet::new());
    w.insert_tree(p("a"));
    assert_eq!(w.take(1), Some((p("a"), true)));
    w.release(&p("a"), 1);
    w.extend([p("a/sub"), p("ab")]);
    assert_eq!(w.take(1), Some((p("a/sub"), true)));
    assert_eq!(
        w.take(1),
        Some((p("ab"), false)),
        "a sibling is no part of it"
    );
    w.release(&p("a/sub"), 1);
    w.insert(p("a/sub/deep"));
    assert_eq!(w.take(1), Some((p("a/sub/deep"), true)));
    w.restart([p("a/x")].into(), BTreeSet::new());
    assert_eq!(
        w.take(2),
        Some((p("a/x"), false)),
        "a new walk forgets the trees"
    );
}

#[test]
fn paths_not_ready_are_passed_over_not_lost() {
    let mut w = Walk::default();
    w.restart([p("a"), p("b")].into(), BTreeSet::new());
    assert_eq!(w.take_ready(1, |x| x != &p("a")), Some((p("b"), false)));
    assert_eq!(w.take_ready(1, |x| x != &p("a")), None);
    assert_eq!(w.take(1), Some((p("a"), false)));
}

#[test]
fn pending_near_sees_ancestors_and_descendants_but_not_siblings() {
    let mut w = Walk::default();
    w.restart([p("a/b")].into(), BTreeSet::new());
    assert!(w.pending_near(&p("a/b")));
    assert!(w.pending_near(&p("a/b/c")));
    assert!(w.pending_near(&p("a")));
    assert!(!w.pending_near(&p("a/c")));
    assert!(!w.pending_near(&p("ab")));
    assert!(!w.pending_near(&RelPath::root()));
}

#[test]
fn in_flight_near_sees_what_workers_visit_around_a_path() {
    let mut w = Walk::default();
    w.restart([p("d/b")].into(), BTreeSet::new());
    assert!(!w.in_flight_near(&p("d/b")), "pending is not in flight");
    assert_eq!(w.take(1), Some((p("d/b"), false)));
    assert!(w.in_flight_near(&p("d/b")));
    assert!(w.in_flight_near(&p("d")), "a rename of d moves d/b");
    assert!(w.in_flight_near(&p("d/b/x")));
    assert!(
        !w.in_flight_near(&RelPath::root()),
        "the root is never renamed"
    );
    assert!(!w.in_flight_near(&p("d/z")));
    assert!(!w.pending_near(&p("d/b")), "in flight is not pending");
}

/// Paths over a small alphabet so that ancestors and siblings collide often.
fn path_strategy() -> impl Strategy<Value = RelPath> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "ab"]), 0..4)
        .prop_map(|parts| p(&parts.join("/")))
}

proptest! {
    #[test]
    fn workers_never_hold_relatives_and_every_path_is_visited(
        start in prop::collection::btree_set(path_strategy(), 1..20),
        steps in prop::collection::vec((0..4u8, any::<prop::sample::Index>(), path_strategy()), 1..200),
    ) {
        let mut w = Walk::default();
        w.restart(start.clone(), BTreeSet::new());
        let mut inserted: BTreeSet<RelPath> = start;
        let mut visited = BTreeSet::new();
        let mut held: Vec<RelPath> = Vec::new();
        for (action, index, extra) in steps {
            match action {
                0 | 1 => {
                    if let Some((got, _)) = w.take(1) {
                        for h in &held {
                            prop_assert!(!related(h, &got), "{got:?} handed out while {h:?} is held");
                        }
                        visited.insert(got.clone());
                        held.push(got);
                    }
                }
                2 if !held.is_empty() => {
                    let done = held.swap_remove(index.index(held.len()));
                    w.release(&done, 1);
                }
                _ => {
                    inserted.insert(extra.clone());
                    w.insert(extra);
                }
            }
            prop_assert_eq!(w.left() >= held.len(), true);
        }
        // Drain: release everything, then keep taking one at a time.
        for h in held.drain(..) {
            w.release(&h, 1);
        }
        let mut rounds = 0;
        while let Some((got, _)) = w.take(1) {
            visited.insert(got.clone());
            w.release(&got, 1);
            rounds += 1;
            prop_assert!(rounds < 1000, "the walk does not end");
        }
        prop_assert!(w.is_idle(), "nothing in flight, yet paths are left: {:?}", w);
        prop_assert_eq!(visited, inserted);
    }
}
