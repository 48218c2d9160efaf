//! The replication protocol, sans-IO: wire frames, paths, and the op stream state
//! machines of both ends.
//!
//! No I/O here: nothing in this directory touches a socket, a file, a clock or a
//! thread. Time is passed in as `now`; the drivers in `net` do the rest. `.ci`
//! greps this directory to keep it that way.

pub mod dirty;
pub mod generation;
pub mod pace;
pub mod path;
pub mod primary;
pub mod renames;
pub mod stream;
pub mod walk;
pub mod wire;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod sim_test;
