#!/usr/bin/env bash
# State hygiene under PXE load: BENCH_CONTACTS (default 1,000,000) `GET /pxe/{mac}`
# over BENCH_MACS machines (default 1,000, so each is contacted about 1,000
# times and the per-machine retention cap applies) at BENCH_CONNS connections,
# with retention at its defaults. Prints the size of state.db and its WAL
# during the load, after it (a quiet spell), and after a restart and one
# retention pass, plus the events kept. Not a test; figures go in the README.
#
#   bench/pxe-hygiene.sh        (needs root only to apt-get install wrk if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
CONTACTS=${BENCH_CONTACTS:-1000000}
MACS=${BENCH_MACS:-1000}
CONNS=${BENCH_CONNS:-256}
OUT=bench/out
mkdir -p "$OUT"
command -v wrk >/dev/null 2>&1 || {
    [ "$(id -u)" = 0 ] || { echo "bench/pxe-hygiene.sh: apt-get install wrk" >&2; exit 3; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null
}
cargo build --release -q -p bty-web
BTY_WEB=$PWD/target/release/bty-web
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bty-hygiene.XXXXXX")
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT

start() {
    env -u BTY_CONFIG_FILE -u BTY_CONFIG_DIR BTY_PATHS_STATE_DIR="$WORK" BTY_SERVER_HOST=127.0.0.1 \
        BTY_SERVER_PORT="$PORT" "$BTY_WEB" >>"$OUT/hygiene-bty.log" 2>&1 &
    PID=$!
    until curl -s -o /dev/null "$URL/healthz"; do sleep 0.1; done
}
mib() { awk -v b="$(stat -c %s "$1" 2>/dev/null || echo 0)" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
sizes() { echo "  $1: state.db $(mib "$WORK/state.db"), WAL $(mib "$WORK/state.db-wal")"; }
count() { python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])' "$WORK/state.db" "$1"; }

start
echo "PXE hygiene: $CONTACTS contacts over $MACS MACs at $CONNS connections"
wrk -t1 -c"$CONNS" -d600s --timeout 10s -s bench/pxe-macs.lua "$URL" -- discover "$MACS" >/dev/null 2>&1 || true
done_n=$MACS
peak_wal=0
while [ "$done_n" -lt "$CONTACTS" ]; do
    wrk -t1 -c"$CONNS" -d10s --timeout 10s -s bench/pxe-macs.lua "$URL" -- known "$MACS" >"$OUT/hygiene-wrk.log" 2>&1 || true
    n=$(grep '^RESULT' "$OUT/hygiene-wrk.log" | tr ' ' '\n' | awk -F= '$1 == "requests" {print $2}')
    done_n=$((done_n + ${n:-0}))
    w=$(stat -c %s "$WORK/state.db-wal" 2>/dev/null || echo 0)
    [ "$w" -gt "$peak_wal" ] && peak_wal=$w
    sizes "after $done_n contacts"
done
echo "  largest WAL seen between rounds: $(awk -v b="$peak_wal" 'BEGIN { printf "%.1f MiB", b / 1048576 }')"
sleep 4
sizes "after 4 quiet seconds"
kill "$PID"; wait "$PID" 2>/dev/null || true
start
# The first retention pass starts 20 s after start; wait until the number of
# events stops changing.
sleep 20
prev=-1
for _ in $(seq 60); do
    n=$(count 'SELECT count(*) FROM events')
    [ "$n" = "$prev" ] && break
    prev=$n
    sleep 5
done
sleep 4 # a quiet spell: the WAL is emptied
sizes "after a restart and a retention pass"
echo "  events kept: $(count 'SELECT count(*) FROM events') (pxe.offered: $(count "SELECT count(*) FROM events WHERE kind = 'pxe.offered'")), flash history rows: $(count 'SELECT count(*) FROM flash_history')"
echo "  freelist pages: $(count 'PRAGMA freelist_count'), page size $(count 'PRAGMA page_size')"
