//! The results table: one row per figure, a column per target, each target's
//! ratio to local, and the goal from issue 2 for mirrorfs. Printed aligned on
//! the terminal and written as Markdown.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What a run is measured on.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Target {
    /// A plain directory on /var/tmp: the baseline.
    Local,
    /// A bindfs mount of a directory on /var/tmp: the cost of FUSE alone.
    Bindfs,
    /// The mirrorfs mount, replicating to `mirrorfs serve` in the other namespace.
    Mirrorfs,
}

impl Target {
    pub(crate) const ALL: [Self; 3] = [Self::Local, Self::Bindfs, Self::Mirrorfs];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Bindfs => "bindfs",
            Self::Mirrorfs => "mirrorfs",
        }
    }
}

/// The measurements of one target, by row key, one per round.
pub(crate) type Samples = BTreeMap<&'static str, Vec<f64>>;

/// A goal for the mirrorfs column.
#[derive(Clone, Copy)]
pub(crate) enum Goal {
    /// mirrorfs / local at least this.
    RatioAtLeast(f64),
    /// mirrorfs / local at most this.
    RatioAtMost(f64),
    /// The figure itself at least this.
    AtLeast(f64),
}

impl Goal {
    fn text(self) -> String {
        match self {
            Self::RatioAtLeast(r) => format!(">= {r}x"),
            Self::RatioAtMost(r) => format!("<= {r}x"),
            Self::AtLeast(v) => format!(">= {v}"),
        }
    }

    /// None when it cannot be told (no local figure to compare with).
    fn met(self, value: f64, ratio: Option<f64>) -> Option<bool> {
        match (self, ratio) {
            (Self::RatioAtLeast(r), Some(x)) => Some(x >= r),
            (Self::RatioAtMost(r), Some(x)) => Some(x <= r),
            (Self::AtLeast(v), _) => Some(value >= v),
            _ => None,
        }
    }
}

/// One line of the table.
pub(crate) struct Row {
    pub(crate) key: &'static str,
    pub(crate) label: String,
    pub(crate) unit: &'static str,
    /// Whether a ratio to local means anything for this row.
    pub(crate) ratio: bool,
    pub(crate) goal: Option<Goal>,
}

/// Everything measured in a run.
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) samples: BTreeMap<Target, Samples>,
    /// Skipped targets and workloads, cut runs, warnings.
    pub(crate) notes: Vec<String>,
}

const HEADER: [&str; 9] = [
    "workload", "unit", "local", "bindfs", "vs local", "mirrorfs", "vs local", "goal", "met",
];

impl Report {
    /// The figure: the median of the rounds.
    fn value(&self, t: Target, key: &str) -> Option<f64> {
        let mut v = self.samples.get(&t)?.get(key)?.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        Some(if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        })
    }

    fn ratio(&self, t: Target, row: &Row) -> Option<f64> {
        let (v, l) = (self.value(t, row.key)?, self.value(Target::Local, row.key)?);
        (row.ratio && l > 0.0).then(|| v / l)
    }

    /// Cell texts; `md` writes indented labels so that Markdown keeps the indent.
    fn cells(&self, md: bool) -> Vec<[String; 9]> {
        let fig = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), format_figure);
        let rat = |r: Option<f64>, row: &Row| match r {
            Some(r) if r < 0.1 => format!("{r:.3}x"),
            Some(r) => format!("{r:.2}x"),
            None if row.ratio => "n/a".into(),
            None => String::new(),
        };
        self.rows
            .iter()
            .map(|row| {
                let m = self.value(Target::Mirrorfs, row.key);
                let mr = self.ratio(Target::Mirrorfs, row);
                let (goal, met) = match (row.goal, m) {
                    (Some(g), Some(v)) => {
                        let met = match g.met(v, mr) {
                            Some(true) => "yes",
                            Some(false) => "NO",
                            None => "",
                        };
                        (g.text(), met.to_string())
                    }
                    (Some(g), None) => (g.text(), String::new()),
                    (None, _) => (String::new(), String::new()),
                };
                let label = match row.label.strip_prefix("  ") {
                    Some(sub) if md => format!("&nbsp;&nbsp;{sub}"),
                    _ => row.label.clone(),
                };
                [
                    label,
                    row.unit.to_string(),
                    fig(self.value(Target::Local, row.key)),
                    fig(self.value(Target::Bindfs, row.key)),
                    rat(self.ratio(Target::Bindfs, row), row),
                    fig(m),
                    rat(mr, row),
                    goal,
                    met,
                ]
            })
            .collect()
    }

    /// The table aligned for a terminal: text columns left, figures right.
    pub(crate) fn text(&self) -> String {
        let cells = self.cells(false);
        let mut width = HEADER.map(|h| h.chars().count());
        for r in &cells {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |r: &[String]| {
            let mut s = String::new();
            for (i, (c, w)) in r.iter().zip(width).enumerate() {
                let pad = " ".repeat(w - c.chars().count());
                // Figures (columns 2..7) right-aligned, text left.
                if !(2..7).contains(&i) {
                    let _ = write!(s, "{c}{pad}  ");
                } else {
                    let _ = write!(s, "{pad}{c}  ");
                }
            }
            s.trim_end().to_string() + "\n"
        };
        let mut out = line(&HEADER.map(String::from));
        out += &line(&width.map(|w| "-".repeat(w)));
        for r in &cells {
            out += &line(r);
        }
        out
    }

    /// The table as Markdown.
    pub(crate) fn markdown(&self) -> String {
        let mut out = format!("| {} |\n", HEADER.join(" | "));
        out += "|:--|:--|--:|--:|--:|--:|--:|:--|:--|\n";
        for r in self.cells(true) {
            out += &format!("| {} |\n", r.join(" | "));
        }
        out
    }
}

impl Report {
    /// Every round's figure, per row and target, so the spread is visible.
    pub(crate) fn samples_markdown(&self) -> String {
        let targets: Vec<Target> = self.samples.keys().copied().collect();
        let mut out =
            String::from("Every round (the table shows the median):\n\n| workload | unit |");
        for t in &targets {
            let _ = write!(out, " {} |", t.name());
        }
        out += "\n|:--|:--|";
        out += &"--:|".repeat(targets.len());
        out += "\n";
        for row in &self.rows {
            let label = match row.label.strip_prefix("  ") {
                Some(sub) => format!("&nbsp;&nbsp;{sub}"),
                None => row.label.clone(),
            };
            let _ = write!(out, "| {label} | {} |", row.unit);
            for t in &targets {
                let v = self.samples[t]
                    .get(row.key)
                    .map_or_else(Vec::new, |v| v.iter().map(|x| format_figure(*x)).collect());
                let _ = write!(
                    out,
                    " {} |",
                    if v.is_empty() {
                        "n/a".into()
                    } else {
                        v.join(", ")
                    }
                );
            }
            out += "\n";
        }
        out
    }
}

/// Figures with a sensible number of digits for their size.
fn format_figure(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
