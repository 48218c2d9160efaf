//! (being built)
pub mod checkers;
pub mod metrics;
pub mod scripts;
pub mod vip;
