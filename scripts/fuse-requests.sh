#!/bin/bash
# Counts the FUSE requests the kernel sends to one mount while a command runs,
# by opcode, from the kernel's own tracepoint (fuse:fuse_request_send), so
# nothing in the daemon is involved in the count.
#
#   scripts/fuse-requests.sh MOUNTPOINT COMMAND [ARGS...]
#
# Prints one "OPCODE COUNT" line per opcode seen on MOUNTPOINT's FUSE
# connection (its device number), most frequent first. Needs root and
# tracefs; uses the global trace buffer, so run one at a time.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 MOUNTPOINT COMMAND [ARGS...]" >&2; exit 2; }
mnt=$1
shift
t=/sys/kernel/tracing
[ -d $t/events/fuse ] || mount -t tracefs nodev $t
[ -d $t/events/fuse ] || { echo "no fuse tracepoints in this kernel" >&2; exit 1; }
# The connection id is the mount's anonymous device number (st_dev).
dev=$(stat -c %d "$mnt")
ev=$t/events/fuse/fuse_request_send
echo "connection == $dev" > $ev/filter
echo 0 > $t/tracing_on
echo > $t/trace
echo 16384 > $t/buffer_size_kb
echo 1 > $ev/enable
echo 1 > $t/tracing_on
status=0
"$@" || status=$?
echo 0 > $t/tracing_on
echo 0 > $ev/enable
echo 0 > $ev/filter
grep -o 'opcode [0-9]* ([A-Z_0-9]*)' $t/trace | awk '{print $3}' | tr -d '()' \
    | sort | uniq -c | sort -rn | awk '{print $2, $1}'
lost=$(grep -o 'LOST [0-9]* EVENTS' $t/trace | awk '{s += $2} END {print s + 0}')
[ "$lost" = 0 ] || echo "warning: $lost events lost (trace buffer too small)" >&2
echo > $t/trace
exit $status
