#!/usr/bin/env bash
# Runs the README's quick start exactly as written -- the shell block between
# `<!-- quickstart:begin -->` and `<!-- quickstart:end -->`, read from README.md, so the two
# cannot drift -- and checks that the VM booted the disk bty-web flashed.
#
# It runs in a copy of the repository (the quick start writes ./bty-state, ./demo, ...) and
# in a network namespace of its own (a fresh loopback: port 8080 is free and nothing reaches
# a LAN), so it needs root; without root it says so and skips. What differs from a user's
# run, and why:
#   - `sudo apt-get install …` is not run; instead every package it names must be installed
#     (checks/deps.sh installed them), so the line stays true;
#   - HOME is a scratch directory, so `cargo install` lands there and not in the real
#     ~/.cargo/bin; builds share this repository's target directory and crate cache (offline);
#   - live/install.sh gets the kernel package checks/deps.sh downloaded (BTY_KERNEL_DEB): the
#     namespace has no network.
#
#   checks/quickstart.sh        (BTY_QUICKSTART_TIMEOUT: seconds, default 2400)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
log() { echo "quickstart: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "skipped: needs root for its network namespace (unshare --net); run as root to check the README's quick start"
  exit 0
fi
kernel_deb_file="$repo/checks/out/cache/kernel-deb.path"
[ -f "$kernel_deb_file" ] || { log "no kernel package: run checks/deps.sh first"; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/bty-quickstart.XXXXXX")"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

# The block, and a copy of the repository's files (tracked, and new ones not ignored).
python3 - "$repo" "$work" <<'PY'
import os, re, shutil, subprocess, sys
repo, work = sys.argv[1], sys.argv[2]
text = open(os.path.join(repo, "README.md")).read()
m = re.search(r"<!-- quickstart:begin -->\s*```sh\n(.*?)```\s*<!-- quickstart:end -->", text, re.S)
if not m:
    sys.exit("quickstart: README.md has no ```sh block between the quickstart markers")
open(os.path.join(work, "quickstart.sh"), "w").write(m.group(1))
# The packages the apt-get line names (continuation lines joined).
script = m.group(1).replace("\\\n", " ")
pkgs = []
for line in script.splitlines():
    if re.match(r"\s*sudo apt-get install\b", line):
        pkgs += [w for w in line.split()[3:] if not w.startswith("-")]
open(os.path.join(work, "packages"), "w").write("\n".join(pkgs) + "\n")
files = subprocess.run(["git", "-C", repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       check=True, capture_output=True).stdout.decode().split("\0")
for f in filter(None, files):
    src = os.path.join(repo, f)
    if not os.path.lexists(src):
        continue  # deleted in the working tree
    dst = os.path.join(work, "repo", f)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy2(src, dst, follow_symlinks=False)
PY

missing=()
while read -r p; do
  [ -n "$p" ] || continue
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done <"$work/packages"
if [ "${#missing[@]}" -gt 0 ]; then
  log "the README's apt-get line names packages that are not installed here: ${missing[*]}"
  exit 1
fi
log "the README's apt-get line: $(tr '\n' ' ' <"$work/packages")(all installed)"

mkdir -p "$work/home"
cat >"$work/run.sh" <<PRELUDE
set -euo pipefail
ip link set lo up
sudo() { if [ "\$1" = apt-get ]; then echo "quickstart: (not run: the packages it names are installed)"; else "\$@"; fi; }
# Whatever the block leaves running ends with it.
trap 'kill \$(jobs -p) 2>/dev/null || true' EXIT
export CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"
export HOME="$work/home" CARGO_INSTALL_ROOT="$work/home/.cargo" CARGO_TARGET_DIR="$repo/target"
export CARGO_NET_OFFLINE=true BTY_KERNEL_DEB="$(cat "$kernel_deb_file")"
cd "$work/repo"
PRELUDE
cat "$work/quickstart.sh" >>"$work/run.sh"

t0=$(date +%s)
rc=0
timeout "${BTY_QUICKSTART_TIMEOUT:-2400}" unshare --net bash "$work/run.sh" >"$work/out.log" 2>&1 || rc=$?
elapsed=$(( $(date +%s) - t0 ))
mkdir -p "$repo/checks/out"
cp "$work/out.log" "$repo/checks/out/quickstart.log"
fail() {
  log "FAILED: $*"
  tail -n 60 "$work/out.log" >&2
  [ ! -f "$work/repo/bty-web.log" ] || { log "bty-web.log:"; tail -n 30 "$work/repo/bty-web.log" >&2; }
  log "whole log: checks/out/quickstart.log"
  exit 1
}
[ "$rc" = 0 ] || fail "the quick start exited with status $rc after ${elapsed}s"
grep -q 'bty: flash complete' "$work/out.log" || fail "the VM never reported a complete flash"
grep -q 'BTY-MARKER-DISK-BOOTED' "$work/out.log" || fail "the VM did not boot the flashed disk"
grep -q '"state": *"flashed"' "$work/out.log" || fail "the server does not show the machine as flashed"
log "passed in ${elapsed}s: the VM PXE-booted, flashed demo and booted it; the server shows it flashed"
