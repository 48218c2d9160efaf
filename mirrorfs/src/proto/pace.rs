//! How hard the resync may push while the application writes, sans-IO.
//!
//! Owns the feedback loop behind "the resync yields to the application", and
//! it watches the application's tail, not its mean: a resync piece or path
//! that lands in front of an op delays that one op by a lot and leaves the
//! others alone, so the mean hardly moves while the p99 doubles. The
//! application's ops are timed from submission to acknowledgement, each
//! [`Class`] apart (a create takes longer than a write, an fsync longer
//! still; one yardstick for all would be the slowest class's). In sync, each
//! class's p99 is learnt (a streaming estimate), and so is the share of ops
//! slower than [`SLOW`] times it (the application's own tail). During a
//! resync, every such slow op doubles the pause between two turns of the
//! resync workers (a turn: a piece of a file or the first ops of a path;
//! up to [`MAX_PAUSE`]); every other op shortens it a little, by as much
//! as makes the share of slow ops settle at the learnt share plus
//! [`EXTRA_SLOW`]: the p99 during a resync stays near [`SLOW`] times the p99
//! in sync. Without a yardstick (a resync right after the start) there is
//! no pause. How long the resync may be held back that far is the core's
//! to decide (its floor, [`longest_pause`]). Times are passed in; nothing
//! here reads a clock.

use std::time::Duration;

use super::wire::Class;

/// An op slower than this many times its class's in-sync p99 is slow. The
/// pace holds the p99 during a resync near this, so it sits below the
/// bound it serves (issue 10: at most 1.25 times the in-sync p99): a loop
/// aimed at the bound itself left the p99 above it in half the runs (a
/// median of 1.26x over three runs of `benches/resync` at 1.25).
pub const SLOW: f64 = 1.15;
/// The share of slow ops the resync may add to the application's own.
pub const EXTRA_SLOW: f64 = 0.005;
/// How far one op moves the p99 estimate: up by this share of it times
/// 0.99 when above it, down by this share times 0.01 otherwise.
const QUANTILE_STEP: f64 = 0.05;
/// The longest pause between resync turns: the resync still goes on at 20
/// turns a second (32 KiB pieces: about 0.6 MB/s; small files: 20 a
/// second).
pub const MAX_PAUSE: Duration = Duration::from_millis(50);
/// What a slow op adds to the pause besides doubling it.
const STEP: Duration = Duration::from_micros(100);

/// The longest pause between two turns of `turn_bytes` each that keeps the
/// resync at `floor` bytes a second or more (the pause alone; the turns
/// take their own time besides). A floor of 0: [`MAX_PAUSE`], which is
/// also the most it ever is.
pub fn longest_pause(floor: u64, turn_bytes: u64) -> Duration {
    if floor == 0 {
        return MAX_PAUSE;
    }
    Duration::from_secs_f64(turn_bytes as f64 / floor as f64).min(MAX_PAUSE)
}

/// The yardsticks, the application's own share of slow ops, and the pause.
#[derive(Debug, Default, Clone)]
pub struct Pace {
    /// In-sync p99 estimate, seconds, per [`Class`] (data, sync, meta).
    base: [Option<f64>; 3],
    /// Smoothed share of in-sync ops slower than [`SLOW`] × their yardstick.
    slow_in_sync: f64,
    pause: Duration,
}

impl Pace {
    fn base(&mut self, kind: Class) -> &mut Option<f64> {
        &mut self.base[match kind {
            Class::Data => 0,
            Class::Sync => 1,
            Class::Meta => 2,
        }]
    }

    /// An application op of `kind` acknowledged after `took` while in sync.
    pub fn in_sync(&mut self, kind: Class, took: Duration) {
        let took = took.as_secs_f64();
        let base = self.base(kind);
        let slow = base.is_some_and(|b| took > b * SLOW);
        *base = Some(base.map_or(took, |b| {
            if took > b {
                b * (1.0 + QUANTILE_STEP * 0.99)
            } else {
                b * (1.0 - QUANTILE_STEP * 0.01)
            }
        }));
        self.slow_in_sync += (f64::from(u8::from(slow)) - self.slow_in_sync) * 0.01;
    }

    /// An application op of `kind` acknowledged after `took` during a resync.
    pub fn during_resync(&mut self, kind: Class, took: Duration) {
        let Some(base) = *self.base(kind) else {
            return;
        };
        if took.as_secs_f64() > base * SLOW {
            self.pause = (self.pause * 2 + STEP).min(MAX_PAUSE);
        } else {
            // Doubling on a share s of the ops and shrinking by d on the
            // rest holds still where s·ln 2 = (1 − s)·d: pick d for the
            // share allowed.
            let share = (self.slow_in_sync + EXTRA_SLOW).min(0.5);
            let d = std::f64::consts::LN_2 * share / (1.0 - share);
            self.pause = self
                .pause
                .saturating_sub(self.pause.mul_f64(d) + Duration::from_micros(1));
        }
    }

    /// The pause between two resync turns while the application writes.
    pub fn pause(&self) -> Duration {
        self.pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    /// A deterministic stream of latencies: `base`, and every `every`th op
    /// `slow_by` times longer.
    fn ops(n: usize, base: Duration, every: usize, slow_by: u32) -> impl Iterator<Item = Duration> {
        (1..=n).map(move |i| if i % every == 0 { base * slow_by } else { base })
    }

    fn learnt() -> Pace {
        let mut p = Pace::default();
        for took in ops(2000, 300 * US, 200, 3) {
            p.in_sync(Class::Sync, took);
        }
        for took in ops(2000, 150 * US, 200, 3) {
            p.in_sync(Class::Data, took);
        }
        p
    }

    #[test]
    fn no_yardstick_no_pause() {
        let mut p = Pace::default();
        for _ in 0..100 {
            p.during_resync(Class::Sync, 100 * US * 1000);
        }
        assert_eq!(p.pause(), Duration::ZERO);
    }

    #[test]
    fn the_application_s_own_tail_costs_no_pause() {
        let mut p = learnt();
        // The same half-percent of slow ops as in sync, and a few ops in
        // a hundred 1.1 times slower (within the allowance: not slow).
        for (i, took) in ops(5000, 300 * US, 200, 3).enumerate() {
            let took = if i % 30 == 7 { took * 11 / 10 } else { took };
            p.during_resync(Class::Sync, took);
            p.during_resync(Class::Data, 150 * US);
        }
        assert!(p.pause() < 200 * US, "pause {:?}", p.pause());
    }

    #[test]
    fn a_slow_tail_lengthens_the_pause_and_it_shrinks_back() {
        let mut p = learnt();
        // One op in ten delayed three times over: the mean moves by a
        // fifth, the p99 triples.
        let mut last = Duration::ZERO;
        for (i, took) in ops(60, 150 * US, 10, 3).enumerate() {
            p.during_resync(Class::Data, took);
            if i % 10 == 9 {
                assert!(p.pause() > last, "each slow op lengthens the pause");
                last = p.pause();
            }
        }
        for took in ops(1000, 150 * US, 10, 3) {
            p.during_resync(Class::Data, took);
        }
        assert_eq!(p.pause(), MAX_PAUSE, "capped");
        for _ in 0..2000 {
            p.during_resync(Class::Data, 150 * US);
        }
        assert_eq!(p.pause(), Duration::ZERO, "none once no op is slow");
    }

    #[test]
    fn the_floor_bounds_the_pause() {
        assert_eq!(longest_pause(0, 32 << 10), MAX_PAUSE, "no floor");
        assert_eq!(longest_pause(1_000_000, 32 << 10), 32768 * US);
        assert_eq!(
            longest_pause(100_000, 32 << 10),
            MAX_PAUSE,
            "never past the cap"
        );
    }

    #[test]
    fn the_pause_settles_where_slow_ops_are_as_rare_as_allowed() {
        // A crude plant: the longer the pause, the fewer ops the resync
        // delays (one in `1 + pause / 100 µs` of every 20).
        let mut p = learnt();
        let mut slow = 0;
        let n = 200_000;
        let mut credit = 0.0;
        for i in 0..n {
            let hit_share = 0.05 / (1.0 + p.pause().as_secs_f64() / 100e-6);
            credit += hit_share;
            let took = if credit >= 1.0 {
                credit -= 1.0;
                slow += usize::from(i >= n / 2);
                900 * US
            } else {
                300 * US
            };
            p.during_resync(Class::Sync, took);
        }
        let share = slow as f64 / (n / 2) as f64;
        assert!(
            share > 0.005 && share < 0.02,
            "slow share {share} should settle near 1% plus the learnt 0.5%"
        );
    }

    #[test]
    fn kinds_have_their_own_yardstick() {
        let mut p = learnt();
        // A sync op's usual latency would be slow for a write: not for a
        // sync op. Nothing learnt for a kind: nothing is slow for it.
        for _ in 0..100 {
            p.during_resync(Class::Sync, 300 * US);
            p.during_resync(Class::Meta, 3000 * US);
        }
        assert_eq!(p.pause(), Duration::ZERO);
        p.during_resync(Class::Data, 400 * US);
        assert!(p.pause() > Duration::ZERO);
    }
}
