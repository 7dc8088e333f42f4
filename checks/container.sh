#!/usr/bin/env bash
# bty-web's container image as an operator runs it, with rootful podman (runc, explicit
# ulimits): two builds of the same commit give the same image digest and the same bytes;
# `podman load` names it localhost/bty-web:VERSION; it runs as the non-root user with its
# health check; an admin password from a podman secret; log in, create a machine; then the
# container is recreated from a newer build on the same volume and the machine is still there.
# Needs root; skips (saying why) otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "container: $*"; }
fail() { echo "container: FAILED: $*" >&2; exit 1; }

if [ "$(id -u)" != 0 ]; then say "skipped: rootful podman needs root"; exit 0; fi
command -v podman >/dev/null || fail "podman is missing (checks/deps.sh installs it)"

out=checks/out/container
rm -rf "$out"; mkdir -p "$out"
started=$(date +%s)
version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)"
image="localhost/bty-web:$version"
newer="localhost/bty-web:$version-next"
name=bty-ci-$$
vol=bty-ci-state-$$
secret=bty-ci-admin-$$
run=(podman --runtime runc)
cleanup() {
  "${run[@]}" rm -f -v -t 2 "$name" >/dev/null 2>&1 || true
  podman volume rm -f "$vol" >/dev/null 2>&1 || true
  podman secret rm "$secret" >/dev/null 2>&1 || true
  podman rmi -f "$newer" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# The deploy files name what this runs: the image, the volumes' mount points, the health check.
python3 - <<'PY' || fail "deploy/compose.yaml does not describe the image"
import yaml
c = yaml.safe_load(open("deploy/compose.yaml"))
s = c["services"]["bty-web"]
assert s["image"].startswith("localhost/bty-web:"), s["image"]
assert {"bty-state:/var/lib/bty", "bty-cache:/var/cache/bty"} <= set(s["volumes"]), s["volumes"]
assert s["healthcheck"]["test"][:4] == ["CMD", "/usr/local/bin/bty", "os", "health"], s["healthcheck"]
assert s["network_mode"] == "host" and s["cap_add"] == ["NET_BIND_SERVICE"], s
assert s["environment"]["BTY_ADMIN_PASSWORD_FILE"] == "/run/secrets/bty_admin_password"
PY

d1="$(deploy/build-image.sh "$out/a.oci.tar")"
d2="$(deploy/build-image.sh "$out/b.oci.tar")"
[ "$d1" = "$d2" ] || fail "two builds of one commit differ: $d1 vs $d2"
cmp -s "$out/a.oci.tar" "$out/b.oci.tar" || fail "two builds of one commit are not the same bytes"
say "reproducible: $d1 twice ($(du -h "$out/a.oci.tar" | cut -f1))"

podman rmi -f "$image" >/dev/null 2>&1 || true
podman load -i "$out/a.oci.tar" | tail -1
podman image exists "$image" || fail "podman load did not name the image $image"
[ "$(podman image inspect --format '{{.Config.User}}' "$image")" = "10001:10001" ] || fail "the image does not run as bty (10001)"
for label in version source licenses revision; do
  v="$(podman image inspect --format "{{index .Labels \"org.opencontainers.image.$label\"}}" "$image")"
  [ -n "$v" ] && [ "$v" != "<no value>" ] || fail "label org.opencontainers.image.$label missing"
done

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
podman volume create "$vol" >/dev/null
printf %s 'container-secret-pw' | podman secret create "$secret" - >/dev/null
# podman schedules health checks with systemd timers; where systemd is not PID 1, the check
# is only run on demand (`podman healthcheck run`).
health_timer=""
[ -d /run/systemd/system ] || health_timer="--health-interval=disable"
start() {
  "${run[@]}" run -d --name "$name" --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
    --cap-drop ALL --read-only --tmpfs /tmp -p "127.0.0.1:$port:8080" \
    -v "$vol:/var/lib/bty" --secret "$secret,type=env,target=BTY_ADMIN_PASSWORD" \
    -e "BTY_SERVER_PUBLIC_URL=http://127.0.0.1:$port" \
    --health-cmd '["/usr/local/bin/bty", "os", "health", "--url", "http://127.0.0.1:8080/healthz", "--timeout", "5"]' \
    $health_timer \
    "$1" >/dev/null
  for _ in $(seq 100); do
    if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  podman logs "$name" | tail -20 >&2
  fail "bty-web in $1 did not answer /healthz"
}
start "$image"
podman healthcheck run "$name" >/dev/null || fail "the health check failed on a healthy server"
jar="$out/cookies"
login() {
  curl -fsS -c "$jar" -H 'Content-Type: application/json' \
    -d '{"username": "bty", "password": "container-secret-pw"}' "http://127.0.0.1:$port/auth/login" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["csrf_token"])'
}
csrf="$(login)" || fail "login with the password from the secret failed"
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
  -d '{"username": "bty", "password": "bty"}' "http://127.0.0.1:$port/auth/login")
[ "$code" = 401 ] || fail "the default password still logs in ($code)"
mac=52:54:00:c0:ff:ee
curl -fsS -b "$jar" -X PUT -H "X-CSRF-Token: $csrf" -H 'Content-Type: application/json' \
  -d '{"policy": "inventory", "labels": ["rack-1"]}' "http://127.0.0.1:$port/machines/$mac" >/dev/null ||
  fail "creating a machine failed"
say "first start: healthy, logged in with the secret, machine $mac created"

# Upgrade: a newer image, the same volume.
BTY_IMAGE_VERSION="$version-next" deploy/build-image.sh "$out/next.oci.tar" >/dev/null
podman load -i "$out/next.oci.tar" >/dev/null
"${run[@]}" rm -f -v -t 10 "$name" >/dev/null
start "$newer"
csrf="$(login)"
got="$(curl -fsS -b "$jar" "http://127.0.0.1:$port/machines/$mac")" || fail "the machine is gone after the upgrade"
echo "$got" | grep -q rack-1 || fail "the machine lost its labels: $got"
[ "$(podman inspect --format '{{.ImageName}}' "$name")" = "$newer" ] || fail "not running the newer image"
say "recreated from $newer on the same volume: $mac is still there"
say "passed in $(( $(date +%s) - started )) s"
