//! The replication results: one row per figure, a column per target (local,
//! bindfs, GlusterFS, mirrorfs in both ack modes), each baseline's and
//! mirrorfs's ratio to local, the goal from issue 2 for mirrorfs and from
//! issue 10 (item 7) for mirrorfs with `--ack on-sync`; and every round's
//! figures. Laid out by the shared [`Table`].

use std::collections::BTreeMap;

use crate::common::report::{median, Goal, Table};

/// What a run is measured on.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Target {
    /// A plain directory on /var/tmp: the baseline.
    Local,
    /// A bindfs mount of a directory on /var/tmp: the cost of FUSE alone.
    Bindfs,
    /// A GlusterFS replica 2 volume (a brick on each node), mounted on node
    /// 1 by its FUSE client: what an operator would otherwise replicate with.
    Glusterfs,
    /// The mirrorfs mount, replicating to `mirrorfs serve` in the other
    /// namespace (`--ack each-op`: every write waits for the secondary).
    Mirrorfs,
    /// The same with `--ack on-sync` (only syncs wait), to its own serve.
    MirrorfsOnSync,
}

impl Target {
    pub(crate) const ALL: [Self; 5] = [
        Self::Local,
        Self::Bindfs,
        Self::Glusterfs,
        Self::Mirrorfs,
        Self::MirrorfsOnSync,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Bindfs => "bindfs",
            Self::Glusterfs => "glusterfs",
            Self::Mirrorfs => "mirrorfs",
            Self::MirrorfsOnSync => "mirrorfs-onsync",
        }
    }
}

/// What an on-sync goal compares with.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Base {
    /// The figure of local (like mirrorfs's goals).
    Local,
    /// The figure of mirrorfs with `--ack each-op` ("no slower than").
    EachOp,
}

/// The measurements of one target, by row key, one per round.
pub(crate) type Samples = BTreeMap<&'static str, Vec<f64>>;

/// One line of the table.
pub(crate) struct Row {
    pub(crate) key: &'static str,
    pub(crate) label: String,
    pub(crate) unit: &'static str,
    /// Whether a ratio to local means anything for this row.
    pub(crate) ratio: bool,
    /// The goal for mirrorfs: for its ratio to local where `ratio`, else for
    /// the figure itself.
    pub(crate) goal: Option<Goal>,
    /// The goal for mirrorfs-onsync: for its ratio to the base.
    pub(crate) onsync_goal: Option<(Goal, Base)>,
}

/// Everything measured in a run.
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) samples: BTreeMap<Target, Samples>,
    /// Skipped targets and workloads, cut runs, warnings.
    pub(crate) notes: Vec<String>,
}

const HEADER: [&str; 15] = [
    "workload",
    "unit",
    "local",
    "bindfs",
    "vs local",
    "glusterfs",
    "vs local",
    "mirrorfs",
    "vs local",
    "goal",
    "met",
    "mirrorfs-onsync",
    "vs local",
    "goal",
    "met",
];

impl Report {
    /// The results: the median of each figure's rounds.
    pub(crate) fn table(&self) -> Table {
        let fig = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), format_figure);
        let rat = |r: Option<f64>, row: &Row| match r {
            Some(r) if r < 0.1 => format!("{r:.3}x"),
            Some(r) => format!("{r:.2}x"),
            None if row.ratio => "n/a".into(),
            None => String::new(),
        };
        // Figures (columns 2..9 and 11..13) right-aligned, text left.
        let mut table = Table::new(HEADER.map(String::from).to_vec(), |i| {
            (2..9).contains(&i) || (11..13).contains(&i)
        });
        for row in &self.rows {
            let m = self.value(Target::Mirrorfs, row.key);
            let mr = self.ratio(Target::Mirrorfs, row);
            let (goal, met) = match row.goal {
                Some(g) if row.ratio => (g.text("x"), g.met(mr)),
                Some(g) => (g.text(""), g.met(m)),
                None => (String::new(), ""),
            };
            let o = self.value(Target::MirrorfsOnSync, row.key);
            let or = self.ratio(Target::MirrorfsOnSync, row);
            let (ogoal, omet) = match row.onsync_goal {
                Some((g, Base::Local)) => (g.text("x"), g.met(or)),
                Some((g, Base::EachOp)) => {
                    let vs = o.zip(m).filter(|(_, m)| *m > 0.0).map(|(o, m)| o / m);
                    (format!("{} of mirrorfs", g.text("x")), g.met(vs))
                }
                None => (String::new(), ""),
            };
            table.row(vec![
                row.label.clone(),
                row.unit.to_string(),
                fig(self.value(Target::Local, row.key)),
                fig(self.value(Target::Bindfs, row.key)),
                rat(self.ratio(Target::Bindfs, row), row),
                fig(self.value(Target::Glusterfs, row.key)),
                rat(self.ratio(Target::Glusterfs, row), row),
                fig(m),
                rat(mr, row),
                goal,
                met.to_string(),
                fig(o),
                rat(or, row),
                ogoal,
                omet.to_string(),
            ]);
        }
        table
    }

    /// Every round's figure, per row and target, so the spread is visible.
    pub(crate) fn samples_markdown(&self) -> String {
        let targets: Vec<Target> = self.samples.keys().copied().collect();
        let head = ["workload", "unit"]
            .into_iter()
            .chain(targets.iter().map(|t| t.name()))
            .map(String::from)
            .collect();
        let mut table = Table::new(head, |i| i >= 2);
        for row in &self.rows {
            let mut cells = vec![row.label.clone(), row.unit.to_string()];
            for t in &targets {
                let v: Vec<String> = self.samples[t]
                    .get(row.key)
                    .map_or_else(Vec::new, |v| v.iter().map(|x| format_figure(*x)).collect());
                cells.push(if v.is_empty() {
                    "n/a".into()
                } else {
                    v.join(", ")
                });
            }
            table.row(cells);
        }
        format!(
            "Every round (the table shows the median):\n\n{}",
            table.markdown()
        )
    }

    /// The figure: the median of the rounds.
    fn value(&self, t: Target, key: &str) -> Option<f64> {
        median(self.samples.get(&t)?.get(key)?)
    }

    fn ratio(&self, t: Target, row: &Row) -> Option<f64> {
        let (v, l) = (self.value(t, row.key)?, self.value(Target::Local, row.key)?);
        (row.ratio && l > 0.0).then(|| v / l)
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
