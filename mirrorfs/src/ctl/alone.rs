//! The order `alone SECONDS`: the controller holds quorum for that long, so a
//! primary that lost its peer may go on ALONE (a new generation) until then.
//! Past the grant's deadline the mount holds mutations again by itself, so a
//! frozen controller can never keep a node writing after its quorum lease ran
//! out; another `alone` renews the grant. Accepted in PRIM too (the
//! controller may see the loss first). The backend decides; this file checks
//! the argument.

use serde_json::Value;

use super::{Control, CtlError, Status};

/// The longest grant accepted, in seconds. A controller renews its lease
/// every few seconds; an hour is already far beyond any quorum lease.
pub const MAX_SECONDS: f64 = 3600.0;

/// Checks a grant's length: a finite number of seconds, more than 0 and at
/// most [`MAX_SECONDS`].
pub fn check_seconds(seconds: f64) -> Result<f64, CtlError> {
    if seconds.is_finite() && seconds > 0.0 && seconds <= MAX_SECONDS {
        Ok(seconds)
    } else {
        Err(CtlError::Malformed(format!(
            "alone needs \"seconds\" between 0 and {MAX_SECONDS} (the time the controller holds quorum for), not {seconds}"
        )))
    }
}

/// The `seconds` field of an `alone` request.
pub(super) fn seconds_field(v: Option<Value>) -> Result<f64, CtlError> {
    match v {
        Some(Value::Number(n)) => check_seconds(n.as_f64().unwrap_or(f64::NAN)),
        Some(other) => Err(CtlError::Malformed(format!(
            "alone's \"seconds\" is {other}, not a number: e.g. {}",
            super::Request::Alone { seconds: 5.0 }.encode()
        ))),
        None => Err(CtlError::Malformed(format!(
            "alone needs \"seconds\": e.g. {}",
            super::Request::Alone { seconds: 5.0 }.encode()
        ))),
    }
}

/// Carries out the order on `backend`.
pub(super) fn apply(backend: &dyn Control, seconds: f64) -> Result<Status, CtlError> {
    backend.alone(check_seconds(seconds)?)
}
