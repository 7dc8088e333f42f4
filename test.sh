#!/usr/bin/env bash
# Every check bty has: formatting, lints, unit and integration tests, and the end-to-end
# VM suite (its first run as root installs QEMU, iPXE, OVMF and a Debian kernel package).
# Loop-device tests run when this is run as root and skip (saying why) otherwise.
set -euo pipefail
cd "$(dirname "$0")"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked -- --test-threads=2
echo "== Nix: every .nix file parses (checks/nix-eval.sh; set NIXPKGS=... to also evaluate the modules)"
checks/nix-eval.sh
echo "== end-to-end VM suite (checks/e2e.sh: real QEMU, iPXE, bty-web and bty agent)"
checks/e2e.sh
