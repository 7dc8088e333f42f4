#!/usr/bin/env bash
# Fuzzing of bty-core's and bty-netboot's parsers (fuzz/, see README.md "Fuzzing"):
#   1. the replay: every committed seed and every saved regression through
#      its target (`cargo test --manifest-path fuzz/Cargo.toml`), always;
#   2. a bounded afl-fuzz run of every target, BTY_FUZZ_SECONDS each
#      (default 30; 0 skips it), failing on any crash or hang it finds.
# As root it installs afl++ from Debian when missing; otherwise it says what
# to install and skips step 2.
#
#   BTY_FUZZ_SECONDS=300 checks/fuzz.sh          # longer runs
#   BTY_FUZZ_TARGETS="qcow2 bmap" checks/fuzz.sh # some targets
#   BTY_FUZZ_OUT=DIR                             # afl-fuzz output (default target/fuzz-out)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

seconds="${BTY_FUZZ_SECONDS:-30}"
read -r -a targets <<<"${BTY_FUZZ_TARGETS:-format qcow2 simg bmap partition catalog tftp dhcp}"
out="${BTY_FUZZ_OUT:-$root/target/fuzz-out}"
started=$SECONDS

log() { echo "fuzz: $*" >&2; }
took() { echo "$((SECONDS - started)) s"; }

log "replaying the seeds and saved regressions of every target"
# The main target dir: the replay reuses the dependencies `cargo test` built.
cargo test --manifest-path fuzz/Cargo.toml --locked --target-dir target -- --test-threads=2

if [ "$seconds" = 0 ]; then
  log "BTY_FUZZ_SECONDS=0: no fuzzing run; done in $(took)"
  exit 0
fi

if ! command -v afl-fuzz >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing afl++ (apt-get install afl++): afl-fuzz and its compiler runtime"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends afl++ >/dev/null
  else
    log "skipping the fuzzing run: afl-fuzz is not installed (Debian: apt-get install afl++,"
    log "or run this as root to have it installed); the replay above passed"
    exit 0
  fi
fi

# The runtime afl-fuzz talks to: the forkserver, the shared-memory input and
# the coverage map the sanitizer-coverage hooks below write into.
rt="${AFL_COMPILER_RT:-}"
if [ -z "$rt" ]; then
  prefix="$(dirname "$(dirname "$(command -v afl-fuzz)")")"
  for c in "$prefix/lib/afl/afl-compiler-rt.o" /usr/lib/afl/afl-compiler-rt.o /usr/local/lib/afl/afl-compiler-rt.o; do
    if [ -f "$c" ]; then rt="$c"; break; fi
  done
fi
if [ ! -f "$rt" ]; then
  log "cannot find afl-compiler-rt.o next to $(command -v afl-fuzz); set AFL_COMPILER_RT to its path"
  exit 1
fi

# The instrumentation cargo-afl applies, without cargo-afl: edge coverage
# through sanitizer-coverage's pc guards, comparison hooks, and the afl
# runtime linked in. --target keeps it off build scripts and proc macros.
host="$(rustc -vV | sed -n 's/^host: //p')"
rustflags="-C passes=sancov-module -C llvm-args=-sanitizer-coverage-level=3 \
-C llvm-args=-sanitizer-coverage-trace-pc-guard -C llvm-args=-sanitizer-coverage-prune-blocks=0 \
-C llvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -C link-arg=$rt"
bin_args=()
for t in "${targets[@]}"; do bin_args+=(--bin "$t"); done
log "building ${targets[*]} with afl instrumentation ($rt)"
build_started=$SECONDS
RUSTFLAGS="$rustflags" cargo build --manifest-path fuzz/Cargo.toml --locked --profile fuzz --features afl \
  --target "$host" --target-dir target/fuzz "${bin_args[@]}"
log "built in $((SECONDS - build_started)) s"
bins="$root/target/fuzz/$host/fuzz"

mkdir -p "$out"
failed=0
for t in "${targets[@]}"; do
  dir="$out/$t"
  rm -rf "$dir" "$dir.log"
  dict=()
  if [ -f "fuzz/dict/$t.dict" ]; then dict=(-x "fuzz/dict/$t.dict"); fi
  log "$t: afl-fuzz for $seconds s (output in $dir)"
  # Non-interactive and container-proof: no UI, no CPU governor or core
  # pattern checks, no core binding (other jobs may hold every core), and an
  # end at the first crash. -m caps the address space in MiB (an allocation
  # sized by a header field aborts as a crash), -t an input in ms (a hang).
  # -c 0 runs the same binary for CmpLog: the comparison hooks tell afl-fuzz
  # which magic numbers and lengths the parsers compare against.
  status=0
  AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1 \
    AFL_FAST_CAL=1 AFL_NO_CRASH_README=1 AFL_BENCH_UNTIL_CRASH=1 \
    timeout --kill-after=10 $((seconds + 120)) \
    afl-fuzz -i "fuzz/seeds/$t" -o "$dir" -V "$seconds" -m 512 -t 1000 -c 0 "${dict[@]}" -- "$bins/$t" \
    </dev/null >"$dir.log" 2>&1 || status=$?
  # afl-fuzz can leave its forkserver (or the CmpLog one) behind, stopped; an orphan holding
  # this script's file descriptors would keep whatever waits on them (CI) waiting.
  pkill -KILL -f "^$bins/$t( |$)" 2>/dev/null || true
  stats="$dir/default/fuzzer_stats"
  if [ "$status" != 0 ] || [ ! -f "$stats" ]; then
    log "$t: afl-fuzz failed (exit $status); the end of $dir.log:"
    tail -n 30 "$dir.log" >&2
    failed=1
  fi
  if [ ! -f "$stats" ]; then continue; fi
  stat() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
  log "$t: $(stat execs_done) execs ($(stat execs_per_sec)/s), $(stat corpus_count) inputs in the corpus" \
    "($(stat corpus_found) new), $(stat edges_found) edges, stability $(stat stability)," \
    "$(stat saved_crashes) crashes, $(stat saved_hangs) hangs"
  found=()
  for f in "$dir"/default/crashes/id:* "$dir"/default/hangs/id:*; do
    if [ -f "$f" ]; then found+=("$f"); fi
  done
  if [ ${#found[@]} -gt 0 ]; then
    failed=1
    for f in "${found[@]}"; do
      log "$t: $( [[ $f == */hangs/* ]] && echo hang || echo crash ): $f"
    done
    log "$t: reproduce with: cargo run --manifest-path fuzz/Cargo.toml --bin replay -- $t '${found[0]}'"
    log "$t: fix the parser (bty-core, bty-netboot), then keep the input as a regression test:"
    log "$t:   cp '${found[0]}' fuzz/regressions/$t/SHORT-NAME && cargo test --manifest-path fuzz/Cargo.toml"
  fi
done

if [ "$failed" != 0 ]; then
  log "FAILED: the fuzzing run found problems (see above); took $(took)"
  exit 1
fi
log "no crashes or hangs in ${#targets[@]} targets × $seconds s; took $(took) in all"
