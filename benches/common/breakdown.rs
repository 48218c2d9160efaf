//! The latency breakdown of mirrorfs's synchronous ops: each side's stage
//! histograms (`mirrorfs ctl latency`, see mirrorfs/src/latency.rs), reset
//! before a workload and read after it, printed beside the bare QUIC round
//! trip measured in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::sys;

/// The control sockets of the mount (node 1) and the serve (node 2).
pub(crate) struct Breakdown {
    pub(crate) bin: PathBuf,
    pub(crate) mount: PathBuf,
    pub(crate) serve: PathBuf,
}

/// `mirrorfs ctl --control SOCK latency [--reset]`: its figures.
fn latency(bin: &Path, control: &Path, reset: bool) -> Result<Vec<Value>, String> {
    let mut cmd = Command::new(bin);
    cmd.arg("ctl").arg("--control").arg(control).arg("latency");
    if reset {
        cmd.arg("--reset");
    }
    let out = sys::output_within(&mut cmd, Duration::from_secs(10))?;
    if !out.status.success() {
        return Err(format!(
            "mirrorfs ctl latency: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("mirrorfs ctl latency printed no JSON: {e}"))?;
    Ok(v["latency"].as_array().cloned().unwrap_or_default())
}

impl Breakdown {
    /// Forgets both sides' figures (before a workload).
    pub(crate) fn reset(&self) -> Result<(), String> {
        latency(&self.bin, &self.mount, true)?;
        latency(&self.bin, &self.serve, true)?;
        Ok(())
    }

    /// Both sides' figures since the reset, as Markdown lines: one per
    /// class of op, each stage's p50 (and p99) in microseconds.
    pub(crate) fn take(&self, what: &str) -> Result<Vec<String>, String> {
        let mut lines = vec![format!("breakdown, {what} (µs, p50 / p99; count):")];
        for (side, control) in [("primary", &self.mount), ("secondary", &self.serve)] {
            let figures = latency(&self.bin, control, false)?;
            for class in ["data", "sync", "meta"] {
                let stages: Vec<String> = figures
                    .iter()
                    .filter(|f| f["class"] == class)
                    .map(|f| {
                        format!(
                            "{} {:.0} / {:.0}",
                            f["stage"].as_str().unwrap_or("?"),
                            f["p50_us"].as_f64().unwrap_or(f64::NAN),
                            f["p99_us"].as_f64().unwrap_or(f64::NAN),
                        )
                    })
                    .collect();
                let count = figures
                    .iter()
                    .find(|f| f["class"] == class)
                    .and_then(|f| f["count"].as_u64());
                if let Some(count) = count {
                    lines.push(format!("  {side} {class} ({count}): {}", stages.join(", ")));
                }
            }
        }
        Ok(lines)
    }
}
