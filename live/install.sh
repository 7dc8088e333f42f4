#!/usr/bin/env bash
# Builds the bty live environment -- the kernel and initrd a machine PXE-boots into to be
# flashed, inventoried or handed the interactive flasher -- and installs it for bty-web.
#
#   live/install.sh STATE_DIR                  into STATE_DIR/boot (bty-web's default boot_dir)
#   live/install.sh --boot-dir DIR             into DIR ([paths] boot_dir)
#   live/install.sh --release DIR [--tag TAG]  as a release: DIR/TAG/{vmlinuz,initrd.gz,SHA256SUMS};
#                                              serve DIR over HTTP and run
#                                              `bty-web fetch-netboot --base-url URL --tag TAG`
#
# What it does: installs the Debian packages the build needs (as root; otherwise it prints the
# apt-get line and stops), downloads the current Debian kernel package (downloaded, never
# installed) into BTY_LIVE_CACHE (default live/out/cache), builds `bty` and `bty-tui`
# statically, and packs a busybox initramfs with them (live/build.sh). The installed files get
# a SHA256SUMS and a netboot.json naming tag v<version>, so bty-web's Netboot page shows them
# as matching this server. About 2 minutes the first time on 2 cores (most of it the static
# build), seconds after that.
#
#   BTY_KERNEL_DEB=/path/linux-image-…-amd64_….deb   use this kernel package instead
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
log() { echo "live: $*" >&2; }
die() { log "$*"; exit 1; }
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

boot_dir="" release_dir="" tag=""
while [ $# -gt 0 ]; do
  case "$1" in
    --boot-dir) boot_dir="${2:?--boot-dir needs a directory}"; shift 2 ;;
    --release) release_dir="${2:?--release needs a directory}"; shift 2 ;;
    --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
    -h|--help) usage ;;
    -*) log "unknown option $1"; usage ;;
    *) [ -z "$boot_dir" ] || usage; boot_dir="$1/boot"; state_dir="$1"; shift ;;
  esac
done
[ -n "$boot_dir" ] || [ -n "$release_dir" ] || usage
[ -z "$boot_dir" ] || [ -z "$release_dir" ] || die "give a state directory (or --boot-dir) or --release, not both"

version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)"
tag="${tag:-v$version}"
[[ "$tag" =~ ^[A-Za-z0-9._-]+$ ]] || die "tag $tag: only letters, digits, '.', '_' and '-'"
[ "$(uname -m)" = x86_64 ] || die "the live environment is built for x86_64; this machine is $(uname -m)"

# --- build dependencies -------------------------------------------------------------------
declare -A want=([busybox-static]=/bin/busybox [kmod]=depmod [gzip]=gzip [xz-utils]=xz
  [zstd]=zstd [file]=file [python3]=python3 [dpkg]=dpkg-deb)
missing=()
for pkg in "${!want[@]}"; do
  p="${want[$pkg]}"
  case "$p" in
    /*) [ -e "$p" ] || missing+=("$pkg") ;;
    *) command -v "$p" >/dev/null 2>&1 || [ -x "/usr/sbin/$p" ] || [ -x "/sbin/$p" ] || missing+=("$pkg") ;;
  esac
done
# The initramfs has no libc: it needs the static busybox, not the dynamic one.
if [ -e /bin/busybox ] && ! file -L /bin/busybox 2>/dev/null | grep -q 'statically linked'; then
  dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
fi
export PATH="$PATH:/usr/sbin:/sbin"
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    log "missing: ${missing[*]}; install them, then run this again:"
    echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (https://rustup.rs)"

# --- the kernel package -------------------------------------------------------------------
deb="${BTY_KERNEL_DEB:-}"
if [ -z "$deb" ]; then
  cache="${BTY_LIVE_CACHE:-$here/out/cache}"
  mkdir -p "$cache"
  command -v apt-cache >/dev/null || die "no apt here: download a Debian linux-image-*-amd64 .deb and set BTY_KERNEL_DEB to it"
  # The package linux-image-amd64 points at: the current kernel of this Debian release.
  current() { apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/.*Depends: \(linux-image-.*-amd64\)$/\1/p' | head -1; }
  pkg="$(current)"
  if [ -z "$pkg" ]; then
    [ "$(id -u)" = 0 ] || die "apt knows no linux-image-amd64 (no package lists?); run 'sudo apt-get update', or set BTY_KERNEL_DEB"
    apt-get update -qq
    pkg="$(current)"
    [ -n "$pkg" ] || die "apt knows no linux-image-amd64 package; set BTY_KERNEL_DEB to a Debian kernel .deb"
  fi
  deb="$(ls "$cache/${pkg}_"*.deb 2>/dev/null | tail -1 || true)"
  if [ -z "$deb" ]; then
    log "downloading $pkg into $cache"
    (cd "$cache" && apt-get download -qq "$pkg" 2>&1 | grep -v 'unsandboxed' >&2 || true)
    deb="$(ls "$cache/${pkg}_"*.deb 2>/dev/null | tail -1 || true)"
    [ -n "$deb" ] || die "could not download $pkg (apt-get download $pkg in $cache)"
  fi
fi
[ -f "$deb" ] || die "kernel package $deb not found"

# --- static bty and bty-tui -----------------------------------------------------------------
log "building static bty and bty-tui"
agent="$("$here/build-static.sh")"

# --- pack and install ---------------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/bty-live-install.XXXXXX")"
trap 'rm -rf "$work"' EXIT
KERNEL_DEB="$deb" "$here/build.sh" "$work/out" "$agent"
files=(vmlinuz initrd.gz)
(cd "$work/out" && sha256sum "${files[@]}" >SHA256SUMS)

if [ -n "$release_dir" ]; then
  dest="$release_dir/$tag"
  mkdir -p "$dest"
  for f in "${files[@]}" SHA256SUMS; do
    cp "$work/out/$f" "$dest/.$f.tmp"
    mv "$dest/.$f.tmp" "$dest/$f"
  done
  log "release $tag in $dest"
  echo "$(cd "$release_dir" && pwd)/$tag"
  exit 0
fi

# The state directory holds password hashes: 0700, as bty-web itself makes it.
if [ -n "${state_dir:-}" ] && [ ! -d "$state_dir" ]; then mkdir -m 0700 -p "$state_dir"; fi
(umask 077 && mkdir -p "$boot_dir")
# Each file goes in under a hidden name and is renamed into place: a server serving the old
# files meanwhile never sends half of a new one.
for f in "${files[@]}" SHA256SUMS; do
  install -m 0600 "$work/out/$f" "$boot_dir/.$f.tmp"
  mv "$boot_dir/.$f.tmp" "$boot_dir/$f"
done
python3 - "$boot_dir" "$tag" "${files[@]}" <<'PY'
import datetime, json, os, sys
boot, tag, names = sys.argv[1], sys.argv[2], sys.argv[3:]
sums = dict(reversed(l.split(None, 1)) for l in open(os.path.join(boot, "SHA256SUMS")).read().splitlines())
doc = {"tag": tag, "base_url": "live/install.sh (built on this machine)",
       "fetched_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
       "files": [{"name": n, "sha256": sums[n].strip()} for n in names]}
tmp = os.path.join(boot, ".netboot.json.tmp")
with open(tmp, "w") as f:
    json.dump(doc, f, indent=2)
os.chmod(tmp, 0o600)
os.replace(tmp, os.path.join(boot, "netboot.json"))
PY
log "installed $tag into $boot_dir: $(cd "$boot_dir" && du -k "${files[@]}" | awk '{printf "%s%s (%d KiB)", sep, $2, $1; sep=", "}')"
