#!/usr/bin/env bash
# Builds `bty` and `bty-tui` for the live environment -- linked statically (the initramfs has
# no libc; glibc, so no DNS: the server URL on the kernel command line is numeric) and stripped
# (a third of the size; the initramfs is what iPXE downloads on every boot) -- and prints the
# path of `bty`. `bty-tui` is next to it, where live/build.sh looks for it.
#   Output under ${CARGO_TARGET_DIR:-target}/static.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}/static"
host="$(rustc -vV | sed -n 's/^host: //p')"
# The same flags as deploy/build-image.sh, so the two share their compiled dependencies; the
# paths remapped so the binaries do not depend on where the checkout and the registry are.
(cd "$repo" && CARGO_PROFILE_RELEASE_STRIP=symbols \
  RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$repo=/bty --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo" \
  CARGO_TARGET_DIR="$target" cargo build --release --locked -q -p bty -p bty-tui --target "$host")
echo "$target/$host/release/bty"
