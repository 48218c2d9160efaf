//! (being built)
pub mod checker;
