#!/usr/bin/env bash
# The one-machine demo of mirrorfarm, as root: the lab (`mirrorfarm lab up`)
# builds two nodes, a witness and a client in network namespaces, with the
# Apache mirror module (examples/apache-mirror/: the site and an upload
# directory replicated by mirrorfs, Apache on the virtual IP). Throughout, the
# client fetches a page through the VIP every 20 ms and uploads a file every
# 100 ms. Then every process of node1 (the primary) is SIGKILLed: node2 takes
# over with every acknowledged upload, and the demo prints the outage the
# client saw. node1 returns (`mirrorfarm lab start node1`) as SECOND after an
# incremental resync, and `mirrorfarm swap` moves the service back.
#
# Everything it makes is removed on exit (`mirrorfarm lab down`), also on
# Ctrl-C or failure; MIRRORFARM_DEMO_KEEP=1 leaves the lab up for a look.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
note() { printf '  %s\n' "$*"; }
run() { printf '  $ %s\n' "$*"; "$@" 2>&1 | sed 's/^/    /'; }
fail() {
  trap - ERR
  printf '\n\033[1;31mdemo FAILED: %s\033[0m\n' "$*" >&2
  for f in "$LAB"/logs/*.log "$LAB"/node*/state/modules/apache/module.log; do
    [ -s "$f" ] && { echo "--- last lines of $f"; tail -n 12 "$f"; } >&2
  done
  exit 1
}
trap 'fail "command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

P=${MIRRORFARM_DEMO_NAME:-demo}
LAB=/var/lib/mirrorfarm-lab/$P
CLIENT_PID=

cleanup() {
  trap - ERR
  set +e
  [ -n "$CLIENT_PID" ] && kill "$CLIENT_PID" 2>/dev/null && wait "$CLIENT_PID" 2>/dev/null
  if [ -n "${MIRRORFARM_DEMO_KEEP:-}" ]; then
    say "The lab stays up (MIRRORFARM_DEMO_KEEP): \`$MF lab down --name $P\` removes it"
  else
    say "Removing the lab"
    "$MF" lab down --name "$P" 2>&1 | tail -n 1 | sed 's/^/  /'
  fi
}

say "Preparing the machine and building mirrorfarm"
scripts/setup.sh >/dev/null
cargo build --release --workspace
MF=$(realpath target/release/mirrorfarm)
trap cleanup EXIT

say "Building the lab $P: node1, node2, a witness and a client on a virtual switch"
if [ -e "$LAB" ]; then
  note "a lab named $P exists: removing it first"
  "$MF" lab down --name "$P" >/dev/null
fi
"$MF" lab up --name "$P" | sed 's/^/  /'
J=$("$MF" lab status --name "$P" --json)
js() { python3 -c "import json,sys; j=json.loads(sys.argv[1]); print($2)" "$J"; }
VIP=$(js "$J" "j['vip']")
CNS=$(js "$J" "j['client']['netns']")
S1=$(js "$J" "j['nodes']['node1']['socket']")
S2=$(js "$J" "j['nodes']['node2']['socket']")
state_of() { "$MF" --socket "$1" state apache --json 2>/dev/null |
  python3 -c 'import json,sys; m=json.load(sys.stdin)["modules"][0]; print(m["state"] + ("" if m["ready"] else "-transient"))' 2>/dev/null || echo UNREACHABLE; }
wait_state() { # SOCKET STATE SECS
  for _ in $(seq $(($3 * 10))); do [ "$(state_of "$1")" = "$2" ] && return 0; sleep 0.1; done
  fail "the module did not reach $2 within $3 s (it is $(state_of "$1"))"
}
run "$MF" lab status --name "$P"

say "The client fetches http://$VIP/ every 20 ms and uploads a file every 100 ms (WebDAV PUT)"
CLOG=$LAB/client.log
ip netns exec "$CNS" python3 - "$VIP" "$CLOG" <<'PY' &
import http.client, sys, time
vip, path = sys.argv[1], sys.argv[2]
out = open(path, "w", buffering=1)
n = 0
i = 0
while True:
    t = time.time()
    try:
        c = http.client.HTTPConnection(vip, 80, timeout=0.5)
        c.request("GET", "/")
        ok = c.getresponse().status == 200
        c.close()
    except Exception:
        ok = False
    out.write(f"get {t:.3f} {int(ok)}\n")
    if i % 5 == 0:
        n += 1
        body = f"upload {n}\n".encode()
        try:
            c = http.client.HTTPConnection(vip, 80, timeout=1)
            c.request("PUT", f"/uploads/u{n}.txt", body)
            st = c.getresponse().status
            c.close()
            if st in (201, 204):
                out.write(f"acked {n}\n")
        except Exception:
            pass
    i += 1
    time.sleep(max(0, 0.02 - (time.time() - t)))
PY
CLIENT_PID=$!
sleep 3
note "$(grep -c '^get .* 1$' "$CLOG") pages served, $(grep -c '^acked' "$CLOG") uploads acknowledged so far"

say "Failure: every process of node1 (the primary: Apache, mirrorfs, the daemon) is SIGKILLed"
PIDS=$(ip netns pids "$P-node1" | xargs)
note "node1's processes: $PIDS"
T0=$(date +%s.%N)
# shellcheck disable=SC2086 # one argument per PID
kill -9 $PIDS
wait_state "$S2" ALONE 20
note "node2 is ALONE (primary without its peer) $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f s", b-a}') after the kill"
sleep 2
OUTAGE=$(python3 - "$CLOG" "$T0" <<'PY'
import sys
t0 = float(sys.argv[2])
gets = [l.split() for l in open(sys.argv[1]) if l.startswith("get ")]
gets = [(float(t), ok == "1") for _, t, ok in gets]
first_fail = next((t for t, ok in gets if t >= t0 - 0.1 and not ok), None)
if first_fail is None:
    print("0.0 s (no request failed)")
else:
    back = next((t for t, ok in gets if t > first_fail and ok), None)
    print(f"{back - first_fail:.2f} s" if back else "not over")
PY
)
note "the client's outage: $OUTAGE (from its first failed request to its next good one)"
run "$MF" --socket "$S2" state apache

say "Every acknowledged upload is served by node2"
python3 - "$CLOG" "$VIP" "$CNS" <<'PY'
import subprocess, sys
acked = [int(l.split()[1]) for l in open(sys.argv[1]) if l.startswith("acked ")]
missing = []
for n in acked:
    r = subprocess.run(["ip", "netns", "exec", sys.argv[3], "curl", "-sf", "--max-time", "3",
                        f"http://{sys.argv[2]}/uploads/u{n}.txt"], capture_output=True, text=True)
    if r.stdout != f"upload {n}\n":
        missing.append(n)
print(f"  {len(acked)} uploads acknowledged, {len(acked) - len(missing)} served by node2" +
      (f"; MISSING: {missing[:10]}" if missing else ": none lost"))
sys.exit(1 if missing else 0)
PY

say "node1 comes back (\`mirrorfarm lab start node1\`): it becomes SECOND after an incremental resync"
run "$MF" lab start node1 --name "$P"
wait_state "$S1" SECOND 60
for _ in $(seq 300); do
  "$MF" --socket "$S2" state apache --json | grep -q '"in_sync":true' && break
  sleep 0.2
done
run "$MF" --socket "$S2" state apache
grep -h 'resync complete' "$LAB"/node2/state/modules/apache/mirrorfs-dir*.log 2>/dev/null | tail -n 2 | sed 's/^/  /' || true

say "A planned switchover (\`mirrorfarm swap apache\` on node2) moves the service back to node1"
# The nodes learn each other's readiness by heartbeats: a swap ordered the
# moment node1 turns SECOND may be refused ("not a ready SECOND"); ask again.
for _ in $(seq 50); do
  "$MF" --socket "$S2" state apache --json | grep -q '"peer_ready":true' && break
  sleep 0.1
done
T1=$(date +%s.%N)
printf '  $ %s\n' "$MF --socket $S2 swap apache"
for i in $(seq 20); do
  if out=$("$MF" --socket "$S2" swap apache 2>&1); then
    echo "$out" | sed 's/^/    /'
    break
  fi
  [ "$i" = 20 ] && fail "swap refused: $out"
  sleep 0.25
done
wait_state "$S1" PRIM 60
note "node1 is PRIM again $(awk -v a="$T1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f s", b-a}') after the order"
sleep 1
run "$MF" --socket "$S1" state
kill "$CLIENT_PID" && wait "$CLIENT_PID" 2>/dev/null || true
CLIENT_PID=
note "in all: $(grep -c '^get .* 1$' "$CLOG") pages served, $(grep -c '^get .* 0$' "$CLOG") failed, $(grep -c '^acked' "$CLOG") uploads acknowledged"
say "Demo done"
