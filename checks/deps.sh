#!/usr/bin/env bash
# Installs everything ./test.sh needs (idempotent; a fast no-op when all is present):
#   - the peer tools the format tests compare against (zstd, xz, bzip2, pigz, pbzip2, lz4, zip,
#     lzop, 7z, img2simg, qemu-img), the loop-device and filesystem tools (losetup, sgdisk,
#     mkfs.ext4), Chromium and chromedriver for the browser UI tests, afl++ for the fuzzing run
#     nix-instantiate for the Nix checks, the TFTP clients (curl, atftp, tftp-hpa) and dnsmasq;
#   - for the VM suite: QEMU (from bookworm-backports on Debian 12, so the newer qemu-utils is
#     kept), iPXE ROMs and binaries, OVMF, busybox-static, cpio, mtools, dosfstools, GRUB EFI
#     modules, kmod (depmod), binutils, systemd-boot-efi (the A/B scenario's loader and UKI stub);
#   - the Debian kernel package, downloaded (not installed) into checks/out/cache/;
#   - cijoe from PyPI, pinned, in a virtual environment at checks/out/cijoe/ (the CIJOE tests
#     run the real one).
# As root it installs what is missing; otherwise it prints the one apt-get line that would and
# exits 1. Nothing is installed into the host's /boot.
set -euo pipefail

# The kernel the test live environment boots. Bump together when the archive moves on;
# BTY_KERNEL_ABI overrides it for one run.
KERNEL_ABI="${BTY_KERNEL_ABI:-6.1.0-50}"

here="$(cd "$(dirname "$0")" && pwd)"
cache="$here/out/cache"
mkdir -p "$cache"

log() { echo "deps: $*" >&2; }

# Package -> what proves it is installed: an absolute path, or a command on PATH (cheaper than
# dpkg -s for each, and true whichever way the tool got there).
declare -A want=(
  # tests, fuzzing, Nix
  [zstd]=zstd
  [xz-utils]=xz
  [bzip2]=bzip2
  [pigz]=pigz
  [pbzip2]=pbzip2
  [lz4]=lz4
  [zip]=zip
  [unzip]=unzip
  [lzop]=lzop
  [p7zip-full]=7z
  [android-sdk-libsparse-utils]=img2simg
  [qemu-utils]=qemu-img
  [e2fsprogs]=mkfs.ext4
  [mount]=losetup
  [chromium]=chromium
  [chromium-driver]=chromedriver
  [afl++]=afl-fuzz
  [nix-bin]=nix-instantiate
  [python3]=python3
  [python3-venv]=/usr/share/doc/python3-venv
  [curl]=curl
  # TFTP clients the TFTP server is tested against; dnsmasq (binary only, no service) is the
  # LAN's DHCP server in the network-boot tests and the boot-storm benchmark's anchor
  [atftp]=atftp
  [tftp-hpa]=/usr/bin/tftp
  [dnsmasq-base]=/usr/sbin/dnsmasq
  # an OCI registry (distribution) on loopback for the oras:// source tests
  [docker-registry]=/usr/bin/docker-registry
  [iproute2]=/usr/sbin/ip
  # the SSH server online CIJOE runs reach (started by the tests on loopback only)
  [openssh-server]=/usr/sbin/sshd
  # the SSH server of the installed-system disk the online VM scenario boots (binary only)
  [dropbear-bin]=/usr/sbin/dropbear
  # signs the appliance release manifests `bty os` verifies (the tests sign with the real tool)
  [minisign]=minisign
  # the VM suite
  [qemu-system-x86]=/usr/bin/qemu-system-x86_64
  [ipxe-qemu]=/usr/lib/ipxe/qemu/efi-virtio.rom
  [ipxe]=/usr/lib/ipxe/undionly.kpxe
  [ovmf]=/usr/share/OVMF/OVMF_CODE_4M.fd
  [busybox-static]=/bin/busybox
  [cpio]=/usr/bin/cpio
  [mtools]=/usr/bin/mcopy
  [dosfstools]=/usr/sbin/mkfs.vfat
  [grub-efi-amd64-bin]=/usr/lib/grub/x86_64-efi/modinfo.sh
  [grub-common]=/usr/bin/grub-mkimage
  [fdisk]=/usr/sbin/sfdisk
  [gdisk]=/usr/sbin/sgdisk
  [kmod]=/usr/sbin/depmod
  [binutils]=/usr/bin/as
  # systemd-boot and its UKI stub, for the A/B appliance the ab-update scenario boots (not
  # installed into the host's ESP: the package only ships the EFI binaries)
  [systemd-boot-efi]=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
  [file]=/usr/bin/file
  [gzip]=/bin/gzip
  # bty-web's container image: built without Docker (deploy/build-image.sh needs the CA
  # bundle), run with rootful podman and the runc runtime by checks/container.sh and the
  # container-bios scenario (python3-yaml reads deploy/compose.yaml there)
  [ca-certificates]=/etc/ssl/certs/ca-certificates.crt
  [podman]=podman
  [runc]=runc
  [python3-yaml]=/usr/lib/python3/dist-packages/yaml/__init__.py
)

present() {
  case "$1" in
    /*) [ -e "$1" ] ;;
    *) command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] ;;
  esac
}

missing=()
for pkg in "${!want[@]}"; do
  present "${want[$pkg]}" || missing+=("$pkg")
done
# Sorted, so the printed install line is stable.
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort)
fi
# busybox-static and busybox conflict in name only: the static one provides /bin/busybox too,
# but we need the static build (the initramfs has no libc).
if [ -e /bin/busybox ] && ! file -L /bin/busybox 2>/dev/null | grep -q 'statically linked'; then
  if ! dpkg -s busybox-static >/dev/null 2>&1; then missing+=(busybox-static); fi
fi

need_root() {
  if [ "$(id -u)" != 0 ]; then
    log "missing: $*"
    log "install it as root, then run this again:"
    echo "  sudo apt-get install -y --no-install-recommends $*" >&2
    exit 1
  fi
}

updated=0
apt_update() {
  if [ "$updated" = 0 ]; then
    log "apt-get update"
    apt-get update -qq
    updated=1
  fi
}

if [ "${#missing[@]}" -gt 0 ]; then
  need_root "${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # qemu-system-x86 from plain bookworm would downgrade (remove) the newer qemu-utils some
  # machines ship; backports has a matching QEMU. Other releases take their own QEMU.
  codename="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")"
  backports=0
  if [ "$codename" = bookworm ]; then backports=1; fi
  if [ "$backports" = 1 ] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding bookworm-backports to apt sources"
    cat > /etc/apt/sources.list.d/bookworm-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    updated=0
  fi
  apt_update
  rest=()
  for pkg in "${missing[@]}"; do
    if [ "$pkg" = qemu-system-x86 ] && [ "$backports" = 1 ]; then
      log "installing qemu-system-x86 from bookworm-backports"
      apt-get install -y -qq -t bookworm-backports --no-install-recommends qemu-system-x86 >/dev/null
    else
      rest+=("$pkg")
    fi
  done
  if [ "${#rest[@]}" -gt 0 ]; then
    log "installing ${rest[*]}"
    # No package may start a service here (openssh-server would listen on every address):
    # policy-rc.d says no for the install, unless the machine already has its own.
    own_policy=1
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      own_policy=0
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
      chmod 755 /usr/sbin/policy-rc.d
    fi
    apt-get install -y -qq --no-install-recommends "${rest[@]}" >/dev/null
    if [ "$own_policy" = 0 ]; then rm -f /usr/sbin/policy-rc.d; fi
  fi
fi

# The kernel package: downloaded, never installed.
pkg="linux-image-${KERNEL_ABI}-amd64"
if ! ls "$cache/${pkg}_"*.deb >/dev/null 2>&1; then
  # `apt-get download` needs package lists; an old list may no longer know the package.
  if ! apt-cache show "$pkg" >/dev/null 2>&1; then
    need_root "package lists (apt-get update)"
    apt_update
  fi
  if ! apt-cache show "$pkg" >/dev/null 2>&1; then
    # The archive dropped the pinned ABI (point release / security update): take the one the
    # linux-image-amd64 meta-package points at now, and say so loudly.
    now="$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/.*Depends: linux-image-\(.*\)-amd64$/\1/p' | head -1)"
    if [ -z "$now" ]; then log "cannot find $pkg nor linux-image-amd64 in apt"; exit 1; fi
    log "WARNING: $pkg is not in the archive any more; using linux-image-${now}-amd64 (update KERNEL_ABI in checks/deps.sh)"
    pkg="linux-image-${now}-amd64"
  fi
  log "downloading $pkg into $cache"
  # As root apt warns that its sandbox user cannot write here; the download works all the same.
  (cd "$cache" && apt-get download -qq "$pkg" 2> >(grep -v "unsandboxed" >&2))
fi
# Record which .deb the live builder uses: the pinned one, or the fallback just downloaded.
deb="$(ls "$cache/${pkg}_"*.deb 2>/dev/null | tail -1)"
[ -n "$deb" ] || deb="$(ls -t "$cache/"linux-image-*-amd64_*.deb | head -1)"
echo "$deb" > "$cache/kernel-deb.path"

# cijoe, pinned: the provisioning tests run the real one (checks/out/cijoe/bin/cijoe).
CIJOE_VERSION=0.9.61
venv="$here/out/cijoe"
if ! "$venv/bin/cijoe" --version 2>/dev/null | grep -qx "cijoe $CIJOE_VERSION"; then
  log "installing cijoe $CIJOE_VERSION into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "cijoe==$CIJOE_VERSION"
fi
