#!/usr/bin/env bash
# The whole test suite, as root: machine setup, release build, formatting,
# lints, the sans-IO rule, then every test (unit, simulation and the end-to-end
# tests across network namespaces). Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "setup (packages, fuse.conf)"
scripts/setup.sh

step "cargo build --release --workspace"
cargo build --release --workspace

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# Protocol and cluster logic are sans-IO state machines (DESIGN.md, STYLE.md
# point 2): no sockets, clocks, runtimes or thread-local RNGs in these
# directories. Comment lines may name them.
step "sans-IO cores use no I/O, clocks or unseeded randomness"
forbidden='tokio::|std::net|Instant::now|SystemTime::now|thread_rng'
found=0
for dir in mirrorfs/src/proto controller/src/cluster; do
  [ -d "$dir" ] || continue
  # Tests (*_test.rs) may take a real instant as the origin of virtual time.
  if grep -rnE --exclude='*_test.rs' "$forbidden" "$dir" | grep -vE '^[^:]+:[0-9]+:[[:space:]]*//'; then
    found=1
  fi
done
if [ "$found" = 1 ]; then
  echo "test.sh: the lines above use I/O, clocks or thread_rng in a sans-IO core: pass them in as inputs" >&2
  exit 1
fi
echo "ok"

# The e2e tests run the release mirrorfs binary built above.
step "cargo test --workspace --release"
cargo test --workspace --release
