//! The I/O drivers that carry out the cluster cores' decisions: the daemon
//! ([`daemon`]) and its modules (mirror: [`module`], farm: [`farm`]), the mirrorfs processes
//! ([`mirror`]), the heartbeat and witness transport ([`net`]) and the
//! witness process ([`witness`]), application scripts ([`scripts`]),
//! checkers ([`checkers`]), the virtual IP ([`vip`]) and the metrics endpoint
//! ([`metrics`]).
pub mod checkers;
pub mod daemon;
pub mod farm;
pub mod metrics;
pub mod mirror;
pub mod module;
pub mod net;
pub mod scripts;
pub mod vip;
pub mod witness;
