#!/usr/bin/env python3
"""The end-to-end suite: real bty-web, real iPXE, real `bty agent`, real QEMU.

Each scenario starts its own bty-web (fresh state directory) and one client VM that PXE-boots
into the test live environment: the l2-* scenarios on a layer-2 segment in network namespaces
(lib/l2.py) through bty-web's own ProxyDHCP and TFTP, the others through Debian's iPXE ROM over
QEMU user networking with bty-web on loopback. Assertions are made on
the serial log, on the server's records and events, and on the disk bytes. The marker disk
that gets flashed prints BTY-MARKER-DISK-BOOTED and ends QEMU with status 33, so "boots the
flashed disk" is observed. `ab-update` runs no bty-web: an A/B appliance disk (checks/ab/)
boots under OVMF and systemd-boot and updates itself with `bty os` from signed releases.

    python3 checks/e2e.py                 # every scenario
    python3 checks/e2e.py l2-bios l2-uefi # some of them
    python3 checks/e2e.py --list

Normally run through checks/e2e.sh, which builds what this needs first:
    target/static/x86_64-unknown-linux-gnu/release/bty (static) inside checks/out/live-agent,
    checks/out/disk (marker images), target/debug/bty-web, checks/out/ab (the A/B appliance's
    kernel and initramfs, with the same static bty).
Logs of each scenario stay in checks/out/e2e/<scenario>/; the figures go to
checks/out/e2e/figures.json.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.cookiejar
import http.server
import json
import os
import re
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "ab"))
import ab as AB  # noqa: E402
import l2 as L2  # noqa: E402
import vm as V  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "checks", "out", "e2e")
LIVE = os.path.join(ROOT, "checks", "out", "live-agent")
DISK = os.path.join(ROOT, "checks", "out", "disk")
# The marker disk with an empty ext4 root partition (MARKER_ROOT_MIB), and the live
# environment's initrd with Python and cijoe appended (checks/live/cijoe-layer.py).
DISK_ROOT = os.path.join(ROOT, "checks", "out", "disk-root")
CIJOE_LAYER = os.path.join(ROOT, "checks", "out", "cijoe-layer.cpio.gz")
CIJOE = os.path.join(ROOT, "checks", "out", "cijoe", "bin", "cijoe")
# The A/B appliance's kernel and initramfs (checks/ab/build.sh).
AB_OUT = os.path.join(ROOT, "checks", "out", "ab")
BTY_WEB = os.environ.get("BTY_WEB_BIN", os.path.join(ROOT, "target", "debug", "bty-web"))
MARKER = "BTY-MARKER-DISK-BOOTED"
FLASH_FAILED = r"bty: flash failed"
# Generous under TCG: a UEFI boot to the live environment takes ~25 s there.
BOOT_TIMEOUT = float(os.environ.get("BTY_E2E_TIMEOUT", "240"))


class Failed(AssertionError):
    pass


def check(cond, what: str) -> None:
    if not cond:
        raise Failed(what)


def sha256_file(path: str, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = limit
        while left is None or left > 0:
            b = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not b:
                break
            h.update(b)
            if left is not None:
                left -= len(b)
    return h.hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image(name: str) -> str:
    return os.path.join(DISK, name)


def published_sha(name: str) -> str:
    return open(image(name) + ".sha256").read().split()[0]


# --- the server ---------------------------------------------------------------------------------

class Server:
    """bty-web on loopback with a fresh state directory, the live environment in /boot and the
    marker images in the catalog. The guest reaches it as http://10.0.2.100 (see lib/vm.py)."""

    def __init__(self, work: str, catalog: list[dict], seg=None, proxy_dhcp: bool = True, extra_env=None,
                 initrd_layers=(), container: str | None = None):
        """`seg`: run on that layer-2 segment (lib/l2.py) instead, at 192.168.77.2:8080 in its
        server namespace, with bty-web's own TFTP and (unless `proxy_dhcp` is False) ProxyDHCP.
        `container`: run that image of bty-web with rootful podman (host networking, only
        CAP_NET_BIND_SERVICE, as deploy/compose.yaml does) on the state directory."""
        self.work = work
        self.seg = seg
        self.state = os.path.join(work, "state")
        os.makedirs(self.state + "/boot")
        os.makedirs(self.state + "/images")
        for f in ("vmlinuz", "initrd.gz"):
            shutil.copy(os.path.join(LIVE, f), os.path.join(self.state, "boot", f))
        # More archives after the initrd: the kernel unpacks them all, in order.
        with open(os.path.join(self.state, "boot", "initrd.gz"), "ab") as out:
            for layer in initrd_layers:
                out.write(open(layer, "rb").read())
        lines = ["version = 1"]
        for e in catalog:
            src = e["src"]
            if os.path.isabs(src):
                shutil.copy(src, os.path.join(self.state, "images", os.path.basename(src)))
                src = os.path.basename(src)
            elif not src.startswith(("http", "oras://")):
                shutil.copy(image(src), os.path.join(self.state, "images", src))
            lines += ["[[images]]", f'name = "{e["name"]}"', f'src = "{src}"', f'sha256 = "{e["sha256"]}"']
        open(os.path.join(self.state, "catalog.toml"), "w").write("\n".join(lines) + "\n")
        self.port = free_port() if seg is None else 8080
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, BTY_PATHS_STATE_DIR=self.state, BTY_SERVER_HOST="127.0.0.1",
                   BTY_SERVER_PORT=str(self.port), BTY_SERVER_PUBLIC_URL=f"http://{V.SERVER_IP}",
                   BTY_ADMIN_PASSWORD="e2e-password", NO_COLOR="1", **(extra_env or {}))
        argv = [BTY_WEB]
        if seg is not None:
            for f in ("snponly.efi", "ipxe.efi", "undionly.kpxe"):
                shutil.copy(os.path.join("/usr/lib/ipxe", f), os.path.join(self.state, "boot", f))
            env.update(BTY_SERVER_HOST="0.0.0.0", BTY_SERVER_PUBLIC_URL=f"http://{L2.SERVER_IP}:8080",
                       BTY_TFTP_ENABLED="true", BTY_TFTP_ADDRESS=L2.SERVER_IP,
                       BTY_PROXY_DHCP_ENABLED="true" if proxy_dhcp else "false",
                       BTY_PROXY_DHCP_INTERFACE="s0")
        if container is not None:
            # The image's own paths and user (10001), the rest of the environment as given.
            env.update(BTY_PATHS_STATE_DIR="/var/lib/bty")
            subprocess.run(["chown", "-R", "10001:10001", self.state], check=True)
            passed = {k: v for k, v in env.items() if k.startswith("BTY_")}
            self.container = f"bty-e2e-{os.path.basename(work)}"
            subprocess.run(["podman", "rm", "-f", self.container], capture_output=True)
            # Host networking, the host being the segment's server namespace: podman joins it
            # itself (under `ip netns exec`, runc finds no cgroup mount in the new /sys).
            network = "host" if seg is None else f"ns:/run/netns/{seg.ns('srv')}"
            argv = ["podman", "--runtime", "runc", "run", "--rm", "--name", self.container,
                    "--network", network, "--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE",
                    "--read-only", "--tmpfs", "/tmp", "--ulimit", "nofile=4096:4096",
                    "--ulimit", "nproc=4096:4096", "-v", f"{self.state}:/var/lib/bty"]
            argv += [f"--env={k}={v}" for k, v in sorted(passed.items())] + [container]
        if seg is not None and container is None:
            argv = seg.exec("srv", argv)
        self.log = os.path.join(work, "bty-web.log")
        self.proc = subprocess.Popen(argv, env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + (60 if container else 20)
        while True:
            try:
                self.net(lambda: urllib.request.urlopen(self.base + "/healthz", timeout=2))
                break
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise Failed(f"bty-web did not start:\n{open(self.log).read()[-2000:]}")
                time.sleep(0.05)
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.csrf = self.req("POST", "/auth/login", {"username": "bty", "password": "e2e-password"})["csrf_token"]

    def metrics(self) -> str:
        return self.net(lambda: urllib.request.urlopen(self.base + "/metrics", timeout=5).read().decode())

    def net(self, fn):
        """Run `fn` where the server's loopback is (its namespace on a layer-2 segment)."""
        return fn() if self.seg is None else self.seg.in_ns("srv", fn)

    def req(self, method: str, path: str, body=None):
        headers = {"Content-Type": "application/json"}
        if getattr(self, "csrf", None):
            headers["X-CSRF-Token"] = self.csrf
        r = urllib.request.Request(self.base + path, method=method, headers=headers,
                                   data=None if body is None else json.dumps(body).encode())
        def call():
            with self.opener.open(r, timeout=10) as resp:
                return resp.read()
        try:
            t = self.net(call)
            return json.loads(t) if t else None
        except urllib.error.HTTPError as e:
            raise Failed(f"{method} {path}: HTTP {e.code}: {e.read().decode(errors='replace')}")

    def machine(self, mac: str) -> dict:
        return self.req("GET", f"/machines/{mac}")

    def bind(self, mac: str, **fields) -> dict:
        return self.req("PUT", f"/machines/{mac}", fields)

    def flashes(self, mac: str) -> list[dict]:
        r = self.req("GET", f"/machines/{mac}/flashes")
        return r if isinstance(r, list) else r.get("flashes", r.get("items", []))

    def events(self, mac: str | None = None, kind: str | None = None) -> list[dict]:
        q = []
        if mac:
            q.append(f"subject={mac}")
        if kind:
            q.append(f"kind={kind}")
        r = self.req("GET", "/events?" + "&".join(q + ["limit=500"]))
        return r if isinstance(r, list) else r.get("events", r.get("items", []))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "container", None):
            subprocess.run(["podman", "rm", "-f", "-t", "2", self.container], capture_output=True)


class SlowOrigin:
    """An http origin for one file that sends it slowly, so a flash is still running when the
    test pulls the plug. bty-web proxies it as a catalog entry with an http(s) src."""

    def __init__(self, path: str, bytes_per_s: int):
        data = open(path, "rb").read()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                step = max(1, bytes_per_s // 20)
                try:
                    for i in range(0, len(data), step):
                        self.wfile.write(data[i:i + step])
                        self.wfile.flush()
                        time.sleep(0.05)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *a):
                pass

        class Threaded(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.httpd = Threaded(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{os.path.basename(path)}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


class Registry:
    """Debian's docker-registry (the CNCF distribution) on loopback, storage in `work`; images
    pushed as `oras push` pushes them: an empty config blob and the file as the one layer."""

    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

    def __init__(self, work: str):
        port = free_port()
        self.addr = f"127.0.0.1:{port}"
        cfg = os.path.join(work, "registry.yml")
        open(cfg, "w").write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                             f"    rootdirectory: {work}/registry\nhttp:\n  addr: {self.addr}\n")
        self.proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", cfg],
                                     stdout=open(os.path.join(work, "registry.log"), "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://{self.addr}/v2/", timeout=2)
                break
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise Failed("docker-registry did not start (checks/deps.sh installs it)")
                time.sleep(0.05)

    def blob(self, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        r = urllib.request.urlopen(urllib.request.Request(
            f"http://{self.addr}/v2/{repo}/blobs/uploads/", method="POST", data=b""), timeout=10)
        loc = r.headers["Location"]
        loc = f"http://{self.addr}{loc}" if loc.startswith("/") else loc
        sep = "&" if "?" in loc else "?"
        urllib.request.urlopen(urllib.request.Request(
            f"{loc}{sep}digest={digest}", method="PUT", data=data,
            headers={"Content-Type": "application/octet-stream"}), timeout=30)
        return digest

    def push(self, repo: str, tag: str, path: str) -> str:
        """`path` as the image layer of `repo:tag`; its oras:// reference."""
        data = open(path, "rb").read()
        config = self.blob(repo, b"{}")
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": self.OCI_MANIFEST,
            "artifactType": "application/vnd.bty.disk-image",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": self.blob(repo, data),
                        "size": len(data), "annotations": {"org.opencontainers.image.title": os.path.basename(path)}}],
        }).encode()
        urllib.request.urlopen(urllib.request.Request(
            f"http://{self.addr}/v2/{repo}/manifests/{tag}", method="PUT", data=manifest,
            headers={"Content-Type": self.OCI_MANIFEST}), timeout=10)
        return f"oras://{self.addr}/{repo}:{tag}"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def metric(srv: "Server", name: str) -> int:
    m = re.search(rf"^{name} (\d+)$", srv.metrics(), re.M)
    return int(m.group(1)) if m else 0


# --- scenarios ----------------------------------------------------------------------------------

SCENARIOS: dict[str, object] = {}
FIGURES: dict[str, dict] = {}


def scenario(name: str):
    def reg(f):
        SCENARIOS[name] = f
        return f
    return reg


def disk_file(work: str, size: int, name: str = "disk.raw", fill: str | None = None) -> str:
    path = os.path.join(work, name)
    with open(path, "wb") as f:
        if fill:
            f.write(open(fill, "rb").read())
        f.truncate(size)
    return path


def flash_figures(name: str, m: V.VM, t_start: float, log: str):
    """Power-on to `bty: flash starting`, in-VM throughput from the agent's own summary line."""
    fig = FIGURES.setdefault(name, {})
    fig["accel"] = V.accel()
    fig["power_on_to_flash_start_s"] = round(t_start, 1)
    w = re.search(r"bty: wrote (\S+ \S+) in ([\d.]+)s \((\S+ \S+)/s\)", log)
    if w:
        fig["flash_image"] = w.group(1)
        fig["flash_seconds"] = float(w.group(2))
        fig["flash_throughput"] = w.group(3) + "/s"
    return fig


def expect_marker_exit(m: V.VM, name: str, key: str = "power_on_to_marker_s"):
    _, t = m.wait_for(MARKER, BOOT_TIMEOUT, fail=FLASH_FAILED)
    FIGURES.setdefault(name, {})[key] = round(t, 1)
    rc = m.wait_exit(60)
    check(rc == V.MARKER_EXIT_STATUS, f"the marker disk ends QEMU with status {V.MARKER_EXIT_STATUS}, got {rc}")


def full_flash_boot(name: str, m: V.VM):
    """One power-on that flashes and then boots the flashed disk (same power-on: the agent
    reboots the VM, the next PXE contact is served the local disk)."""
    _, t_start = m.wait_for(r"bty: flash starting", BOOT_TIMEOUT, fail=FLASH_FAILED)
    m.wait_for(r"bty: flash complete; rebooting", BOOT_TIMEOUT, fail=FLASH_FAILED)
    flash_figures(name, m, t_start, m.log()[m.log_mark:])
    expect_marker_exit(m, name)


def assert_flashed(srv: Server, mac: str, done: int):
    mach = srv.machine(mac)
    check(mach["state"] == "flashed", f"machine state is flashed (got {mach['state']})")
    check(mach["last_flashed_at"], "the server shows last_flashed_at")
    check(mach["last_flash_status"] == "done", f"last flash status done (got {mach['last_flash_status']})")
    dones = [f for f in srv.flashes(mac) if f["status"] == "done"]
    check(len(dones) == done, f"{done} flash(es) recorded done, got {len(dones)}: {srv.flashes(mac)}")
    kinds = [e["kind"] for e in srv.events(mac)]
    check(kinds.count("machine.flashed") == done, f"{done} machine.flashed event(s): {kinds}")


def check_disk_holds(disk: str, img: str, same_size: bool):
    """The flashed disk against the image: a disk exactly the image's size has the image's
    SHA-256; on a larger one the GPT backup has moved to the disk's real end."""
    n = os.path.getsize(image(img))
    if same_size:
        check(sha256_file(disk) == published_sha(img), "the disk's SHA-256 equals the image's")
        return
    raw = open(image(img), "rb").read()
    got = open(disk, "rb").read(n)
    # LBA 0-1 (protective MBR grown to the disk, primary header's backup LBA) and the
    # image's old backup GPT legitimately differ.
    check(got[1024:n - 33 * 512] == raw[1024:n - 33 * 512], "the disk holds the image")
    if open(image(img), "rb").read(520)[512:520] == b"EFI PART":
        v = subprocess.run(["sgdisk", "-v", disk], capture_output=True, text=True)
        check(v.returncode == 0 and "No problems found" in v.stdout,
              f"sgdisk -v finds the GPT valid at the disk's end:\n{v.stdout}{v.stderr}")


def check_decisions(srv: "Server", mac: str):
    offers = [e["summary"] for e in srv.events(mac, "pxe.offered")]
    check(any(": flash" in s for s in offers) and any(": local" in s for s in offers),
          f"PXE decisions flash then local are in the audit log: {offers}")


def render_screen(raw: str, rows: int = 24, cols: int = 80) -> str:
    """What a VT100 shows after `raw` (serial output, latin-1): enough of the protocol for
    bty-tui's output (cursor positioning, clears, attributes ignored). The terminal library only
    sends the cells that change between frames, so the serial log itself never holds a screen's
    text in order; this puts the cells back where they land."""
    grid = [[" "] * cols for _ in range(rows)]
    r = c = 0
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if ch == "\x1b":
            m = re.match(r"\x1b\[([0-9;?]*)([A-Za-z@])", raw[i:])
            if not m:
                i += 2
                continue
            i += m.end()
            params, op = m.group(1), m.group(2)
            nums = [int(x) if x.isdigit() else 0 for x in params.lstrip("?").split(";")] if params else []
            if op in "Hf":
                r = max(1, nums[0] if nums else 1) - 1
                c = max(1, nums[1] if len(nums) > 1 else 1) - 1
            elif op == "J" and (nums[:1] == [2] or params == ""):
                if nums[:1] == [2]:
                    grid = [[" "] * cols for _ in range(rows)]
                else:
                    grid[r][c:] = [" "] * (cols - c)
                    for rr in range(r + 1, rows):
                        grid[rr] = [" "] * cols
            elif op == "K":
                grid[r][c:] = [" "] * (cols - c)
            elif op == "h" and params == "?1049":
                grid = [[" "] * cols for _ in range(rows)]
            elif op in "ABCD":
                k = max(1, nums[0] if nums else 1)
                r, c = {"A": (r - k, c), "B": (r + k, c), "C": (r, c + k), "D": (r, c - k)}[op]
            r, c = min(max(r, 0), rows - 1), min(max(c, 0), cols - 1)
            continue
        i += 1
        if ch == "\r":
            c = 0
        elif ch == "\n":
            r = min(r + 1, rows - 1)
        elif ch == "\b":
            c = max(c - 1, 0)
        elif ch >= " ":
            if c < cols:
                grid[r][c] = ch
            c += 1
    return "\n".join("".join(row).rstrip() for row in grid)


def wait_screen(m: V.VM, text: str, timeout: float, *, after: int, fail: str | None = None) -> float:
    """Wait until the console screen (serial output since byte `after`) shows `text`; returns the
    seconds since power-on. `fail` on the screen ends the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        shown = render_screen(m.log()[after:])
        if text in shown:
            return m.elapsed()
        if fail and fail in shown:
            raise Failed(f"the console shows {fail!r}:\n{shown}")
        if time.monotonic() > deadline:
            raise Failed(f"the console does not show {text!r} after {timeout:.0f}s:\n{shown}")
        time.sleep(0.2)


@scenario("unknown")
def unknown_mac(name, work):
    """An unknown MAC is recorded on first contact with the default policy (tui); the decision
    is in the audit log; the live agent starts the interactive flasher on the serial console."""
    srv = Server(work, [])
    try:
        mac = "52:54:00:ab:cd:01"
        with V.VM(work, firmware="bios", mac=mac, disks=[V.Disk(disk_file(work, 64 << 20), "bty-disk-0")],
                  server_port=srv.port) as m:
            mt, _ = m.wait_for(r"bty: plan: interactive", BOOT_TIMEOUT)
            # An empty catalog: the flasher says so instead of showing an empty table.
            wait_screen(m, "no images found", 60, after=mt.end())
        mach = srv.machine(mac)
        check(mach["policy"] == "tui", f"discovered with the default policy tui (got {mach['policy']})")
        check(mach["discovered_at"] and mach["last_seen_ip"], "discovered_at and last_seen_ip are set")
        kinds = [e["kind"] for e in srv.events(mac)]
        check("machine.discovered" in kinds, f"machine.discovered in the audit log: {kinds}")
        offers = [e["summary"] for e in srv.events(mac, "pxe.offered")]
        check(offers and all("interactive" in s for s in offers), f"PXE decision interactive: {offers}")
    finally:
        srv.stop()


@scenario("tui")
def tui(name, work):
    """policy tui: the live environment starts bty-tui on the serial console; the test picks the
    image and the disk with keys and confirms; the server records the flash as done; the
    operator switches the machine to local and reboots from the flasher into the marker disk."""
    img = "marker-bios.img"
    srv = Server(work, [{"name": "marker", "src": img + ".zst", "sha256": published_sha(img + ".zst")}])
    try:
        mac = "52:54:00:12:34:5b"
        disk = disk_file(work, os.path.getsize(image(img)))
        with V.VM(work, firmware="bios", mac=mac, disks=[V.Disk(disk, "bty-disk-0")], server_port=srv.port,
                  interactive=True) as m:
            mt, _ = m.wait_for(r"bty: plan: interactive", BOOT_TIMEOUT)
            tui_out = mt.end()
            t_ui = wait_screen(m, "> marker", 60, after=tui_out)
            check("zstd" in render_screen(m.log()[tui_out:]), "the image list shows the format")
            # Letters, not arrow keys: an escape sequence typed one byte at a time reads as Esc.
            m.send("\r")
            wait_screen(m, "bty-disk-0", 30, after=tui_out)
            m.send("\r")
            wait_screen(m, "Press y to write", 60, after=tui_out, fail="PROBLEM:")
            m.send("y")
            t_done = wait_screen(m, "recorded the flash as done", BOOT_TIMEOUT, after=tui_out, fail="FAILED")
            fig = FIGURES.setdefault(name, {})
            fig["accel"] = V.accel()
            fig["power_on_to_tui_s"] = round(t_ui, 1)
            fig["power_on_to_done_s"] = round(t_done, 1)
            check(sha256_file(disk) == published_sha(img), "the disk's SHA-256 equals the image's")
            mach = srv.machine(mac)
            check(mach["policy"] == "tui", f"the machine keeps policy tui (got {mach['policy']})")
            check(mach["last_flash_status"] == "done" and mach["last_flashed_at"],
                  f"the server records the flash as done: {mach['last_flash_status']}")
            dones = [f for f in srv.flashes(mac) if f["status"] == "done"]
            check(len(dones) == 1, f"one flash recorded done: {srv.flashes(mac)}")
            kinds = [e["kind"] for e in srv.events(mac)]
            check("machine.flashed" in kinds, f"a machine.flashed event: {kinds}")
            # policy tui offers the flasher on every PXE boot; the operator now hands the machine
            # to its disk and reboots from the result screen.
            srv.bind(mac, policy="local")
            m.send("r")
            wait_screen(m, "Reboot this machine now?", 30, after=tui_out)
            m.send("y")
            expect_marker_exit(m, name)
    finally:
        srv.stop()


@scenario("alternate")
def alternate(name, work):
    """policy flash: flash, boot the disk once, flash again on the next PXE contact; the image is
    an oras:// artifact in a real registry, downloaded once into the cache for both flashes."""
    img = "marker-bios.img"
    registry = Registry(work)
    ref = registry.push("lab/marker", "v1", image(img + ".zst"))
    srv = Server(work, [{"name": "marker", "src": ref, "sha256": published_sha(img + ".zst")}])
    try:
        mac = "52:54:00:12:34:57"
        srv.bind(mac, policy="flash", image="marker", target_disk_serial="bty-disk-0")
        disk = disk_file(work, os.path.getsize(image(img)))
        m = V.VM(work, firmware="bios", mac=mac, disks=[V.Disk(disk, "bty-disk-0")], server_port=srv.port)
        with m:
            full_flash_boot(name, m)
            check(srv.machine(mac)["state"] == "pending", "after the local boot the machine is armed again")
            # Wipe the disk: only a second flash can make it boot again.
            with open(disk, "r+b") as f:
                f.write(b"\0" * os.path.getsize(disk))
            m.start()
            full_flash_boot(name, m)
        check(sha256_file(disk) == published_sha(img), "the disk's SHA-256 equals the image's")
        mach = srv.machine(mac)
        check(mach["last_flash_status"] == "done", "last flash done")
        dones = [f for f in srv.flashes(mac) if f["status"] == "done"]
        check(len(dones) == 2, f"two flashes recorded done: {srv.flashes(mac)}")
        offers = [e["summary"].split(": ", 1)[1].split(" ")[0] for e in
                  sorted(srv.events(mac, "pxe.offered"), key=lambda e: e["id"])]
        check(offers == ["flash", "local", "flash", "local"], f"PXE decisions alternate: {offers}")
        # Through the cache: one fill from the registry (prefetched when the machine was bound,
        # or started by the first flash), the second flash served from disk.
        size = os.path.getsize(image(img + ".zst"))
        up, misses, hits = (metric(srv, f"bty_cache_{k}_total") for k in ("upstream_bytes", "misses", "hits"))
        check(up == size, f"the registry sent the image once: {up} bytes upstream for a {size}-byte image")
        check(misses <= 1 and hits >= 1, f"cache misses {misses}, hits {hits}")
        entries = srv.req("GET", "/cache")
        check(len(entries) == 1 and entries[0]["state"] == "complete" and entries[0]["hits"] >= 1,
              f"one complete cache entry, read by the flashes: {entries}")
        FIGURES.setdefault(name, {})["cache"] = {"upstream_bytes": up, "hits": hits, "misses": misses}
    finally:
        srv.stop()
        registry.stop()


@scenario("inventory")
def inventory(name, work):
    """policy inventory: disks and hardware arrive, then the local disk boots."""
    srv = Server(work, [])
    try:
        mac = "52:54:00:12:34:58"
        srv.bind(mac, policy="inventory")
        # The disk already holds a bootable system: inventory must not touch it.
        disk = disk_file(work, 64 << 20, fill=image("marker-bios.img"))
        before = sha256_file(disk)
        with V.VM(work, firmware="bios", mac=mac, disks=[V.Disk(disk, "bty-disk-0")], server_port=srv.port,
                  memory_mib=512) as m:
            # The agent reports inventory first, whatever the plan; the plan then says there is
            # nothing left to do.
            m.wait_for(r"bty: inventory reported \(1 disks\)", BOOT_TIMEOUT, fail=r"bty: flash starting")
            m.wait_for(r"bty: .*; rebooting", 60, fail=r"bty: flash starting")
            expect_marker_exit(m, name)
        check(sha256_file(disk) == before, "inventory left the disk untouched")
        mach = srv.machine(mac)
        check(mach["state"] == "inventoried", f"state inventoried (got {mach['state']})")
        inv = mach["inventory"] or {}
        disks = inv.get("disks", [])
        check(any(d.get("serial") == "bty-disk-0" and d.get("size_bytes") == 64 << 20 for d in disks),
              f"the disk arrives with its serial and size: {disks}")
        hw = inv.get("hardware") or {}
        check((hw.get("memory_bytes") or 0) > 256 << 20, f"memory reported: {hw.get('memory_bytes')}")
        check(hw.get("cpu_threads", 0) >= 1 and hw.get("cpu_model"), f"CPU reported: {hw.get('cpu_model')}")
        check(any((n.get("mac") or "").lower() == mac for n in hw.get("nics", [])),
              f"the NIC's MAC reported: {hw.get('nics')}")
        offers = [e["summary"] for e in sorted(srv.events(mac, "pxe.offered"), key=lambda e: e["id"])]
        check(len(offers) == 2 and "inventory" in offers[0] and "local" in offers[1],
              f"PXE decisions inventory then local: {offers}")
    finally:
        srv.stop()


@scenario("bad-images")
def bad_images(name, work):
    """A corrupted image (digest mismatch) and a truncated one: status failed with the reason,
    never done, the machine is not marked flashed, the VM does not reboot into a loop."""
    good = published_sha("marker-bios.img.zst")
    srv = Server(work, [
        # Both entries publish the good image's digest; the bytes served are not that image.
        {"name": "corrupt", "src": "marker-corrupt.img.zst", "sha256": good},
        {"name": "truncated", "src": "marker-truncated.img.zst", "sha256": good},
    ])
    try:
        mac = "52:54:00:12:34:59"
        disk = disk_file(work, 64 << 20)
        m = V.VM(work, firmware="bios", mac=mac, disks=[V.Disk(disk, "bty-disk-0")], server_port=srv.port)
        for img, why in (("corrupt", r"SHA-256|sha256|digest"), ("truncated", r"truncat|ended|incomplete|early")):
            srv.bind(mac, policy="flash-once", image=img, target_disk_serial="bty-disk-0")
            with m:
                mt, _ = m.wait_for(r"bty: flash failed: (.*)", BOOT_TIMEOUT, fail=r"flash complete")
                check(re.search(why, mt.group(1), re.I), f"{img}: the console says why: {mt.group(1)}")
                m.wait_for(r"bty-live: agent failed", 60)
                time.sleep(2)  # would a reboot follow? (it must not)
                check(m.running, f"{img}: the VM stays up at the console after a failed flash")
                check(m.log()[m.log_mark:].count("bty-live: network up") == 1, f"{img}: no second network boot")
            mach = srv.machine(mac)
            check(mach["state"] == "failed", f"{img}: machine state failed (got {mach['state']})")
            check(mach["last_flash_status"] == "failed", f"{img}: last flash failed")
            check(re.search(why, mach["last_flash_reason"] or "", re.I),
                  f"{img}: the server has the reason: {mach['last_flash_reason']}")
            check(not mach["last_flashed_at"], f"{img}: not marked flashed")
            check(not [f for f in srv.flashes(mac) if f["status"] == "done"], f"{img}: no flash recorded done")
            evs = srv.events(mac, "machine.flash_failed")
            check(evs, f"{img}: a machine.flash_failed event")
    finally:
        srv.stop()


@scenario("power-cut")
def power_cut(name, work):
    """The plug is pulled mid-flash; the next PXE boot flashes again and the disk boots."""
    img = "marker-bios.img"
    origin = SlowOrigin(image(img + ".zst"), bytes_per_s=24 << 10)  # ~6 s for the image
    # Straight from the origin, uncached: the cache would prefetch the image when the machine is
    # bound, and the flash would be over before the plug is pulled.
    srv = Server(work, [{"name": "marker", "src": origin.url, "sha256": published_sha(img + ".zst")}],
                 extra_env={"BTY_CACHE_ENABLED": "false"})
    try:
        mac = "52:54:00:12:34:5a"
        srv.bind(mac, policy="flash-once", image="marker", target_disk_serial="bty-disk-0")
        disk = disk_file(work, os.path.getsize(image(img)))
        m = V.VM(work, firmware="bios", mac=mac, disks=[V.Disk(disk, "bty-disk-0")], server_port=srv.port)
        with m:
            m.wait_for(r"bty: flash starting", BOOT_TIMEOUT, fail=FLASH_FAILED)
            time.sleep(1.0)
            check("flash complete" not in m.log()[m.log_mark:], "the flash was still running at the power cut")
            m.kill()
            mach = srv.machine(mac)
            check(mach["state"] == "flashing" and not mach["last_flashed_at"],
                  f"after the cut: flashing, not flashed ({mach['state']}, {mach['last_flashed_at']})")
            m.start()
            full_flash_boot(name, m)
        FIGURES[name]["note"] = "origin throttled to 24 KiB/s on purpose"
        assert_flashed(srv, mac, 1)
        hist = srv.flashes(mac)
        check(len(hist) >= 2 and any(f["status"] != "done" for f in hist),
              f"the interrupted attempt is in the history: {hist}")
        check(sha256_file(disk) == published_sha(img), "the disk's SHA-256 equals the image's")
    finally:
        srv.stop()
        origin.stop()


# --- driver -------------------------------------------------------------------------------------

class Skipped(Exception):
    """A scenario this machine cannot run (said why), not a failure."""


@scenario("provision-offline")
def provision_offline(name, work):
    """cijoe-offline: the live environment (with Python and cijoe) flashes an image with an ext4
    root, runs the workflow against the written filesystem and reports the run before the disk boots."""
    img = os.path.join(DISK_ROOT, "marker.img")
    sha = open(img + ".sha256").read().split()[0]
    srv = Server(work, [{"name": "rootfs", "src": img, "sha256": sha}], initrd_layers=[CIJOE_LAYER])
    try:
        mac = "52:54:00:12:34:60"
        task = ("doc: Stamp the flashed system\nsteps:\n- name: stamp\n  run: |\n"
                "    mkdir -p {{ config.bty.target_root }}/etc\n"
                "    sh -c 'echo provisioned mac={{ config.bty.mac }} image={{ config.bty.image }}"
                " > {{ config.bty.target_root }}/etc/bty-provisioned'\n"
                "- name: proc\n  run: test -e {{ config.bty.target_root }}/proc/self/status\n")
        srv.req("PUT", "/workflows/stamp", {"task": task})
        srv.bind(mac, policy="flash-once", image="rootfs", target_disk_serial="bty-disk-0",
                 provisioning_mode="cijoe-offline", workflow="stamp")
        disk = disk_file(work, 64 << 20)
        with V.VM(work, firmware="bios", mac=mac, disks=[V.Disk(disk, "bty-disk-0")], server_port=srv.port,
                  memory_mib=1024) as m:
            _, t_start = m.wait_for(r"bty: flash starting", BOOT_TIMEOUT, fail=FLASH_FAILED)
            _, t_wf = m.wait_for(r"bty: provisioning: workflow stamp", BOOT_TIMEOUT, fail=FLASH_FAILED)
            _, t_done = m.wait_for(r"bty: provisioning passed", BOOT_TIMEOUT, fail=r"bty: provisioning (failed|:.*did not reach)")
            m.wait_for(r"bty: flash complete; rebooting", 60)
            # Before the flashed disk boots, the run is on the server.
            runs = srv.req("GET", f"/machines/{mac}/runs")
            check(len(runs) == 1 and runs[0]["status"] == "passed" and runs[0]["mode"] == "offline",
                  f"the offline run is recorded passed before the disk boots: {runs}")
            log = m.log()[m.log_mark:]
            check("the GPT root partition type" in log, "the console says which root filesystem was chosen")
            fig = flash_figures(name, m, t_start, log)
            fig["workflow_seconds"] = round(t_done - t_wf, 1)
            expect_marker_exit(m, name)
        run = srv.req("GET", f"/runs/{runs[0]['id']}")
        check([(st["name"], st["status"]) for st in run["steps"]] == [("stamp", "passed"), ("proc", "passed")],
              f"both steps passed: {run['steps']}")
        mach = srv.machine(mac)
        check(mach["last_flash_status"] == "done" and mach["state"] == "flashed", f"flashed: {mach}")
        # The file is in the flashed filesystem (read from the disk image, at the root partition).
        parts = json.loads(subprocess.run(["sfdisk", "-J", disk], capture_output=True, text=True,
                                          check=True).stdout)["partitiontable"]["partitions"]
        root = [p for p in parts if p["type"].upper() == "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"][0]
        got = subprocess.run(["debugfs", "-R", "cat /etc/bty-provisioned", f"{disk}?offset={root['start'] * 512}"],
                             capture_output=True, text=True).stdout.strip()
        check(got == f"provisioned mac={mac} image=rootfs", f"the workflow's file is on the disk: {got!r}")
    finally:
        srv.stop()


@scenario("provision-online")
def provision_online(name, work):
    """cijoe-online: a UEFI machine flashed with a system disk (an SSH server that authorises
    bty-web's key) boots it; bty-web runs the workflow over SSH, pins its host key, sets the baseline."""
    srv = Server(work, [], extra_env={"BTY_CIJOE_COMMAND": CIJOE, "BTY_CIJOE_SSH_WAIT_SECONDS": "300"})
    try:
        mac = "52:54:00:12:34:61"
        keys = os.path.join(work, "authorized_keys")
        # bty-web's key, made at its first start, is what the image authorises.
        with open(keys, "w") as f:
            f.write(srv.net(lambda: srv.opener.open(srv.base + "/cijoe/ssh-public-key", timeout=5).read().decode()))
        img = os.path.join(work, "system.img")
        subprocess.run([os.path.join(ROOT, "checks", "disk", "build-system.sh"), img, keys], check=True,
                       capture_output=True)
        sha = open(img + ".sha256").read().split()[0]
        shutil.copy(img, os.path.join(srv.state, "images", "system.img"))
        with open(os.path.join(srv.state, "catalog.toml"), "a") as f:
            f.write(f'[[images]]\nname = "system"\nsrc = "system.img"\nsha256 = "{sha}"\n')
        srv.req("POST", "/catalog/reload")
        ssh_port = free_port()
        task = ("doc: Check the booted system\nsteps:\n- name: kernel\n  run: uname -r\n"
                "- name: identity\n  run: cat /proc/sys/kernel/hostname\n")
        srv.req("PUT", "/workflows/check", {"task": task})
        srv.bind(mac, policy="flash-once", image="system", target_disk_serial="bty-disk-0",
                 provisioning_mode="cijoe-online", workflow="check", ssh_host="127.0.0.1", ssh_port=ssh_port)
        disk = disk_file(work, 64 << 20)
        with V.VM(work, firmware="uefi", mac=mac, disks=[V.Disk(disk, "bty-disk-0")], server_port=srv.port,
                  hostfwd=[(ssh_port, 22)]) as m:
            _, t_start = m.wait_for(r"bty: flash starting", BOOT_TIMEOUT, fail=FLASH_FAILED)
            m.wait_for(r"bty: flash complete; rebooting", BOOT_TIMEOUT, fail=FLASH_FAILED)
            flash_figures(name, m, t_start, m.log()[m.log_mark:])
            _, t_ssh = m.wait_for(r"BTY-SYSTEM-SSH-UP", BOOT_TIMEOUT)
            deadline = time.monotonic() + BOOT_TIMEOUT
            while True:
                runs = srv.req("GET", f"/machines/{mac}/runs")
                if runs and runs[0]["status"] in ("passed", "failed", "cancelled"):
                    break
                check(time.monotonic() < deadline, f"the online run finishes: {runs}")
                time.sleep(1)
            FIGURES.setdefault(name, {})["ssh_up_to_run_done_s"] = round(m.elapsed() - t_ssh, 1)
        run = srv.req("GET", f"/runs/{runs[0]['id']}")
        check(run["status"] == "passed" and run["mode"] == "online", f"the online run passed: {run}")
        check(run["baseline"] is True, "the first passing online run is the baseline")
        check("bty-system" in run["steps"][1]["output"], f"it ran on the booted system: {run['steps']}")
        kinds = [e["kind"] for e in srv.events(mac)]
        check("provisioning.host_key_pinned" in kinds and "provisioning.queued" in kinds,
              f"queued after the flash, host key pinned: {kinds}")
    finally:
        srv.stop()


@contextlib.contextmanager
def l2_server(name: str, work: str, firmware: str, proxy_dhcp: bool = True, container: str | None = None):
    """A layer-2 segment with the LAN's DHCP server and bty-web on it, the marker image for
    `firmware` in its catalog; both gone when the block ends."""
    if os.geteuid() != 0:
        raise Skipped("needs root: network namespaces, a bridge and tap devices")
    seg = L2.Segment(name.replace("l2-", "")[:4])
    try:
        seg.start_lan_dhcp(os.path.join(work, "lan-dnsmasq.log"))
        img = f"marker-{firmware}.img"
        srv = Server(work, [{"name": "marker", "src": img + ".zst", "sha256": published_sha(img + ".zst")}],
                     seg=seg, proxy_dhcp=proxy_dhcp, container=container)
        try:
            yield seg, srv
        finally:
            srv.stop()
    finally:
        seg.close()


def l2_flash(name: str, work: str, firmware: str, own_pxe: bool, mac: str, seg, srv, http_boot: bool = False,
             same_size: bool = False):
    """flash-once over the segment: PXE, flash by disk serial, verify, done, reboot, the next
    PXE contact is told to boot the local disk, which ends QEMU with the marker. `same_size`: a
    disk exactly the image's size (its digest is the image's), else a larger one."""
    img = f"marker-{firmware}.img"
    srv.bind(mac, policy="flash-once", image="marker", target_disk_serial="bty-disk-0")
    disk = disk_file(work, os.path.getsize(image(img)) if same_size else 64 << 20)
    with V.VM(work, firmware=firmware, mac=mac, disks=[V.Disk(disk, "bty-disk-0")],
              tap=seg.tap("tap0"), own_pxe=own_pxe, http_boot=http_boot) as m:
        full_flash_boot(name, m)
    assert_flashed(srv, mac, 1)
    check_disk_holds(disk, img, same_size)
    check_decisions(srv, mac)
    mach = srv.machine(mac)
    check(mach.get("dhcp_seen_at"), f"the record shows the ProxyDHCP sighting: {mach}")
    return mach


@scenario("l2-uefi")
def l2_uefi(name, work):
    """Real L2: OVMF's own PXE, bty's ProxyDHCP and TFTP (snponly.efi), iPXE, flash, boot."""
    with l2_server(name, work, "uefi") as (seg, srv):
        mach = l2_flash(name, work, "uefi", True, "52:54:00:77:00:01", seg, srv)
        served = srv.events(kind="netboot.tftp.served")
        check(any("snponly.efi" in e["summary"] for e in served),
              f"snponly.efi went out over bty's TFTP: {[e['summary'] for e in served]}")
        metrics = srv.metrics()
        check('bty_tftp_requests_total{file="snponly.efi",result="done"}' in metrics,
              "the TFTP transfer is counted in /metrics")
        check('bty_proxy_dhcp_requests_total{client="UEFI PXE",answered="true"}' in metrics,
              "the firmware's ProxyDHCP request is counted")
        check(mach["dhcp_client"] == "iPXE", f"iPXE's own DHCP was the last sighting: {mach['dhcp_client']}")


@scenario("l2-http")
def l2_http(name, work):
    """Real L2: OVMF's own UEFI HTTP boot (HTTPClient) gets ipxe.efi over HTTP from bty, flash, boot."""
    with l2_server(name, work, "uefi") as (seg, srv):
        l2_flash(name, work, "uefi", True, "52:54:00:77:00:03", seg, srv, http_boot=True)
        metrics = srv.metrics()
        check('bty_proxy_dhcp_requests_total{client="UEFI HTTP",answered="true"}' in metrics,
              "the firmware asked as an HTTP-boot client and was answered")
        check('route="/boot/{name}",status="200"' in metrics, "ipxe.efi came over HTTP from /boot/{name}")
        check("snponly.efi" not in " ".join(e["summary"] for e in srv.events(kind="netboot.tftp.served")),
              "no TFTP on this path")


@scenario("l2-bios")
def l2_bios(name, work):
    """Real L2: ProxyDHCP off gives no boot offer; on, SeaBIOS+iPXE boots over it, flashes, boots."""
    with l2_server(name, work, "bios", proxy_dhcp=False) as (seg, srv):
        probe_mac = bytes.fromhex("525400770099")
        offers = L2.dhcp_probe(seg, b"PXEClient:Arch:00000:UNDI:002001", 0, probe_mac)
        check([o["server"] for o in offers] == [L2.LAN_DHCP_IP],
              f"ProxyDHCP off: only the LAN's offer, no boot file from bty: {offers}")
        h = srv.req("PUT", "/netboot/services/proxy_dhcp", {"enabled": True})
        check(h["state"] == "listening", f"ProxyDHCP turned on: {h}")
        offers = L2.dhcp_probe(seg, b"PXEClient:Arch:00000:UNDI:002001", 0, probe_mac)
        ours = [o for o in offers if o["server"] == L2.SERVER_IP]
        check(len(ours) == 1 and ours[0]["file"] == "undionly.kpxe" and ours[0]["yiaddr"] == "0.0.0.0",
              f"ProxyDHCP on: bty offers the boot file and no address: {offers}")
        check(any(o["server"] == L2.LAN_DHCP_IP and o["yiaddr"] != "0.0.0.0" for o in offers),
              f"the LAN's server still assigns the address: {offers}")
        mach = l2_flash(name, work, "bios", False, "52:54:00:77:00:02", seg, srv, same_size=True)
        check(mach["dhcp_client"] == "iPXE", f"the NIC's iPXE asked bty's ProxyDHCP: {mach['dhcp_client']}")


# --- the A/B appliance --------------------------------------------------------------------------

AB_FAIL = r"bty-ab: FAILED[^\r\n]*|Kernel panic[^\r\n]*"
AB_SOURCE = f"http://{V.SERVER_IP}/rel"  # the ReleaseServer, through lib/vm.py's guestfwd


class ReleaseServer:
    """A directory over HTTP on loopback, the appliance's release source; it remembers the
    paths asked for."""

    def __init__(self, root: str):
        self.paths: list[str] = []
        paths = self.paths

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=root, **kw)

            def do_GET(self):
                paths.append(self.path)
                super().do_GET()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


def ab_status(m: V.VM, label: str, after: int) -> tuple[dict, int]:
    """The next `bty os status --json` the appliance printed under `label`; where it ends."""
    rx = re.compile(rf"bty-ab: status begin {label}\r?\n(.*?)bty-ab: status end {label} rc=(\d+)", re.S)
    mt, _ = m.wait_for(rx, BOOT_TIMEOUT, after=after, fail=AB_FAIL)
    check(mt.group(2) == "0", f"bty os status exits 0 ({label}), got {mt.group(2)}: {mt.group(1)}")
    return json.loads(mt.group(1).replace("\r", "")), mt.end()


def ab_boot(m: V.VM, after: int) -> dict:
    """The appliance's next boot after log offset `after`: the entry systemd-boot chose and its
    LoaderBootCountPath ('-': none), the status, the booted slot's root header, and when
    (seconds since power-on)."""
    mt, t = m.wait_for(r"bty-ab: boot entry=(\S+) count_path=(\S+)", BOOT_TIMEOUT, after=after, fail=AB_FAIL)
    st, end = ab_status(m, "boot", mt.end())
    hdr, _ = m.wait_for(r"bty-ab: slot ([ab]) on \S+: ([^\r\n]*)", BOOT_TIMEOUT, after=end, fail=AB_FAIL)
    return {"entry": mt.group(1), "count_path": mt.group(2), "status": st, "slot": hdr.group(1),
            "header": hdr.group(2), "t": t, "end": hdr.end()}


def ab_slot(status: dict, slot: str) -> dict:
    return next(s for s in status["slots"] if s["slot"] == slot)


def ab_healthy(m: V.VM, boot: dict) -> tuple[dict, int, float]:
    """`bty os health` passed on this boot: the status printed after it, its end, when."""
    mt, t = m.wait_for(r"bty-ab: healthy\r?\n", BOOT_TIMEOUT, after=boot["end"],
                       fail=AB_FAIL + r"|bty-ab: unhealthy")
    st, end = ab_status(m, "healthy", mt.end())
    return st, end, t


def ab_apply(m: V.VM, after: int) -> tuple[int, list[dict], str, float]:
    """The next `bty os apply os --json`: exit status, its JSON events, its output, seconds."""
    b, t0 = m.wait_for(r"bty-ab: apply begin \S+", BOOT_TIMEOUT, after=after, fail=AB_FAIL)
    e, t1 = m.wait_for(r"bty-ab: apply end rc=(\d+)", BOOT_TIMEOUT, after=b.end(), fail=AB_FAIL)
    text = m.log()[b.end():e.start()].replace("\r", "")
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return int(e.group(1)), events, text, round(t1 - t0, 1)


@scenario("ab-update")
def ab_update(name, work):
    """A/B self-update under OVMF and systemd-boot: a good release boots and is blessed, a bad
    one falls back after three tries, a bad signature changes nothing."""
    tools = [t for t in ("minisign", "sgdisk", "mkfs.vfat", "mcopy", "objcopy", "zstd") if not shutil.which(t)]
    tools += [p for p in (AB.SD_BOOT, AB.STUB) if not os.path.exists(p)]
    if tools:
        raise Failed(f"missing: {', '.join(tools)} (checks/deps.sh installs them)")
    pub, sec = AB.keypair(work)
    initrds = [os.path.join(AB_OUT, "initrd.gz"), AB.key_layer(work, pub)]
    ukis = {v: AB.uki(os.path.join(work, f"bty-{v}.efi"), v, os.path.join(AB_OUT, "vmlinuz"), initrds)
            for v in ("1.1.0", "1.2.0", "1.3.0", "1.4.0")}
    uki_sha = {v: sha256_file(p) for v, p in ukis.items()}
    rel = os.path.join(work, "www", "rel")
    AB.release(rel, "1.2.0", "good", ukis["1.2.0"], sec)
    AB.release(rel, "1.3.0", "bad", ukis["1.3.0"], sec)
    AB.release(rel, "1.4.0", "good", ukis["1.4.0"], sec, tamper=True)

    def verify(v: str) -> int:
        return subprocess.run(["minisign", "-V", "-p", pub, "-m", f"{rel}/{v}/manifest.json"],
                              capture_output=True).returncode
    check(verify("1.2.0") == 0 and verify("1.4.0") != 0, "minisign itself accepts 1.2.0 and refuses 1.4.0")

    loader = os.path.join(work, "loader.conf")
    with open(loader, "w") as f:
        f.write("timeout 0\n")
    disk = AB.Appliance(os.path.join(work, "appliance.raw"))
    disk.make({"EFI/BOOT/BOOTX64.EFI": AB.SD_BOOT, "loader/loader.conf": loader,
               "EFI/Linux/bty-a_1.1.0.efi": ukis["1.1.0"]}, AB.root_image("1.1.0", "good"), work)
    start = disk.snapshot(work)
    esp = dict(start["esp"])
    del esp["EFI/Linux/bty-a_1.1.0.efi"]  # the loader's files, which stay as they are

    srv = ReleaseServer(os.path.join(work, "www"))
    fig = FIGURES.setdefault(name, {})
    fig["accel"] = V.accel()
    # The disk boots first (the NIC is there for the releases only).
    m = V.VM(work, firmware="uefi", disks=[V.Disk(disk.path, "bty-appliance", bootindex=0)],
             server_port=srv.port, bootfile=None, name="appliance")

    def power_on(apply: bool):
        # fw_cfg opt/bty/apply: this power-on applies the release `latest` names.
        m.extra_args = ["-fw_cfg", f"name=opt/bty/apply,string={AB_SOURCE}"] if apply else []
        m.start()

    def powered_off(what: str):
        rc = m.wait_exit(BOOT_TIMEOUT)
        check(rc == 0, f"{what}: the appliance powers off (QEMU status 0), got {rc}")

    try:
        # 1. Slot A runs 1.1.0 and applies 1.2.0 to slot B.
        AB.set_latest(rel, "1.2.0")
        power_on(apply=True)
        b = ab_boot(m, m.log_mark)
        check((b["entry"], b["count_path"]) == ("bty-a_1.1.0.efi", "-"),
              f"systemd-boot boots A's blessed entry: {b['entry']} {b['count_path']}")
        check(b["status"]["booted"] == "a" and ab_slot(b["status"], "a")["version"] == "1.1.0",
              f"status: booted a, 1.1.0 (from LoaderEntrySelected): {b['status']}")
        _, end, t = ab_healthy(m, b)
        fig["power_on_to_healthy_s"] = round(t, 1)
        rc, events, text, fig["apply_s"] = ab_apply(m, end)
        check(rc == 0, f"bty os apply 1.2.0 exits 0, got {rc}:\n{text[-3000:]}")
        stages = [e["stage"] for e in events if e.get("event") == "stage"]
        check(stages == ["staging", "cleared", "writing", "written", "installed"],
              f"the apply's stages in order: {stages}")
        plan = next(e for e in events if e.get("event") == "applied")["result"]["plan"]
        check(plan["entry"] == "bty-b_1.2.0+3.efi" and plan["slot"] == "b", f"B gets 1.2.0 with three tries: {plan}")
        powered_off("after applying 1.2.0")
        snap = disk.snapshot(work)
        check(snap["esp"] == {**start["esp"], "EFI/Linux/bty-b_1.2.0+3.efi": uki_sha["1.2.0"]},
              f"the ESP gained B's entry (1.2.0's UKI) and nothing else: {sorted(snap['esp'])}")
        check(disk.read("bty-b", AB.ROOT_IMAGE_BYTES) == AB.root_image("1.2.0", "good"), "slot B holds 1.2.0's root image")
        check(snap["bty-a"] == start["bty-a"] and snap["bty-state"] == start["bty-state"],
              "slot A and bty-state are untouched")

        # 2. B's first try: healthy, blessed; it applies 1.3.0 (which will fail its health checks) to A.
        AB.set_latest(rel, "1.3.0")
        power_on(apply=True)
        b = ab_boot(m, m.log_mark)
        check(b["count_path"].endswith("\\bty-b_1.2.0+2-1.efi"),
              f"systemd-boot boots the new entry and counts a try: {b['entry']} {b['count_path']}")
        sb = ab_slot(b["status"], "b")
        check(b["status"]["booted"] == "b" and (sb["version"], sb["tries_left"], sb["tries_done"]) == ("1.2.0", 2, 1),
              f"status: booted b, 1.2.0, 2 tries left, 1 done: {b['status']}")
        st, end, t = ab_healthy(m, b)
        sb = ab_slot(st, "b")
        check((sb["entry"], sb["tries_left"]) == ("bty-b_1.2.0.efi", None) and st["next_boot"]["entry"] == "bty-b_1.2.0.efi",
              f"healthy, so blessed: {st}")
        fig["update_power_on_to_blessed_s"] = round(t, 1)
        rc, events, text, _ = ab_apply(m, end)
        check(rc == 0, f"bty os apply 1.3.0 exits 0, got {rc}:\n{text[-3000:]}")
        plan = next(e for e in events if e.get("event") == "applied")["result"]["plan"]
        check(plan["entry"] == "bty-a_1.3.0+3.efi" and plan["removes"] == ["bty-a_1.1.0.efi"],
              f"A gets 1.3.0 with three tries, its old entry removed: {plan}")
        powered_off("after applying 1.3.0")
        snap = disk.snapshot(work)
        check(snap["esp"] == {**esp, "EFI/Linux/bty-b_1.2.0.efi": uki_sha["1.2.0"],
                              "EFI/Linux/bty-a_1.3.0+3.efi": uki_sha["1.3.0"]},
              f"the ESP: B blessed, A's new entry: {sorted(snap['esp'])}")
        check(disk.read("bty-a", AB.ROOT_IMAGE_BYTES) == AB.root_image("1.3.0", "bad"), "slot A holds 1.3.0's root image")

        # 3. A fails its health checks on each of its three tries; systemd-boot falls back to B.
        power_on(apply=False)
        after = m.log_mark
        for left, done in ((2, 1), (1, 2), (0, 3)):
            b = ab_boot(m, after)
            sa = ab_slot(b["status"], "a")
            check(b["count_path"].endswith(f"\\bty-a_1.3.0+{left}-{done}.efi") and b["status"]["booted"] == "a"
                  and (sa["tries_left"], sa["tries_done"]) == (left, done),
                  f"try {done} of A: {b['entry']} {b['count_path']} {sa}")
            check(b["header"] == "bty-root 1.3.0 health=bad", f"A runs 1.3.0: {b['header']}")
            u, _ = m.wait_for(r"bty-ab: unhealthy: rebooting", BOOT_TIMEOUT, after=b["end"],
                              fail=AB_FAIL + r"|bty-ab: healthy")
            after = u.end()
        b = ab_boot(m, after)
        check((b["entry"], b["count_path"], b["status"]["booted"]) == ("bty-b_1.2.0.efi", "-", "b"),
              f"after A's third failure systemd-boot boots B: {b['entry']} {b['count_path']} {b['status']['booted']}")
        fu = b["status"]["failed_update"] or {}
        check(fu.get("message") == "update to 1.3.0 failed its health checks; running 1.2.0",
              f"status names the failed update: {b['status']}")
        check(b["status"]["next_boot"]["entry"] == "bty-b_1.2.0.efi", f"B stays the default: {b['status']['next_boot']}")
        fig["fallback_power_on_to_b_s"] = round(b["t"], 1)
        ab_healthy(m, b)
        powered_off("after the fallback")
        fallen = disk.snapshot(work)
        check(fallen["esp"] == {**esp, "EFI/Linux/bty-b_1.2.0.efi": uki_sha["1.2.0"],
                                "EFI/Linux/bty-a_1.3.0+0-3.efi": uki_sha["1.3.0"]},
              f"the ESP: A's entry has no tries left: {sorted(fallen['esp'])}")

        # 4. A release whose manifest no longer matches its signature: refused, nothing written.
        AB.set_latest(rel, "1.4.0")
        srv.paths.clear()
        power_on(apply=True)
        b = ab_boot(m, m.log_mark)
        check(b["status"]["booted"] == "b" and b["status"]["failed_update"], f"B again, failed update shown: {b['status']}")
        _, end, _ = ab_healthy(m, b)
        rc, events, text, _ = ab_apply(m, end)
        check(rc == 4, f"bty os apply of the tampered 1.4.0 exits 4, got {rc}:\n{text[-3000:]}")
        check("signature does not verify" in text, f"it says why:\n{text[-3000:]}")
        powered_off("after the refused apply")
        check(sorted(set(srv.paths)) == ["/rel/1.4.0/manifest.json", "/rel/1.4.0/manifest.json.minisig", "/rel/latest"],
              f"only the manifest and its signature were fetched: {srv.paths}")
        end_snap = disk.snapshot(work)
        check(end_snap == fallen, f"nothing on the disk changed: {end_snap} != {fallen}")
        check(end_snap["bty-state"] == start["bty-state"], "bty-state is byte-identical to the start")
        fig["boots"] = len(re.findall(r"bty-ab: boot entry=", m.log()))
        fig["power_ons"] = m.boots
    finally:
        m.kill()
        srv.stop()


CONTAINER_IMAGE = os.environ.get("BTY_E2E_IMAGE", "localhost/bty-web:" + re.search(
    r'^version *= *"(.*)"', open(os.path.join(ROOT, "Cargo.toml")).read(), re.M).group(1))


@scenario("container-bios")
def container_bios(name, work):
    """l2-bios against bty-web in its container (rootful podman, host networking, only
    CAP_NET_BIND_SERVICE): the container's ProxyDHCP answers SeaBIOS+iPXE, which flashes, boots."""
    if os.geteuid() != 0 or shutil.which("podman") is None:
        raise Skipped("needs root and podman (checks/deps.sh installs it)")
    if subprocess.run(["podman", "image", "exists", CONTAINER_IMAGE]).returncode != 0:
        raise Skipped(f"no image {CONTAINER_IMAGE}: checks/e2e.sh builds and loads it")
    with l2_server(name, work, "bios", container=CONTAINER_IMAGE) as (seg, srv):
        mach = l2_flash(name, work, "bios", False, "52:54:00:77:00:04", seg, srv, same_size=True)
        check(mach["dhcp_client"] == "iPXE", f"the NIC's iPXE asked the container's ProxyDHCP: {mach['dhcp_client']}")
        metrics = srv.metrics()
        check(re.search(r'bty_proxy_dhcp_requests_total\{client="[^"]*",answered="true"\} [1-9]', metrics),
              "the container's ProxyDHCP answered the firmware")
        user = subprocess.run(["podman", "top", srv.container, "user"], capture_output=True, text=True).stdout
        check("root" not in user.split("\n", 1)[-1], f"bty-web runs as the image's user, not root: {user}")


def main(argv: list[str]) -> int:
    if "--list" in argv:
        for n, f in SCENARIOS.items():
            print(f"{n:12} {f.__doc__.split(chr(10))[0]}")
        return 0
    names = [a for a in argv if not a.startswith("-")] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    inputs = {"ab-update": (AB_OUT + "/vmlinuz", AB_OUT + "/initrd.gz")}
    common = (BTY_WEB, LIVE + "/initrd.gz", DISK + "/marker-bios.img.zst")
    missing = sorted({p for n in names for p in inputs.get(n, common) if not os.path.exists(p)})
    if missing:
        print(f"missing: {', '.join(missing)}\nbuild them with checks/e2e.sh (it runs this suite too)",
              file=sys.stderr)
        return 2
    print(f"e2e: {len(names)} scenario(s), accelerator {V.accel()}", flush=True)
    results = {}
    t_all = time.monotonic()
    for n in names:
        work = os.path.join(OUT, n)
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        t0 = time.monotonic()
        try:
            SCENARIOS[n](n, work)
            results[n] = None
            print(f"  ok    {n:12} {time.monotonic() - t0:6.1f}s  {json.dumps(FIGURES.get(n, {}))}", flush=True)
        except Skipped as e:
            results[n] = None
            print(f"  skip  {n:12} {e}", flush=True)
        except Exception as e:
            results[n] = e
            print(f"  FAIL  {n:12} {time.monotonic() - t0:6.1f}s  {e}", flush=True)
            if not isinstance(e, (Failed, V.VMError)):
                traceback.print_exc()
            print(f"        logs: {work}/", flush=True)
    failed = [n for n, e in results.items() if e is not None]
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "figures.json"), "w") as f:
        json.dump({"accel": V.accel(), "scenarios": FIGURES}, f, indent=2)
    print(f"e2e: {len(names) - len(failed)} passed, {len(failed)} failed in {time.monotonic() - t_all:.0f}s"
          f"{' (' + ', '.join(failed) + ')' if failed else ''}; figures: {os.path.join(OUT, 'figures.json')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
