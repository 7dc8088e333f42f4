#!/usr/bin/env python3
"""Build a realistic benchmark disk image and its block map.

Layout: GPT with an EFI and a root partition; 4 KiB blocks of which ~60% hold
data (half random, half repetitive text, so zstd -3 compresses it about 2:1)
and ~40% are zero, left as holes so `bmaptool create` sees them too.
Writes IMAGE and IMAGE.bmap (bmap v2.0, SHA-256 per range).
"""
import hashlib, os, random, subprocess, sys

path, size = sys.argv[1], int(sys.argv[2])
BS = 4096
rng = random.Random(42)
text = (b"bty benchmark: the quick brown fox flashes the lazy disk. " * 80)[:2048]

with open(path, "wb") as f:
    f.truncate(size)
    blocks = size // BS
    i = 0
    while i < blocks:
        run = rng.randint(1, 512)
        data = rng.random() < 0.6
        if data and i >= 256:  # leave room for the partition table
            chunk = bytearray()
            for _ in range(min(run, blocks - i)):
                chunk += os.urandom(BS // 2) + text
            f.seek(i * BS)
            f.write(chunk)
        i += run

subprocess.run(["sgdisk", "-n1:2048:+64M", "-t1:ef00", "-n2:0:0", "-t2:8300", path],
               check=True, stdout=subprocess.DEVNULL)

# Block map from the file's real allocation (SEEK_DATA/SEEK_HOLE).
ranges, fd, pos = [], os.open(path, os.O_RDONLY), 0
while pos < size:
    try:
        start = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    end = os.lseek(fd, start, os.SEEK_HOLE)
    a, b = start // BS, (end + BS - 1) // BS - 1
    os.lseek(fd, a * BS, os.SEEK_SET)
    h = hashlib.sha256(os.read(fd, (b - a + 1) * BS) if (b - a + 1) * BS < 1 << 30 else b"")
    ranges.append((a, b, h.hexdigest()))
    pos = end
os.close(fd)
mapped = sum(b - a + 1 for a, b, _ in ranges)
def render(file_checksum):
    rows = "".join(
        f'        <Range chksum="{h}"> {a if a == b else f"{a}-{b}"} </Range>\n' for a, b, h in ranges
    )
    return (
        '<?xml version="1.0" ?>\n<bmap version="2.0">\n'
        f"    <ImageSize> {size} </ImageSize>\n    <BlockSize> {BS} </BlockSize>\n"
        f"    <BlocksCount> {size // BS} </BlocksCount>\n    <MappedBlocksCount> {mapped} </MappedBlocksCount>\n"
        "    <ChecksumType> sha256 </ChecksumType>\n"
        f"    <BmapFileChecksum> {file_checksum} </BmapFileChecksum>\n"
        f"    <BlockMap>\n{rows}    </BlockMap>\n</bmap>\n"
    )


# bmaptool checks BmapFileChecksum: SHA-256 of the file with that field zeroed.
digest = hashlib.sha256(render("0" * 64).encode()).hexdigest()
with open(path + ".bmap", "w") as f:
    f.write(render(digest))
print(f"{path}: {size} bytes, {mapped * BS} mapped in {len(ranges)} ranges")
