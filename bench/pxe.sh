#!/usr/bin/env bash
# PXE load benchmark: `GET /pxe/{mac}` on bty-web and on the Python bty-web
# (PyPI bty-lab[web]), in one run, on this machine, with the same load:
#
#   A "discovery": BENCH_MACS distinct MACs (default 10000), each requested
#     once at BENCH_CONNS connections (default 256): every request inserts a
#     machine and records its audit events.
#   B "known": the same MACs again, round-robin, for BENCH_KNOWN_S seconds
#     (default 15): every request updates last-seen and records the decision.
#
# Also measured per server: ready to serve (spawn -> first 200 from
# /healthz, polled with curl, so within about 10 ms) and idle RSS (VmRSS one
# second after ready, before any load). Prints a summary table with the
# ratios and writes it to bench/out/pxe-summary.txt. Not a test, but a bty-web
# run with socket errors or bad answers exits 1.
#
# CPU placement: the targets are for a 2-core machine, and here the load
# generator has to share it with the server. The main runs ("2 cores") let
# the scheduler place the server and wrk (-t1) on all CPUs, for bty-web and
# for the Python server alike. bty-web is run once more confined to one core
# (CPU 0, wrk on the last CPU): the column "1 core" shows what is left when
# the server cannot use the second core at all.
#
# The Python server is much slower; its discovery phase stops after
# BENCH_PY_MAX_S seconds (default 120) and its rate is computed over what it
# answered by then (the table says how many). Its known phase then uses the
# MACs it had discovered.
#
#   bench/pxe.sh        (needs root only to apt-get install wrk if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
MACS=${BENCH_MACS:-10000}
CONNS=${BENCH_CONNS:-256}
KNOWN_S=${BENCH_KNOWN_S:-15}
PY_MAX_S=${BENCH_PY_MAX_S:-120}
PY_PKG=${BENCH_PY_PKG:-bty-lab[web]}
OUT=bench/out
SUMMARY=$OUT/pxe-summary.txt
mkdir -p "$OUT"

# --- tools -------------------------------------------------------------------
missing=()
for pair in wrk:wrk curl:curl taskset:util-linux; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "bench/pxe.sh: install ${missing[*]} (apt-get install ${missing[*]})" >&2; exit 3; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
VENV=$OUT/pyvenv
if [ ! -x "$VENV/bin/bty-web" ]; then
    echo "installing $PY_PKG into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "$PY_PKG"
fi
PY_VERSION=$("$VENV/bin/python" -c 'import bty; print(bty.__version__)')
cargo build --release -q -p bty-web
BTY_WEB=$PWD/target/release/bty-web

NCPU=$(nproc)
ALL_CPUS=0-$((NCPU - 1))
# place shared|pinned: sets SERVER_CPUS and CLIENT_CPUS.
place() {
    if [ "$1" = pinned ] && [ "$NCPU" -ge 2 ]; then
        SERVER_CPUS=0
        CLIENT_CPUS=$((NCPU - 1))
    else
        SERVER_CPUS=$ALL_CPUS
        CLIENT_CPUS=$ALL_CPUS
    fi
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bty-pxe-bench.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
healthy() { [ "$(curl -s -o /dev/null --max-time 2 -w '%{http_code}' "$1/healthz")" = 200 ]; }

# start NAME CMD...: spawn on the server CPUs with a fresh state directory;
# sets URL, PID, READY_MS, RSS_KIB.
start() {
    local name=$1; shift
    local port state t0
    port=$(free_port)
    state=$WORK/$name
    mkdir -p "$state"
    URL=http://127.0.0.1:$port
    t0=$(now_ms)
    env -u BTY_CONFIG_FILE -u BTY_CONFIG_DIR BTY_PATHS_STATE_DIR="$state" BTY_SERVER_HOST=127.0.0.1 \
        BTY_SERVER_PORT="$port" taskset -c "$SERVER_CPUS" "$@" >"$OUT/pxe-$name.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    until healthy "$URL"; do
        kill -0 "$PID" 2>/dev/null || { echo "$name exited; see $OUT/pxe-$name.log" >&2; exit 1; }
        [ $(( $(now_ms) - t0 )) -lt 30000 ] || { echo "$name not ready after 30 s" >&2; exit 1; }
    done
    READY_MS=$(( $(now_ms) - t0 ))
    sleep 1
    RSS_KIB=$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status")
}

# Wait until the server answers /healthz promptly again (a server that fell
# behind keeps working through requests whose clients are gone).
settle() {
    local t0
    t0=$(now_ms)
    while :; do
        local t1
        t1=$(date +%s%N)
        if healthy "$1" && [ $(( ($(date +%s%N) - t1) / 1000000 )) -lt 200 ]; then return; fi
        [ $(( $(now_ms) - t0 )) -lt 120000 ] || { echo "note: $1 still slow after 120 s" >&2; return; }
        sleep 0.5
    done
}

# load MODE COUNT SECONDS: run wrk, print its RESULT line (key=value ...).
load() {
    local log=$OUT/pxe-wrk-$NAME-$1.log
    taskset -c "$CLIENT_CPUS" wrk -t1 -c"$CONNS" -d"$3"s --timeout 10s -s bench/pxe-macs.lua "$URL" -- "$1" "$2" \
        >"$log" 2>&1 || true
    grep '^RESULT' "$log" | cut -d' ' -f2- || echo "requests=0 rps=0 bad=0"
    grep '^BADSAMPLE' "$log" >&2 || true
}

# field KEY LINE
field() { tr ' ' '\n' <<<"$2" | awk -F= -v k="$1" '$1 == k {print $2}'; }
errors() {
    local n=0 k
    for k in err_connect err_read err_write err_status err_timeout bad; do n=$((n + $(field $k "$1"))); done
    echo $n
}

# db_count STATE_DB SQL
db_count() { python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])' "$1" "$2"; }

declare -A R
# run NAME PLACEMENT DISCOVERY_MAX_S CMD...
run() {
    local name=$1 max=$3
    place "$2"
    shift 3
    NAME=$name
    echo "-- $name (server on CPU $SERVER_CPUS, wrk on CPU $CLIENT_CPUS)"
    start "$name" "$@"
    R[$name.ready]=$READY_MS
    R[$name.rss]=$RSS_KIB
    echo "  ready in $READY_MS ms, idle RSS $((RSS_KIB / 1024)) MiB"
    R[$name.A]=$(load discover "$MACS" "$max")
    echo "  discovery: $(field requests "${R[$name.A]}") answers, $(field rps "${R[$name.A]}") req/s, errors $(errors "${R[$name.A]}")"
    settle "$URL"
    local known=$MACS
    [ "$(field requests "${R[$name.A]}")" -ge "$MACS" ] || known=$(field requests "${R[$name.A]}")
    [ "$known" -gt 0 ] || known=1
    R[$name.B]=$(load known "$known" "$KNOWN_S")
    echo "  known:     $(field requests "${R[$name.B]}") answers, $(field rps "${R[$name.B]}") req/s, errors $(errors "${R[$name.B]}")"
    R[$name.rss_after]=$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status")
    kill "$PID"
    wait "$PID" 2>/dev/null || true
}

echo "PXE load: $MACS MACs, $CONNS connections, known phase ${KNOWN_S} s; $NCPU CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
run bty shared 600 "$BTY_WEB"
BTY_DB=$WORK/bty/state.db
R[bty.machines]=$(db_count "$BTY_DB" "SELECT count(*) FROM machines")
R[bty.events]=$(db_count "$BTY_DB" "SELECT count(*) FROM events WHERE kind = 'pxe.offered'")
run bty1 pinned 600 "$BTY_WEB"
run py shared "$PY_MAX_S" "$VENV/bin/bty-web"
PY_DB=$WORK/py/state.db
R[py.machines]=$(db_count "$PY_DB" "SELECT count(*) FROM machines")
R[py.events]=$(db_count "$PY_DB" "SELECT count(*) FROM events WHERE kind = 'netboot.pxe.offered'")

# --- summary -----------------------------------------------------------------
ms() { awk -v us="$1" 'BEGIN { printf "%.1f", us / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.0fx", a / b; else print "-" }'; }
ratio_inv() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0) printf "%.1fx", b / a; else print "-" }'; }
verdict() { if awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN { exit !(op == ">=" ? v >= t : v < t) }'; then echo met; else echo MISSED; fi; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
{
    echo "PXE load benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -m), $NCPU CPUs shared by server and wrk -t1"
    echo "GET /pxe/{mac}, $CONNS connections; A: $MACS new MACs once each; B: known MACs for ${KNOWN_S} s"
    echo "ratio = bty-web / Python, both on all $NCPU CPUs; \"1 core\" = bty-web confined to CPU 0, wrk on CPU $((NCPU - 1))"
    printf '%-28s %14s %14s %16s %8s\n' "" "bty-web" "bty-web 1 core" "Python $PY_VERSION" "ratio"
    for ph in A B; do
        label=$([ $ph = A ] && echo "A discovery" || echo "B known")
        b=${R[bty.$ph]} o=${R[bty1.$ph]} p=${R[py.$ph]}
        printf '%-28s %14s %14s %16s %8s\n' "$label req/s" "$(field rps "$b")" "$(field rps "$o")" \
            "$(field rps "$p")" "$(ratio "$(field rps "$b")" "$(field rps "$p")")"
        printf '%-28s %14s %14s %16s %8s\n' "$label p50 / p99 ms" \
            "$(ms "$(field p50_us "$b")") / $(ms "$(field p99_us "$b")")" \
            "$(ms "$(field p50_us "$o")") / $(ms "$(field p99_us "$o")")" \
            "$(ms "$(field p50_us "$p")") / $(ms "$(field p99_us "$p")")" \
            "$(ratio_inv "$(field p99_us "$b")" "$(field p99_us "$p")")"
        printf '%-28s %14s %14s %16s\n' "$label answers / errors" \
            "$(field requests "$b") / $(errors "$b")" "$(field requests "$o") / $(errors "$o")" \
            "$(field requests "$p") / $(errors "$p")"
    done
    printf '%-28s %14s %14s %16s %8s\n' "idle RSS MiB" "$(mib "${R[bty.rss]}")" "$(mib "${R[bty1.rss]}")" \
        "$(mib "${R[py.rss]}")" "$(ratio_inv "${R[bty.rss]}" "${R[py.rss]}")"
    printf '%-28s %14s %14s %16s\n' "RSS after load MiB" "$(mib "${R[bty.rss_after]}")" \
        "$(mib "${R[bty1.rss_after]}")" "$(mib "${R[py.rss_after]}")"
    printf '%-28s %14s %14s %16s %8s\n' "ready to serve ms" "${R[bty.ready]}" "${R[bty1.ready]}" "${R[py.ready]}" \
        "$(ratio_inv "${R[bty.ready]}" "${R[py.ready]}")"
    printf '%-28s %14s %14s %16s\n' "machines / PXE audit events" "${R[bty.machines]} / ${R[bty.events]}" "" \
        "${R[py.machines]} / ${R[py.events]}"
    echo "targets (bty-web on $NCPU CPUs):"
    minrps=$(awk -v a="$(field rps "${R[bty.A]}")" -v b="$(field rps "${R[bty.B]}")" 'BEGIN { print (a < b ? a : b) }')
    maxp99=$(awk -v a="$(field p99_us "${R[bty.A]}")" -v b="$(field p99_us "${R[bty.B]}")" 'BEGIN { print (a > b ? a : b) / 1000 }')
    minratio=$(awk -v a="$(field rps "${R[bty.A]}")" -v b="$(field rps "${R[bty.B]}")" \
        -v c="$(field rps "${R[py.A]}")" -v d="$(field rps "${R[py.B]}")" \
        'BEGIN { x = c > 0 ? a / c : 1e9; y = d > 0 ? b / d : 1e9; print (x < y ? x : y) }')
    echo "  >= 5000 req/s (both phases)      $(verdict "$minrps" ">=" 5000)  ($minrps)"
    echo "  p99 < 20 ms (both phases)        $(verdict "$maxp99" "<" 20)  ($maxp99 ms)"
    echo "  >= 10x Python (both phases)      $(verdict "$minratio" ">=" 10)  ($(printf '%.0f' "$minratio")x)"
    echo "  idle RSS < 30 MiB                $(verdict "${R[bty.rss]}" "<" 30720)"
    echo "  ready < 200 ms                   $(verdict "${R[bty.ready]}" "<" 200)"
} | tee "$SUMMARY"

bad=$(( $(errors "${R[bty.A]}") + $(errors "${R[bty.B]}") + $(errors "${R[bty1.A]}") + $(errors "${R[bty1.B]}") ))
if [ "$bad" -gt 0 ]; then
    echo "!! bty-web answered $bad requests with errors or bad scripts: see $OUT/pxe-wrk-*.log and $OUT/pxe-bty.log" | tee -a "$SUMMARY"
    exit 1
fi
