//! mirrorfs: the replicating FUSE overlay of mirrorfarm.
//!
//! Owns: the primary's passthrough overlay of a backing directory (`fs`), the
//! ordered, pipelined operation stream to the secondary (`proto`, sans-IO), the
//! secondary's application of that stream beneath its replica root (`replica`), the
//! QUIC/mutual-TLS transport between the two (`net`), the mount as a library call
//! (`mount`), the control protocol a controller drives both sides with (`ctl`),
//! the tree comparison (`verify`), and which extended attributes are replicated
//! data (`xattr`).
//!
//! Must not: touch any path outside the backing directory (primary) or the replica
//! root (secondary); acknowledge to an application a mutation the secondary has not
//! applied; accept a peer whose certificate is not the pinned one.

pub mod ctl;
pub mod discard;
pub mod fs;
pub mod latency;
pub mod meta;
pub mod mirror;
pub mod mount;
pub mod net;
pub mod proto;
pub mod replica;
pub mod sys;
pub mod verify;
pub mod xattr;
