#!/usr/bin/env bash
# The one-machine demo of mirrorfarm, as root. Three network namespaces on a
# virtual switch: node1 runs Apache on a site kept on a mirrorfs mount, node2
# holds the replica (mirrorfs serve), a client fetches pages. It shows that a
# page edited on node1 is on node2 when the write returns; that when node2's
# mirrorfs dies the site and a writing application carry on (ALONE) and record
# what changed; that when it is back only the changes are sent (RESYNC, then
# PRIM) and both trees are identical. Moving the service to node2 (failover)
# needs the controller, which is not built yet.
#
# Everything it makes (namespaces, mount, processes, temp dir) is removed on
# exit, also on Ctrl-C or failure. MIRRORFS_BIN=/path/to/mirrorfs demos another
# binary; MIRRORFS_DEMO_LOGS=DIR keeps the processes' logs there.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
note() { printf '  %s\n' "$*"; }
indent() { sed 's/^/    /'; }
# ns_of NODE: the network namespace of node1, node2 or client.
ns_of() { printf '%s-%s' "$TAG" "$1"; }
# on NODE CMD...: prints "NODE$ CMD" and runs CMD in NODE's network namespace
# (nsenter --net: the mount namespace stays shared, so node1's FUSE mount is
# visible everywhere; ip netns exec would hide it), output indented.
on() {
  local node=$1
  shift
  SHOWN="$node\$ $*"
  printf '  %s\n' "$SHOWN"
  nsenter --net="/run/netns/$(ns_of "$node")" "$@" 2>&1 | indent
}
# on_sh NODE 'SHELL CODE': the same for a shell command line.
on_sh() {
  SHOWN="$1\$ $2"
  printf '  %s\n' "$SHOWN"
  nsenter --net="/run/netns/$(ns_of "$1")" sh -c "$2" 2>&1 | indent
}
# quiet NODE CMD...: runs CMD in NODE's namespace without printing it.
quiet() {
  local node=$1
  shift
  nsenter --net="/run/netns/$(ns_of "$node")" "$@"
}
now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }
since() { awk -v a="$1" -v b="$(now_ms)" 'BEGIN { printf "%.1f s", (b - a) / 1000 }'; }

STEP="preparing"
fail() {
  trap - ERR
  printf '\n\033[1;31mdemo FAILED (%s): %s\033[0m\n' "$STEP" "$*" >&2
  if [ -n "${DIR:-}" ] && [ -d "$DIR/logs" ]; then
    for log in "$DIR"/logs/*; do
      [ -s "$log" ] && { echo "--- last lines of $log"; tail -n 8 "$log"; }
    done >&2
  fi
  exit 1
}
# A command killed by the Ctrl-C (exit 130) is an interruption, not a failure.
interrupted() {
  trap '' PIPE # a `| tee` may have died with the Ctrl-C
  printf '\ndemo: interrupted\n' >&2
  exit 130
}
on_error() { # RC LINE COMMAND
  [ "$1" = 130 ] && interrupted
  case ${FUNCNAME[1]:-} in
    on | on_sh) fail "this command failed (exit $1): $SHOWN" ;;
    *) fail "command failed (exit $1) at line $2 of $0: $3" ;;
  esac
}
SHOWN=
trap 'on_error $? $LINENO "$BASH_COMMAND"' ERR

say "Preparing the machine and building mirrorfs"
scripts/setup.sh
cargo build --release -p mirrorfs
MFS=${MIRRORFS_BIN:-$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/mirrorfs}
[ -x "$MFS" ] || fail "no mirrorfs binary at $MFS"
MFS=$(realpath "$MFS")

TAG=mfdemo$$
NODES="node1 node2 client"
SW=$TAG-switch
NET=10.250.$((100 + $$ % 150))
IP1=$NET.1 IP2=$NET.2 IPC=$NET.3 PORT=7411
DIR='' SERVE_PID='' MOUNT_PID='' APACHE_PID='' WRITER_PID=''
MADE_NS=()

# stop PID: SIGTERM, up to 5 s to exit, then SIGKILL; reaps it if it is ours.
stop() {
  local pid=$1
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}

cleanup() {
  trap - ERR
  trap '' INT TERM PIPE # finish the cleanup even if a `| tee` died with the Ctrl-C
  set +e
  say "Cleaning up"
  cd / # not inside the temp dir
  [ -n "$DIR" ] && touch "$DIR/writer.stop" 2>/dev/null
  stop "$WRITER_PID"
  stop "$APACHE_PID"
  if [ -n "$DIR" ] && findmnt -n "$DIR/node1/mnt" >/dev/null 2>&1; then
    fusermount3 -u "$DIR/node1/mnt" 2>/dev/null || umount -l "$DIR/node1/mnt"
  fi
  stop "$MOUNT_PID"
  stop "$SERVE_PID"
  # Whatever still runs in our namespaces (Apache's workers, should their
  # parent have died first) goes with them.
  for ns in "${MADE_NS[@]}"; do
    pids=$(ip netns pids "$ns" 2>/dev/null | xargs)
    # shellcheck disable=SC2086 # one argument per PID
    [ -n "$pids" ] && { echo "  killing leftover processes in $ns: $pids"; kill -9 $pids; }
  done
  for ((i = ${#MADE_NS[@]} - 1; i >= 0; i--)); do ip netns del "${MADE_NS[i]}"; done
  if [ -n "$DIR" ]; then
    # Anything still mounted beneath DIR (deepest first) must go before rm -rf.
    findmnt -rn -o TARGET | grep "^$DIR/" | sort -r | xargs -r -n1 umount -l
    if [ -n "${MIRRORFS_DEMO_LOGS:-}" ] && mkdir -p "$MIRRORFS_DEMO_LOGS"; then
      cp -a "$DIR/logs/." "$MIRRORFS_DEMO_LOGS/" && echo "  logs kept in $MIRRORFS_DEMO_LOGS"
    fi
    rm -rf "$DIR"
  fi
  echo "  removed the namespaces, the processes and ${DIR:-the temp dir}"
}
trap cleanup EXIT
trap interrupted INT TERM

# wait_until SECS WHAT CMD...: polls CMD every 0.1 s until it succeeds; fails
# the demo after SECS. CMD may call fail itself (e.g. a process died).
wait_until() {
  local secs=$1 what=$2
  shift 2
  local end=$(($(now_ms) + secs * 1000))
  until "$@"; do
    [ "$(now_ms)" -lt "$end" ] || fail "$what: not after $secs s"
    sleep 0.1
  done
}
alive() { kill -0 "$2" 2>/dev/null || fail "$1 (PID $2) exited"; }

status() { quiet node1 mirrorfs status --control "$CTL"; }
role() { awk '$1 == "role:" { print $2 }'; }
# in_sync STATUS-TEXT: PRIM, connected, nothing dirty, no resync running.
in_sync() {
  grep -q '^role: *PRIM$' <<<"$1" && grep -q '^connected: *yes$' <<<"$1" &&
    grep -q '^dirty: *0 files' <<<"$1" && ! grep -q '^resync:' <<<"$1"
}
show_status() {
  printf '  node1$ mirrorfs status --control %s\n' "$CTL"
  indent <<<"$1"
}
rx_bytes() { # bytes received on node2's interface so far
  ip -n "$(ns_of node2)" -s -j link show eth0 |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["rx"]["bytes"])'
}
mb() { awk -v b="$1" 'BEGIN { printf "%.2f MB", b / 1e6 }'; }

DIR=$(mktemp -d /var/tmp/mirrorfs-demo.XXXXXX) # /var/tmp: /tmp may lack user xattrs
chmod 711 "$DIR"                                 # Apache's www-data must reach the site
cd "$DIR"                                        # every command below runs here
mkdir -p bin keys logs node1/backing node1/mnt node1/apache node2/replica
CTL=node1/control.sock
ln -s "$MFS" bin/mirrorfs
export PATH="$DIR/bin:$PATH" # so the commands shown say just "mirrorfs"
note "Working in $DIR; mirrorfs is $MFS"

# ------------------------------------------------------------------ network
STEP="network"
say "Three hosts on one virtual switch: node1 $IP1, node2 $IP2, client $IPC"
ip netns add "$SW" && MADE_NS+=("$SW")
ip -n "$SW" link add br0 type bridge
ip -n "$SW" link set br0 up
i=0
for node in $NODES; do
  i=$((i + 1))
  ns=$(ns_of "$node")
  ip netns add "$ns" && MADE_NS+=("$ns")
  ip -n "$SW" link add "p$i" type veth peer name eth0 netns "$ns"
  ip -n "$SW" link set "p$i" master br0 up
  ip -n "$ns" addr add "$NET.$i/24" dev eth0
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
done
note "(network namespaces $(ns_of '{node1,node2,client}'), a bridge in $SW)"
for ip in "$IP1" "$IP2"; do
  on client ping -c 1 -W 2 "$ip" | grep -E '\$ ping| received' || fail "the client cannot reach $ip"
done

# ------------------------------------------------------------------ mirrorfs
STEP="starting mirrorfs"
say "node2 serves its replica directory; node1 mounts its site directory replicated to it"
on node1 mirrorfs keygen --dir keys --name node1
on node2 mirrorfs keygen --dir keys --name node2

start_serve() {
  printf '  node2$ mirrorfs serve --root node2/replica --listen %s:%s --key keys/node2.key --cert keys/node2.crt --peer-cert keys/node1.crt &\n' "$IP2" "$PORT"
  nsenter --net="/run/netns/$(ns_of node2)" mirrorfs serve --root node2/replica \
    --listen "$IP2:$PORT" --key keys/node2.key --cert keys/node2.crt \
    --peer-cert keys/node1.crt >>logs/serve.log 2>&1 &
  SERVE_PID=$! # nsenter execs mirrorfs: this is the server's own PID
  listening() {
    alive "mirrorfs serve" "$SERVE_PID"
    quiet node2 ss -lunH | grep -q "$IP2:$PORT "
  }
  wait_until 10 "mirrorfs serve listening on $IP2:$PORT" listening
  note "(mirrorfs serve is PID $SERVE_PID)"
}
start_serve

on_sh node1 "mkdir -p node1/backing/site/files node1/backing/logs  # the site's directories"
MOUNT_ARGS=(--backing node1/backing --mountpoint node1/mnt --peer "$IP2:$PORT"
  --key keys/node1.key --cert keys/node1.crt --peer-cert keys/node2.crt
  --on-peer-loss=alone --peer-timeout 2 --resync-rate-limit 1 --control "$CTL" --foreground)
printf '  node1$ mirrorfs mount %s &\n' "${MOUNT_ARGS[*]}"
note "(--on-peer-loss=alone: if node2 is lost for 2 s, carry on and record what changes;"
note " --resync-rate-limit 1: a resync sends at most 1 MB/s, leaving the network to"
note " the application, and slow enough here to watch)"
nsenter --net="/run/netns/$(ns_of node1)" mirrorfs mount "${MOUNT_ARGS[@]}" >logs/mount.log 2>&1 &
MOUNT_PID=$!
mounted_in_sync() {
  alive "mirrorfs mount" "$MOUNT_PID"
  findmnt -n "$DIR/node1/mnt" >/dev/null 2>&1 && [ -S "$CTL" ] && in_sync "$(status 2>/dev/null)"
}
wait_until 15 "the mount to be up and in sync" mounted_in_sync

# ------------------------------------------------------------------ the site
STEP="the site"
say "node1 puts a small site on the mount and serves it with Apache"
SITE=node1/mnt/site
on_sh node1 "printf '<h1>mirrorfarm demo</h1>\n<p>Version 1</p>\n' > $SITE/index.html"
on_sh node1 "head -c 16M /dev/urandom > $SITE/files/archive.bin  # a 16 MiB download"

cat >node1/apache/apache2.conf <<EOF
ServerRoot "$DIR/node1/apache"
ServerName node1
Listen $IP1:80
LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
LoadModule dir_module /usr/lib/apache2/modules/mod_dir.so
LoadModule mime_module /usr/lib/apache2/modules/mod_mime.so
TypesConfig /etc/mime.types
User www-data
Group www-data
PidFile "$DIR/node1/apache/apache2.pid"
DefaultRuntimeDir "$DIR/node1/apache"
ErrorLog "$DIR/logs/apache-error.log"
LogLevel warn
DocumentRoot "$DIR/$SITE"
DirectoryIndex index.html
<Directory "$DIR/$SITE">
    Require all granted
</Directory>
EOF
note "(node1/apache/apache2.conf: Listen $IP1:80, DocumentRoot $SITE, workers as www-data)"
printf '  node1$ apache2 -f node1/apache/apache2.conf -DFOREGROUND &\n'
nsenter --net="/run/netns/$(ns_of node1)" apache2 -f "$DIR/node1/apache/apache2.conf" \
  -DFOREGROUND >logs/apache.log 2>&1 &
APACHE_PID=$!
apache_listening() {
  alive "apache2" "$APACHE_PID"
  quiet node1 ss -ltnH | grep -q "$IP1:80 "
}
wait_until 15 "Apache listening on $IP1:80" apache_listening
URL=http://$IP1/
fetch() { on client curl -sS --fail --max-time 5 "$URL$1" || fail "the client could not fetch $URL$1"; }
fetch ""

# ------------------------------------------------------------------ 1. replication
STEP="1 (replication)"
say "1. A page edited on node1 is served at once, and node2 has the same bytes"
on_sh node1 "sed -i 's/Version 1/Version 2, edited on node1/' $SITE/index.html"
fetch ""
on_sh client "curl -sS --fail --max-time 5 $URL | sha256sum"
on node1 sha256sum $SITE/index.html
on node2 sha256sum node2/replica/site/index.html
cmp -s "$SITE/index.html" node2/replica/site/index.html ||
  fail "node2's replica of index.html differs from node1's"
quiet client curl -sS --fail --max-time 5 "$URL" | cmp -s - "$SITE/index.html" ||
  fail "Apache did not serve the bytes of index.html"
note "Identical: the edit was on node2 before sed returned."

# ------------------------------------------------------------------ 2. status
STEP="2 (status)"
say "2. node1's mirror is PRIM: connected to node2, nothing pending"
show_status "$(status)"

# ------------------------------------------------------------------ 3. node2 lost
STEP="3 (node2 lost)"
say "3. node2's mirrorfs dies; node1 carries on ALONE"
note "An application on node1 keeps logs/access.log open on the mount and appends"
note "a line every 50 ms, with fsync; it stops at the first error:"
cat >writer.py <<'EOF'
import os, sys, time
path, stop, report = sys.argv[1], sys.argv[2], sys.argv[3]
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
n, slowest = 0, 0.0
while not os.path.exists(stop):
    n += 1
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z")
    line = f'10.0.0.3 - - [{stamp}] "GET / HTTP/1.1" 200 {n}\n'.encode()
    t = time.monotonic()
    os.write(fd, line)
    os.fsync(fd)
    slowest = max(slowest, time.monotonic() - t)
    with open(report + ".tmp", "w") as f:
        f.write(f"{n} {slowest:.3f}\n")
    os.replace(report + ".tmp", report)
    time.sleep(0.05)
os.close(fd)
EOF
printf '  node1$ python3 writer.py node1/mnt/logs/access.log &\n'
nsenter --net="/run/netns/$(ns_of node1)" python3 writer.py node1/mnt/logs/access.log \
  writer.stop logs/writer.report >logs/writer.log 2>&1 &
WRITER_PID=$!
writes() { cut -d' ' -f1 logs/writer.report 2>/dev/null || echo 0; }
writer_at() { alive "the writer" "$WRITER_PID" && [ "$(writes)" -ge "$1" ]; }
wait_until 10 "the writer's first writes" writer_at 10

printf '  $ kill -KILL %s   # mirrorfs serve on node2\n' "$SERVE_PID"
{ kill -KILL "$SERVE_PID" && wait "$SERVE_PID"; } 2>/dev/null || true
SERVE_PID=
killed=$(now_ms)
is_alone() { [ "$(status | role)" = ALONE ]; }
wait_until 20 "node1's mirror to go ALONE" is_alone
note "node1 noticed $(since "$killed") later (--peer-timeout 2) and went ALONE:"
printf '  node1$ grep "going ALONE" logs/mount.log\n'
grep "going ALONE" logs/mount.log | sed 's/\x1b\[[0-9;]*m//g' | indent
w=$(writes)
wait_until 10 "the writer to carry on while ALONE" writer_at $((w + 10))
note "The writer goes on: $(writes) lines so far, no error."

note "The site is still served, and is edited while node2 is away:"
on_sh node1 "sed -i 's/Version 2, edited on node1/Version 3, edited while ALONE/' $SITE/index.html"
on_sh node1 "printf '<p>News: written while node2 was away</p>\n' > $SITE/news.html"
on_sh node1 "printf PATCH | dd of=$SITE/files/archive.bin bs=1 seek=5000000 conv=notrunc status=none"
fetch ""
fetch news.html
note "node2 is behind: its copy still says"
on node2 grep Version node2/replica/site/index.html
ALONE_STATUS=$(status)
show_status "$ALONE_STATUS"
grep -q '^role: *ALONE$' <<<"$ALONE_STATUS" || fail "node1 is no longer ALONE"
grep -q '^dirty: *0 files' <<<"$ALONE_STATUS" && fail "ALONE with changes, but nothing dirty"
note "Every changed path is recorded (dirty); the bytes are what those files hold."

# ------------------------------------------------------------------ 4. resync
STEP="4 (resync)"
say "4. node2's mirrorfs is back: node1 sends only what changed, then is PRIM again"
rx0=$(rx_bytes)
log0=$(wc -l <logs/mount.log)
start_serve
back=$(now_ms)
log_since_restart() { tail -n +$((log0 + 1)) logs/mount.log | sed 's/\x1b\[[0-9;]*m//g'; }
resync_st='' took=''
while :; do
  st=$(status)
  if [ -z "$took" ]; then # until the mount logs the end of the resync
    [ "$(role <<<"$st")" = RESYNC ] && resync_st=$st
    log_since_restart | grep -q 'role change from=RESYNC to=PRIM' && took=$(since "$back")
  fi
  [ -n "$took" ] && in_sync "$st" && break
  [ $(($(now_ms) - back)) -lt 30000 ] || fail "not back in sync 30 s after serve restarted; status:
$st"
  sleep 0.05
done
if [ -n "$resync_st" ]; then
  note "During the resync (the last status polled before it ended):"
  show_status "$resync_st"
  ! grep -q '^resync:.*(full' <<<"$resync_st" ||
    note "(full: the top directory had changed within the last minute, so every file is
   compared, by checksums of 1 MiB blocks; only blocks that differ are sent)"
else
  note "(the resync was over before a status poll fell inside it; the log below has it)"
fi
note "In sync again $took after serve restarted:"
show_status "$st"
note "node1's log, from the restart to PRIM:"
printf '  node1$ grep -E "connected|resync|role" logs/mount.log\n'
log_since_restart | grep -E 'connected to|resync starts|resync complete|role change' |
  sed '/to=PRIM/q' | indent
rx=$(($(rx_bytes) - rx0))
tree=$(du -sb --exclude=.mirrorfs node1/backing | cut -f1)
note "node2 received $(mb "$rx") over the network during the resync (its eth0"
note "counter, with the writer's new lines), for a site of $(mb "$tree"): the"
note "changed small files, and of archive.bin only the 1 MiB block that changed."
[ "$rx" -lt $((tree / 4)) ] || fail "the resync sent $rx bytes for a $tree-byte tree: not incremental"

w=$(writes)
wait_until 10 "the writer to carry on after the resync" writer_at $((w + 5))
touch writer.stop
wait "$WRITER_PID" || fail "the writer failed: $(cat logs/writer.log)"
WRITER_PID=
read -r n slowest <logs/writer.report
synced() { in_sync "$(status)"; }
wait_until 10 "node1 to be PRIM and in sync once the writer stopped" synced
note "The writer stopped: $n lines written with fsync, none failed; the slowest took $slowest s"
awk -v s="$slowest" 'BEGIN { exit !(s >= 1) }' &&
  note "(a write in flight when node2 died waits out the 2 s peer timeout, then succeeds)"
on node2 wc -l node2/replica/logs/access.log
fetch ""

STEP="4 (verify)"
printf '  $ mirrorfs verify node1/backing node2/replica\n'
rc=0
mirrorfs verify node1/backing node2/replica >logs/verify.out 2>&1 || rc=$?
indent <logs/verify.out
case $rc in
  0) note "exit 0: node1's site and node2's replica are identical." ;;
  1) fail "mirrorfs verify found the differences above" ;;
  *) fail "mirrorfs verify could not compare the trees (exit $rc)" ;;
esac

STEP="done"
say "Done: replication, degraded mode (ALONE) and an incremental resync, with the site up throughout."
