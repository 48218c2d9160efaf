//! Where the time of a replicated operation goes: always-on histograms of
//! each stage of its path, per class of op, read and reset through the
//! control socket (`mirrorfs ctl --control PATH latency [--reset]`).
//!
//! A primary (`mirrorfs mount`) records, for each op it sends:
//! `local` (the handler's call entered the overlay → the op queued for the
//! link: the sequencer, the begin, the local change), `to_wire` (queued → encoded
//! on the link's runtime thread: the hand-off), `wire` (encoded → its answer
//! decoded: the network both ways and all of the secondary), `local_sync`
//! (queued → the caller starts waiting: the local fsync of an fsync, nothing
//! for other ops), `wake` (the answer decoded, or the wait started if later
//! → the waiting thread runs again: exact with one writer, since it reads
//! the time of the link's latest completion), `reply` (→ the application's
//! call answered, the FUSE reply written), and `total` (entry → answered).
//! A secondary (`mirrorfs serve`) records `queue` (decoded → its apply
//! starts), `apply`, `back` (applied → the runtime has the outcome), `fsync`
//! (the replica's fsync itself), `ack` (outcome, or fsync done → the answer
//! handed to QUIC) and `total` (decoded → answer handed to QUIC).
//!
//! Owns: the histograms (log-linear, 8 sub-buckets per power of two of
//! nanoseconds: within 12.5 % of the true value), their snapshot as JSON.
//! Process-wide: one mount or serve per process. Recording is a few relaxed
//! atomic adds; it decides nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use crate::proto::wire::Class;

impl Class {
    const ALL: [Self; 3] = [Self::Data, Self::Sync, Self::Meta];

    fn name(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Sync => "sync",
            Self::Meta => "meta",
        }
    }
}

/// A stage of an op's path (see the module doc for what each spans).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Primary: entry → queued for the link.
    Local,
    /// Primary: queued → encoded on the link's thread.
    ToWire,
    /// Primary: encoded → answer decoded.
    Wire,
    /// Primary: queued → the caller waits (the local fsync of an fsync).
    LocalSync,
    /// Primary: answer decoded (or wait started) → the caller runs.
    Wake,
    /// Primary: the caller runs → the application answered.
    Reply,
    /// Primary: entry → the application answered.
    Total,
    /// Secondary: decoded → apply starts.
    Queue,
    /// Secondary: the apply.
    Apply,
    /// Secondary: applied → the runtime has the outcome.
    Back,
    /// Secondary: the replica's fsync.
    Fsync,
    /// Secondary: outcome (or fsync done) → the answer handed to QUIC.
    Ack,
    /// Secondary: decoded → the answer handed to QUIC.
    ServeTotal,
}

impl Stage {
    const ALL: [Self; 13] = [
        Self::Local,
        Self::ToWire,
        Self::Wire,
        Self::LocalSync,
        Self::Wake,
        Self::Reply,
        Self::Total,
        Self::Queue,
        Self::Apply,
        Self::Back,
        Self::Fsync,
        Self::Ack,
        Self::ServeTotal,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::ToWire => "to_wire",
            Self::Wire => "wire",
            Self::LocalSync => "local_sync",
            Self::Wake => "wake",
            Self::Reply => "reply",
            Self::Total => "total",
            Self::Queue => "queue",
            Self::Apply => "apply",
            Self::Back => "back",
            Self::Fsync => "fsync",
            Self::Ack => "ack",
            Self::ServeTotal => "serve_total",
        }
    }
}

/// Sub-buckets per power of two.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for any u64 of nanoseconds.
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// One histogram of nanoseconds.
#[derive(Debug)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    sum: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    fn record(&self, ns: u64) {
        self.buckets[bucket(ns)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(ns, Ordering::Relaxed);
    }

    fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
        self.count.store(0, Ordering::Relaxed);
        self.sum.store(0, Ordering::Relaxed);
    }

    /// The value below which `q` of the samples lie (a bucket's middle).
    fn quantile(counts: &[u64], total: u64, q: f64) -> u64 {
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, width) = bucket_range(i);
                return lo + width / 2;
            }
        }
        0
    }
}

/// The bucket of `ns`: exact below [`SUB`], then [`SUB`] per power of two.
fn bucket(ns: u64) -> usize {
    if ns < SUB {
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros();
    let sub = (ns >> (exp - SUB_BITS)) & (SUB - 1);
    ((exp - SUB_BITS + 1) as u64 * SUB + sub) as usize
}

/// The lowest value of bucket `i` and its width.
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, 1);
    }
    let exp = i / SUB + u64::from(SUB_BITS) - 1;
    let sub = i % SUB;
    let width = 1u64 << (exp - u64::from(SUB_BITS));
    ((SUB + sub) * width, width)
}

static HISTOGRAMS: [[Histogram; Class::ALL.len()]; Stage::ALL.len()] =
    [const { [const { Histogram::new() }; Class::ALL.len()] }; Stage::ALL.len()];

/// Records that `stage` of an op of `class` took from `from` to `to`
/// (nothing if `to` is earlier).
pub fn record(stage: Stage, class: Class, from: Instant, to: Instant) {
    record_duration(stage, class, to.saturating_duration_since(from));
}

/// Records that `stage` of an op of `class` took `d`.
pub fn record_duration(stage: Stage, class: Class, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    HISTOGRAMS[stage as usize][class as usize].record(ns);
}

/// The instant every [`mark`] counts from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A moment kept in an atomic (the link's latest completion, for `wake`).
#[derive(Debug, Default)]
pub struct Mark(AtomicU64);

impl Mark {
    /// A mark never set.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Sets the mark to `at`.
    pub fn set(&self, at: Instant) {
        let ns = u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(0);
        self.0.store(ns.max(1), Ordering::Relaxed);
    }

    /// The moment last set, if any.
    pub fn get(&self) -> Option<Instant> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(epoch() + Duration::from_nanos(ns)),
        }
    }
}

/// When the link last delivered an op's answer to its waiting caller.
pub static LAST_COMPLETION: Mark = Mark::new();

/// One stage of one class, as the snapshot reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageFigures {
    /// The class of op (`data`, `sync`, `meta`).
    pub class: String,
    /// The stage (see the module doc).
    pub stage: String,
    /// Ops recorded.
    pub count: u64,
    /// Mean, microseconds.
    pub mean_us: f64,
    /// Median, microseconds.
    pub p50_us: f64,
    /// 90th percentile, microseconds.
    pub p90_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
}

/// Every stage with samples, per class (stages in path order).
pub fn snapshot() -> Vec<StageFigures> {
    let mut out = Vec::new();
    for class in Class::ALL {
        for stage in Stage::ALL {
            let h = &HISTOGRAMS[stage as usize][class as usize];
            let counts: Vec<u64> = h
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect();
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;
            out.push(StageFigures {
                class: class.name().to_owned(),
                stage: stage.name().to_owned(),
                count: total,
                mean_us: us(h.sum.load(Ordering::Relaxed) / total.max(1)),
                p50_us: us(Histogram::quantile(&counts, total, 0.50)),
                p90_us: us(Histogram::quantile(&counts, total, 0.90)),
                p99_us: us(Histogram::quantile(&counts, total, 0.99)),
            });
        }
    }
    out
}

/// Forgets every sample.
pub fn reset() {
    for row in &HISTOGRAMS {
        for h in row {
            h.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_within_an_eighth() {
        for ns in (0..5000u64).chain([1 << 20, 123_456_789, u64::MAX / 3, u64::MAX]) {
            let i = bucket(ns);
            assert!(i < BUCKETS, "{ns} -> {i}");
            let (lo, width) = bucket_range(i);
            assert!(
                lo <= ns && ns - lo < width,
                "{ns}: bucket {i} = {lo}+{width}"
            );
            assert!(width == 1 || width * 8 <= lo, "{ns}: width {width} at {lo}");
        }
    }

    #[test]
    fn quantiles_come_from_the_recorded_samples() {
        let h = Histogram::new();
        for us in 1..=100u64 {
            h.record(us * 1000);
        }
        let counts: Vec<u64> = h
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let p50 = Histogram::quantile(&counts, 100, 0.5) as f64 / 1000.0;
        let p99 = Histogram::quantile(&counts, 100, 0.99) as f64 / 1000.0;
        assert!((44.0..=56.0).contains(&p50), "p50 {p50}");
        assert!((87.0..=112.0).contains(&p99), "p99 {p99}");
        h.reset();
        assert_eq!(h.count.load(Ordering::Relaxed), 0);
    }
}
