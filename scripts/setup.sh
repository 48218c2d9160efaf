#!/usr/bin/env bash
# Prepares a Debian 12 machine, as root, for mirrorfarm's tests and demo: the
# packages they use, user_allow_other in /etc/fuse.conf, and no system Apache
# or glusterd (tests and benchmarks start their own instances). Idempotent: a
# second run changes nothing and takes about a second. Prints what it does.
set -euo pipefail

PACKAGES=(
  fuse3        # fusermount3, /etc/fuse.conf
  iproute2     # ip netns, veth, bridge; ss
  nftables     # fault injection, the farm filter
  iputils-ping # lab self-test
  apache2      # the real application of the mirror and farm modules
  bindfs
  wrk          # HTTP load for the benchmarks
  python3
  sqlite3
  attr         # getfattr/setfattr
  util-linux   # nsenter, findmnt, umount
  procps
  postgresql   # server, for the database tests
  curl         # HTTP client of the Apache tests
  stress-ng    # the controller's stall soak test (CPU and I/O load on the primary)
  keepalived   # the failover benchmark's baseline (VRRP moving an IP)
  haproxy      # the farm benchmark's baseline (a proxy in front of the farm's nodes)
  glusterfs-server # the replication benchmark's GlusterFS replica 2 baseline (glusterd, gluster, glusterfs)
)

say() { echo "setup: $*"; }

if [ "$(id -u)" != 0 ]; then
  echo "setup: must run as root: sudo $0" >&2
  exit 1
fi

# 1. Packages: ask dpkg first, so that apt runs (and updates its lists, once)
#    only when something is missing.
missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
else
  say "packages present: ${PACKAGES[*]}"
fi

# 2. FUSE: mirrorfs mounts with allow_other.
if grep -qx 'user_allow_other' /etc/fuse.conf 2>/dev/null; then
  say "/etc/fuse.conf has user_allow_other"
elif grep -qx '#[[:space:]]*user_allow_other' /etc/fuse.conf 2>/dev/null; then
  say "enabling user_allow_other in /etc/fuse.conf"
  sed -i 's/^#[[:space:]]*user_allow_other$/user_allow_other/' /etc/fuse.conf
else
  say "adding user_allow_other to /etc/fuse.conf"
  echo user_allow_other >>/etc/fuse.conf
fi
if [ ! -e /dev/fuse ]; then
  say "loading the fuse module (/dev/fuse is missing)"
  modprobe fuse || say "WARNING: no /dev/fuse: FUSE mounts will fail"
fi

# 3. No system Apache, keepalived or haproxy: the packages enable and start them; our
#    tests, demo and benchmarks start their own instances in their own network
#    namespaces, and nothing may touch the machine's own network.
for svc in apache2 keepalived haproxy; do
  if [ -d /run/systemd/system ]; then
    if systemctl is-active --quiet "$svc"; then
      say "stopping the $svc service"
      systemctl stop "$svc"
    fi
  else
    # No systemd as init (e.g. a container): the SysV script runs it, if anything.
    pidfile=/run/$svc/$svc.pid
    [ "$svc" = keepalived ] && pidfile=/run/keepalived.pid
    [ "$svc" = haproxy ] && pidfile=/run/haproxy.pid
    if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      say "stopping the $svc service"
      service "$svc" stop
    fi
  fi
  if command -v systemctl >/dev/null && [ "$(systemctl is-enabled "$svc" 2>/dev/null)" = enabled ]; then
    say "disabling the $svc service"
    systemctl disable "$svc" 2>&1 | sed 's/^/setup:   /'
  elif compgen -G "/etc/rc[2-5].d/S*$svc" >/dev/null; then
    say "disabling the $svc service"
    update-rc.d "$svc" disable
  else
    say "$svc service is stopped and disabled"
  fi
done

# 4. No system GlusterFS: glusterfs-server ships systemd units only (Debian
#    enables neither on a fresh install, and starts them only under systemd).
#    The replication benchmark runs its own glusterd per node, each in private
#    namespaces; a system one would hold the machine's /var/lib/glusterd (its
#    peers and volumes) and TCP 24007.
for svc in glusterd glustereventsd; do
  if [ -d /run/systemd/system ] && systemctl is-active --quiet "$svc"; then
    say "stopping the $svc service"
    systemctl stop "$svc"
  fi
  if command -v systemctl >/dev/null && [ "$(systemctl is-enabled "$svc" 2>/dev/null)" = enabled ]; then
    say "disabling the $svc service"
    systemctl disable "$svc" 2>&1 | sed 's/^/setup:   /'
  else
    say "$svc service is stopped and disabled"
  fi
done
# Without systemd nothing starts it; one started by hand (with the unit's pid
# file, in the machine's own namespaces) is the system's: stop it.
pidfile=/run/glusterd.pid
if [ -s "$pidfile" ] && [ "$(cat /proc/"$(cat "$pidfile")"/comm 2>/dev/null)" = glusterd ]; then
  say "stopping the system glusterd (pid $(cat "$pidfile"), from $pidfile)"
  kill "$(cat "$pidfile")"
fi

# 5. Rust: not installed here (Debian's is too old); say so early.
if ! command -v cargo >/dev/null; then
  say "WARNING: no cargo on PATH: install Rust >= 1.85 with rustup to build mirrorfarm"
fi
say "done"
