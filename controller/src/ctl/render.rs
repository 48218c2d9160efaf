//! The text `mirrorfarm state` prints: a table of the node's modules, or,
//! for one module, a block with everything the daemon knows of it. Times are
//! UTC; durations are short (`2.5 s`, `1m05s`). Scripts read `--json`
//! instead: this text may change.

use std::fmt::Write as _;

use super::state::{DirStatus, ModuleStatus, State, WitnessStatus};

/// Width of the labels of a module's block.
const LABEL: usize = 17;

impl State {
    /// The text of `mirrorfarm state`: the block of [`ModuleStatus::render_text`]
    /// when the state holds one module (one was asked for, or the node has
    /// only one), else the table of [`Self::render_table`].
    pub fn render_text(&self) -> String {
        match self.modules.as_slice() {
            [one] => one.render_text(),
            _ => self.render_table(),
        }
    }

    /// One row per module (MODULE NODE STATE READY SYNC PEER SINCE REASON),
    /// then a warning for each module whose file differs on the peer.
    pub fn render_table(&self) -> String {
        if self.modules.is_empty() {
            return format!(
                "{}: no modules: put module files (NAME.ron) in the node's modules directory; `mirrorfarm check` validates them\n",
                self.node
            );
        }
        let mut rows = vec![[
            "MODULE", "NODE", "STATE", "READY", "SYNC", "PEER", "SINCE", "REASON",
        ]
        .map(String::from)];
        for m in &self.modules {
            rows.push([
                m.module.clone(),
                m.node.clone(),
                m.state.clone(),
                yes_no(m.ready).into(),
                sync_cell(m),
                peer_cell(m),
                utc(m.since_unix),
                m.reason.clone(),
            ]);
        }
        let mut widths = [0usize; 8];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &rows {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<w$}  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        for m in self.modules.iter().filter(|m| m.config_mismatch) {
            let _ = writeln!(out, "warning: {}", mismatch(m));
        }
        for m in &self.modules {
            for p in m.farm.iter().flat_map(|f| &f.flood_problems) {
                let _ = writeln!(out, "warning: {}: {p}: {FLOOD_FIX}", m.module);
            }
        }
        out
    }
}

impl ModuleStatus {
    /// Everything about the module, one `label: value` line each.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let mut field = |label: &str, value: &str| {
            let label = format!("{label}:");
            let _ = writeln!(out, "{label:<LABEL$}{value}");
        };
        field("module", &format!("{} on {}", self.module, self.node));
        let transient = if self.ready { "" } else { " (transient)" };
        field("state", &format!("{}{transient}", self.state));
        field("reason", &self.reason);
        field("since", &utc(self.since_unix));
        if let Some(step) = &self.step {
            field("step", step);
        }
        if let Some(f) = &self.farm {
            let held = if f.vip_held { "held" } else { "not held" };
            field(
                "vips",
                &format!("{} ({held}), rule {}", f.vips.join(", "), f.rule),
            );
            let share = match (f.share, &f.buckets) {
                (Some(n), Some(b)) => format!("{n}/256 buckets {b}"),
                _ => "not known yet".into(),
            };
            field("share", &format!("{share}; target {}", f.target));
            for p in &f.members {
                let me = if p.name == self.node {
                    " (this node)"
                } else {
                    ""
                };
                let state = p.state.as_deref().unwrap_or("never heard");
                let heard = p
                    .heard_secs_ago
                    .map_or(String::new(), |s| format!(", heard {} ago", secs(s)));
                let share = p.share.map_or(String::new(), |n| format!(", {n} buckets"));
                let view = if p.in_view || !me.is_empty() {
                    ""
                } else {
                    ", not in view"
                };
                field(
                    "  member",
                    &format!(
                        "{}{me}: {state}, weight {}{share}{heard}{view}",
                        p.name, p.weight
                    ),
                );
            }
            if let Some(t) = &self.last_transition {
                field(
                    "last transition",
                    &format!("{} -> {} at {}: {}", t.from, t.to, utc(t.at_unix), t.reason),
                );
            }
            for p in &f.flood_problems {
                field("WARNING", &format!("{p}: {FLOOD_FIX}"));
            }
            return out;
        }
        field("peer", &self.peer_line());
        for n in &self.networks {
            let heard = n
                .heard_secs_ago
                .map_or("never heard".into(), |s| format!("heard {} ago", secs(s)));
            let rtt = n
                .rtt_ms
                .map_or(String::new(), |r| format!(", round trip {r:.2} ms"));
            field("  network", &format!("{}: {heard}{rtt}", n.addr));
        }
        field("witness", &witness_line(self.witness.as_ref()));
        if let Some(sync) = self.sync_line() {
            field("sync", &sync);
        }
        field("vip", self.vip.as_deref().unwrap_or("not here"));
        for d in &self.dirs {
            field("dir", &dir_line(d));
        }
        if let Some(t) = &self.last_transition {
            field(
                "last transition",
                &format!("{} -> {} at {}: {}", t.from, t.to, utc(t.at_unix), t.reason),
            );
        }
        if let Some(f) = &self.last_failover {
            field(
                "last failover",
                &format!("to {} at {}: {}", f.to, utc(f.at_unix), f.cause),
            );
        }
        if self.config_mismatch {
            field("WARNING", &mismatch(self));
        }
        out
    }

    fn peer_line(&self) -> String {
        let transient = |ready: Option<bool>| {
            if ready == Some(false) {
                " (transient)"
            } else {
                ""
            }
        };
        match (&self.peer_state, self.peer_reachable) {
            (Some(s), true) => format!("{}: {s}{}", self.peer, transient(self.peer_ready)),
            (Some(s), false) => format!("{}: unreachable (last heard in {s})", self.peer),
            (None, true) => format!("{}: reachable", self.peer),
            (None, false) => format!("{}: unreachable (never heard)", self.peer),
        }
    }

    fn sync_line(&self) -> Option<String> {
        if let Some(r) = &self.resync {
            let eta = r.eta_secs.map_or("time left unknown".into(), |s| {
                format!("about {} left", secs(s))
            });
            let total = r.files_done + r.files_left;
            return Some(format!(
                "resync: {} of {total} files{}, {} sent, {eta}",
                r.files_done,
                percent(r.files_done, total).map_or(String::new(), |p| format!(" ({p}%)")),
                bytes(r.bytes_sent),
            ));
        }
        let second = self.state == "SECOND";
        self.in_sync.map(|s| match (s, second) {
            (true, false) => "in sync".to_owned(),
            (true, true) => {
                "in sync (as the primary last said): this node can take over".to_owned()
            }
            (false, false) => {
                "NOT in sync: the secondary lacks changes (they are recorded for the resync)"
                    .to_owned()
            }
            (false, true) => {
                "NOT in sync yet (the primary has not said it is): this node cannot take over"
                    .to_owned()
            }
        })
    }
}

/// The SYNC cell of the table.
/// What to do when frames to a farm's virtual MAC do not reach every node.
pub const FLOOD_FIX: &str = "the network must flood frames for the virtual MAC to every farm \
node (switches flood unknown unicast by default; a hypervisor or cloud network that filters by \
MAC must allow it, or the NICs need promiscuous mode)";

fn sync_cell(m: &ModuleStatus) -> String {
    if let Some(f) = &m.farm {
        return match f.share {
            Some(n) => format!("{n}/256 buckets"),
            None => "buckets ?".into(),
        };
    }
    if let Some(r) = &m.resync {
        return match percent(r.files_done, r.files_done + r.files_left) {
            Some(p) => format!("resync {p}%"),
            None => "resync".into(),
        };
    }
    match m.in_sync {
        Some(true) => "in sync".into(),
        Some(false) => "NOT in sync".into(),
        None => "-".into(),
    }
}

/// The PEER cell of the table.
fn peer_cell(m: &ModuleStatus) -> String {
    if let Some(f) = &m.farm {
        let others: Vec<String> = f
            .members
            .iter()
            .filter(|p| p.name != m.node)
            .map(|p| match (&p.state, p.in_view) {
                (Some(s), true) => format!("{} {s}", p.name),
                (_, false) => format!("{} unreachable", p.name),
                (None, true) => format!("{} ?", p.name),
            })
            .collect();
        return others.join(", ");
    }
    match (&m.peer_state, m.peer_reachable) {
        (_, false) => format!("{} unreachable", m.peer),
        (Some(s), true) if m.peer_ready == Some(false) => format!("{} {s} (transient)", m.peer),
        (Some(s), true) => format!("{} {s}", m.peer),
        (None, true) => format!("{} ?", m.peer),
    }
}

fn witness_line(w: Option<&WitnessStatus>) -> String {
    let Some(w) = w else {
        return "none (a network split may make both nodes primary)".into();
    };
    let reach = if w.reachable {
        "reachable"
    } else {
        "unreachable"
    };
    let lease = w
        .lease_secs_left
        .map_or("no lease".into(), |s| format!("lease {} left", secs(s)));
    let refused = w
        .refused
        .as_ref()
        .map_or(String::new(), |r| format!("; refused: {r}"));
    format!("{}, {reach}, {lease}{refused}", w.addr)
}

fn dir_line(d: &DirStatus) -> String {
    let mut line = format!(
        "{} (backing {}): {}, generation {}",
        d.mount,
        d.backing,
        d.role.as_deref().unwrap_or("no mirrorfs"),
        d.generation.as_deref().unwrap_or("none"),
    );
    match d.consistent {
        Some(true) => line.push_str(", consistent"),
        Some(false) => line.push_str(
            ", INCONSISTENT (a resync into it did not finish: it must not become primary)",
        ),
        None => {}
    }
    line
}

fn mismatch(m: &ModuleStatus) -> String {
    format!(
        "{}: {}'s module file differs from {}'s: install the same {}.ron on both nodes",
        m.module, m.peer, m.node, m.module
    )
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// `done` of `total` in whole percent, rounded down (`None` when total is 0).
fn percent(done: u64, total: u64) -> Option<u64> {
    (total > 0).then(|| (u128::from(done) * 100 / u128::from(total)) as u64)
}

/// Seconds since the Unix epoch as `YYYY-MM-DD hh:mm:ss UTC`.
fn utc(unix: f64) -> String {
    if unix.is_finite() && unix >= 0.0 {
        mirrorfs::ctl::state::utc(unix as u64)
    } else {
        "an unknown time".into()
    }
}

/// A duration: `0.4 s`, `59.9 s`, `1m05s`, `2h03m`, `3d04h`.
fn secs(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "? s".into();
    }
    if s < 60.0 {
        return format!("{s:.1} s");
    }
    let s = s as u64;
    match s {
        0..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A size in bytes: `512 B`, `1.5 KiB`, `12.0 MiB`...
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
#[path = "render_test.rs"]
mod tests;
