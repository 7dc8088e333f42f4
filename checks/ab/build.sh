#!/usr/bin/env bash
# Builds the pieces of the A/B appliance the `ab-update` scenario boots under OVMF and
# systemd-boot (checks/ab/ab.py assembles UKIs, releases and the disk from them):
#   OUT_DIR/vmlinuz       the Debian kernel, from the package checks/deps.sh downloaded
#   OUT_DIR/initrd.gz     busybox-static, the disk/NIC/vfat/efivarfs/fw_cfg modules,
#                         checks/ab/init as /init and BTY_BINARY (static) as /bin/bty
# Usage: checks/ab/build.sh OUT_DIR BTY_BINARY      (KERNEL_DEB overrides the kernel package)
# The unpacked kernel's modules are cached next to the .deb (ab-kernel.*). No root needed.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:?usage: $0 OUT_DIR BTY_BINARY}"
bty="${2:?usage: $0 OUT_DIR BTY_BINARY}"

# virtio_pci pulls virtio and virtio_ring in before it (modules.dep); vfat mounts the ESP with
# the default codepage and iocharset (nls_cp437, nls_ascii) and utf8; efivarfs shows
# systemd-boot's variables; qemu_fw_cfg carries the test's instruction (opt/bty/apply).
MODULES=(virtio_pci virtio_blk virtio_net vfat nls_cp437 nls_ascii nls_utf8 efivarfs qemu_fw_cfg)

deb="${KERNEL_DEB:-}"
if [ -z "$deb" ]; then
  f="$repo/checks/out/cache/kernel-deb.path"
  [ -f "$f" ] || { echo "ab: no kernel package: run checks/deps.sh first (or set KERNEL_DEB)" >&2; exit 1; }
  deb="$(cat "$f")"
fi
[ -f "$deb" ] || { echo "ab: kernel package $deb not found" >&2; exit 1; }
deb="$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")"
for tool in /bin/busybox dpkg-deb depmod gzip python3 file; do
  command -v "$tool" >/dev/null || { echo "ab: $tool missing; run checks/deps.sh" >&2; exit 1; }
done
file -L /bin/busybox | grep -q 'statically linked' ||
  { echo "ab: /bin/busybox is not the static build (install busybox-static)" >&2; exit 1; }
if [ ! -x "$bty" ] || ! file -L "$bty" | grep -Eq 'statically linked|static-pie linked'; then
  echo "ab: $bty is not a static executable (live/build-static.sh builds one)" >&2
  exit 1
fi

mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/bty-ab.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# 1. Kernel and modules in load order (a depth-first walk of modules.dep), cached.
key="$(basename "$deb" .deb).$(echo "${MODULES[*]}" | sha256sum | cut -c1-12)"
kcache="$(dirname "$deb")/ab-kernel.$key"
if [ ! -f "$kcache/.done" ]; then
  rm -rf "$(dirname "$deb")/ab-kernel.$(basename "$deb" .deb)."*
  kdir="$work/kernel"
  mkdir -p "$kdir"
  dpkg-deb -x "$deb" "$kdir"
  kver="$(ls "$kdir/lib/modules")"
  moddir="$kdir/lib/modules/$kver"
  depmod -b "$kdir" "$kver"
  declare -A seen=()
  order=()
  visit() { # a module path relative to $moddir, after its dependencies
    local p="$1" line d rev=()
    [ -n "${seen[$p]:-}" ] && return
    seen[$p]=1
    line="$(grep -m1 "^$p:" "$moddir/modules.dep")"
    for d in ${line#*:}; do rev=("$d" "${rev[@]}"); done
    for d in "${rev[@]}"; do visit "$d"; done
    order+=("$p")
  }
  for m in "${MODULES[@]}"; do
    grep -qE "/${m}\.ko" "$moddir/modules.builtin" && continue
    p="$(awk -v n="$m" -F: '{ f=$1; sub(/.*\//, "", f); sub(/\.ko(\.(xz|zst|gz))?$/, "", f);
      gsub(/-/, "_", f); if (f == n) { print $1; exit } }' "$moddir/modules.dep")"
    [ -n "$p" ] || { echo "ab: module $m not found in $kver" >&2; exit 1; }
    visit "$p"
  done
  stage="$work/kcache"
  mkdir -p "$stage/modules"
  cp "$kdir/boot/vmlinuz-$kver" "$stage/vmlinuz"
  : >"$stage/modules.order"
  for p in "${order[@]}"; do
    base="$(basename "$p")"
    case "$base" in # busybox insmod wants plain .ko
      *.ko.xz) name="${base%.xz}"; xz -dc "$moddir/$p" >"$stage/modules/$name" ;;
      *.ko.zst) name="${base%.zst}"; zstd -qdc "$moddir/$p" >"$stage/modules/$name" ;;
      *.ko.gz) name="${base%.gz}"; gzip -dc "$moddir/$p" >"$stage/modules/$name" ;;
      *) name="$base"; cp "$moddir/$p" "$stage/modules/$name" ;;
    esac
    echo "$name" >>"$stage/modules.order"
  done
  echo "$kver" >"$stage/kernel-version"
  rm -rf "$kdir"
  touch "$stage/.done"
  mv "$stage" "$kcache"
fi
cp "$kcache/vmlinuz" "$out/vmlinuz"

# 2. The initramfs.
root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,efi,www,etc/ab,lib/modules}
ln -s bin "$root/sbin"
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
install -m 0755 "$here/init" "$root/init"
install -m 0755 "$bty" "$root/bin/bty"
cp "$kcache/modules/"*.ko "$root/lib/modules/"
cp "$kcache/modules.order" "$root/etc/ab/modules"
echo "root:x:0:0:root:/:/bin/sh" >"$root/etc/passwd"
python3 "$repo/live/newc.py" "$root" "$work/initrd.cpio" --dev dev/console:c:5:1:600
gzip -9 -n -c "$work/initrd.cpio" >"$out/initrd.gz.tmp"
mv "$out/initrd.gz.tmp" "$out/initrd.gz"
cp "$kcache/kernel-version" "$out/kernel-version"
echo "ab: $out/vmlinuz ($(cat "$out/kernel-version")), $out/initrd.gz" \
  "($(du -k "$out/initrd.gz" | cut -f1) KiB, $(wc -l <"$kcache/modules.order") modules)" >&2
