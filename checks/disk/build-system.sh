#!/usr/bin/env bash
# Builds a bootable "installed system" disk for the cijoe-online scenario: a GPT disk whose EFI
# system partition holds a GRUB core image (embedded config: boot the kernel below on COM1),
# the live environment's kernel, and an initrd made of the live environment's (busybox,
# modules) with checks/disk/system-init as /init, dropbear and its libraries, and one
# authorised SSH key for root. UEFI only (OVMF). No root needed.
#
# Usage: checks/disk/build-system.sh OUT.img AUTHORIZED_KEYS_FILE
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root_dir="$(dirname "$(dirname "$here")")"
out="${1:?usage: $0 OUT.img AUTHORIZED_KEYS_FILE}"
keys="${2:?usage: $0 OUT.img AUTHORIZED_KEYS_FILE}"
live="$root_dir/checks/out/live-agent"
for tool in grub-mkimage mkfs.vfat mmd mcopy sfdisk /usr/sbin/dropbear ldd; do
  command -v "$tool" >/dev/null || { echo "system-disk: $tool missing; run checks/deps.sh" >&2; exit 1; }
done
[ -f "$live/initrd.gz" ] || { echo "system-disk: build the live environment first (checks/e2e.sh)" >&2; exit 1; }
work="$(mktemp -d "${TMPDIR:-/tmp}/bty-system.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# The initrd: the live one, then a layer whose /init replaces it (the kernel unpacks both).
layer="$work/layer"
# Only paths the live initrd does not have as symlinks (its /usr/bin and /usr/sbin are).
mkdir -p "$layer/root/.ssh" "$layer/bin" "$layer/lib64" "$layer/lib/x86_64-linux-gnu" "$layer/etc"
install -m 0755 "$here/system-init" "$layer/init"
install -m 0600 "$keys" "$layer/root/.ssh/authorized_keys"
install -m 0755 /usr/sbin/dropbear "$layer/bin/dropbear"
ldd /usr/sbin/dropbear | awk '/=> \//{print $3} /^\t\//{print $1}' | while read -r lib; do
  case "$lib" in
    */ld-linux*) cp -L "$lib" "$layer/lib64/" ;;
    *) cp -L "$lib" "$layer/lib/x86_64-linux-gnu/" ;;
  esac
done
echo "/bin/sh" >"$layer/etc/shells"
python3 "$root_dir/live/newc.py" "$layer" "$work/layer.cpio"
{ cat "$live/initrd.gz"; gzip -9 -n -c "$work/layer.cpio"; } >"$work/initrd.gz"

# GRUB for x86_64-efi with the config embedded: no comments, plain commands.
cat >"$work/grub.cfg" <<'CFG'
serial --unit=0 --speed=115200
terminal_output serial
echo "bty-system: grub"
linux (hd0,gpt1)/vmlinuz console=ttyS0,115200 panic=10
initrd (hd0,gpt1)/initrd.gz
boot
CFG
grub-mkimage -O x86_64-efi -p /EFI/BOOT -c "$work/grub.cfg" -o "$work/BOOTX64.EFI" \
  part_gpt fat linux gzio serial terminal echo

kib=$(( ($(stat -c %s "$live/vmlinuz") + $(stat -c %s "$work/initrd.gz") + $(stat -c %s "$work/BOOTX64.EFI")) / 1024 ))
esp_mib=$(( kib / 1024 + 8 ))
[ "$esp_mib" -ge 34 ] || esp_mib=34  # FAT32's smallest comfortable size
esp="$work/esp.img"
truncate -s "${esp_mib}M" "$esp"
mkfs.vfat -F 32 -n BTYSYSTEM "$esp" >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$esp" ::/EFI ::/EFI/BOOT
mcopy -i "$esp" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$live/vmlinuz" ::/vmlinuz
mcopy -i "$esp" "$work/initrd.gz" ::/initrd.gz

img="$work/system.img"
truncate -s "$((esp_mib + 2))M" "$img"
sfdisk -q --no-reread --no-tell-kernel "$img" <<SFD
label: gpt
first-lba: 2048
start=2048, size=$((esp_mib * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system partition"
SFD
dd if="$esp" of="$img" bs=512 seek=2048 conv=notrunc status=none
mv "$img" "$out"
sha256sum "$out" | sed "s|  .*|  $(basename "$out")|" >"$out.sha256"
echo "system-disk: $out ($((esp_mib + 2)) MiB)" >&2
