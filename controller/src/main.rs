//! The `mirrorfarm` command (being built).
fn main() {}
