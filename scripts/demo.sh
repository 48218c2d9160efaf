#!/usr/bin/env bash
# The one-machine demo of mirrorfs, as root: two nodes (network namespaces
# joined by a virtual cable), node2 serving a replica, node1 mounting a
# replicated directory; files written on node1 are on node2 when the write
# returns. Everything it makes is removed on exit, also on Ctrl-C or failure.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
run() { printf '  $ %s\n' "$*"; "$@" 2>&1 | sed 's/^/    /'; }
shell() { printf '  $ %s\n' "$1"; sh -c "$1" 2>&1 | sed 's/^/    /'; }

say "Preparing the machine and building mirrorfs"
scripts/setup.sh
cargo build --release -p mirrorfs
MFS=${MIRRORFS_BIN:-$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/mirrorfs}

TAG=mfdemo$$
N1=${TAG}-node1 N2=${TAG}-node2
NET=10.250.$(($$ % 250))
IP1=$NET.1 IP2=$NET.2 PORT=7411
DIR=$(mktemp -d /var/tmp/mirrorfs-demo.XXXXXX) # /var/tmp: /tmp may lack user xattrs
KEYS=$DIR/keys BACKING=$DIR/node1-backing REPLICA=$DIR/node2-replica MNT=$DIR/node1-mnt
SERVE_PID= MOUNT_PID=

cleanup() {
  set +e
  say "Cleaning up"
  cd / # not inside the mount
  if findmnt -n "$MNT" >/dev/null 2>&1; then
    fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT"
  fi
  for pid in $MOUNT_PID $SERVE_PID; do
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  done
  wait 2>/dev/null
  ip netns del "$N1" 2>/dev/null
  ip netns del "$N2" 2>/dev/null
  # Anything still mounted beneath DIR (deepest first) must go before rm -rf.
  findmnt -rn -o TARGET | grep "^$DIR/" | sort -r | xargs -r -n1 umount -l
  rm -rf "$DIR"
  echo "  removed the namespaces, the processes and $DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# on_node NS CMD...: run CMD in a node's network namespace only; the mount namespace
# stays shared, so node1's FUSE mount is visible here (ip netns exec would hide it).
on_node() { local ns=$1; shift; nsenter --net="/run/netns/$ns" "$@"; }

fail() {
  echo "demo: $*" >&2
  for log in "$DIR"/*.log; do [ -s "$log" ] && { echo "--- $log"; tail -n 5 "$log"; }; done >&2
  exit 1
}

say "1. Two nodes: network namespaces $N1 ($IP1) and $N2 ($IP2), one virtual cable"
ip netns add "$N1"
ip netns add "$N2"
ip -n "$N1" link add eth0 type veth peer name eth0 netns "$N2"
ip -n "$N1" addr add "$IP1/24" dev eth0
ip -n "$N2" addr add "$IP2/24" dev eth0
for ns in "$N1" "$N2"; do
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
done
run on_node "$N1" ping -c 1 -W 2 "$IP2"

say "2. A key pair per node; each side will accept only the other's certificate"
mkdir -p "$KEYS" "$BACKING" "$REPLICA" "$MNT"
run "$MFS" keygen --dir "$KEYS" --name node1
run "$MFS" keygen --dir "$KEYS" --name node2
run ls "$KEYS"

say "3. node2 serves its replica directory over QUIC (UDP $IP2:$PORT)"
echo "  $ mirrorfs serve --root $REPLICA --listen $IP2:$PORT ..."
on_node "$N2" "$MFS" serve --root "$REPLICA" --listen "$IP2:$PORT" \
  --key "$KEYS/node2.key" --cert "$KEYS/node2.crt" --peer-cert "$KEYS/node1.crt" \
  >"$DIR/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 100); do
  on_node "$N2" ss -lun | grep -q ":$PORT " && break
  kill -0 "$SERVE_PID" 2>/dev/null || fail "mirrorfs serve exited"
  sleep 0.1
done
on_node "$N2" ss -lun | grep -q ":$PORT " || fail "mirrorfs serve is not listening after 10 s"

say "4. node1 mounts its backing directory through mirrorfs, replicating to node2"
echo "  $ mirrorfs mount --backing $BACKING --mountpoint $MNT --peer $IP2:$PORT ... --foreground"
on_node "$N1" "$MFS" mount --backing "$BACKING" --mountpoint "$MNT" --peer "$IP2:$PORT" \
  --key "$KEYS/node1.key" --cert "$KEYS/node1.crt" --peer-cert "$KEYS/node2.crt" \
  --foreground >"$DIR/mount.log" 2>&1 &
MOUNT_PID=$!
for _ in $(seq 100); do
  findmnt -n "$MNT" >/dev/null 2>&1 && break
  kill -0 "$MOUNT_PID" 2>/dev/null || fail "mirrorfs mount exited"
  sleep 0.1
done
findmnt -n "$MNT" >/dev/null 2>&1 || fail "mirrorfs mount did not mount after 10 s"
run findmnt "$MNT"

say "5. An application writes on node1, through the mount"
cd "$MNT"
echo "  (in $MNT)"
shell "echo 'hello from node1' > hello.txt"
shell "mkdir -p site/images"
shell "head -c 1048576 /dev/urandom > site/images/photo.bin"
shell "echo '<h1>mirrored</h1>' > site/index.html"
shell "chmod 600 hello.txt"
shell "ln -s site/index.html index.html"
cd - >/dev/null
echo "  Each write returned only after node2 had applied it."

say "6. The same files, read directly from node2's replica directory"
run ls -lR "$REPLICA"
FILES="hello.txt site/index.html site/images/photo.bin"
echo "  Checksums on node1, through the mount:"
(cd "$MNT" && run sha256sum $FILES)
echo "  Checksums on node2, in the replica:"
(cd "$REPLICA" && run sha256sum $FILES)

say "7. mirrorfs verify compares node1's backing directory with node2's replica"
echo "  $ mirrorfs verify $BACKING $REPLICA"
rc=0
"$MFS" verify "$BACKING" "$REPLICA" >"$DIR/verify.out" 2>&1 || rc=$?
sed 's/^/    /' "$DIR/verify.out"
case $rc in
  0) echo "  exit 0: the two trees are identical." ;;
  1) fail "mirrorfs verify found the differences above" ;;
  *) fail "mirrorfs verify could not compare the trees (exit $rc)" ;;
esac

say "Done: node1's writes were on node2 when they returned; the trees are identical."
