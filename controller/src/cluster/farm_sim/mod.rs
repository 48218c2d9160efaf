//! Deterministic simulation of one farm module on 2 to 4 nodes: the real
//! [`FarmCore`](super::farm::FarmCore)s with everything around them
//! modelled — clocks at rates up to ±0.9 % apart, per-link delay, loss,
//! reordering and cuts (one way too), kernel bucket sets applied with a
//! delay, the VIP with its lifetime (renewed only when the core says so),
//! node crashes (the kernel set stays, the VIP runs out), daemon restarts
//! (a new incarnation that empties the set first) and application failures.
//!
//! After every simulated millisecond the invariants in [`invariants`] are
//! checked (one per file). A safety phase with faults is followed by a
//! liveness phase without them, which must end, within a bound, with every
//! node UP and every bucket owned by its `assign()` owner.
//!
//! Seeds: `MIRRORFARM_SIM_SEED=S` replays one; `MIRRORFARM_SIM_SEEDS=N`
//! sweeps 1..=N (default 700, ~20 s in release; 10 000 swept clean). A failure prints the seed and the trace.

mod invariants;
#[cfg(test)]
mod sim_test;
mod world;
