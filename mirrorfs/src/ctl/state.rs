//! `mirrorfs state --root DIR`: a tree's generation history and consistency,
//! read from its metadata without a mount and without changing anything (also
//! while a serve or mount runs on it), so that a controller can compare both
//! sides before it promotes one. [`RootState`] is what `--json` prints.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::VERSION;
use crate::meta;

/// A tree's state, as `mirrorfs state --root DIR --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootState {
    /// The control protocol version ([`VERSION`]).
    pub version: u32,
    /// The tree (absolute, as resolved).
    pub root: String,
    /// `ROOT/.mirrorfs` exists: the tree has been served or mounted.
    pub metadata: bool,
    /// The current generation, 16 hex digits; null: never part of a mirror.
    pub generation: Option<String>,
    /// The generation history, current first.
    pub history: Vec<String>,
    /// False while a resync into this tree has begun and not finished: its
    /// data is a mix of old and new, and it must not become a primary.
    pub consistent: bool,
    /// When that resync began, seconds since the Unix epoch (null when
    /// consistent).
    pub inconsistent_since: Option<u64>,
    /// The primary that resync came from (null when consistent).
    pub inconsistent_from: Option<String>,
}

impl RootState {
    /// Reads the state of the tree at `root` (see [`meta::inspect`]).
    pub fn read(root: &Path) -> io::Result<Self> {
        let m = meta::inspect(root)?;
        let root = root.canonicalize().unwrap_or_else(|_| root.to_owned());
        Ok(Self {
            version: VERSION,
            root: root.display().to_string(),
            metadata: m.meta_dir,
            generation: m.history.current().map(|g| g.to_string()),
            history: m.history.ids().iter().map(|g| g.to_string()).collect(),
            consistent: m.inconsistent.is_none(),
            inconsistent_since: m.inconsistent.as_ref().map(|i| i.since_unix),
            inconsistent_from: m.inconsistent.map(|i| i.from),
        })
    }

    /// The text `mirrorfs state --root DIR` prints.
    pub fn render_text(&self) -> String {
        let mut out = format!("root:        {}\n", self.root);
        if !self.metadata {
            out.push_str("metadata:    none (never served or mounted)\n");
        }
        out.push_str(&format!(
            "generation:  {}\n",
            self.generation.as_deref().unwrap_or("none")
        ));
        if self.history.len() > 1 {
            out.push_str(&format!("history:     {}\n", self.history[1..].join(" ")));
        }
        if self.consistent {
            out.push_str("consistent:  yes\n");
        } else {
            out.push_str(&format!(
                "consistent:  NO: inconsistent since {} (a resync from {} began and did not finish: the data is a mix of old and new)\n",
                self.inconsistent_since
                    .map_or("an unknown time".into(), utc),
                self.inconsistent_from.as_deref().unwrap_or("the primary")
            ));
        }
        out
    }
}

/// `secs` since the Unix epoch as `YYYY-MM-DD hh:mm:ss UTC`.
pub fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_764_924_122), "2025-12-05 08:42:02 UTC");
    }
}
