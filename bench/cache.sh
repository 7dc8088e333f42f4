#!/usr/bin/env bash
# Image cache benchmark: BENCH_CLIENTS concurrent clients (default 32) each
# download one BENCH_IMAGE_MIB image (default 1024) over loopback, in one run:
#
#   nginx  nginx (Debian's nginx-light, sendfile on) serving the file directly:
#          the reference.
#   cold   bty-web with an empty cache, the catalog entry pointing at that
#          nginx as its origin: the first request starts one fill and every
#          client reads the file as it grows.
#   warm   the same again, now from the complete cache entry.
#
# Printed per run: aggregate throughput (all bytes / wall time of the batch),
# its ratio to nginx, p50 and p99 time to first byte (curl's
# time_starttransfer), and for bty-web the bytes fetched from the origin
# (bty_cache_upstream_bytes_total; the target is exactly 1.0x the image) and
# its peak RSS (VmHWM). Writes bench/out/cache-summary.txt. Not a test, but a
# client that gets a short or wrong body makes it exit 1.
#
#   bench/cache.sh      (needs root only to apt-get install nginx-light if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${BENCH_CLIENTS:-32}
MIB=${BENCH_IMAGE_MIB:-1024}
OUT=bench/out/cache
SUMMARY=bench/out/cache-summary.txt
mkdir -p "$OUT"

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    [ "$(id -u)" = 0 ] || { echo "bench/cache.sh: apt-get install nginx-light" >&2; exit 3; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light curl >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release -q -p bty-web
BTY_WEB=$PWD/target/release/bty-web

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- the image ---------------------------------------------------------------
IMG=$OUT/www/disk.img
mkdir -p "$OUT/www"
if [ ! -f "$IMG" ] || [ "$(stat -c %s "$IMG")" != $((MIB << 20)) ]; then
    echo "making a ${MIB} MiB image"
    head -c $((MIB << 20)) /dev/urandom >"$IMG"
fi
SHA=$(sha256sum "$IMG" | cut -d' ' -f1)
SIZE=$(stat -c %s "$IMG")

# --- nginx -------------------------------------------------------------------
NPORT=$(free_port)
mkdir -p "$OUT/nginx/logs"
cat >"$OUT/nginx/nginx.conf" <<EOF
worker_processes auto;
pid $PWD/$OUT/nginx/nginx.pid;
error_log $PWD/$OUT/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    types { application/octet-stream img; }
    server {
        listen 127.0.0.1:$NPORT;
        root $PWD/$OUT/www;
    }
}
EOF
"$NGINX" -p "$PWD/$OUT/nginx" -c "$PWD/$OUT/nginx/nginx.conf" -g 'daemon off;' 2>"$OUT/nginx/stderr" &
NGINX_PID=$!
BTY_PID=
cleanup() {
    kill "$NGINX_PID" 2>/dev/null || true
    [ -n "$BTY_PID" ] && kill "$BTY_PID" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do curl -fsI "http://127.0.0.1:$NPORT/disk.img" >/dev/null 2>&1 && break; sleep 0.05; done

# --- a batch of clients --------------------------------------------------------
# batch NAME URL: CLIENTS curls at once; sets WALL (s), MIBS (aggregate MiB/s),
# P50 and P99 (time to first byte, ms). Each body is checked by size, and the
# first one by SHA-256 as well.
batch() {
    local name=$1 url=$2 dir=$OUT/run-$1
    rm -rf "$dir" && mkdir -p "$dir"
    local t0 t1
    local pids=()
    t0=$(date +%s.%N)
    for i in $(seq "$CLIENTS"); do
        if [ "$i" = 1 ]; then
            curl -sS -w '%{time_starttransfer} %{size_download} %{http_code}\n' "$url" -o "$dir/body" >"$dir/$i" 2>&1 &
        else
            curl -sS -w '%{time_starttransfer} %{size_download} %{http_code}\n' "$url" -o /dev/null >"$dir/$i" 2>&1 &
        fi
        pids+=($!)
    done
    wait "${pids[@]}" || true
    t1=$(date +%s.%N)
    local bad
    bad=$(awk -v s="$SIZE" '$2 != s || $3 != 200 {print FILENAME": "$0}' "$dir"/[0-9]* | head -3)
    if [ -n "$bad" ]; then echo "bench/cache.sh: $name: a client got a short or failed answer: $bad" >&2; exit 1; fi
    [ "$(sha256sum "$dir/body" | cut -d' ' -f1)" = "$SHA" ] || { echo "bench/cache.sh: $name: wrong bytes" >&2; exit 1; }
    rm -f "$dir/body"
    WALL=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
    MIBS=$(python3 -c "print(f'{$CLIENTS * $SIZE / ($t1 - $t0) / 1048576:.0f}')")
    read -r P50 P99 < <(cat "$dir"/[0-9]* | python3 -c '
import sys, math
t = sorted(float(l.split()[0]) * 1000 for l in sys.stdin)
rank = lambda p: t[max(0, math.ceil(p * len(t)) - 1)]
print(f"{rank(0.50):.0f} {rank(0.99):.0f}")')
}

echo "== nginx: $CLIENTS clients, $MIB MiB each"
batch nginx "http://127.0.0.1:$NPORT/disk.img"
N_WALL=$WALL N_MIBS=$MIBS N_P50=$P50 N_P99=$P99

# --- bty-web -------------------------------------------------------------------
STATE=$OUT/state
rm -rf "$STATE" && mkdir -p "$STATE"
cat >"$STATE/catalog.toml" <<EOF
version = 1
[[images]]
name = "disk"
src = "http://127.0.0.1:$NPORT/disk.img"
sha256 = "$SHA"
EOF
BPORT=$(free_port)
BTY_PATHS_STATE_DIR=$STATE BTY_SERVER_HOST=127.0.0.1 BTY_SERVER_PORT=$BPORT BTY_LOG=warn NO_COLOR=1 \
    "$BTY_WEB" >"$OUT/bty-web.log" 2>&1 &
BTY_PID=$!
for _ in $(seq 200); do curl -fs "http://127.0.0.1:$BPORT/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
metric() { curl -fs "http://127.0.0.1:$BPORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

echo "== bty-web, cold cache (origin: that nginx)"
batch cold "http://127.0.0.1:$BPORT/images/disk"
C_WALL=$WALL C_MIBS=$MIBS C_P50=$P50 C_P99=$P99
C_UP=$(metric bty_cache_upstream_bytes_total)
echo "== bty-web, warm cache"
batch warm "http://127.0.0.1:$BPORT/images/disk"
W_WALL=$WALL W_MIBS=$MIBS W_P50=$P50 W_P99=$P99
W_UP=$(metric bty_cache_upstream_bytes_total)
HITS=$(metric bty_cache_hits_total) MISSES=$(metric bty_cache_misses_total)
RSS=$(awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$BTY_PID/status")

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
{
    echo "image cache: $CLIENTS clients x $MIB MiB over loopback, $(nproc) CPU(s), $(date -u +%Y-%m-%d)"
    printf '%-8s %9s %10s %9s %9s %9s %14s\n' run wall_s MiB/s vs_nginx ttfb_p50 ttfb_p99 upstream
    printf '%-8s %9s %10s %9s %8sms %8sms %14s\n' nginx "$N_WALL" "$N_MIBS" 1.00 "$N_P50" "$N_P99" -
    printf '%-8s %9s %10s %9s %8sms %8sms %14s\n' cold "$C_WALL" "$C_MIBS" "$(ratio "$C_MIBS" "$N_MIBS")" "$C_P50" "$C_P99" \
        "$(ratio "$C_UP" "$SIZE")x image"
    printf '%-8s %9s %10s %9s %8sms %8sms %14s\n' warm "$W_WALL" "$W_MIBS" "$(ratio "$W_MIBS" "$N_MIBS")" "$W_P50" "$W_P99" \
        "$(ratio "$W_UP" "$SIZE")x image"
    echo "bty-web: cache hits $HITS, misses $MISSES, peak RSS ${RSS} MiB"
    echo "targets: upstream 1.00x, warm >= 0.80x nginx, cold >= 0.50x nginx, RSS < 64 MiB"
} | tee "$SUMMARY"
