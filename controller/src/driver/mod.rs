//! (being built)
pub mod checkers;
pub mod metrics;
pub mod net;
pub mod scripts;
pub mod vip;
pub mod witness;
