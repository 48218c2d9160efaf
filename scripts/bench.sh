#!/usr/bin/env bash
# The benchmarks, as root: the machine setup (if this checkout has
# scripts/setup.sh), a release build (mirrorfs; the whole workspace for the
# failover and farm benches, which run mirrorfarm), then the benches, each in its own
# network namespaces:
#   scripts/bench.sh [all]               replication, resync, failover, then farm
#   scripts/bench.sh replication [ARGS]  local vs bindfs vs GlusterFS replica 2 vs mirrorfs,
#                                        writes target/bench-replication.md (5-10 min on
#                                        2 cores, some 10 more with GlusterFS: its
#                                        100 000-file tree alone takes 4-8)
#   scripts/bench.sh resync [ARGS]       incremental and --full resync, sync writes
#                                        ALONE and during a resync, writes
#                                        target/bench-resync.md (about 10 min on 2 cores)
#   scripts/bench.sh failover [ARGS]     the client's outage when the primary of the Apache
#                                        mirror lab is killed, swapped or loses Apache, vs
#                                        keepalived; writes target/bench-failover.md (about
#                                        4 min on 2 cores)
#   scripts/bench.sh farm [ARGS]         the Apache farm of the lab: wrk through the farm VIP vs
#                                        one node's own address vs haproxy over the three nodes,
#                                        and the takeover time of a SIGKILLed farm node's clients;
#                                        writes target/bench-farm.md (about 2 min on 2 cores)
# ARGS go to the bench; settings are environment variables:
#   MIRRORFS_BENCH_ROUNDS   replication: rounds; each figure is their median (default 3)
#   MIRRORFS_BENCH_SECS     replication: duration of each timed run (default 5)
#   MIRRORFS_BENCH_SEQ_MIB  replication: size of the sequential write (default 512)
#   MIRRORFS_BENCH_TREE     replication: files in the tree walked by find (default 100000)
#   MIRRORFS_BENCH_TARGETS  replication: subset of local,bindfs,glusterfs,mirrorfs,
#                           mirrorfs-onsync, e.g. local,mirrorfs (default all)
#   MIRRORFS_BENCH_ACK      replication: mirrorfs ack modes, each-op,on-sync (default both:
#                           targets mirrorfs and mirrorfs-onsync)
#   MIRRORFS_BENCH_RESYNC_FILES      resync: files in the tree (default 100000)
#   MIRRORFS_BENCH_RESYNC_MIB        resync: their total size (default 2048)
#   MIRRORFS_BENCH_RESYNC_LARGE_MIB  resync: size of the large file (default 1024)
#   MIRRORFS_BENCH_RESYNC_ROUNDS     resync: rounds of the incremental resync and
#                                    of the sync writes (default 5)
#   MIRRORFS_BENCH_RESYNC_SECS       resync: duration of each sync-write run (default 4)
#   MIRRORFARM_BENCH_FAILOVER_RUNS   failover: runs of each scenario (default 5)
#   MIRRORFARM_BENCH_FARM_RUNS       farm: takeover runs (default 5)
#   MIRRORFARM_BENCH_FARM_SECS       farm: duration of each wrk run (default 10)
#   MIRRORFARM_BENCH_FARM_CONNS      farm: wrk connections (default 32)
#   MIRRORFS_BIN            another mirrorfs binary (default target/release/mirrorfs)
#   MIRRORFARM_BIN          failover, farm: another mirrorfarm binary (default
#                           target/release/mirrorfarm)
set -euo pipefail
cd "$(dirname "$0")/.."

which=all
case "${1:-}" in
  all | replication | resync | failover | farm)
    which=$1
    shift
    ;;
esac
if [ "$which" = all ] && [ $# -gt 0 ]; then
  echo "bench: arguments go to one bench: $0 replication|resync|failover|farm ARGS..." >&2
  exit 2
fi
if [ "$(id -u)" != 0 ]; then
  echo "bench: must run as root (network namespaces, mounts, drop_caches): sudo $0" >&2
  exit 1
fi
if [ -x scripts/setup.sh ]; then
  scripts/setup.sh
fi
case "$which" in
  all | failover | farm) cargo build --release --workspace ;;
  *) cargo build --release -p mirrorfs ;;
esac
case "$which" in
  all)
    cargo bench --bench replication
    cargo bench --bench resync
    cargo bench --bench failover
    cargo bench --bench farm
    ;;
  *)
    exec cargo bench --bench "$which" -- "$@"
    ;;
esac
