//! Generation histories only grow: a saved history starts with a new id and
//! keeps the one that was current before.

use super::Violation;
use crate::proto::generation::History;

pub(in crate::proto::sim) fn generations_only_grow(
    old: &History,
    new: &History,
) -> Result<(), Violation> {
    let fine = match old.current() {
        None => new.current().is_some(),
        Some(cur) => new.current() != Some(cur) && new.ids().get(1) == Some(&cur),
    };
    if fine {
        return Ok(());
    }
    Err(Violation::HistoryRewritten(format!("{old:?} -> {new:?}")))
}
