//! The witness's decisions: one lease per module at a time (DESIGN.md,
//! "Quorum"). No I/O: reports come in with the time they arrived, answers go
//! out, and the part that must survive a restart (which node's data is
//! behind) is handed to the driver to persist.
//!
//! The rules, for a report that asks for the lease:
//! - A restarted witness grants nothing until a lease's length (plus the
//!   margin) has passed: a lease it granted before may still run.
//! - A lease held by the other node is refused until `lease + margin` after
//!   the last grant to it (the holder gives up at `lease − margin`, counted
//!   from when it *sent* the report; the margin covers clock drift).
//! - A node whose data is behind (the other wrote ALONE under the lease and
//!   they have not been in sync since) is refused.
//! - A node that is not the primary is refused while the primary still
//!   reports (within its `timeout + margin`): a broken link between the
//!   nodes alone must not move the service. A primary keeps its quorum for
//!   `timeout − margin` after each report it got an answer to.
//!
//! A grant marks the holder's peer as behind (the holder may write alone); a report that says "in sync" clears it once no lease runs (its
//! holder could go alone again on it without asking).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::margin;
use super::msg::{Answer, LeaseAnswer, Report, VERSION};

/// What the witness keeps across restarts: per module, the node whose data
/// is behind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// Module → the node that must not take over (its peer wrote alone).
    pub behind: BTreeMap<String, String>,
}

/// One module as the witness sees it.
#[derive(Debug, Clone, Default)]
struct ModuleView {
    /// The lease's holder and when the other may have it.
    holder: Option<(String, Instant)>,
    /// The node that last reported itself primary, and when.
    primary: Option<(String, Instant, Duration)>,
    /// The node that got the last grant and the seq of that report: an
    /// older report of that node (delayed) must not clear what the grant
    /// marked. (Each node counts its own reports.)
    last_grant: Option<(String, u64)>,
}

/// The witness core.
#[derive(Debug)]
pub struct Witness {
    started: Instant,
    modules: BTreeMap<String, ModuleView>,
    persisted: Persisted,
    dirty: bool,
}

impl Witness {
    /// A witness started at `now` with what it persisted before.
    pub fn new(now: Instant, persisted: Persisted) -> Self {
        Self {
            started: now,
            modules: BTreeMap::new(),
            persisted,
            dirty: false,
        }
    }

    /// Takes a report received at `now` and answers it.
    pub fn handle_report(&mut self, now: Instant, r: &Report) -> Answer {
        let lease = Duration::from_millis(r.lease_ms);
        let timeout = Duration::from_millis(r.timeout_ms);
        let view = self.modules.entry(r.module.clone()).or_default();
        if r.primary {
            view.primary = Some((r.node.clone(), now, timeout));
        } else if matches!(&view.primary, Some((p, ..)) if *p == r.node) {
            view.primary = None;
        }
        if r.release && !r.primary && matches!(&view.holder, Some((h, _)) if *h == r.node) {
            view.holder = None;
        }
        // In sync: the peer holds everything, unless a lease still runs: its
        // holder's mirrorfs may go alone again on it without asking.
        // (After a restart the witness does not know which lease runs: its
        // quiet time counts as one.)
        let lease_runs = matches!(&view.holder, Some((_, until)) if now < *until)
            || now < self.started + lease + margin(lease);
        if r.in_sync
            && !lease_runs
            && !matches!(&view.last_grant, Some((n, seq)) if *n == r.node && r.seq <= *seq)
            && self.persisted.behind.remove(&r.module).is_some()
        {
            self.dirty = true;
        }
        let answer = if r.want_lease {
            match self.decide(now, r, lease) {
                Ok(()) => {
                    let view = self.modules.entry(r.module.clone()).or_default();
                    view.holder = Some((r.node.clone(), now + lease + margin(lease)));
                    view.last_grant = Some((r.node.clone(), r.seq));
                    // The lease lets its holder write alone: from now on the
                    // peer may lack what it writes.
                    if self.persisted.behind.get(&r.module) != Some(&r.peer) {
                        self.persisted
                            .behind
                            .insert(r.module.clone(), r.peer.clone());
                        self.dirty = true;
                    }
                    LeaseAnswer::Granted { ms: r.lease_ms }
                }
                Err((reason, retry)) => LeaseAnswer::Refused { reason, retry },
            }
        } else {
            // A holder that no longer asks keeps the lease until it ends:
            // its mirrorfs may still run on the last grant.
            LeaseAnswer::NotAsked
        };
        Answer {
            version: VERSION,
            module: r.module.clone(),
            seq: r.seq,
            lease: answer,
            holder: self
                .modules
                .get(&r.module)
                .and_then(|v| v.holder.as_ref())
                .filter(|(_, until)| now < *until)
                .map(|(h, _)| h.clone()),
            behind: self.persisted.behind.get(&r.module) == Some(&r.node),
        }
    }

    /// The state to persist, once after each change (None: unchanged).
    pub fn poll_persist(&mut self) -> Option<Persisted> {
        std::mem::take(&mut self.dirty).then(|| self.persisted.clone())
    }

    /// The lease holders now (module → node), for status output.
    pub fn holders(&self, now: Instant) -> BTreeMap<String, String> {
        self.modules
            .iter()
            .filter_map(|(m, v)| match &v.holder {
                Some((h, until)) if now < *until => Some((m.clone(), h.clone())),
                _ => None,
            })
            .collect()
    }

    /// Whether to grant; refusals say why and whether to ask again.
    fn decide(&self, now: Instant, r: &Report, lease: Duration) -> Result<(), (String, bool)> {
        let quiet_until = self.started + lease + margin(lease);
        if now < quiet_until {
            return Err((format!(
                "the witness restarted {:.1} s ago and grants nothing for a lease's length ({:.1} s): a lease it granted before may still run",
                (now - self.started).as_secs_f64(),
                (lease + margin(lease)).as_secs_f64()
            ), true));
        }
        let view = self.modules.get(&r.module);
        if let Some((h, until)) = view.and_then(|v| v.holder.as_ref()) {
            // The holder renews while its lease runs: nothing else can have
            // changed that (no one else got it; its peer is marked behind).
            if *h == r.node && now < *until {
                return Ok(());
            }
            if *h != r.node && now < *until {
                return Err((
                    format!(
                        "{h} holds the lease for {:.1} s more",
                        (*until - now).as_secs_f64()
                    ),
                    false,
                ));
            }
        }
        if self.persisted.behind.get(&r.module) == Some(&r.node) {
            return Err((
                format!(
                    "{}'s data is behind: {} wrote alone and they have not been in sync since",
                    r.node, r.peer
                ),
                false,
            ));
        }
        if let Some((p, at, timeout)) = view.and_then(|v| v.primary.as_ref()) {
            if *p != r.node && now < *at + *timeout + margin(*timeout) {
                return Err((
                    format!(
                        "{p} is primary and still reports to the witness: it keeps the service"
                    ),
                    false,
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "witness_test.rs"]
mod tests;
