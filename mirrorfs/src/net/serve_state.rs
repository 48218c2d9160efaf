//! [`ServeState`]: what a running `mirrorfs serve` reports on its control
//! socket (role SECOND): whether a primary is connected, the last op applied,
//! whether a resync runs, whether the replica is marked inconsistent, its
//! generation history, and whether it is stalled (an op has been busy on the
//! disk for longer than the peer timeout). The apply thread updates what
//! applying changes (busy, applied, failed ops), the server's runtime the
//! connections; a status costs a lock and a few loads. Orders are refused: they go to the
//! primary's mount.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::ctl::{Changes, Control, CtlError, LastApplied, Role, Status, VERSION};
use crate::proto::generation::History;
use crate::proto::wire::{Op, Seq};

/// The secondary's state, shared by its connections and its control socket.
#[derive(Debug)]
pub struct ServeState {
    /// The pinned primary's node name.
    primary: String,
    /// When serving began (the role's start).
    started: Instant,
    /// An op busy longer than this counts as stalled.
    stall_after: Duration,
    inner: Mutex<Inner>,
    changes: Changes,
    /// The last op applied: its sequence number and when (Unix time in
    /// nanoseconds; 0: none yet).
    last_seq: AtomicU64,
    last_unix_nanos: AtomicU64,
    /// Ops busy on the disk (applying, or an fsync on the blocking pool),
    /// by when they started.
    busy: Mutex<BTreeMap<(Instant, u64), ()>>,
    next_busy: AtomicU64,
    /// A stall was reported (its end is then a change too).
    stall_reported: AtomicBool,
}

#[derive(Debug)]
struct Inner {
    /// The current connection: its number and the primary's address.
    connection: Option<(u64, SocketAddr)>,
    history: History,
    inconsistent: bool,
    resync_running: bool,
    last_error: Option<String>,
}

/// An op busy on the disk; dropped when it is done.
#[derive(Debug)]
pub struct Busy {
    state: Arc<ServeState>,
    key: (Instant, u64),
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.state.lock_busy().remove(&self.key);
        if self.state.stall_reported.swap(false, Ordering::SeqCst) {
            // Over, or another op is the stalled one now: either way, tell.
            self.state.changes.bump();
        }
    }
}

impl ServeState {
    /// The state of a serve for `primary` over a replica with `history`
    /// (`inconsistent`: marked so).
    pub fn new(primary: &str, stall_after: Duration, history: History, inconsistent: bool) -> Self {
        Self {
            primary: primary.to_owned(),
            started: Instant::now(),
            stall_after,
            inner: Mutex::new(Inner {
                connection: None,
                history,
                inconsistent,
                resync_running: false,
                last_error: None,
            }),
            changes: Changes::default(),
            last_seq: AtomicU64::new(0),
            last_unix_nanos: AtomicU64::new(0),
            busy: Mutex::new(BTreeMap::new()),
            next_busy: AtomicU64::new(0),
            stall_reported: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_busy(&self) -> MutexGuard<'_, BTreeMap<(Instant, u64), ()>> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connection `n` from the primary at `addr` passed the hello and is now
    /// the current one.
    pub fn connected(&self, n: u64, addr: SocketAddr) {
        let mut st = self.lock();
        st.connection = Some((n, addr));
        st.resync_running = false;
        st.last_error = None;
        drop(st);
        self.changes.bump();
    }

    /// Connection `n` ended (`why`: closed for bad input, else `None`).
    pub fn disconnected(&self, n: u64, why: Option<String>) {
        let mut st = self.lock();
        if st.connection.is_some_and(|(cur, _)| cur == n) {
            st.connection = None;
            st.resync_running = false;
        }
        if why.is_some() {
            st.last_error = why;
        }
        drop(st);
        self.changes.bump();
    }

    /// A problem worth reporting (a refused connection, a failed op).
    pub fn error(&self, why: String) {
        let mut st = self.lock();
        if st.last_error.as_ref() != Some(&why) {
            st.last_error = Some(why);
            drop(st);
            self.changes.bump();
        }
    }

    /// An op starts its work on the disk; the guard ends it.
    pub fn busy(self: &Arc<Self>) -> Busy {
        let key = (
            Instant::now(),
            self.next_busy.fetch_add(1, Ordering::Relaxed),
        );
        self.lock_busy().insert(key, ());
        Busy {
            state: self.clone(),
            key,
        }
    }

    /// `op`, number `seq` on connection `n`, was applied (`ok`: without an
    /// error).
    pub fn applied(&self, n: u64, seq: Seq, op: &Op, ok: bool) {
        self.last_seq.store(seq.0, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.last_unix_nanos.store(now, Ordering::Relaxed);
        let resync_op = matches!(
            op,
            Op::BeginResync { .. }
                | Op::EnsureDir { .. }
                | Op::EnsureFile { .. }
                | Op::EnsureSymlink { .. }
                | Op::EnsureNode { .. }
                | Op::ReplaceXattrs { .. }
                | Op::List { .. }
                | Op::Checksums { .. }
                | Op::Remove { .. }
        );
        let refused_change = !ok && crate::replica::apply::refusal_diverges(op);
        if !refused_change && (!ok || !(resync_op || matches!(op, Op::SetGeneration { .. }))) {
            return;
        }
        let mut st = self.lock();
        let current = st.connection.is_some_and(|(cur, _)| cur == n);
        let before = (st.resync_running, st.inconsistent, st.history.clone());
        match op {
            // The applier marked the tree inconsistent: it lacks a change.
            _ if refused_change => st.inconsistent = true,
            Op::SetGeneration { ids } => {
                st.history = History::from_ids(
                    ids.iter()
                        .map(|i| crate::proto::generation::GenerationId(*i))
                        .collect(),
                );
                st.inconsistent = false;
                st.resync_running = false;
            }
            Op::BeginResync { .. } => {
                st.inconsistent = true;
                st.resync_running = current;
            }
            _ => st.resync_running |= current,
        }
        let changed = before != (st.resync_running, st.inconsistent, st.history.clone());
        drop(st);
        if changed {
            self.changes.bump();
        }
    }

    /// True when an op has been busy for longer than the stall limit; the
    /// time until one would be otherwise.
    fn stall(&self) -> (bool, Option<Duration>) {
        match self.lock_busy().keys().next() {
            Some((since, _)) => {
                let busy = since.elapsed();
                if busy >= self.stall_after {
                    (true, None)
                } else {
                    (false, Some(self.stall_after - busy))
                }
            }
            None => (false, None),
        }
    }
}

impl Control for ServeState {
    fn status(&self) -> Status {
        let st = self.lock();
        let last = match (
            self.last_seq.load(Ordering::Relaxed),
            self.last_unix_nanos.load(Ordering::Relaxed),
        ) {
            (_, 0) => None,
            (seq, nanos) => Some(LastApplied {
                seq,
                unix_secs: nanos as f64 / 1e9,
            }),
        };
        Status {
            version: VERSION,
            role: Role::Second,
            in_sync: false,
            connected: st.connection.is_some(),
            dirty_files: 0,
            dirty_bytes: 0,
            resync: None,
            generation: st.history.current().map(|g| g.to_string()),
            history: st.history.ids().iter().map(|g| g.to_string()).collect(),
            stalled: self.stall().0,
            pid: std::process::id(),
            last_error: st.last_error.clone(),
            peer: st.connection.map(|(_, a)| a.to_string()),
            peer_node: self.primary.clone(),
            role_secs: self.started.elapsed().as_secs_f64(),
            ops_in_flight: None,
            alone_secs_left: None,
            held_ops: None,
            primary_connected: Some(st.connection.is_some()),
            last_applied: Some(last),
            resync_running: Some(st.resync_running),
            inconsistent: Some(st.inconsistent),
            ack: None,
        }
    }

    fn wait_change(&self, seen: u64, timeout: Duration) -> u64 {
        // A stall begins with time alone: wake when the oldest busy op
        // would count as stalled, and count that as a change.
        let (stalled, until) = self.stall();
        if stalled && !self.stall_reported.swap(true, Ordering::SeqCst) {
            self.changes.bump();
        }
        let count = self
            .changes
            .wait(seen, until.map_or(timeout, |u| u.min(timeout)));
        if count == seen && self.stall().0 && !self.stall_reported.swap(true, Ordering::SeqCst) {
            self.changes.bump();
            return self.changes.count();
        }
        count
    }

    fn alone(&self, _seconds: f64) -> Result<Status, CtlError> {
        Err(secondary())
    }

    fn fence(&self) -> Result<Status, CtlError> {
        Err(secondary())
    }

    fn unfence(&self) -> Result<Status, CtlError> {
        Err(secondary())
    }
}

fn secondary() -> CtlError {
    CtlError::Refused(
        "this is the secondary (serve): orders go to the primary's mount (its --control socket)"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::path::RelPath;

    fn state(stall_after: Duration) -> Arc<ServeState> {
        Arc::new(ServeState::new(
            "node1",
            stall_after,
            History::default(),
            false,
        ))
    }

    #[test]
    fn a_refused_change_shows_the_replica_inconsistent() {
        let s = state(Duration::from_secs(60));
        s.connected(1, "10.0.0.1:4000".parse().unwrap());
        let list = Op::List {
            path: RelPath::root(),
            after: None,
            budget: crate::proto::wire::MIN_LIST_BUDGET,
        };
        s.applied(1, Seq(1), &list, false);
        assert_eq!(s.status().inconsistent, Some(false));
        let unlink = Op::Unlink {
            path: RelPath::new(b"f".to_vec()).unwrap(),
        };
        s.applied(1, Seq(2), &unlink, false);
        assert_eq!(s.status().inconsistent, Some(true));
        s.applied(1, Seq(3), &Op::SetGeneration { ids: vec![9] }, true);
        assert_eq!(s.status().inconsistent, Some(false));
    }

    #[test]
    fn connection_resync_and_generation_show_in_the_status() {
        let s = state(Duration::from_secs(60));
        let st = s.status();
        assert_eq!(st.role, Role::Second);
        assert_eq!(st.primary_connected, Some(false));
        assert_eq!(st.last_applied, Some(None));
        assert_eq!((st.generation, st.inconsistent), (None, Some(false)));
        let addr: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        s.connected(1, addr);
        s.applied(1, Seq(1), &Op::BeginResync { generation: 9 }, true);
        let st = s.status();
        assert_eq!(st.peer.as_deref(), Some("10.0.0.1:4000"));
        assert_eq!(st.resync_running, Some(true));
        assert_eq!(st.inconsistent, Some(true));
        assert_eq!(st.last_applied.flatten().map(|l| l.seq), Some(1));
        s.applied(1, Seq(2), &Op::SetGeneration { ids: vec![9, 3] }, true);
        let st = s.status();
        assert_eq!(
            (st.resync_running, st.inconsistent),
            (Some(false), Some(false))
        );
        assert_eq!(st.generation.as_deref(), Some("0000000000000009"));
        assert_eq!(st.history.len(), 2);
        // A resync op marks a resync running; an older connection's end
        // does not disconnect the newer one.
        s.connected(2, addr);
        s.applied(
            2,
            Seq(1),
            &Op::List {
                path: RelPath::root(),
                after: None,
                budget: crate::proto::wire::MIN_LIST_BUDGET,
            },
            true,
        );
        assert_eq!(s.status().resync_running, Some(true));
        s.disconnected(1, None);
        assert_eq!(s.status().primary_connected, Some(true));
        s.disconnected(2, Some("malformed frame".into()));
        let st = s.status();
        assert_eq!(st.primary_connected, Some(false));
        assert_eq!(st.resync_running, Some(false));
        assert_eq!(st.last_error.as_deref(), Some("malformed frame"));
        assert!(s.fence().unwrap_err().to_string().contains("secondary"));
    }

    #[test]
    fn a_long_busy_op_is_a_stall_and_wakes_the_watcher() {
        let s = state(Duration::from_millis(50));
        let seen = s.wait_change(0, Duration::ZERO);
        let busy = s.busy();
        assert!(!s.status().stalled);
        let t = Instant::now();
        let after = s.wait_change(seen, Duration::from_secs(10));
        assert_ne!(after, seen, "the stall's start is a change");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "woken by the stall, not the timeout"
        );
        assert!(s.status().stalled);
        drop(busy);
        assert!(!s.status().stalled);
        assert_ne!(s.wait_change(after, Duration::ZERO), after, "its end too");
    }
}
