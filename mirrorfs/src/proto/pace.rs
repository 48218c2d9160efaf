//! How hard the resync may push while the application writes, sans-IO.
//!
//! Owns the feedback loop behind "the resync yields to the application": the
//! application's ops are timed from submission to acknowledgement, smoothed
//! in sync (the yardstick) and during a resync; while the latter exceeds the
//! former by more than [`ALLOWANCE`], the pause a resync worker takes after
//! each piece it sends doubles (up to [`MAX_PAUSE`]), otherwise it shrinks
//! by an eighth. Without a yardstick (a resync right after the start) there
//! is no pause. Times are passed in; nothing here reads a clock.

use std::time::Duration;

/// How much slower than in sync the application's ops may get before the
/// resync pauses more between its pieces.
pub const ALLOWANCE: f64 = 1.2;
/// The longest pause between resync pieces (with 128 KiB pieces, a floor of
/// about 2.5 MB/s).
pub const MAX_PAUSE: Duration = Duration::from_millis(50);

/// The smoothed latencies and the current pause.
#[derive(Debug, Default, Clone)]
pub struct Pace {
    in_sync: Option<f64>,
    resync: Option<f64>,
    pause: Duration,
}

fn smooth(old: Option<f64>, x: f64, weight: f64) -> f64 {
    old.map_or(x, |o| o + (x - o) * weight)
}

impl Pace {
    /// An application op acknowledged after `took` while in sync.
    pub fn in_sync(&mut self, took: Duration) {
        self.in_sync = Some(smooth(self.in_sync, took.as_secs_f64(), 0.05));
    }

    /// An application op acknowledged after `took` during a resync.
    pub fn during_resync(&mut self, took: Duration) {
        let now = smooth(self.resync, took.as_secs_f64(), 0.2);
        self.resync = Some(now);
        let Some(base) = self.in_sync else {
            return;
        };
        self.pause = if now > base * ALLOWANCE {
            (self.pause * 2 + Duration::from_micros(200)).min(MAX_PAUSE)
        } else {
            self.pause
                .saturating_sub(self.pause / 8 + Duration::from_micros(20))
        };
    }

    /// The pause a resync worker takes after a piece while the application
    /// writes.
    pub fn pause(&self) -> Duration {
        self.pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn no_yardstick_no_pause() {
        let mut p = Pace::default();
        for _ in 0..100 {
            p.during_resync(100 * MS);
        }
        assert_eq!(p.pause(), Duration::ZERO);
    }

    #[test]
    fn the_pause_grows_while_ops_are_slow_and_shrinks_back() {
        let mut p = Pace::default();
        for _ in 0..100 {
            p.in_sync(MS);
        }
        for _ in 0..5 {
            p.during_resync(MS);
        }
        assert_eq!(p.pause(), Duration::ZERO, "as fast as in sync: no pause");
        let mut last = Duration::ZERO;
        for _ in 0..4 {
            p.during_resync(5 * MS);
            assert!(p.pause() > last, "slow ops must lengthen the pause");
            last = p.pause();
        }
        for _ in 0..100 {
            p.during_resync(5 * MS);
        }
        assert_eq!(p.pause(), MAX_PAUSE, "capped");
        for _ in 0..200 {
            p.during_resync(MS);
        }
        assert_eq!(
            p.pause(),
            Duration::ZERO,
            "back to none once ops are fast again"
        );
    }

    #[test]
    fn a_slightly_slower_op_is_within_the_allowance() {
        let mut p = Pace::default();
        for _ in 0..100 {
            p.in_sync(10 * MS);
        }
        for _ in 0..100 {
            p.during_resync(11 * MS);
        }
        assert_eq!(p.pause(), Duration::ZERO);
    }
}
