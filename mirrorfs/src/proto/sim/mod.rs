//! Deterministic simulation of the primary's decisions ([`Primary`]) with
//! everything around them modelled: application threads whose mutations are
//! begun, applied locally and submitted under one sequencer (three steps, so
//! that anything else may happen between them), the ordered link to a
//! secondary that applies ops, refuses some (ENOSPC) and answers, the resync
//! worker (visits, listings, `SetGeneration`), a controller that grants
//! `alone`, fences and unfences, the metadata disk (which may fail a write),
//! connection losses, secondary restarts and time.
//!
//! After every step the invariants in [`invariants`] are checked against the
//! [`oracle`] of what the application saw acknowledged: every acknowledged
//! change is on the secondary or durably recorded for the resync; "in sync"
//! only when the trees are equal; a secondary that shares the primary's
//! generation holds every acknowledged change; an unreplicated change is
//! acknowledged only as the configuration and the controller allow; the
//! generation history only grows. A safety phase with faults is followed by a
//! liveness phase without them, which must end in sync with equal trees.
//!
//! The seed comes from `MIRRORFS_SIM_SEED` (else a sweep of
//! `MIRRORFS_SIM_SEEDS`, 2000 by default); every failure prints the seed and
//! the trace's tail; one test runs a seed twice and compares traces.

mod harness;
mod invariants;
mod oracle;
#[cfg(test)]
mod primary_sim_test;
