//! The `latency` request: where this process's replicated ops spent their
//! time, stage by stage (see [`crate::latency`]), and optionally a fresh
//! start (`"reset":true` answers the figures so far, then forgets them).
//! Read-only for the mount or serve: it decides nothing.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CtlError, VERSION};
pub use crate::latency::StageFigures;

/// The answer to `latency`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyAnswer {
    /// The protocol version.
    pub version: u32,
    /// Every stage with samples since the start or the last reset.
    pub latency: Vec<StageFigures>,
}

/// The figures so far; forgotten afterwards if `reset`.
pub fn answer(reset: bool) -> LatencyAnswer {
    let latency = crate::latency::snapshot();
    if reset {
        crate::latency::reset();
    }
    LatencyAnswer {
        version: VERSION,
        latency,
    }
}

/// The optional `reset` field of a `latency` request.
pub(crate) fn reset_field(v: Option<Value>) -> Result<bool, CtlError> {
    match v {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(b),
        Some(other) => Err(CtlError::Malformed(format!(
            "\"reset\" is {other}, not true or false: e.g. {{\"version\":{VERSION},\"request\":\"latency\",\"reset\":true}}"
        ))),
    }
}
