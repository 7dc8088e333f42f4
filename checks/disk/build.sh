#!/usr/bin/env bash
# Builds the bootable marker disk the end-to-end tests flash, so that "the machine booted the
# flashed disk" is seen on the serial console. One hybrid image boots both ways:
#   - SeaBIOS runs the 440-byte boot code in the (protective) MBR: bootsector.S
#   - OVMF boots \EFI\BOOT\BOOTX64.EFI from the GPT EFI system partition: a GRUB core image
#     (grub-mkimage) with grub.cfg.in embedded
# Both print "BTY-MARKER-DISK-BOOTED fw=bios|uefi tag=TAG" on COM1 and then write 0x10 to
# port 0xf4, so QEMU with `-device isa-debug-exit,iobase=0xf4,iosize=0x04` exits with status 33
# (without that device: BIOS halts, UEFI powers off).
#
# Usage: checks/disk/build.sh OUT_DIR [TAG]     (TAG: [A-Za-z0-9._-]{1,32}, default 1)
# Writes OUT_DIR/marker.img (+ identical marker-bios.img, marker-uefi.img), each with .img.zst
# and a .sha256 file per file (sha256sum format), and broken copies for integrity tests
# (marker-corrupt.img, marker-truncated.img, + .zst). MARKER_SIZE_MIB sets the size of the
# bootable part (default 8); MARKER_FILL_MIB=N appends an N MiB partition of pseudo-random data;
# MARKER_ROOT_MIB=N appends an empty N MiB ext4 filesystem with the GPT root type (x86-64), for
# the provisioning scenarios to write into.
# No root needed.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: $0 OUT_DIR [TAG]}"
tag="${2:-1}"
size_mib="${MARKER_SIZE_MIB:-8}"
fill_mib="${MARKER_FILL_MIB:-0}"
root_mib="${MARKER_ROOT_MIB:-0}"
if ! [[ "$tag" =~ ^[A-Za-z0-9._-]{1,32}$ ]]; then
  echo "disk: TAG must match [A-Za-z0-9._-]{1,32}" >&2
  exit 2
fi
if ! [[ "$size_mib" =~ ^[0-9]+$ ]] || [ "$size_mib" -lt 4 ]; then
  echo "disk: MARKER_SIZE_MIB must be >= 4" >&2
  exit 2
fi
if ! [[ "$fill_mib" =~ ^[0-9]+$ ]]; then
  echo "disk: MARKER_FILL_MIB must be a number" >&2
  exit 2
fi
if ! [[ "$root_mib" =~ ^[0-9]+$ ]] || { [ "$root_mib" -gt 0 ] && [ "$root_mib" -lt 8 ]; }; then
  echo "disk: MARKER_ROOT_MIB must be 0 or at least 8" >&2
  exit 2
fi
for tool in as ld sfdisk mkfs.vfat mmd mcopy grub-mkimage zstd sha256sum; do
  command -v "$tool" >/dev/null || { echo "disk: $tool missing; run checks/deps.sh" >&2; exit 1; }
done
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1700000000}"
export TZ=UTC

mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/bty-disk.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# 1. BIOS boot code (≤ 440 bytes).
printf '        .ascii "BTY-MARKER-DISK-BOOTED fw=bios tag=%s"\n' "$tag" >"$work/marker.inc"
as --32 -I "$work" -o "$work/boot.o" "$here/bootsector.S"
ld -m elf_i386 -Ttext 0x7c00 --oformat binary -o "$work/boot.bin" "$work/boot.o"
bsize=$(stat -c %s "$work/boot.bin")
if [ "$bsize" -gt 440 ]; then
  echo "disk: boot code is $bsize bytes, more than the 440 an MBR has" >&2
  exit 1
fi

# 2. UEFI: a GRUB core image with the few modules the config needs linked in and the config
#    embedded (grub-mkimage output is byte-for-byte reproducible; a grub-mkstandalone memdisk
#    carries file times).
# The embedded config runs before normal.mod: no comments, plain commands only.
sed -e "s/@MARKER@/BTY-MARKER-DISK-BOOTED fw=uefi tag=$tag/" -e "/^#/d" "$here/grub.cfg.in" >"$work/grub.cfg"
grub-mkimage -O x86_64-efi -p /EFI/BOOT -c "$work/grub.cfg" -o "$work/BOOTX64.EFI" \
  serial terminal iorw halt sleep echo
touch -d "@$SOURCE_DATE_EPOCH" "$work/BOOTX64.EFI"
printf 'bty marker disk, tag=%s\n' "$tag" >"$work/MARKER.TXT"
touch -d "@$SOURCE_DATE_EPOCH" "$work/MARKER.TXT"

# 3. The disk: GPT (fixed GUIDs), one EFI system partition from 1 MiB on (MARKER_SIZE_MIB - 2
#    MiB), then, with MARKER_FILL_MIB=N, an N MiB partition of seeded pseudo-random bytes (data
#    that neither compresses nor reads as zeros, for throughput figures), then 1 MiB (backup GPT).
img="$work/marker.img"
total_mib=$((size_mib + fill_mib + root_mib))
truncate -s "${total_mib}M" "$img"
esp_start=2048
esp_size=$(((size_mib - 2) * 2048))
fill_start=$((esp_start + esp_size))
fill_line=""
root_start=$((fill_start + fill_mib * 2048))
root_line=""
if [ "$root_mib" -gt 0 ]; then
  root_line="start=$root_start, size=$((root_mib * 2048)), type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=6B7A0C1E-5C2B-4E8E-9F0A-B7E000000007, name=\"root\""
fi
if [ "$fill_mib" -gt 0 ]; then
  fill_line="start=$fill_start, size=$((fill_mib * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=6B7A0C1E-5C2B-4E8E-9F0A-B7E0000F1110, name=\"filler\""
fi
sfdisk -q --no-reread --no-tell-kernel "$img" <<SFD
label: gpt
label-id: 6B7A0C1E-5C2B-4E8E-9F0A-B7E0000D15C0
first-lba: 2048
start=$esp_start, size=$esp_size, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=6B7A0C1E-5C2B-4E8E-9F0A-B7E0000E5500, name="EFI system partition"
$fill_line
$root_line
SFD
if [ "$fill_mib" -gt 0 ]; then
  python3 - "$img" $((fill_start * 512)) $((fill_mib << 20)) <<'PY'
import random, sys
path, off, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random("bty-marker-filler")
with open(path, "r+b") as f:
    f.seek(off)
    for _ in range(n >> 20):
        f.write(rng.randbytes(1 << 20))
PY
fi
if [ "$root_mib" -gt 0 ]; then
  command -v mkfs.ext4 >/dev/null || { echo "disk: mkfs.ext4 missing; run checks/deps.sh" >&2; exit 1; }
  E2FSPROGS_FAKE_TIME="$SOURCE_DATE_EPOCH" mkfs.ext4 -q -F -L root -U 6b7a0c1e-5c2b-4e8e-9f0a-b7e0000000e4 \
    -E "offset=$((root_start * 512)),hash_seed=6b7a0c1e-5c2b-4e8e-9f0a-b7e0000000a5" -O ^metadata_csum_seed \
    "$img" "$((root_mib * 1024))k"
fi
# The boot code goes in front of the protective MBR's partition table (bytes 0..439).
dd if="$work/boot.bin" of="$img" conv=notrunc status=none

esp="$work/esp.img"
truncate -s $((esp_size * 512)) "$esp"
mkfs.vfat -F 16 -n BTYMARKER -i B7E0CAFE --invariant "$esp" >/dev/null 2>&1 ||
  mkfs.vfat -n BTYMARKER -i B7E0CAFE --invariant "$esp" >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$esp" ::/EFI ::/EFI/BOOT
mcopy -m -i "$esp" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -m -i "$esp" "$work/MARKER.TXT" ::/MARKER.TXT
dd if="$esp" of="$img" bs=512 seek="$esp_start" conv=notrunc status=none

# 4. Outputs.
for name in marker marker-bios marker-uefi; do
  cp "$img" "$out/$name.img.tmp"
  mv "$out/$name.img.tmp" "$out/$name.img"
  zstd -q -f -19 -T0 --no-progress "$out/$name.img" -o "$out/$name.img.zst"
done
# Broken copies for the integrity tests (catalog them under marker.img's digest):
#   marker-corrupt.img(.zst)    one byte flipped inside the ESP (at 3 MiB)
#   marker-truncated.img(.zst)  the first half of marker.img / of marker.img.zst
cp "$img" "$out/marker-corrupt.img"
printf '\xff' | dd of="$out/marker-corrupt.img" bs=1 seek=$((3 << 20)) conv=notrunc status=none
if cmp -s "$img" "$out/marker-corrupt.img"; then
  printf '\x00' | dd of="$out/marker-corrupt.img" bs=1 seek=$((3 << 20)) conv=notrunc status=none
fi
zstd -q -f -19 -T0 --no-progress "$out/marker-corrupt.img" -o "$out/marker-corrupt.img.zst"
head -c $(($(stat -c %s "$img") / 2)) "$img" >"$out/marker-truncated.img"
head -c $(($(stat -c %s "$out/marker.img.zst") / 2)) "$out/marker.img.zst" >"$out/marker-truncated.img.zst"
(
  cd "$out"
  for f in marker.img marker-bios.img marker-uefi.img marker-corrupt.img marker-truncated.img; do
    sha256sum "$f" >"$f.sha256"
    sha256sum "$f.zst" >"$f.zst.sha256"
  done
)
echo "$tag" >"$out/marker.tag"
echo "disk: $out/marker.img (${total_mib} MiB, filler ${fill_mib} MiB, tag=$tag, boot code $bsize bytes," \
  "BOOTX64.EFI $(stat -c %s "$work/BOOTX64.EFI") bytes, zst $(stat -c %s "$out/marker.img.zst") bytes)" >&2
