//! The module states operators read in `mirrorfarm state`, and what a node
//! knows of a replicated directory's data (its generations and consistency),
//! as exchanged in heartbeats. No I/O.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A module's state on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ModuleState {
    /// Stopped by the operator (or never started): nothing runs.
    Stop,
    /// Started, but neither primary nor secondary: waiting for the peer to
    /// compare data, for quorum, or for the operator (`prim`/`second`).
    Wait,
    /// Primary without its peer: the application runs here, changes are
    /// recorded for the resync, under the witness's lease.
    Alone,
    /// Primary: the application runs here and every write is replicated.
    Prim,
    /// Secondary: holds the replica and takes over if the primary fails.
    Second,
}

impl fmt::Display for ModuleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stop => "STOP",
            Self::Wait => "WAIT",
            Self::Alone => "ALONE",
            Self::Prim => "PRIM",
            Self::Second => "SECOND",
        })
    }
}

/// What a node knows of one replicated directory's data (from `mirrorfs
/// state --root` or a running mirrorfs's status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootInfo {
    /// The generation history, current first (empty: never replicated).
    pub history: Vec<String>,
    /// False while a resync into this tree is unfinished (a mix of old and new).
    pub consistent: bool,
}

/// How two nodes' data compare, directory by directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataOrder {
    /// Every directory has the same current generation on both.
    Same,
    /// This node's data is newer: for every directory, the peer's current
    /// generation is in this node's history (and at least one differs).
    Newer,
    /// The peer's data is newer.
    Older,
    /// Both wrote without the other (a split brain), or directories
    /// disagree: the operator must choose.
    Diverged,
}

impl DataOrder {
    /// Compares `mine` with `theirs` (one entry per directory, same order).
    /// A side whose tree is inconsistent is older than a consistent one with
    /// the same generation.
    pub fn compare(mine: &[RootInfo], theirs: &[RootInfo]) -> Self {
        let mut newer = false;
        let mut older = false;
        for (m, t) in mine.iter().zip(theirs) {
            match (m.history.first(), t.history.first()) {
                (a, b) if a == b => match (m.consistent, t.consistent) {
                    (true, false) => newer = true,
                    (false, true) => older = true,
                    _ => {}
                },
                (_, None) => newer = true,
                (None, _) => older = true,
                (Some(_), Some(b)) if m.history.contains(b) => newer = true,
                (Some(a), Some(_)) if t.history.contains(a) => older = true,
                _ => return Self::Diverged,
            }
        }
        if mine.len() != theirs.len() {
            return Self::Diverged;
        }
        match (newer, older) {
            (false, false) => Self::Same,
            (true, false) => Self::Newer,
            (false, true) => Self::Older,
            (true, true) => Self::Diverged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(h: &[&str], consistent: bool) -> RootInfo {
        RootInfo {
            history: h.iter().map(|s| s.to_string()).collect(),
            consistent,
        }
    }

    #[test]
    fn data_order_by_generations() {
        let a = root(&["a"], true);
        let ba = root(&["b", "a"], true);
        let ca = root(&["c", "a"], true);
        let none = root(&[], true);
        let a_bad = root(&["a"], false);
        use DataOrder::*;
        for (mine, theirs, want) in [
            (vec![a.clone()], vec![a.clone()], Same),
            (vec![ba.clone()], vec![a.clone()], Newer),
            (vec![a.clone()], vec![ba.clone()], Older),
            (vec![ba.clone()], vec![ca.clone()], Diverged),
            (vec![a.clone()], vec![none.clone()], Newer),
            (vec![none.clone()], vec![none.clone()], Same),
            (vec![a.clone()], vec![a_bad.clone()], Newer),
            (vec![a_bad.clone()], vec![a.clone()], Older),
            (
                vec![ba.clone(), a.clone()],
                vec![a.clone(), ba.clone()],
                Diverged,
            ),
            (
                vec![ba.clone(), a.clone()],
                vec![a.clone(), a.clone()],
                Newer,
            ),
        ] {
            assert_eq!(
                DataOrder::compare(&mine, &theirs),
                want,
                "{mine:?} vs {theirs:?}"
            );
        }
    }
}
