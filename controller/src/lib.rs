//! The mirrorfarm controller: turns two servers into a mirror cluster. It owns
//! the module configuration ([`config`]), the sans-IO cluster logic
//! ([`cluster`]: heartbeat loss detection, the witness lease, the per-module
//! state machine STOP/WAIT/ALONE/PRIM/SECOND), the daemon's control protocol
//! shared by the daemon and the CLI ([`ctl`]), the I/O drivers that carry the
//! cluster's decisions out ([`driver`]: heartbeats, the witness, mirrorfs
//! processes, scripts, checkers, the virtual IP) and the one-machine lab
//! ([`lab`]).
//!
//! Must not: touch replicated data itself. It drives `mirrorfs` processes
//! through their command line and control sockets (linking the mirrorfs crate
//! for its `ctl` types and node identities only).

pub mod cluster;
pub mod config;
pub mod ctl;
pub mod driver;
pub mod lab;
