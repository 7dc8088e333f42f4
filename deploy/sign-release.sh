#!/usr/bin/env bash
# Signs an appliance release (`nix build .#server-x86-release`) and lays it out as a release
# source, the base `bty os show|download|apply --source OUT_BASE` reads:
#
#   OUT_BASE/latest                          the newest release signed into OUT_BASE (not a pre-release)
#   OUT_BASE/VERSION/manifest.json           as built
#   OUT_BASE/VERSION/manifest.json.minisig   its trusted comment: "version=VERSION type=TYPE"
#   OUT_BASE/VERSION/root.img.zst, bty.efi   the files the manifest lists, beside it
#
#   deploy/sign-release.sh RELEASE_DIR SECRET_KEY [OUT_BASE]      (OUT_BASE defaults to ./releases)
#   nix run .#sign-release -- RELEASE_DIR SECRET_KEY [OUT_BASE]
#
# The build makes the manifest and this signs it, so the secret key never enters the Nix store.
# Appliances check the signature with the public key built into bty (deploy/minisign.pub, when
# the flake finds one) or the one `[os] pubkey` / `--pubkey` names.
# Nothing is written before every file matches the manifest's size and SHA-256; a version is
# published by one rename, is never replaced once there, and `latest` only moves forward.
set -euo pipefail

usage() {
  echo "usage: $0 RELEASE_DIR SECRET_KEY [OUT_BASE]" >&2
  exit 2
}
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  usage
fi
release=$1
key=$2
out=${3:-releases}
[ -f "$release/manifest.json" ] || { echo "sign-release: $release/manifest.json: no such file" >&2; exit 1; }
[ -r "$key" ] || { echo "sign-release: $key: cannot read the secret key" >&2; exit 1; }

# "VERSION TYPE NAME..." once every file the manifest lists is in RELEASE_DIR as listed.
checked=$(python3 - "$release" <<'EOF'
import hashlib, json, os, re, sys

rel = sys.argv[1]


def fail(msg):
    print(f"sign-release: {msg}", file=sys.stderr)
    sys.exit(1)


try:
    with open(os.path.join(rel, "manifest.json"), "rb") as f:
        m = json.load(f)
except ValueError as e:
    fail(f"{rel}/manifest.json is not JSON: {e}")
# Plain MAJOR.MINOR.PATCH, as bty reads it: `+` separates systemd-boot's boot counter in an
# entry's name, and systemd-boot orders a pre-release after its release.
semver = r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)()()"
version, kind, files = m.get("version"), m.get("type"), m.get("files")
if not isinstance(version, str) or not re.fullmatch(semver, version):
    fail(f"the manifest's version {version!r} is not MAJOR.MINOR.PATCH")
if kind not in ("os", "efisys"):
    fail(f"the manifest's type {kind!r} is neither os nor efisys")
if not isinstance(files, list) or not files:
    fail("the manifest lists no files")
names = []
for f in files:
    name, url = f.get("name"), f.get("url")
    # The layout puts every file beside its manifest.
    if not isinstance(name, str) or url != name or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._+-]*", name):
        fail(f"file {name!r} (url {url!r}): this layout wants a plain file name, and the url equal to it")
    path = os.path.join(rel, name)
    if not os.path.isfile(path):
        fail(f"{path}: the manifest lists it, the directory does not have it")
    size = os.path.getsize(path)
    if size != f.get("size"):
        fail(f"{path} is {size} bytes, the manifest says {f.get('size')}")
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != str(f.get("sha256", "")).lower():
        fail(f"{path} has SHA-256 {h.hexdigest()}, the manifest says {f.get('sha256')}")
    names.append(name)
if len(set(names)) != len(names):
    fail("the manifest lists a file twice")
print(version, kind, " ".join(names))
EOF
)
read -r version kind names <<<"$checked"
read -r -a files <<<"$names"

mkdir -p "$out"
if [ -e "$out/$version" ]; then
  echo "sign-release: $out/$version exists: a released version is never replaced (bump the version)" >&2
  exit 1
fi
stage=$(mktemp -d "$out/.$version.XXXXXX")
trap 'rm -rf "$stage"' EXIT

install -m 0644 "$release/manifest.json" "$stage/manifest.json"
for f in "${files[@]}"; do
  install -m 0644 "$release/$f" "$stage/$f"
done
# The copies are what gets signed and published: check them too (a copy can go wrong).
(cd "$release" && sha256sum "${files[@]}") | (cd "$stage" && sha256sum --quiet -c -)
minisign -S -s "$key" -m "$stage/manifest.json" -t "version=$version type=$kind"
chmod 0755 "$stage"
mv -T "$stage" "$out/$version"
trap - EXIT

# semver precedence: is $1 newer than $2? A pre-release is never `latest`: appliances that
# follow it get releases, and a pre-release is applied by its version.
newer=$(python3 - "$version" "$(cat "$out/latest" 2>/dev/null || true)" <<'EOF'
import re, sys


def key(v):
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?", v.strip())
    if not m:
        return None
    pre = m.group(4)
    # A release sorts after its pre-releases; numeric identifiers before alphanumeric ones.
    ids = [(0, int(i), "") if i.isdigit() else (1, 0, i) for i in pre.split(".")] if pre else []
    return (tuple(int(m.group(i)) for i in (1, 2, 3)), 0 if pre else 1, ids)


new, cur = key(sys.argv[1]), key(sys.argv[2])
print("yes" if new[1] == 1 and (cur is None or new > cur) else "no")
EOF
)
if [ "$newer" = yes ]; then
  echo "$version" >"$out/.latest.tmp"
  mv -f "$out/.latest.tmp" "$out/latest"
  echo "sign-release: $out/$version signed; $out/latest is $version"
else
  echo "sign-release: $out/$version signed; $out/latest stays $(cat "$out/latest" 2>/dev/null || echo unset)"
fi
