#!/usr/bin/env bash
# Evaluates the Nix side of bty without building anything and without the network.
#
#   checks/nix-eval.sh                          every .nix file parses (nix-instantiate --parse)
#   NIXPKGS=/path/to/nixpkgs.lib checks/nix-eval.sh
#       + nixos-modules/*.nix evaluated with lib.evalModules (nixpkgs' lib, stubs for the NixOS
#         options they touch: checks/nix/stubs.nix) and checked (checks/nix/eval-modules.nix)
#   NIXPKGS=/path/to/nixpkgs CRANE=/path/to/crane checks/nix-eval.sh
#       + with a full nixpkgs: every nixosConfiguration, image and check of flake.nix is
#         instantiated (checks/nix/eval-systems.nix); needs the nixpkgs the lock names to be
#         meaningful, and is slow (minutes, GBs of RAM)
#
# NIXPKGS may be a nixpkgs checkout (with lib/ and nixos/) or a nixpkgs.lib mirror (lib/ only).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v nix-instantiate >/dev/null || { echo "nix-eval: nix-instantiate missing (Debian: apt-get install nix-bin)" >&2; exit 1; }

echo "== nix-instantiate --parse of every .nix file"
n=0
while IFS= read -r -d '' f; do
  nix-instantiate --parse "$f" >/dev/null
  n=$((n + 1))
done < <(git ls-files -z --cached --others --exclude-standard -- '*.nix')
echo "   $n files parse"

[ -n "${NIXPKGS:-}" ] || { echo "nix-eval: NIXPKGS not set: module evaluation skipped"; exit 0; }
[ -f "$NIXPKGS/lib/default.nix" ] || { echo "nix-eval: $NIXPKGS/lib/default.nix missing" >&2; exit 1; }
# A store of our own when the default one is not writable (no daemon, not root).
if [ ! -w /nix/store ] 2>/dev/null && [ -z "${NIX_STORE_DIR:-}" ]; then
  export NIX_REMOTE="local?root=${TMPDIR:-/tmp}/bty-nix-eval-store"
fi

echo "== nixos-modules evaluated with lib.evalModules ($NIXPKGS/lib)"
nix-instantiate --eval --strict --json checks/nix/eval-modules.nix --arg nixpkgsLib "$NIXPKGS/lib" \
  | python3 -c '
import json, sys
results = json.load(sys.stdin)
failed = [r for r in results if not r["ok"]]
for r in results:
    print(("   ok    " if r["ok"] else "   FAIL  ") + r["name"])
    if not r["ok"] and r["detail"] is not None:
        print("         " + json.dumps(r["detail"])[:2000])
print(f"   {len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)'

if [ ! -d "$NIXPKGS/nixos" ]; then
  echo "nix-eval: $NIXPKGS has no nixos/ (a lib-only mirror): nixosConfigurations not evaluated"
  exit 0
fi
[ -n "${CRANE:-}" ] || { echo "nix-eval: CRANE not set (a crane checkout): nixosConfigurations not evaluated"; exit 0; }
echo "== flake outputs instantiated with $NIXPKGS and $CRANE"
nix-instantiate --eval --strict --json checks/nix/eval-systems.nix --arg nixpkgs "$NIXPKGS" --arg crane "$CRANE" \
  | python3 -c '
import json, sys
out = json.load(sys.stdin)
bad = 0
for name, v in out.items():
    if isinstance(v, dict) and "failedAssertions" in v:
        if v["failedAssertions"]:
            bad += 1
            print(f"   FAIL  {name}: " + "; ".join(v["failedAssertions"]))
        else:
            print("   ok    " + name + ": " + v["toplevel"])
    else:
        print(f"   ok    {name}")
sys.exit(1 if bad else 0)'
