#!/usr/bin/env bash
# Browser UI render benchmark (see bench/ui.py): builds the release bty-web
# and times every UI page against 10,000 machines and 100,000 events.
#
#   bench/ui.sh      (BENCH_MACHINES, BENCH_EVENTS, BENCH_ROUNDS to change the sizes)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p bty-web
exec python3 bench/ui.py target/release/bty-web
