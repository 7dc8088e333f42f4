#!/usr/bin/env bash
# The end-to-end VM suite in one command: installs what it needs (as root; otherwise it says
# what is missing), builds the static `bty` for the live environment, the live environment,
# the marker disks, the A/B appliance's kernel and initramfs and bty-web, then runs
# checks/e2e.py with the given scenarios (all if none).
#
#   checks/e2e.sh                  # every scenario (~4 min on TCG once built)
#   checks/e2e.sh l2-bios power-cut   # some of them; checks/e2e.py --list names them
set -euo pipefail
cd "$(dirname "$0")/.."

checks/deps.sh

# The agent and the interactive flasher, static, as the live environment carries them.
agent="$(live/build-static.sh)"
KERNEL_DEB="$(cat checks/out/cache/kernel-deb.path)" live/build.sh checks/out/live-agent "$agent"
KERNEL_DEB="$(cat checks/out/cache/kernel-deb.path)" checks/ab/build.sh checks/out/ab "$agent"
checks/disk/build.sh checks/out/disk >/dev/null
MARKER_ROOT_MIB=16 checks/disk/build.sh checks/out/disk-root rootfs >/dev/null
python3 checks/live/cijoe-layer.py checks/out/cijoe-layer.cpio.gz
cargo build --locked -q -p bty-web
# bty-web's container image for the container-bios scenario (as root, where podman runs).
if [ "$(id -u)" = 0 ] && command -v podman >/dev/null; then
  deploy/build-image.sh checks/out/bty-web.oci.tar >/dev/null
  podman load -q -i checks/out/bty-web.oci.tar >/dev/null
fi

exec python3 checks/e2e.py "$@"
