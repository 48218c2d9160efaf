//! Exact verdict sequences for scripted probe results on a virtual clock.

use pretty_assertions::assert_eq;

use super::*;

/// Feeds `(second, ok)` results and returns every verdict with its second.
fn run(policy: CheckerPolicy, results: &[(u64, bool)]) -> Vec<(u64, Verdict)> {
    let origin = Instant::now();
    let mut state = CheckerState::new(policy);
    results
        .iter()
        .filter_map(|&(s, ok)| {
            state
                .handle_result(origin + Duration::from_secs(s), ok)
                .map(|v| (s, v))
        })
        .collect()
}

fn failures_at(seconds: impl IntoIterator<Item = u64>) -> Vec<(u64, bool)> {
    seconds.into_iter().map(|s| (s, false)).collect()
}

fn restart(times: u32, window_s: u64, then: Then) -> OnFailure {
    OnFailure::Restart {
        times,
        window: Duration::from_secs(window_s),
        then,
    }
}

#[test]
fn swap_and_stop_after_n_consecutive_failures() {
    let swap = CheckerPolicy {
        failures: 3,
        on_failure: OnFailure::Swap,
    };
    assert_eq!(
        run(swap, &failures_at(1..=7)),
        vec![(3, Verdict::Swap), (6, Verdict::Swap)]
    );
    let stop = CheckerPolicy {
        failures: 1,
        on_failure: OnFailure::Stop,
    };
    assert_eq!(
        run(stop, &failures_at(1..=2)),
        vec![(1, Verdict::Stop), (2, Verdict::Stop)]
    );
}

#[test]
fn a_success_resets_the_count() {
    let policy = CheckerPolicy {
        failures: 3,
        on_failure: OnFailure::Swap,
    };
    let results = [
        (1, false),
        (2, false),
        (3, true),
        (4, false),
        (5, false),
        (6, true),
        (7, false),
        (8, false),
        (9, false),
    ];
    assert_eq!(run(policy, &results), vec![(9, Verdict::Swap)]);
}

#[test]
fn restarts_then_swap_within_the_window() {
    let policy = CheckerPolicy {
        failures: 2,
        on_failure: restart(3, 300, Then::Swap),
    };
    // A failure every 10 s: a verdict every 20 s.
    let results = failures_at((1..=10).map(|i| i * 10));
    assert_eq!(
        run(policy, &results),
        vec![
            (20, Verdict::Restart),
            (40, Verdict::Restart),
            (60, Verdict::Restart),
            (80, Verdict::Swap),
            (100, Verdict::Swap),
        ]
    );
}

#[test]
fn restarts_then_stop() {
    let policy = CheckerPolicy {
        failures: 1,
        on_failure: restart(1, 60, Then::Stop),
    };
    assert_eq!(
        run(policy, &failures_at([0, 1])),
        vec![(0, Verdict::Restart), (1, Verdict::Stop)]
    );
}

#[test]
fn restarts_leave_the_window() {
    let policy = CheckerPolicy {
        failures: 1,
        on_failure: restart(2, 100, Then::Swap),
    };
    // Restarts at 0 and 50; at 99 both are within 100 s; at 100 the first left
    // the window (exactly `window` old no longer counts), at 149 the restart
    // at 100 and the one at 50 fill it again.
    assert_eq!(
        run(policy, &failures_at([0, 50, 99, 100, 149, 150])),
        vec![
            (0, Verdict::Restart),
            (50, Verdict::Restart),
            (99, Verdict::Swap),
            (100, Verdict::Restart),
            (149, Verdict::Swap),
            (150, Verdict::Restart),
        ]
    );
}

#[test]
fn zero_times_goes_straight_to_then_and_zero_failures_counts_as_one() {
    let policy = CheckerPolicy {
        failures: 0,
        on_failure: restart(0, 300, Then::Stop),
    };
    assert_eq!(run(policy, &failures_at([5])), vec![(5, Verdict::Stop)]);
}

#[test]
fn counters_for_the_state_display_and_reset() {
    let origin = Instant::now();
    let at = |s: u64| origin + Duration::from_secs(s);
    let mut state = CheckerState::new(CheckerPolicy {
        failures: 2,
        on_failure: restart(1, 60, Then::Swap),
    });
    assert_eq!(state.handle_result(at(0), false), None);
    assert_eq!(state.consecutive_failures(), 1);
    assert_eq!(state.handle_result(at(1), false), Some(Verdict::Restart));
    assert_eq!(state.consecutive_failures(), 0);
    assert_eq!(state.restarts_in_window(at(2)), 1);
    assert_eq!(state.restarts_in_window(at(61)), 0);
    state.reset();
    assert_eq!(state.restarts_in_window(at(2)), 0);
    // The budget is whole again after the reset.
    assert_eq!(state.handle_result(at(3), false), None);
    assert_eq!(state.handle_result(at(4), false), Some(Verdict::Restart));
}

#[test]
fn maxloop_refuses_past_count_within_the_window() {
    let origin = Instant::now();
    let at = |s: u64| origin + Duration::from_secs(s);
    let mut maxloop = MaxLoop::new(3, Duration::from_secs(3600));
    let answers: Vec<(u64, bool)> = [0, 10, 20, 30, 3599, 3600, 3601, 3610, 3611]
        .into_iter()
        .map(|s| (s, maxloop.allow(at(s))))
        .collect();
    assert_eq!(
        answers,
        vec![
            (0, true),
            (10, true),
            (20, true),
            // Refusals are not counted: the window still holds 0, 10, 20.
            (30, false),
            (3599, false),
            // 0 left the window.
            (3600, true),
            (3601, false),
            // 10 left it.
            (3610, true),
            (3611, false),
        ]
    );
    assert_eq!(maxloop.used(at(3611)), 3);
}

#[test]
fn maxloop_zero_refuses_everything() {
    let mut maxloop = MaxLoop::new(0, Duration::from_secs(60));
    assert!(!maxloop.allow(Instant::now()));
}

#[test]
fn verdicts_print_the_operator_words() {
    let words: Vec<String> = [Verdict::Restart, Verdict::Swap, Verdict::Stop]
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(words, ["restart", "swap", "stop"]);
}
