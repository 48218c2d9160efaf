#!/usr/bin/env bash
# The replication benchmark, as root: the machine setup (if this checkout has
# scripts/setup.sh), a release build of mirrorfs, then the bench, which runs
# local vs bindfs vs mirrorfs in its own network namespaces and writes the
# table to target/bench-replication.md. About 5 to 10 minutes on 2 cores.
# Arguments go to the bench; settings are environment variables:
#   MIRRORFS_BENCH_ROUNDS   rounds; each figure is their median (default 3)
#   MIRRORFS_BENCH_SECS     duration of each timed run (default 5)
#   MIRRORFS_BENCH_SEQ_MIB  size of the sequential write (default 512)
#   MIRRORFS_BENCH_TREE     files in the tree walked by find (default 100000)
#   MIRRORFS_BENCH_TARGETS  subset, e.g. local,mirrorfs (default all three)
#   MIRRORFS_BIN            another mirrorfs binary (default target/release/mirrorfs)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "bench: must run as root (network namespaces, mounts, drop_caches): sudo $0" >&2
  exit 1
fi
if [ -x scripts/setup.sh ]; then
  scripts/setup.sh
fi
cargo build --release -p mirrorfs
exec cargo bench --bench replication -- "$@"
