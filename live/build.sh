#!/usr/bin/env bash
# Builds the bty live environment from Debian packages (live/install.sh is the command that
# fetches them, builds the static bty and bty-tui, and installs the result):
#   OUT_DIR/vmlinuz     the Debian kernel, extracted from its .deb
#   OUT_DIR/initrd.gz   busybox-static + NIC/disk kernel modules + /init (+ /bin/bty if given)
# Usage: KERNEL_DEB=linux-image-….deb live/build.sh OUT_DIR [BTY_BINARY]
# Without KERNEL_DEB, the kernel package checks/deps.sh downloaded (checks/out/cache) is used.
# Unpacked kernels are cached next to the .deb.
# BTY_BINARY must be statically linked (the initramfs has no libc) or a #!/bin/sh script. A bty-tui binary next to it
# is included too. No root needed once the dependencies are installed.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
checks="$(dirname "$here")/checks"
out="${1:?usage: $0 OUT_DIR [BTY_BINARY]}"
bty="${2:-}"

# Modules the initramfs carries (their dependencies come along): the NICs and disk
# controllers QEMU can give a client (virtio-net/-blk/-scsi, e1000, AHCI, NVMe); the
# filesystems an offline provisioning workflow mounts (ext4, xfs, btrfs; crc32c first, which
# they load by name and an initramfs without modprobe cannot), and loop devices.
MODULES=(virtio_pci virtio_net virtio_blk virtio_scsi sd_mod e1000 e1000e ahci nvme
  crc32c_generic ext4 xfs btrfs loop)

deb="${KERNEL_DEB:-}"
if [ -z "$deb" ]; then
  deb_path_file="$checks/out/cache/kernel-deb.path"
  if [ ! -f "$deb_path_file" ]; then
    echo "live: no kernel package: set KERNEL_DEB, or run live/install.sh (or checks/deps.sh) first" >&2
    exit 1
  fi
  deb="$(cat "$deb_path_file")"
fi
[ -f "$deb" ] || { echo "live: kernel package $deb not found" >&2; exit 1; }
deb="$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")"
kcache_dir="$(dirname "$deb")"
for tool in /bin/busybox dpkg-deb depmod gzip python3; do
  command -v "$tool" >/dev/null || { echo "live: $tool missing; live/install.sh installs what the build needs" >&2; exit 1; }
done
if ! file -L /bin/busybox | grep -q 'statically linked'; then
  echo "live: /bin/busybox is not the static build (install busybox-static)" >&2
  exit 1
fi
if [ -n "$bty" ]; then
  [ -x "$bty" ] || { echo "live: $bty is not an executable" >&2; exit 1; }
  # A static binary, or a busybox shell script (test stand-ins).
  if ! file -L "$bty" | grep -Eq 'statically linked|static-pie linked' &&
     [ "$(head -c 10 "$bty")" != '#!/bin/sh' ]; then
    echo "live: $bty is dynamically linked; build it with RUSTFLAGS='-C target-feature=+crt-static'" >&2
    exit 1
  fi
fi

mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/bty-live.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# 1. Kernel and modules, from the kernel package. The unpacked package is ~400 MB: keep only
#    vmlinuz and the resolved modules, cached per package and module list.
key="$(basename "$deb" .deb).$(echo "${MODULES[*]}" | sha256sum | cut -c1-12)"
kcache="$kcache_dir/live-kernel.$key"
if [ ! -f "$kcache/.done" ]; then
  rm -rf "$kcache_dir/live-kernel.$(basename "$deb" .deb)."*
  kdir="$work/kernel"
  mkdir -p "$kdir"
  dpkg-deb -x "$deb" "$kdir"
  kver="$(ls "$kdir/lib/modules")"
  moddir="$kdir/lib/modules/$kver"
  # The .deb ships no modules.dep (the package's postinst makes it); make it here.
  depmod -b "$kdir" "$kver"

  # Modules in dependency order: modules.dep lists a module's dependencies, the one loaded
  # first last; a depth-first walk puts every dependency before its users.
  declare -A seen=()
  order=()
  dep_line() { # the modules.dep line of module NAME (file name without .ko*, '-' as '_')
    awk -v n="$1" -F: '{ f=$1; sub(/.*\//, "", f); sub(/\.ko(\.(xz|zst|gz))?$/, "", f);
      gsub(/-/, "_", f); if (f == n) { print; exit } }' "$moddir/modules.dep"
  }
  visit_path() { # a module path relative to $moddir
    local p="$1"
    [ -n "${seen[$p]:-}" ] && return
    seen[$p]=1
    local line deps d
    line="$(grep -m1 "^$p:" "$moddir/modules.dep")"
    deps="${line#*:}"
    # Dependencies load in reverse of the order modules.dep lists them.
    local rev=()
    for d in $deps; do rev=("$d" "${rev[@]}"); done
    for d in "${rev[@]}"; do visit_path "$d"; done
    order+=("$p")
  }
  for m in "${MODULES[@]}"; do
    n="${m//-/_}"
    if grep -qE "/${m}\.ko" "$moddir/modules.builtin"; then continue; fi
    line="$(dep_line "$n")"
    if [ -z "$line" ]; then echo "live: module $m not found in $kver" >&2; exit 1; fi
    visit_path "${line%%:*}"
  done

  stage="$work/kcache"
  mkdir -p "$stage/modules"
  cp "$kdir/boot/vmlinuz-$kver" "$stage/vmlinuz"
  echo "$kver" >"$stage/kernel-version"
  : >"$stage/modules.order"
  for p in "${order[@]}"; do
    base="$(basename "$p")"
    # Compressed modules (.ko.xz/.ko.zst/.ko.gz) are unpacked here: busybox insmod needs .ko.
    case "$base" in
      *.ko.xz) name="${base%.xz}"; xz -dc "$moddir/$p" >"$stage/modules/$name" ;;
      *.ko.zst) name="${base%.zst}"; zstd -qdc "$moddir/$p" >"$stage/modules/$name" ;;
      *.ko.gz) name="${base%.gz}"; gzip -dc "$moddir/$p" >"$stage/modules/$name" ;;
      *) name="$base"; cp "$moddir/$p" "$stage/modules/$name" ;;
    esac
    echo "$name" >>"$stage/modules.order"
  done
  rm -rf "$kdir"
  touch "$stage/.done"
  mkdir -p "$(dirname "$kcache")"
  mv "$stage" "$kcache"
fi
kver="$(cat "$kcache/kernel-version")"
cp "$kcache/vmlinuz" "$out/vmlinuz"

# 2. The initramfs tree.
root="$work/root"
mkdir -p "$root"/{bin,dev,etc/bty-live,lib/modules,proc,sys,run,tmp,root,mnt}
ln -s bin "$root/sbin"
mkdir -p "$root/usr"
ln -s ../bin "$root/usr/bin"
ln -s ../bin "$root/usr/sbin"
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
install -m 0755 "$here/init" "$root/init"
install -m 0755 "$here/udhcpc.script" "$root/etc/bty-live/udhcpc.script"
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"
printf 'bty live environment (kernel %s)\n' "$kver" >"$root/etc/issue"
: >"$root/etc/resolv.conf"
cp "$kcache/modules/"*.ko "$root/lib/modules/"
cp "$kcache/modules.order" "$root/etc/bty-live/modules"
nmods="$(wc -l <"$kcache/modules.order")"

if [ -n "$bty" ]; then
  install -m 0755 "$bty" "$root/bin/bty"
  tui="$(dirname "$bty")/bty-tui"
  if [ -x "$tui" ] && file -L "$tui" | grep -Eq 'statically linked|static-pie linked'; then
    install -m 0755 "$tui" "$root/bin/bty-tui"
  fi
fi

# 3. Pack: newc cpio (root-owned, mtime 0, sorted; /dev/console as a real node) + gzip -n.
python3 "$here/newc.py" "$root" "$work/initrd.cpio" --dev dev/console:c:5:1:600
gzip -9 -n -c "$work/initrd.cpio" >"$out/initrd.gz.tmp"
mv "$out/initrd.gz.tmp" "$out/initrd.gz"
echo "$kver" >"$out/kernel-version"
echo "live: $out/vmlinuz ($kver, $(du -k "$out/vmlinuz" | cut -f1) KiB)," \
  "$out/initrd.gz ($(du -k "$out/initrd.gz" | cut -f1) KiB, $nmods modules${bty:+, with $(basename "$bty")})" >&2
