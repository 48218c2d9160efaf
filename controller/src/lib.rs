//! The mirrorfarm controller: cluster configuration, heartbeats, membership, quorum,
//! the per-module state machines (STOP/WAIT/ALONE/PRIM/SECOND/UP), application
//! scripts, checkers and virtual IPs, driven by the `mirrorfarm` daemon and CLI.
//!
//! Not built yet: the mirrorfs replication path comes first (issues 2 and 3). This
//! crate must never touch replicated data itself; it drives `mirrorfs` through its
//! command line and control socket.
