//! Replication latency/throughput, failover time and farm throughput benchmarks.
//!
//! Not written yet: this placeholder only exists because the root `Cargo.toml`
//! declares the bench, and `cargo fmt`/`cargo clippy --all-targets` refuse to run
//! while a declared target is missing. Replace it with the real benchmark.

fn main() {
    println!("benches/replication.rs: no benchmark yet");
}
