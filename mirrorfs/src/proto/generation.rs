//! Data generations, sans-IO: who holds newer data, decided from histories.
//!
//! As DRBD's generation identifiers: each side keeps its current generation and
//! the ones before it. Both sides hold the same current generation while they
//! are in sync; the primary starts a new one when it goes ALONE, and the
//! secondary adopts it at the end of a resync. On reconnect the two histories
//! say whether the sides are in sync, which one is ahead (and so which way data
//! must flow), or whether both wrote since they parted (split brain), which is
//! never resolved silently. No I/O: ids are chosen by the caller.

use std::fmt;

/// One generation identifier (random, chosen when the generation starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GenerationId(pub u64);

impl fmt::Display for GenerationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// How many past generations each side remembers.
pub const HISTORY_LEN: usize = 32;

/// A side's generations, the current one first. Empty: a tree that has never
/// been part of a mirror (a new, unsynchronised secondary).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct History(Vec<GenerationId>);

impl History {
    /// A history from ids, the current one first (truncated to [`HISTORY_LEN`]).
    pub fn from_ids(mut ids: Vec<GenerationId>) -> Self {
        ids.truncate(HISTORY_LEN);
        Self(ids)
    }

    /// The ids, the current one first.
    pub fn ids(&self) -> &[GenerationId] {
        &self.0
    }

    /// The current generation, if any.
    pub fn current(&self) -> Option<GenerationId> {
        self.0.first().copied()
    }

    /// Starts generation `id` (the current one becomes history).
    pub fn advance(&mut self, id: GenerationId) {
        self.0.insert(0, id);
        self.0.truncate(HISTORY_LEN);
    }

    /// True when `id` is a past (not current) generation of this history.
    fn has_past(&self, id: GenerationId) -> bool {
        self.0.iter().skip(1).any(|g| *g == id)
    }
}

/// What two histories say about the data on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// Same current generation: nothing was written apart.
    InSync,
    /// The secondary has never been synchronised: copy everything.
    SecondaryNew,
    /// The primary wrote since they parted, the secondary did not: resync from
    /// the primary.
    PrimaryAhead,
    /// The secondary wrote since they parted, the primary did not: the data must
    /// flow the other way; this primary must not overwrite it.
    SecondaryAhead,
    /// Both wrote since they parted (or they share nothing): refuse.
    SplitBrain,
}

/// Compares the primary's history with the secondary's.
pub fn relate(primary: &History, secondary: &History) -> Relation {
    let (Some(p), Some(s)) = (primary.current(), secondary.current()) else {
        return if secondary.current().is_none() {
            Relation::SecondaryNew
        } else {
            // A primary without history over a secondary with data: treat the
            // secondary's data as the newer, never overwrite it.
            Relation::SecondaryAhead
        };
    };
    if p == s {
        Relation::InSync
    } else if primary.has_past(s) {
        Relation::PrimaryAhead
    } else if secondary.has_past(p) {
        Relation::SecondaryAhead
    } else {
        Relation::SplitBrain
    }
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;

    use super::*;

    fn h(ids: &[u64]) -> History {
        History::from_ids(ids.iter().map(|i| GenerationId(*i)).collect())
    }

    /// Data-driven: (primary, secondary, expected).
    #[test]
    fn relations() {
        let cases: &[(&[u64], &[u64], Relation)] = &[
            (&[1], &[1], Relation::InSync),
            (&[2, 1], &[1], Relation::PrimaryAhead),
            (&[3, 2, 1], &[1], Relation::PrimaryAhead),
            (&[1], &[2, 1], Relation::SecondaryAhead),
            (&[2, 1], &[3, 1], Relation::SplitBrain),
            (&[5], &[6], Relation::SplitBrain),
            (&[1], &[], Relation::SecondaryNew),
            (&[], &[], Relation::SecondaryNew),
            (&[], &[1], Relation::SecondaryAhead),
        ];
        for (p, s, want) in cases {
            assert_eq!(relate(&h(p), &h(s)), *want, "primary {p:?} secondary {s:?}");
        }
    }

    #[test]
    fn advance_keeps_a_bounded_history() {
        let mut x = h(&[1]);
        for i in 2..100 {
            x.advance(GenerationId(i));
        }
        assert_eq!(x.ids().len(), HISTORY_LEN);
        assert_eq!(x.current(), Some(GenerationId(99)));
        assert_eq!(relate(&x, &h(&[80])), Relation::PrimaryAhead);
        // Older than the remembered history: no common ancestor any more.
        assert_eq!(relate(&x, &h(&[2])), Relation::SplitBrain);
    }
}
