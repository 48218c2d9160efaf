//! End-to-end tests of mirrorfarm: real FUSE mounts and real QUIC between nodes
//! that are network namespaces on this machine (see `util::lab`). They need root
//! and the release `mirrorfs` binary (`cargo build --release -p mirrorfs`);
//! `scripts/test.sh` runs them with everything else.

/// Shared helpers: `wait_for`, the netns `Lab`, the two-node `Mirror` fixture.
mod util;

/// The lab itself: nodes reach each other, partitions block and heal, cleanup on panic.
mod lab_network;

/// Issue 2: acknowledged writes are on the secondary, a mixed workload verifies
/// clean, unknown certificates and unreachable peers are refused, a vanished
/// peer gives EIO.
mod mirror_replicate;

/// Issue 2: a peer holding the pinned certificate but sending hostile frames
/// changes nothing outside the replica root, and the server keeps serving.
mod hostile_peer;

/// Issue 2, item 9: SQLite and PostgreSQL keep every commit across a SIGKILL of
/// the primary's mirrorfs; Apache serves from the mount.
mod mirror_apps;

/// Issue 3: ALONE on peer loss, incremental and --full resync, split brain refused, status.
mod mirror_resync;

/// Issue 3: SIGKILL of the primary in rounds, failover by hand, no acknowledged write lost; split brain resolved by discard.
mod mirror_crash;

/// Issue 3, items 5 and 6: the secondary killed mid-resync, a full disk on the
/// secondary, files vanishing during a resync, a secondary restarted over and over.
mod mirror_faults;

/// Issue 7, section 1, the secondary's side: the peer's reach, one definition of
/// equal xattrs, size limits, working vs stalled vs dead, the server's limits.
mod mirror_serve_limits;

/// Issue 7: the review's findings and the churn-under-restarts scenario, each a
/// regression test.
mod mirror_review;

/// Issue 10, items 4 and 5: kept pages, cached listings and READDIRPLUS
/// entries follow every change through the mount.
mod mirror_reads;

/// Issue 10, item 7: `--ack on-sync` — a sync returns once everything before
/// it is on the secondary, a refused write fails the next fsync, the queue
/// of early-answered writes is bounded.
mod mirror_ack;

/// Issue 7, item 10: trees deeper than PATH_MAX replicate, resync and verify up to the 32 KiB bound.
mod mirror_deep;

/// Issue 7, section 3: the control API (ctl status/watch on mount and serve, state --root, an inconsistent replica refused, root only, hold orders).
mod mirror_control;

/// Issue 8: the controller in the lab — SIGKILL failover with every acknowledged
/// write, return as SECOND, swap (stop_prim before start_prim), the stall soak,
/// the checker's restarts then swap.
mod farm_failover;

/// Issue 8: node1's links cut with and without the witness: never two nodes on
/// the VIP or writing, no acknowledged write lost.
mod farm_partition;

/// Issue 8: active/active with two modules; bad configurations refused with
/// their message.
mod farm_modules;

/// Issue 9: the farm filter on three nodes sharing one VIP: each connection
/// answered once, even spread, address affinity, rebalance keeping established
/// connections, clean removal, hostile ARP ignored.
mod shared_vip;

/// Issue 9: the farm module in the lab (farm1..3, Apache, the controller):
/// one answer per client, affinity, a node killed or cut off and back, a
/// node whose Apache fails leaves until it passes.
mod farm_balance;
