//! The orders: `start`, `stop`, `restart`, `swap`, `prim` and `second`, each
//! `{"version":1,"request":NAME,"module":MODULE}`, answered with
//! `{"version":1,"ok":true,"message":WHAT_WAS_DONE}` or an error line. They
//! share one shape and one handling, so they share this file; what each one
//! asks of the daemon:
//!
//! - `start`: run the module (STOP → WAIT, then PRIM or SECOND as the
//!   cluster decides).
//! - `stop`: stop it on this node (application stopped, VIP removed,
//!   mirrorfs unmounted; the peer goes on ALONE if it is primary).
//! - `restart`: restart the application where it runs (the stop and start
//!   scripts on the primary), without a failover.
//! - `swap`: exchange the roles of the two nodes (a controlled failover).
//! - `prim`: make this node the primary (refused unless its data is
//!   consistent and the newest).
//! - `second`: make this node the secondary (the peer takes over).
//!
//! The daemon decides whether an order can be carried out and says why not.

use std::time::Duration;

use serde_json::{Map, Value};

use super::{module_field, AnswerLine, CtlError, Daemon, Request};

/// The orders' names on the wire.
pub const NAMES: [&str; 6] = ["start", "stop", "restart", "swap", "prim", "second"];

/// How long the CLI waits for an order's answer: the daemon answers once the
/// order is carried out, which may take the module's scripts (each bounded by
/// its own timeout) on both nodes.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// The order named `name` with its fields; `None` if `name` is no order.
pub(super) fn decode(
    name: &str,
    fields: &mut Map<String, Value>,
) -> Result<Option<Request>, CtlError> {
    let make: fn(String) -> Request = match name {
        "start" => |module| Request::Start { module },
        "stop" => |module| Request::Stop { module },
        "restart" => |module| Request::Restart { module },
        "swap" => |module| Request::Swap { module },
        "prim" => |module| Request::Prim { module },
        "second" => |module| Request::Second { module },
        _ => return Ok(None),
    };
    Ok(Some(make(module_field(name, fields)?)))
}

/// Carries out an order on `daemon`: the answer line.
pub(super) fn apply(daemon: &dyn Daemon, req: &Request) -> AnswerLine {
    match daemon.order(req) {
        Ok(message) => AnswerLine::Done(message),
        Err(error) => AnswerLine::Error(error),
    }
}
