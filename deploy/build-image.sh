#!/usr/bin/env bash
# Builds bty-web's container image without Docker or Nix: static bty-web and bty (glibc's
# crt-static, as the live environment's bty), CA certificates, a non-root user, /var/lib/bty and
# /var/cache/bty as volumes, written as a reproducible OCI archive by deploy/oci_image.py.
#
#   deploy/build-image.sh [OUT]        # default target/oci/bty-web.oci.tar
#   podman load -i target/oci/bty-web.oci.tar   # -> localhost/bty-web:VERSION
#
# The same commit gives the same image digest: fixed timestamps (SOURCE_DATE_EPOCH, default the
# commit's time), fixed owners and order in the layer. Prints the image digest. BTY_IMAGE_VERSION
# overrides the tag (default: the workspace version).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$repo/target/oci/bty-web.oci.tar}"
target="${CARGO_TARGET_DIR:-$repo/target}/static"
host="$(rustc -vV | sed -n 's/^host: //p')"

field() { sed -n "s/^$1 *= *\"\(.*\)\"/\1/p" "$repo/Cargo.toml" | head -1; }
version="${BTY_IMAGE_VERSION:-$(field version)}"
revision="$(git -C "$repo" rev-parse HEAD 2>/dev/null || true)"
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH="$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)"
fi
export SOURCE_DATE_EPOCH

ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] || { echo "build-image: $ca missing: apt-get install ca-certificates" >&2; exit 1; }

# Paths in the binaries are the repository's and the registry's; remapped, the build does not
# depend on where the checkout is.
(cd "$repo" && CARGO_PROFILE_RELEASE_STRIP=symbols \
  RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$repo=/bty --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo" \
  CARGO_TARGET_DIR="$target" cargo build --release --locked -q -p bty-web -p bty --target "$host")
bin="$target/$host/release"

python3 "$repo/deploy/oci_image.py" --bty-web "$bin/bty-web" --bty "$bin/bty" --version "$version" \
  --revision "$revision" --source "$(field repository)" --license "$(field license)" --ca-bundle "$ca" --out "$out"
