//! The secondary's side of replication: applying operations beneath the replica
//! root.
//!
//! Owns the root descriptor, the table of replicated writable handles, and the
//! syscalls that reproduce each [`Op`](crate::proto::wire::Op). Every name is
//! resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_SYMLINKS)` from the root (in pieces, each beneath the last, when
//! longer than `PATH_MAX`: see [`crate::sys::openat2`]), and final components are acted on with
//! `*at` calls that never follow symlinks, so nothing outside the root is ever
//! touched, whatever the peer sends.

pub mod apply;

pub use apply::{Applied, Applier, SyncHow};
