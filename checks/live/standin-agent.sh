#!/bin/sh
# A stand-in for `bty agent`, used by checks/smoke.py to exercise the whole loop (PXE -> live
# environment -> flash -> report -> reboot -> local boot) with busybox only. Not the product:
# the real agent is `bty agent`. Talks to the smoke server's simplified plan format:
#   GET  /pxe/{mac}/plan    -> "image=/images/NAME serial=SERIAL"
#   POST /pxe/{mac}/status  <- "state=done" | "state=failed reason=..."
say() { echo "bty: $*"; echo "<7>bty: $*" >/dev/kmsg 2>/dev/null; }
arg() { for w in $(cat /proc/cmdline); do case "$w" in "$1="*) v="${w#*=}" ;; esac; done; echo "$v"; }
server="$(arg bty.server)"
mac="$(arg bty.mac)"
plan="$(wget -q -O- "$server/pxe/$mac/plan")" || { say "flash failed: no plan"; exit 2; }
image="$(echo "$plan" | sed -n 's/.*image=\([^ ]*\).*/\1/p')"
serial="$(echo "$plan" | sed -n 's/.*serial=\([^ ]*\).*/\1/p')"
dev=""
for d in /sys/block/*; do
  [ "$(cat "$d/serial" 2>/dev/null)" = "$serial" ] && dev="${d##*/}"
done
fail() {
  say "flash failed: $*"
  wget -q -O- --post-data "state=failed reason=$*" "$server/pxe/$mac/status" >/dev/null
  exit 1
}
[ -n "$dev" ] || fail "no disk with serial $serial"
say "flash starting"
start="$(cut -d' ' -f1 /proc/uptime)"
wget -q -O- "$server$image" | dd of="/dev/$dev" bs=1M conv=fsync 2>/tmp/dd.log || fail "write error"
sync
end="$(cut -d' ' -f1 /proc/uptime)"
say "write 100% ($(tail -1 /tmp/dd.log); ${start}s -> ${end}s uptime)"
wget -q -O- --post-data "state=done" "$server/pxe/$mac/status" >/dev/null || fail "cannot report"
say "flash complete; rebooting"
exit 0
