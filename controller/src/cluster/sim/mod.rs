//! Deterministic simulation of one mirror module on two nodes and a
//! witness: the real cores ([`ModuleCore`](super::module::ModuleCore),
//! [`Witness`](super::witness::Witness)) with everything around them
//! modelled — clocks that run at rates up to 1 % apart, heartbeat networks
//! and the witness link with latency, loss, reordering and partitions (one
//! way too), steps that take time, mirrorfs (mounts that hold writes without
//! their peer until a grant, serves, resyncs, generations), the application
//! writing all the time, the virtual IP with its lifetime, crashes of whole
//! nodes, of daemons alone (mirrorfs outlives them), stalls, witness
//! restarts and operator swaps.
//!
//! After every step the invariants in [`invariants`] are checked: never two
//! writers; never two nodes holding the VIP; a node that mounts holds every
//! acknowledged write. A safety phase with faults is followed by a liveness
//! phase without them, which must end with one node PRIM in sync and the
//! other SECOND.
//!
//! The seed comes from `MIRRORFARM_SIM_SEED` (else a sweep of
//! `MIRRORFARM_SIM_SEEDS`, 2000 by default; 500 of them again with
//! 100 ms / 1 s timing); a failure prints the seed and
//! the trace's tail; one test runs a seed twice and compares the traces.

mod invariants;
mod oracle;
#[cfg(test)]
mod sim_test;
mod world;

/// A small seeded generator (xorshift64*): the simulation's only randomness.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}
