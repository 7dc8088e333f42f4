#!/usr/bin/env bash
# Regenerate the seed corpora in fuzz/seeds/ from the tools that write each
# format (qemu-img, img2simg, bmaptool, gpg, sgdisk, sfdisk, the compressors).
# The outputs are committed; run this only to change them, then check that
# `cargo test --manifest-path fuzz/Cargo.toml` still passes.
#
# Seeds are small (a few KiB): afl-fuzz mutates every byte of them, and a
# large seed spends its time on bytes no parser branches on.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
seeds=$here/seeds
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for tool in qemu-img qemu-io img2simg bmaptool gpg sgdisk sfdisk gzip bzip2 xz zstd lz4 zip tar python3; do
    command -v "$tool" >/dev/null || { echo "make-seeds: $tool is needed" >&2; exit 1; }
done
rm -rf "$seeds"
mkdir -p "$seeds"/{format,qcow2,simg,bmap,partition,catalog}

# A 32 KiB disk: an MBR sector, a patterned run, a run of one repeated
# 32-bit value (a fill chunk for img2simg), zeros (holes), a tail byte.
python3 - "$work/disk.raw" <<'EOF'
import struct, sys
d = bytearray(32 << 10)
# One Linux partition from sector 8, 100 sectors, active.
d[446:462] = bytes([0x80, 0, 0, 0, 0x83, 0, 0, 0]) + struct.pack("<II", 8, 100)
d[440:444] = b"\x12\x34\x56\x78"
d[510:512] = b"\x55\xaa"
x = 0x12345678
for i in range(4096, 6144):
    x ^= (x << 13) & 0xffffffff; x ^= x >> 17; x ^= (x << 5) & 0xffffffff
    d[i] = x & 0xff
d[12288:16384] = b"\xde\xad\xbe\xef" * 1024
d[-10] = 0xab
open(sys.argv[1], "wb").write(d)
EOF
# Holes where the disk is zero, so bmaptool maps only the blocks with data.
cp --sparse=always "$work/disk.raw" "$work/sparse.raw"
raw=$work/sparse.raw

# qcow2: 512-byte clusters keep the metadata (header, L1, refcount table
# and block, L2 tables) to a few KiB.
q() { qemu-img convert -q -S 512 -f raw -O qcow2 -o cluster_size=512 "$@"; }
q -o compat=1.1 "$raw" "$seeds/qcow2/v3.qcow2"
q -o compat=0.10 "$raw" "$seeds/qcow2/v2.qcow2"
q -c -o compat=1.1 "$raw" "$seeds/qcow2/deflate.qcow2"
q -c -o compat=0.10 "$raw" "$seeds/qcow2/v2-deflate.qcow2"
q -c -o compression_type=zstd "$raw" "$seeds/qcow2/zstd.qcow2"
# Zero-flagged clusters that keep their allocation (what `write -z` leaves).
cp "$seeds/qcow2/v3.qcow2" "$work/z.qcow2"
qemu-io -f qcow2 -c "write -z 4096 4096" "$work/z.qcow2" >/dev/null
cp "$work/z.qcow2" "$seeds/qcow2/zero-flagged.qcow2"
# Refused layouts: only their headers matter.
qemu-img create -q -u -f qcow2 -o cluster_size=512 -b v3.qcow2 -F qcow2 "$work/top.qcow2" 64K
cp "$work/top.qcow2" "$seeds/qcow2/backing-file.qcow2"
(cd "$work" && qemu-img create -q -f qcow2 -o cluster_size=512,data_file=data.raw ext.qcow2 64K)
cp "$work/ext.qcow2" "$seeds/qcow2/data-file.qcow2"
qemu-img create -q -f qcow2 -o cluster_size=16384,extended_l2=on "$work/sub.qcow2" 64K
head -c 4096 "$work/sub.qcow2" >"$seeds/qcow2/extended-l2.qcow2"

# Android sparse: img2simg's raw and don't-care chunks, and a handmade image
# with a fill chunk, a CRC32 chunk and the header's image checksum.
img2simg "$raw" "$seeds/simg/img2simg.simg" 1024
python3 - "$seeds/simg/crc-fill.simg" <<'EOF'
import struct, sys, zlib
bs = 1024
raw = bytes(range(256)) * 4
fill = b"\x01\x02\x03\x04"
chunks, out = [], b""
chunks.append(struct.pack("<HHII", 0xCAC1, 0, 1, 12 + bs) + raw); out += raw
chunks.append(struct.pack("<HHII", 0xCAC2, 0, 2, 16) + fill); out += fill * (2 * bs // 4)
chunks.append(struct.pack("<HHII", 0xCAC4, 0, 0, 16) + struct.pack("<I", zlib.crc32(out)))
chunks.append(struct.pack("<HHII", 0xCAC3, 0, 3, 12)); out += bytes(3 * bs)
hdr = struct.pack("<IHHHHIIII", 0xED26FF3A, 1, 0, 28, 12, bs, 6, len(chunks), zlib.crc32(out))
open(sys.argv[1], "wb").write(hdr + b"".join(chunks))
EOF

# Block maps as bmaptool writes them, with and without checksums, one in an
# old format (1.3: SHA-1, BmapFileSHA1), and a clearsigned one.
bmaptool create "$raw" -o "$seeds/bmap/sha256.bmap"
bmaptool create --no-checksum "$raw" -o "$seeds/bmap/no-checksum.bmap"
python3 - "$seeds/bmap/sha256.bmap" "$seeds/bmap/v1.3-sha1.bmap" "$raw" <<'EOF'
import hashlib, re, sys
text = open(sys.argv[1]).read()
data = open(sys.argv[3], "rb").read()
bs = 4096
def digest(m):
    first, last = (int(x) for x in (m.group(2).split("-") + [m.group(2)])[:2])
    return '<Range sha1="%s">%s</Range>' % (
        hashlib.sha1(data[first * bs:(last + 1) * bs]).hexdigest(), m.group(2))
text = re.sub(r'<Range chksum="([0-9a-f]+)">\s*([0-9-]+)\s*</Range>', digest, text)
text = re.sub(r'<bmap version="[0-9.]+">', '<bmap version="1.3">', text)
text = re.sub(r"\s*<ChecksumType>.*</ChecksumType>", "", text)
text = re.sub(r"<BmapFileChecksum>\s*[0-9a-f]+\s*</BmapFileChecksum>",
              "<BmapFileSHA1> %s </BmapFileSHA1>" % ("0" * 40), text)
text = text.replace("0" * 40, hashlib.sha1(text.encode()).hexdigest(), 1)
open(sys.argv[2], "w").write(text)
EOF
export GNUPGHOME=$work/gnupg
mkdir -m 700 "$GNUPGHOME"
gpg --batch --quiet --passphrase '' --quick-gen-key 'bty seeds <seeds@example.invalid>' ed25519 sign never 2>/dev/null
gpg --batch --quiet --clearsign -o "$seeds/bmap/clearsigned.bmap" "$seeds/bmap/sha256.bmap"

# Partition tables: only the sectors read_table and the GPT relocation read.
truncate -s 1M "$work/gpt.img"
sgdisk -a 1 -n 1:34:+100K -t 1:EF00 -c 1:ESP -n 2:0:+100K -t 2:8300 -c 2:root -A 2:set:2 \
    -n 3:0:+8K -t 3:EF02 "$work/gpt.img" >/dev/null
head -c $((34 * 512)) "$work/gpt.img" >"$seeds/partition/gpt-512.img"
python3 - "$seeds/partition/gpt-4096.img" <<'EOF'
# sgdisk writes 512-byte sectors on a file; a 4Kn GPT is built by hand.
import struct, sys, uuid, zlib
ss, n = 4096, 32
entries = bytearray(n * 128)
linux = uuid.UUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4").bytes_le
entries[0:128] = (linux + uuid.UUID(int=1).bytes_le + struct.pack("<QQQ", 6, 255, 0)
                  + "data".encode("utf-16-le").ljust(72, b"\0"))
hdr = bytearray(struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x10000, 92, 0, 0, 1, 511, 6, 505,
                            uuid.UUID(int=2).bytes_le, 2, n, 128, zlib.crc32(entries)))
hdr[16:20] = struct.pack("<I", zlib.crc32(hdr))
mbr = bytearray(512)
mbr[446:462] = bytes([0, 0, 2, 0, 0xEE, 0xff, 0xff, 0xff]) + struct.pack("<II", 1, 511)
mbr[510:512] = b"\x55\xaa"
img = bytearray(2 * ss) + entries
img[0:512] = mbr
img[ss:ss + 92] = hdr
open(sys.argv[1], "wb").write(img)
EOF
truncate -s 16K "$work/mbr.img"
sfdisk -q --no-reread --no-tell-kernel "$work/mbr.img" >/dev/null <<'EOF'
label: dos
label-id: 0xbeefcafe
start=4, size=8, type=83, bootable
start=12, size=20, type=5
start=14, size=6, type=82
start=22, size=6, type=83
EOF
cp "$work/mbr.img" "$seeds/partition/mbr-logical.img"
# A protective MBR whose GPT header is gone.
head -c 512 "$seeds/partition/gpt-512.img" >"$seeds/partition/protective-only.img"
head -c 1024 /dev/zero >>"$seeds/partition/protective-only.img"

# Catalogs: a full one, a minimal one, and one with an error in every field.
cat >"$seeds/catalog/full.toml" <<'EOF'
version = 1

[[images]]
name = "debian-13-amd64"
src = "https://example.org/debian-13-amd64.img.xz"
sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
format = "xz"
size_bytes = 123456789
arch = "x86_64"
description = "Debian 13 generic cloud image"

[[images]]
name = "local.raw"
src = "sub/dir/disk-arm64.img.zst"
EOF
printf 'version = 1\n' >"$seeds/catalog/empty.toml"
cat >"$seeds/catalog/problems.toml" <<'EOF'
version = 2
extra = true

[[images]]
name = ".hidden/x"
src = "../up"
sha256 = "xyz"
format = "rar"
size_bytes = -1
arch = ""
colour = "red"

[[images]]
name = "dup"
src = "file:///etc/passwd"

[[images]]
name = "dup"
src = "ftp://h/x.img"
EOF

# Format detection: NAME, NUL, file (see fuzz/src/lib.rs).
named() { { printf '%s\0' "$1"; cat "$2"; } >"$seeds/format/$3"; }
head -c 4096 "$raw" >"$work/small.raw"
gzip -9 -n -c "$work/small.raw" >"$work/x.gz"
{ cat "$work/x.gz"; gzip -n -c </dev/null; head -c 64 /dev/zero; } >"$work/members.gz"
bzip2 -9 -c "$work/small.raw" >"$work/x.bz2"
xz -9 -c "$work/small.raw" >"$work/x.xz"
xz --format=lzma -c "$work/small.raw" >"$work/x.lzma"
zstd -q -19 -c "$work/small.raw" >"$work/x.zst"
python3 - "$work/skippable.zst" "$work/x.zst" <<'EOF'
import struct, sys
open(sys.argv[1], "wb").write(struct.pack("<II", 0x184D2A50, 4) + b"bty!" + open(sys.argv[2], "rb").read())
EOF
lz4 -q -9 -c --content-size "$work/small.raw" >"$work/x.lz4"
lz4 -q -l -c "$work/small.raw" >"$work/legacy.lz4"
(cd "$work" && cp small.raw disk.img && touch -d @0 disk.img && zip -q -X -0 stored.zip disk.img && zip -q -X -9 deflated.zip disk.img)
tar --format=ustar --mtime=@0 --owner=0 --group=0 -C "$work" -cf "$work/x.tar" small.raw
head -c 2048 "$work/x.tar" >"$work/x.tar.head"
named disk.img "$work/small.raw" raw
named disk.img.gz "$work/x.gz" gzip
named disk.img.gz "$work/members.gz" gzip-members
named disk.img.bz2 "$work/x.bz2" bzip2
named disk.img.xz "$work/x.xz" xz
named disk.img.lzma "$work/x.lzma" lzma
named disk.img.zst "$work/x.zst" zstd
named disk.img.zst "$work/skippable.zst" zstd-skippable
named disk.img.lz4 "$work/x.lz4" lz4
named disk.img.lz4 "$work/legacy.lz4" lz4-legacy
named disk.zip "$work/stored.zip" zip-stored
named disk.zip "$work/deflated.zip" zip-deflated
named disk.simg "$seeds/simg/crc-fill.simg" simg
named disk.qcow2 "$seeds/qcow2/deflate.qcow2" qcow2
named disk.tar "$work/x.tar.head" tar
{ printf 'disk.vhd\0'; head -c 1024 "$raw"; printf 'conectix'; head -c 504 /dev/zero; } >"$seeds/format/vhd-footer"
{ printf 'disk.7z\0'; printf '7z\274\257\047\034'; head -c 64 /dev/zero; } >"$seeds/format/7z"

python3 "$here/make-packet-seeds.py" "$seeds"

echo "make-seeds: wrote $(find "$seeds" -type f | wc -l) seeds, $(du -sh "$seeds" | cut -f1) in $seeds"
