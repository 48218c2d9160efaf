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
# Then the farm (the lab's farm1..3 run Apache through the farm module
# apache-farm, all on one VIP, rule Address): the client fetches /node.txt
# from 30 source addresses of its own and the demo tallies which node served
# each; farm2 is SIGKILLed (every process in its namespace) and the demo
# prints how long until farm1 and farm3 serve every address farm2 had;
# farm2 comes back (`mirrorfarm lab start farm2`) and takes the same
# addresses back (affinity).
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
  for f in "$LAB"/logs/*.log "$LAB"/node*/state/modules/apache/module.log \
    "$LAB"/farm*/state/modules/apache-farm/module.log; do
    [ -s "$f" ] && { echo "--- last lines of $f"; tail -n 12 "$f"; } >&2
  done
  exit 1
}
trap 'fail "command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

P=${MIRRORFARM_DEMO_NAME:-demo}
LAB=/var/lib/mirrorfarm-lab/$P
CLIENT_PID=
EXTRA_ADDRS=() # the client's extra source addresses (the farm part), while they are on

del_extra_addrs() {
  local a
  for a in "${EXTRA_ADDRS[@]}"; do
    ip -n "$CNS" addr del "$a/24" dev "$CIF" 2>/dev/null
  done
  EXTRA_ADDRS=()
}

cleanup() {
  trap - ERR
  set +e
  [ -n "$CLIENT_PID" ] && kill "$CLIENT_PID" 2>/dev/null && wait "$CLIENT_PID" 2>/dev/null
  [ ${#EXTRA_ADDRS[@]} -gt 0 ] && del_extra_addrs
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
# ---------------------------------------------------------------- the farm
say "The farm: farm1, farm2 and farm3 run Apache through the farm module apache-farm"
J=$("$MF" lab status --name "$P" --json)
js "$J" "'farm' in j" | grep -qx True ||
  fail "the lab has no farm part (\`lab up\` reported why above; \`lab status --name $P\` shows it)"
FVIP=$(js "$J" "j['farm']['vip']")
FNS1=$(js "$J" "j['farm']['nodes']['farm1']['netns']")
FNS2=$(js "$J" "j['farm']['nodes']['farm2']['netns']")
FS1=$(js "$J" "j['farm']['nodes']['farm1']['socket']")
# FARM: "farm1 UP 43 farm2 UP 43 farm3 UP 42" (state and share of each node)
farm_states() { "$MF" lab status --name "$P" --json 2>/dev/null | python3 -c '
import json, sys
f = json.load(sys.stdin).get("farm") or {"nodes": {}}
print(" ".join("%s %s %s" % (n, s["state"], s["share"]) for n, s in sorted(f["nodes"].items())))' \
  2>/dev/null || echo "no answer"; }
wait_farm() { # SECS WHAT TEST: until TEST (python on dict n -> (state, share)) holds
  local secs=$1 what=$2 test=$3 t0 now last=
  t0=$(date +%s.%N)
  note "waiting (up to $secs s) for $what; the farm's states and shares (\`lab status\`):"
  while :; do
    now=$(farm_states)
    [ "$now" != "$last" ] && note "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%5.1f s", b-a}')  $now"
    last=$now
    python3 -c "import sys; w=sys.argv[1].split(); n={w[i]: (w[i+1], None if w[i+2] == 'None' else int(w[i+2])) for i in range(0, len(w) - 2, 3)}; sys.exit(0 if len(n) == 3 and ($test) else 1)" "$now" 2>/dev/null && return 0
    awk -v a="$t0" -v b="$(date +%s.%N)" -v s="$secs" 'BEGIN{exit !(b-a >= s)}' &&
      fail "$what: not within $secs s (last seen: $now)"
    sleep 0.3
  done
}
wait_farm 60 "the farm UP on its three nodes" \
  'all(s == "UP" and (sh or 0) > 0 for s, sh in n.values())'
SHARES=$(farm_states)
TOTAL=$(echo "$SHARES" | awk '{print $3 + $6 + $9}')
run ip netns exec "$FNS1" "$MF" --socket "$FS1" state apache-farm

# 30 extra source addresses for the client, out of the lab's: nodes .1 .2,
# witness .3, client .10, farm1..3 .21-.23, the mirror's VIP .100, the farm's .200.
CIF=$(ip -n "$CNS" -o -4 addr show | awk -v a="$(js "$J" "j['client']['addr']")/" 'index($4, a) == 1 {print $2; exit}')
[ -n "$CIF" ] || fail "the client's interface (with $(js "$J" "j['client']['addr']")) not found in $CNS"
mapfile -t ADDRS < <(seq 130 159 | sed 's/^/10.77.0./')
python3 - "$J" "${ADDRS[@]}" <<'PY' || fail "the client's extra addresses collide with the lab's"
import json, sys
j = json.loads(sys.argv[1])
taken = {j["vip"], j["farm"]["vip"], j["client"]["addr"], j["witness"]["addr"].split(":")[0]}
taken |= {n["addr"] for n in j["nodes"].values()} | {n["addr"] for n in j["farm"]["nodes"].values()}
clash = sorted(taken & set(sys.argv[2:]))
if clash:
    print("  taken by the lab:", " ".join(clash))
    sys.exit(1)
PY
for a in "${ADDRS[@]}"; do
  EXTRA_ADDRS+=("$a")
  ip -n "$CNS" addr add "$a/24" dev "$CIF"
done
# TALLY ADDR...: one GET of /node.txt from each address (in parallel, 1 s
# each); prints "ADDR NODE" lines ("-" for no answer) to $LAB/tally
tally() {
  ip netns exec "$CNS" python3 - "$FVIP" "$@" >"$LAB/tally" <<'PY'
import http.client, sys
from concurrent.futures import ThreadPoolExecutor
vip = sys.argv[1]
def get(addr):
    try:
        c = http.client.HTTPConnection(vip, 80, timeout=1, source_address=(addr, 0))
        c.request("GET", "/node.txt")
        r = c.getresponse()
        body = r.read().decode().strip()
        c.close()
        return body if r.status == 200 and body else "-"
    except Exception:
        return "-"
with ThreadPoolExecutor(len(sys.argv) - 2) as ex:
    for addr, node in zip(sys.argv[2:], ex.map(get, sys.argv[2:])):
        print(addr, node)
PY
}
show_tally() { # FILE
  python3 - "$1" <<'PY'
import collections, sys
rows = [l.split() for l in open(sys.argv[1])]
by = collections.defaultdict(list)
for addr, node in rows:
    by[node].append(addr.rsplit(".", 1)[1])
for node in sorted(by):
    name = node if node != "-" else "no answer"
    print(f"  {name:9} {len(by[node]):2}  (.{' .'.join(by[node])})")
PY
}

say "The client fetches http://$FVIP/node.txt once from each of ${#ADDRS[@]} source addresses (10.77.0.130-159 on its $CIF)"
tally "${ADDRS[@]}"
cp "$LAB/tally" "$LAB/tally.before"
show_tally "$LAB/tally.before"
grep -q ' -$' "$LAB/tally.before" && fail "some addresses got no answer from the farm"
mapfile -t ON2 < <(awk '$2 == "farm2" {print $1}' "$LAB/tally.before")
[ ${#ON2[@]} -gt 0 ] || fail "farm2 served none of the ${#ADDRS[@]} addresses"

say "Failure: every process of farm2 (Apache, the daemon) is SIGKILLed"
PIDS=$(ip netns pids "$FNS2" | xargs)
note "farm2's processes: $PIDS"
T2=$(date +%s.%N)
# shellcheck disable=SC2086 # one argument per PID
kill -9 $PIDS
note "polling its ${#ON2[@]} client addresses until farm1 or farm3 serves each (up to 30 s)"
ip netns exec "$CNS" python3 - "$FVIP" "$T2" 30 "${ON2[@]}" <<'PY' || fail "farm2's clients were not all taken over within 30 s"
import http.client, sys, time
from concurrent.futures import ThreadPoolExecutor
vip, t0, bound, addrs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
def get(addr):
    try:
        c = http.client.HTTPConnection(vip, 80, timeout=0.3, source_address=(addr, 0))
        c.request("GET", "/node.txt")
        r = c.getresponse()
        body = r.read().decode().strip()
        c.close()
        return body if r.status == 200 else "-"
    except Exception:
        return "-"
moved = {}
with ThreadPoolExecutor(len(addrs)) as ex:
    while len(moved) < len(addrs) and time.time() - t0 < bound:
        left = [a for a in addrs if a not in moved]
        for addr, node in zip(left, ex.map(get, left)):
            if node in ("farm1", "farm3"):
                moved[addr] = (time.time() - t0, node)
        time.sleep(0.05)
if len(moved) < len(addrs):
    print(f"  after {bound:.0f} s, {len(addrs) - len(moved)} of farm2's addresses are still not served:",
          " ".join(a for a in addrs if a not in moved))
    sys.exit(1)
first = min(t for t, _ in moved.values())
last = max(t for t, _ in moved.values())
print(f"  every one of farm2's {len(addrs)} addresses is served by farm1/farm3 {last:.1f} s after the kill"
      f" (the first {first:.1f} s after)")
PY
wait_farm 20 "farm1 and farm3 UP with farm2's share between them" \
  "n['farm1'][0] == n['farm3'][0] == 'UP' and n['farm2'][0] != 'UP' and (n['farm1'][1] or 0) + (n['farm3'][1] or 0) == $TOTAL"
tally "${ADDRS[@]}"
cp "$LAB/tally" "$LAB/tally.down"
show_tally "$LAB/tally.down"
grep -qE ' (-|farm2)$' "$LAB/tally.down" && fail "with farm2 down, some addresses were not served by farm1/farm3"
STAYED=$(join "$LAB/tally.before" "$LAB/tally.down" | awk '$2 != "farm2" {n++; if ($2 == $3) s++} END {printf "%d of %d", s, n}')
note "of the addresses farm1 and farm3 served before, $STAYED stayed on the same node (the rest moved in the rebalance of the buckets)"

say "farm2 comes back (\`mirrorfarm lab start farm2\`) and takes its share again"
run "$MF" lab start farm2 --name "$P"
BEFORE=$SHARES
wait_farm 60 "farm2 UP with its share again" \
  "' '.join(f'{k} {s} {sh}' for k, (s, sh) in sorted(n.items())) == '$BEFORE'"
# The filters follow the shares a moment later: poll until the tally is the first one.
for i in $(seq 40); do
  tally "${ADDRS[@]}"
  cmp -s "$LAB/tally" "$LAB/tally.before" && break
  [ "$i" = 40 ] && { show_tally "$LAB/tally"; fail "the tally did not come back to the first one within 20 s"; }
  sleep 0.5
done
show_tally "$LAB/tally"
note "every address is back on the node that served it first (affinity: farm2 has the same ${#ON2[@]} again)"
run ip netns exec "$FNS1" "$MF" --socket "$FS1" state apache-farm
del_extra_addrs
note "the client's ${#ADDRS[@]} extra addresses removed"
say "Demo done"
