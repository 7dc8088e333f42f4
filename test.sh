#!/usr/bin/env bash
# Every check bty has: formatting, lints, the layering of crates and modules, unit and integration tests, a
# short fuzzing run, and the end-to-end VM suite. First it installs what they need (checks/deps.sh: Debian
# packages and a Debian kernel package, as root; otherwise it prints the one apt-get line that is missing and
# stops).
# Loop-device tests run when this is run as root and skip (saying why) otherwise.
set -euo pipefail
cd "$(dirname "$0")"
started=$(date +%s)

echo "== dependencies (checks/deps.sh)"
checks/deps.sh
# A CI build is never rebuilt incrementally; the incremental cache would only cost disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --features afl --locked --target-dir target -- -D warnings
echo "== layers (checks/layers.py: crate arrows point one way, no HTTP server in bty-control, no module cycles)"
python3 checks/layers.py
echo "== cargo test"
cargo test --workspace --locked -- --test-threads=2
echo "== fuzzing (checks/fuzz.sh: every seed and regression replayed, then each target fuzzed \${BTY_FUZZ_SECONDS:-30} s)"
checks/fuzz.sh
echo "== Nix: every .nix file parses (checks/nix-eval.sh; set NIXPKGS=... to also evaluate the modules)"
checks/nix-eval.sh
echo "== the container image (checks/container.sh: reproducible build, rootful podman, an upgrade on the same volume)"
checks/container.sh
echo "== end-to-end VM suite (checks/e2e.sh: real QEMU, iPXE, bty-web and bty agent)"
checks/e2e.sh
echo "== the README's quick start, as written (checks/quickstart.sh: cargo install, live/install.sh, a VM flashed over PXE)"
checks/quickstart.sh
echo "== all checks passed in $(( ($(date +%s) - started) / 60 )) min $(( ($(date +%s) - started) % 60 )) s"
