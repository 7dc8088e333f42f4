#!/usr/bin/env bash
# Flash benchmark: bty against `zstd -dc | dd`, `lz4 -dc | dd`, `simg2img` + `dd`
# and `bmaptool copy`, in one run,
# on the same image, to a loop device and to a file. Prints throughput, ratios
# and peak RSS. Needs root (loop devices). Not a test: it asserts nothing.
#
#   bench/flash.sh [SIZE_MIB]     (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
OUT=bench/out/flash
mkdir -p "$OUT"
[ "$(id -u)" = 0 ] || { echo "bench/flash.sh needs root for loop devices" >&2; exit 3; }

missing=()
for pair in zstd:zstd lz4:lz4 img2simg:android-sdk-libsparse-utils sgdisk:gdisk bmaptool:bmap-tools /usr/bin/time:time; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || echo "note: could not install ${missing[*]}; those rows are skipped"
fi
cargo build --release -q -p bty
BTY=$PWD/target/release/bty

IMG=$OUT/bench.img
if [ ! -f "$IMG.zst" ] || [ "$(stat -c %s "$IMG")" != $((SIZE_MIB << 20)) ]; then
    python3 bench/make-image.py "$IMG" $((SIZE_MIB << 20))
    zstd -q -f -3 -T1 "$IMG" -o "$IMG.zst"
    cp "$IMG.bmap" "$IMG.zst.bmap"
fi
if command -v lz4 >/dev/null && [ "$IMG.lz4" -ot "$IMG.zst" ]; then lz4 -q -f "$IMG" "$IMG.lz4"; fi
if command -v img2simg >/dev/null && [ "$IMG.simg" -ot "$IMG.zst" ]; then img2simg "$IMG" "$IMG.simg"; fi
SHA=$(sha256sum "$IMG.zst" | cut -d' ' -f1)
echo "image: $SIZE_MIB MiB, zstd -3 -> $(( $(stat -c %s "$IMG.zst") >> 20 )) MiB"

BACK=$OUT/loop-backing.img
truncate -s $(( (SIZE_MIB + 64) << 20 )) "$BACK"
LOOP=$(losetup -f --show "$BACK")
trap 'losetup -d "$LOOP" 2>/dev/null || true' EXIT

# run NAME CMD...: best of 3 wall times, peak RSS of the largest process.
declare -A BEST RSS
run() {
    local name=$1; shift
    local best=999999 rss=0
    for _ in 1 2 3; do
        sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
        local t0 t1 log=$OUT/time.log
        t0=$(date +%s.%N)
        /usr/bin/time -f "%M" -o "$log" bash -c "$*" >/dev/null 2>"$OUT/$name.err" || { echo "$name failed:"; cat "$OUT/$name.err"; return 1; }
        t1=$(date +%s.%N)
        best=$(python3 -c "print(min($best, $t1 - $t0))")
        rss=$(tail -1 "$log")
    done
    BEST[$name]=$best; RSS[$name]=$rss
    python3 -c "s=$SIZE_MIB/$best; print(f'  {\"$name\":<34} {$best:7.2f} s  {s:8.1f} MiB/s  peak RSS {$rss/1024:6.1f} MiB')"
}

echo "-- loop device ($LOOP)"
run "zstd -dc | dd (loop)" "zstd -dc '$IMG.zst' | dd of=$LOOP bs=4M oflag=direct conv=fsync status=none"
run "bty --sha256 (loop)" "$BTY flash '$IMG.zst' $LOOP --yes --sha256 $SHA"
run "bty --sha256 --verify (loop)" "$BTY flash '$IMG.zst' $LOOP --yes --sha256 $SHA --verify"
run "bty --bmap (loop)" "$BTY flash '$IMG.zst' $LOOP --yes --sha256 $SHA --bmap '$IMG.bmap'"
if [ -f "$IMG.lz4" ]; then
    run "lz4 -dc | dd (loop)" "lz4 -dc '$IMG.lz4' | dd of=$LOOP bs=4M oflag=direct conv=fsync status=none"
    run "bty lz4 --verify (loop)" "$BTY flash '$IMG.lz4' $LOOP --yes --verify"
fi
if [ -f "$IMG.simg" ]; then
    # simg2img cannot write to a block device: it needs a file, which dd then copies.
    run "simg2img + dd (loop)" "simg2img '$IMG.simg' $OUT/simg.raw && dd if=$OUT/simg.raw of=$LOOP bs=4M oflag=direct conv=fsync status=none; rm -f $OUT/simg.raw"
    run "bty simg --verify (loop)" "$BTY flash '$IMG.simg' $LOOP --yes --verify"
fi
if command -v bmaptool >/dev/null; then
    run "bmaptool copy (loop)" "bmaptool -q copy --bmap '$IMG.bmap' '$IMG.zst' $LOOP"
fi
echo "-- file"
run "zstd -dc | dd (file)" "zstd -dc '$IMG.zst' | dd of=$OUT/target.img bs=4M conv=fsync status=none"
run "bty --sha256 (file)" "$BTY flash '$IMG.zst' $OUT/target.img --yes --sha256 $SHA"
rm -f "$OUT/target.img"

ratio() { python3 -c "print(f'{${BEST[$2]}/${BEST[$1]}:.2f}x')"; }
echo "-- ratios (higher is better for bty)"
echo "  dense, loop:  bty --sha256 vs zstd|dd        $(ratio 'bty --sha256 (loop)' 'zstd -dc | dd (loop)')"
echo "  dense, loop:  bty --verify vs zstd|dd        $(ratio 'bty --sha256 --verify (loop)' 'zstd -dc | dd (loop)')"
echo "  sparse, loop: bty --bmap vs zstd|dd          $(ratio 'bty --bmap (loop)' 'zstd -dc | dd (loop)')"
if [ -n "${BEST['bmaptool copy (loop)']:-}" ]; then
    echo "  sparse, loop: bty --bmap vs bmaptool copy    $(ratio 'bty --bmap (loop)' 'bmaptool copy (loop)')"
fi
echo "  file:         bty vs zstd|dd                 $(ratio 'bty --sha256 (file)' 'zstd -dc | dd (file)')"
if [ -n "${BEST['bty lz4 --verify (loop)']:-}" ]; then
    echo "  lz4, loop:    bty --verify vs lz4|dd         $(ratio 'bty lz4 --verify (loop)' 'lz4 -dc | dd (loop)')"
fi
if [ -n "${BEST['bty simg --verify (loop)']:-}" ]; then
    echo "  simg, loop:   bty --verify vs simg2img+dd    $(ratio 'bty simg --verify (loop)' 'simg2img + dd (loop)')"
fi
