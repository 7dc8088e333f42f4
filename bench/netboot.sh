#!/usr/bin/env bash
# Boot storm benchmark (see bench/netboot.py): builds the release bty-web, then N simulated PXE
# clients against bty-web's ProxyDHCP + TFTP and against dnsmasq in proxy mode with its TFTP.
# Root only (network namespaces); installs dnsmasq-base when missing.
#
#   sudo bench/netboot.sh            # 1,000 clients
#   sudo bench/netboot.sh 10000
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/netboot.sh: run as root (network namespaces)" >&2; exit 3; }
command -v dnsmasq >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends dnsmasq-base >/dev/null; }
cargo build --release --locked -q -p bty-web
cargo build --release --locked -q -p bty-netboot --example boot_storm
exec python3 bench/netboot.py target/release/bty-web target/release/examples/boot_storm "${1:-1000}"
