//! The mount's side of the control socket: [`Control`] for the primary's
//! [`Mirror`]. The status comes from [`Mirror::status`]; the orders go to
//! the mirror's core, which decides (and refuses what it must, saying why).
//!
//! A watcher is woken by the mirror's changes, and also when its link begins
//! or ends a stall ([`Mirror::stalled`]): that comes with time (no progress
//! from the secondary for the peer timeout) or with the secondary's progress
//! report, not with a change of the mirror's state, so the wait looks at it
//! every [`STALL_CHECK`].

use std::time::{Duration, Instant};

use super::{Control, CtlError, Status};
use crate::mirror::Mirror;

/// How often a watcher's wait looks whether a stall began or ended.
const STALL_CHECK: Duration = Duration::from_millis(100);

impl Control for Mirror {
    fn status(&self) -> Status {
        // The inherent method (inherent items come before trait ones).
        Self::status(self)
    }

    fn wait_change(&self, seen: u64, timeout: Duration) -> u64 {
        wait_change_or_flip(
            seen,
            timeout,
            |count, within| Self::wait_change(self, count, within),
            || self.stalled(),
        )
    }

    fn alone(&self, seconds: f64) -> Result<Status, CtlError> {
        Self::alone(self, Duration::from_secs_f64(seconds)).map_err(CtlError::Refused)?;
        Ok(Self::status(self))
    }

    fn fence(&self) -> Result<Status, CtlError> {
        Self::fence(self);
        Ok(Self::status(self))
    }

    fn unfence(&self) -> Result<Status, CtlError> {
        Self::unfence(self);
        Ok(Self::status(self))
    }
}

/// Waits until `wait` (the change count's wait) reports a change or `flag`
/// differs from what it was when `seen` was returned, or `timeout` passes.
/// The value returned, and `seen`, is the change count times two plus the
/// flag as it was then: a flip between a watcher's last answer and its next
/// wait is seen by that wait (the watcher only compares the values).
fn wait_change_or_flip(
    seen: u64,
    timeout: Duration,
    wait: impl Fn(u64, Duration) -> u64,
    flag: impl Fn() -> bool,
) -> u64 {
    let (count, was) = (seen / 2, seen % 2 == 1);
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let now = wait(count, left.min(STALL_CHECK));
        let is = flag();
        if now != count || is != was || left <= STALL_CHECK {
            return now * 2 + u64::from(is);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::ctl::Changes;

    #[test]
    fn a_flip_of_the_flag_is_a_change_and_so_is_a_count() {
        let changes = Arc::new(Changes::default());
        let flag = Arc::new(AtomicBool::new(false));
        let wait = |seen: u64, timeout: Duration| {
            let (changes, flag) = (changes.clone(), flag.clone());
            wait_change_or_flip(
                seen,
                timeout,
                move |c, t| changes.wait(c, t),
                move || flag.load(Ordering::SeqCst),
            )
        };
        let seen = wait(0, Duration::ZERO);
        assert_eq!(wait(seen, Duration::from_millis(250)), seen, "no change");
        // A flip with no count: seen within a check or two.
        let t = Instant::now();
        let f = flag.clone();
        let flipper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            f.store(true, Ordering::SeqCst);
        });
        let after = wait(seen, Duration::from_secs(10));
        flipper.join().unwrap();
        assert_ne!(after, seen, "the flip is a change");
        assert!(t.elapsed() < Duration::from_secs(5), "woken by the flip");
        // A flip that happened before the wait began (after the value was
        // returned) is seen at once.
        flag.store(false, Ordering::SeqCst);
        let t = Instant::now();
        let back = wait(after, Duration::from_secs(10));
        assert_ne!(back, after);
        assert!(t.elapsed() < Duration::from_secs(5));
        // A count: at once.
        changes.bump();
        assert_ne!(wait(back, Duration::from_secs(10)), back);
    }
}
