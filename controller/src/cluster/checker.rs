//! What a module does about failing checkers: the per-checker count of
//! consecutive failures and the restart budget ([`CheckerState`]), and the
//! module-wide limit on checker-caused failovers ([`MaxLoop`]).
//!
//! No I/O: no clocks, sockets or threads. The driver runs the probes
//! (`driver::checkers`), feeds each result here with the time it was taken, and
//! carries out the [`Verdict`]. Time is any [`Instant`] the caller passes in.
//!
//! The rules, as an operator configures them (`failures`, `on_failure`):
//! - a success resets the count of consecutive failures;
//! - the `failures`-th consecutive failure gives a verdict, and counting starts
//!   again from zero after it (the next verdict needs `failures` new failures);
//! - `Restart { times, window, then }`: the verdict is [`Verdict::Restart`] while
//!   fewer than `times` restarts were decided within the last `window`, else
//!   `then` (swap to the peer, or stop the module);
//! - `Swap` / `Stop`: that verdict directly.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// What to do after `failures` consecutive failures (mirrors the config's
/// `OnFailure`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Restart the application, at most `times` times within `window`; past
    /// that, do `then`.
    Restart {
        /// Restarts allowed within `window`.
        times: u32,
        /// The sliding window restarts are counted in.
        window: Duration,
        /// What to do once the restarts are used up.
        then: Then,
    },
    /// Hand the module to the peer (swap primary and secondary).
    Swap,
    /// Stop the module on this node.
    Stop,
}

/// The action after the restart budget is spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Hand the module to the peer.
    Swap,
    /// Stop the module.
    Stop,
}

/// One checker's policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckerPolicy {
    /// Consecutive failures that make a verdict. 0 is treated as 1 (config
    /// validation refuses 0; this keeps the core total).
    pub failures: u32,
    /// What the verdict is.
    pub on_failure: OnFailure,
}

/// What the daemon must do about a failing checker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Run the module's stop then start scripts on this node.
    Restart,
    /// Fail the module over to the peer (subject to [`MaxLoop`]).
    Swap,
    /// Stop the module on this node.
    Stop,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Restart => "restart",
            Self::Swap => "swap",
            Self::Stop => "stop",
        })
    }
}

/// One checker's failure count and restart history.
#[derive(Clone, Debug)]
pub struct CheckerState {
    policy: CheckerPolicy,
    /// Failures since the last success or the last verdict.
    consecutive: u32,
    /// When restarts were decided, oldest first, only those still in the window.
    restarts: VecDeque<Instant>,
}

impl CheckerState {
    /// A checker that has seen nothing yet.
    pub fn new(policy: CheckerPolicy) -> Self {
        Self {
            policy,
            consecutive: 0,
            restarts: VecDeque::new(),
        }
    }

    /// Feeds one probe result taken at `now`; returns a verdict when this
    /// failure completes a run of `failures`.
    pub fn handle_result(&mut self, now: Instant, ok: bool) -> Option<Verdict> {
        if ok {
            self.consecutive = 0;
            return None;
        }
        self.consecutive += 1;
        if self.consecutive < self.policy.failures.max(1) {
            return None;
        }
        self.consecutive = 0;
        Some(match self.policy.on_failure {
            OnFailure::Swap => Verdict::Swap,
            OnFailure::Stop => Verdict::Stop,
            OnFailure::Restart {
                times,
                window,
                then,
            } => {
                prune(&mut self.restarts, now, window);
                if (self.restarts.len() as u64) < u64::from(times) {
                    self.restarts.push_back(now);
                    Verdict::Restart
                } else {
                    match then {
                        Then::Swap => Verdict::Swap,
                        Then::Stop => Verdict::Stop,
                    }
                }
            }
        })
    }

    /// Forgets failures and restarts: call when the module (re)starts on this
    /// node by an operator's order or after a failover, so that an old history
    /// does not cut the new run's restart budget.
    pub fn reset(&mut self) {
        self.consecutive = 0;
        self.restarts.clear();
    }

    /// Failures since the last success or verdict (for `mirrorfarm state`).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive
    }

    /// Restarts decided within the window ending at `now`.
    pub fn restarts_in_window(&self, now: Instant) -> usize {
        match self.policy.on_failure {
            OnFailure::Restart { window, .. } => self
                .restarts
                .iter()
                .filter(|t| in_window(**t, now, window))
                .count(),
            OnFailure::Swap | OnFailure::Stop => 0,
        }
    }

    /// The policy this state applies.
    pub fn policy(&self) -> &CheckerPolicy {
        &self.policy
    }
}

/// Limits how often checkers may move or stop-and-move a module: at most
/// `count` failovers within `window`. A refused failover means the module is
/// flapping between nodes; the daemon stops it instead of looping.
#[derive(Clone, Debug)]
pub struct MaxLoop {
    count: u32,
    window: Duration,
    /// When allowed failovers happened, oldest first.
    recent: VecDeque<Instant>,
}

impl MaxLoop {
    /// At most `count` checker-caused failovers within `window`.
    pub fn new(count: u32, window: Duration) -> Self {
        Self {
            count,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Asks to fail over at `now`: `true` (and the failover is counted) while
    /// fewer than `count` happened within the window; `false` past that (not
    /// counted: a refusal is not a failover).
    pub fn allow(&mut self, now: Instant) -> bool {
        prune(&mut self.recent, now, self.window);
        if (self.recent.len() as u64) < u64::from(self.count) {
            self.recent.push_back(now);
            true
        } else {
            false
        }
    }

    /// Failovers counted within the window ending at `now`.
    pub fn used(&self, now: Instant) -> usize {
        self.recent
            .iter()
            .filter(|t| in_window(**t, now, self.window))
            .count()
    }
}

/// `t` counts at `now` while less than `window` has passed since it. A `t`
/// after `now` (a caller's clock going backwards) counts as just now.
fn in_window(t: Instant, now: Instant, window: Duration) -> bool {
    now.saturating_duration_since(t) < window
}

/// Drops the entries that left the window (they are kept oldest first).
fn prune(events: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while events.front().is_some_and(|t| !in_window(*t, now, window)) {
        events.pop_front();
    }
}

#[cfg(test)]
#[path = "checker_test.rs"]
mod tests;
