#!/usr/bin/env bash
# The end-to-end VM suite in one command: installs what it needs (as root; otherwise it says
# what is missing), builds the static `bty` for the live environment, the live environment,
# the marker disks and bty-web, then runs checks/e2e.py with the given scenarios (all if none).
#
#   checks/e2e.sh                  # every scenario (~4 min on TCG once built)
#   checks/e2e.sh bios power-cut   # some of them; checks/e2e.py --list names them
set -euo pipefail
cd "$(dirname "$0")/.."

checks/deps.sh

# The initramfs has no libc: the agent and the interactive flasher are linked statically
# (glibc, so no DNS: bty-web's public URL is numeric in the tests). live/build.sh takes the
# bty-tui found next to bty.
host=$(rustc -vV | sed -n 's/^host: //p')
# Stripped: a third of the size, and the initramfs is what iPXE downloads on every boot.
CARGO_PROFILE_RELEASE_STRIP=symbols RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=target/static \
    cargo build --release --locked -q -p bty -p bty-tui --target "$host"
agent=target/static/$host/release/bty
KERNEL_DEB="$(cat checks/out/cache/kernel-deb.path)" live/build.sh checks/out/live-agent "$agent"
checks/disk/build.sh checks/out/disk >/dev/null
cargo build --locked -q -p bty-web

exec python3 checks/e2e.py "$@"
