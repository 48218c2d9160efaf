//! The cluster's decisions, sans-IO: plain structs fed events with the time
//! they happened, returning actions; no sockets, clocks, threads or
//! unseeded randomness here (`.ci/run` greps for them). The drivers in
//! [`crate::driver`] carry the actions out.
//!
//! - [`state`]: the module states and what a node knows of its data.
//! - [`msg`]: heartbeats and witness messages.
//! - [`link`]: losing and finding the peer across heartbeat networks.
//! - [`witness`]: the witness's lease decisions.
//! - [`module`]: one module on one node (STOP/WAIT/ALONE/PRIM/SECOND).
//! - [`farm`]: one farm module on one node (STOP/WAIT/UP): membership,
//!   quorum and bucket ownership, released before taken.
//! - [`checker`]: a checker's failures → restart, swap or stop; loop protection.
//! - `sim` (tests): a seeded simulation of two nodes and a witness.
//! - `farm_sim` (tests): a seeded simulation of a farm of 2 to 4 nodes.

pub mod checker;
pub mod farm;
pub mod link;
pub mod module;
pub mod msg;
pub mod state;
pub mod witness;

#[cfg(test)]
mod farm_sim;
#[cfg(test)]
mod sim;

use std::time::Duration;

/// The safety margin on a duration `d` that two clocks measure: they may
/// run at rates up to 1 % apart, so a holder gives up at `d − margin` and
/// the other side waits `d + margin` (2 % each way, and at least 10 ms).
pub fn margin(d: Duration) -> Duration {
    (d / 50).max(Duration::from_millis(10))
}
