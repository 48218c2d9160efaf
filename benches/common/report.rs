//! What the benchmarks' reports are made of: a table printed aligned on the
//! terminal and written as Markdown, goals with their met/NO verdict,
//! medians, and the facts about the machine a report starts with. What the
//! rows are and how figures are written is each bench's own.

use std::fmt::Write as _;
use std::fs;
use std::process::Command;
use std::time::SystemTime;

/// A table: a header, rows of cells, and section lines between them.
pub(crate) struct Table {
    head: Vec<String>,
    /// Per column: figures are aligned right, text left.
    right: Vec<bool>,
    lines: Vec<Line>,
}

enum Line {
    Cells(Vec<String>),
    /// A line of its own across the table.
    Section(String),
}

impl Table {
    /// A table with columns `head`; `right(i)` tells whether column `i` holds
    /// figures. The first column holds the labels: leading spaces indent them.
    pub(crate) fn new(head: Vec<String>, right: impl Fn(usize) -> bool) -> Self {
        Self {
            right: (0..head.len()).map(right).collect(),
            head,
            lines: Vec::new(),
        }
    }

    /// Adds a row, one cell per column.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.head.len());
        self.lines.push(Line::Cells(cells));
    }

    /// Adds a section line.
    pub(crate) fn section(&mut self, title: String) {
        self.lines.push(Line::Section(title));
    }

    /// The table aligned for a terminal.
    pub(crate) fn text(&self) -> String {
        let mut width: Vec<usize> = self.head.iter().map(|h| h.chars().count()).collect();
        for l in &self.lines {
            if let Line::Cells(r) = l {
                for (w, c) in width.iter_mut().zip(r) {
                    *w = (*w).max(c.chars().count());
                }
            }
        }
        let line = |r: &[String]| {
            let mut s = String::new();
            for ((c, w), right) in r.iter().zip(&width).zip(&self.right) {
                let pad = " ".repeat(w - c.chars().count());
                if *right {
                    let _ = write!(s, "{pad}{c}  ");
                } else {
                    let _ = write!(s, "{c}{pad}  ");
                }
            }
            s.trim_end().to_string() + "\n"
        };
        let mut out = line(&self.head);
        out += &line(&width.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
        for l in &self.lines {
            match l {
                Line::Cells(r) => out += &line(r),
                Line::Section(s) => out += &format!("{s}\n"),
            }
        }
        out
    }

    /// The table as Markdown; a section is a bold row.
    pub(crate) fn markdown(&self) -> String {
        let mut out = format!("| {} |\n|", self.head.join(" | "));
        for right in &self.right {
            out += if *right { "--:|" } else { ":--|" };
        }
        out += "\n";
        for l in &self.lines {
            match l {
                Line::Cells(r) => {
                    // Markdown drops leading spaces: keep the indent.
                    let rest = r[0].trim_start_matches(' ');
                    let label = "&nbsp;".repeat(r[0].len() - rest.len()) + rest;
                    let _ = writeln!(out, "| {label} | {} |", r[1..].join(" | "));
                }
                Line::Section(s) => {
                    let _ = writeln!(out, "| **{s}** |{}", " |".repeat(self.head.len() - 1));
                }
            }
        }
        out
    }
}

/// A goal for a figure (issue 2's and 3's targets: goals, not asserts).
#[derive(Clone, Copy)]
pub(crate) enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    /// The goal column, e.g. `>= 0.5x` for `suffix` "x" (a ratio).
    pub(crate) fn text(self, suffix: &str) -> String {
        match self {
            Self::AtLeast(x) => format!(">= {x}{suffix}"),
            Self::AtMost(x) => format!("<= {x}{suffix}"),
        }
    }

    /// The met column: "yes", "NO", or empty without a figure.
    pub(crate) fn met(self, v: Option<f64>) -> &'static str {
        match (self, v) {
            (Self::AtLeast(x), Some(v)) if v >= x => "yes",
            (Self::AtMost(x), Some(v)) if v <= x => "yes",
            (_, Some(_)) => "NO",
            (_, None) => "",
        }
    }
}

/// The median of the finite values of `v` (a ratio over a failed zero is
/// left out); None if there are none.
pub(crate) fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
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

/// Now, as `2026-01-31 12:00 UTC`.
pub(crate) fn date_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| format!("{:?}", SystemTime::now()))
}

/// How many CPUs this process may use.
pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// The CPU's model name.
pub(crate) fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
        })
        .map_or("unknown CPU".to_string(), |m| m.trim().to_string())
}

/// The memory, as `23.5 GiB` ("?" if unknown).
pub(crate) fn memory() -> String {
    fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or_else(|| "?".into(), |kib| format!("{:.1} GiB", kib / 1048576.0))
}

/// The kernel release.
pub(crate) fn kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The 1, 5 and 15 minute load averages.
pub(crate) fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
