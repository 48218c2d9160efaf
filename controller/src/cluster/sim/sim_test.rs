//! Runs the simulation over seeds.

use std::time::Instant;

use super::world::{Settings, World};

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("MIRRORFARM_SIM_SEED") {
        return vec![s.parse().expect("MIRRORFARM_SIM_SEED is a number")];
    }
    let n: u64 = std::env::var("MIRRORFARM_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    (1..=n).collect()
}

fn run(seed: u64, settings: Settings) -> Result<(), String> {
    let mut w = World::new(seed, Instant::now(), settings);
    w.run().map_err(|v| {
        let tail: Vec<String> = w.trace.iter().rev().take(60).rev().cloned().collect();
        format!(
            "seed {seed}: {v}\nnow: {}\ntrace (last 60 lines):\n{}\nreproduce with MIRRORFARM_SIM_SEED={seed}",
            w.describe(),
            tail.join("\n")
        )
    })
}

#[test]
fn the_module_is_safe_and_live_under_faults() {
    for seed in seeds() {
        if let Err(e) = run(seed, Settings::default()) {
            panic!("{e}");
        }
    }
}

#[test]
fn fast_timing_is_safe_and_live_under_faults() {
    let settings = Settings {
        interval_ms: 100,
        timeout_ms: 1200,
        lease_ms: 3000,
        ..Settings::default()
    };
    for seed in seeds().into_iter().take(500) {
        if let Err(e) = run(seed + 1_000_000, settings.clone()) {
            panic!("{e}");
        }
    }
}

#[test]
fn a_seed_replays_the_same_trace() {
    let trace = |seed| {
        let mut w = World::new(seed, Instant::now(), Settings::default());
        let _ = w.run();
        w.trace.clone()
    };
    let a = trace(12345);
    assert!(a.len() > 10, "the run did something: {a:?}");
    assert_eq!(a, trace(12345));
}
