#!/usr/bin/env python3
"""Smoke run of the VM test chain, with a throwaway HTTP server instead of bty-web.

    python3 checks/smoke.py [--agent BTY_BINARY] [--no-build] [SCENARIO ...]

Scenarios (default: all, one VM at a time):
  bios-pxe   SeaBIOS: PXE -> iPXE -> /pxe-bootstrap.ipxe -> /pxe/{mac} -> kernel + initrd ->
             "bty-live: network up" -> (no agent) power off
  uefi-pxe   the same under OVMF
  bios-disk  SeaBIOS boots the marker disk and prints its marker
  uefi-disk  OVMF boots the marker disk and prints its marker
  bios-local SeaBIOS: PXE -> iPXE -> /pxe/{mac} answers "local" (sanboot of drive 0x80) ->
             the marker disk boots
  uefi-local OVMF: the same with iPXE `exit 1` handing back to the firmware's next entry
  bios-flash the whole loop with a busybox stand-in agent (checks/live/standin-agent.sh): PXE ->
             live env -> flash the marker image -> status done -> reboot -> PXE -> local ->
             the flashed disk's marker; the disk's bytes are compared with the image
  uefi-flash the same under OVMF
  bios-powercut  bios-flash, but the VM is killed when the flash starts and powered on again:
             the next PXE boot flashes again (times after the cut count from the 2nd power-on)
With --agent, the live environment carries that binary as /bin/bty and the PXE scenarios wait
for it to run and end (it must be static; `bty agent` is what /init runs).

Builds the live environment and the marker disk into checks/out/ first (run checks/deps.sh once
before). Prints the time of each step; exits non-zero on the first failure, with the serial
log's tail.
"""
from __future__ import annotations

import argparse
import http.server
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "lib"))
import vm as vmlib  # noqa: E402

OUT = HERE / "out"
MAC = "52:54:00:12:34:56"
SERVER = f"http://{vmlib.SERVER_IP}"


class Server:
    """A static HTTP server on 127.0.0.1: the iPXE scripts and the live environment files.
    Records every request with its time, for the timeline."""

    def __init__(self, live_dir: Path, cmdline_extra: str = "", policy: str = "live"):
        self.live_dir = live_dir
        # What /pxe/{mac} answers: "live" (the live env, then power off), "local" (boot the
        # disk), or "flash" (the live env until a status "done" arrives, then "local").
        self.policy = policy
        self.flashed = False
        self.cmdline_extra = cmdline_extra
        self.requests: list[tuple[float, str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: simple through nc

            def log_message(self, fmt, *args):  # quiet; we keep our own record
                pass

            def do_GET(self):
                outer.requests.append((time.monotonic(), "GET", self.path))
                body = outer.route(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(n) if n else b""
                outer.requests.append((time.monotonic(), "POST", self.path))
                outer.posts.append((self.path, data))
                if self.path.endswith("/status") and data.startswith(b"state=done"):
                    outer.flashed = True
                self.send_response(200)
                self.send_header("Content-Length", "3")
                self.end_headers()
                self.wfile.write(b"ok\n")

        self.posts: list[tuple[str, bytes]] = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def route(self, path: str) -> bytes | None:
        path = path.split("?", 1)[0]
        if path == "/pxe-bootstrap.ipxe":
            # ${mac:hexhyp}: 52-54-00-..., not URL-encoded (${net0/mac} would be, as %3A).
            return f"#!ipxe\nchain {SERVER}/pxe/${{mac:hexhyp}}\n".encode()
        m = re.fullmatch(r"/pxe/([0-9a-f]{2}(?:-[0-9a-f]{2}){5})", path)
        if m and (self.policy == "local" or (self.policy == "flash" and self.flashed)):
            # Hand back to the local disk: BIOS sanboot of the first drive; UEFI `exit 1` (the
            # firmware then tries its next boot entry, the disk; a plain `exit` was seen to
            # drop some firmware into its setup menu).
            return ("#!ipxe\necho bty smoke: local boot\n"
                    "iseq ${platform} efi && goto efi ||\n"
                    "sanboot --no-describe --drive 0x80\n"
                    ":efi\nexit 1\n").encode()
        if m:
            mac = m.group(1).replace("-", ":")
            # initrd=initrd.gz names the initrd for the kernel's EFI stub (UEFI); the BIOS boot
            # protocol ignores it.
            args = (f"initrd=initrd.gz console=ttyS0 panic=-1 bty.server={SERVER} "
                    f"bty.mac={mac} {self.cmdline_extra}").strip()
            if self.policy != "flash":
                args += " bty.poweroff=1"
            return (f"#!ipxe\necho bty smoke: booting the live environment\n"
                    f"kernel {SERVER}/boot/vmlinuz {args}\n"
                    f"initrd {SERVER}/boot/initrd.gz\nboot\n").encode()
        if re.fullmatch(r"/pxe/[0-9a-f:]{17}/plan", path):
            return b"image=/images/marker.img serial=bty-smoke-0\n"
        if path == "/images/marker.img":
            return (OUT / "disk" / "marker.img").read_bytes()
        m = re.fullmatch(r"/boot/(vmlinuz|initrd\.gz)", path)
        if m:
            return (self.live_dir / m.group(1)).read_bytes()
        return None

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def build(agent: str | None) -> None:
    t = time.monotonic()
    cmd = [str(HERE.parent / "live" / "build.sh"), str(OUT / "live")] + ([agent] if agent else [])
    subprocess.run(cmd, check=True)
    t1 = time.monotonic()
    subprocess.run([str(HERE / "disk" / "build.sh"), str(OUT / "disk")], check=True)
    t2 = time.monotonic()
    print(f"build: live environment {t1 - t:.1f}s, marker disk {t2 - t1:.1f}s", flush=True)


def fresh_dir(name: str) -> Path:
    d = OUT / "smoke" / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def pxe(firmware: str, agent: bool) -> dict[str, float]:
    work = fresh_dir(f"{firmware}-pxe")
    disk = work / "disk.raw"
    with open(disk, "wb") as f:  # a blank target disk, so the live env shows its disk driver
        f.truncate(64 << 20)
    times: dict[str, float] = {}
    with Server(OUT / "live") as srv:
        vm = vmlib.VM(work, firmware=firmware, mac=MAC, server_port=srv.port, no_reboot=True,
                      disks=[vmlib.Disk(disk, "bty-smoke-0")], record_requests=True)
        with vm:
            t0 = vm.started_at
            fail = r"Kernel panic|bty-live: agent failed|bty-live: network failed"
            m, times["network up"] = vm.wait_for(r"bty-live: network up (\S+)", 120, fail=fail)
            ip = m.group(1)
            m2, _ = vm.wait_for(r"bty-live: disk vda bytes=67108864 serial=bty-smoke-0", 30,
                                after=m.end(), fail=fail)
            if agent:
                _, times["agent ran"] = vm.wait_for(r"bty-live: agent failed|reboot: Power down",
                                                    600, after=m2.end())
            else:
                _, times["no agent"] = vm.wait_for(r"bty-live: no agent", 60, after=m2.end(),
                                                   fail=fail)
            rc = vm.wait_exit(60)
            times["powered off"] = vm.elapsed()
            if "bty-live: agent failed" in vm.log():
                raise vmlib.VMError(f"the agent failed\n{vm.tail()}")
            if rc != 0:
                raise vmlib.VMError(f"QEMU exited with status {rc}, expected 0 (poweroff)\n"
                                    f"{vm.tail()}")
        # Timeline from the server's side.
        for when, method, path in srv.requests:
            key = {"/pxe-bootstrap.ipxe": "iPXE bootstrap request",
                   "/boot/initrd.gz": "initrd requested"}.get(path)
            if path.startswith("/pxe/"):
                key = "per-MAC script request"
            if key and key not in times:
                times[key] = when - t0
        paths = [p for _, _, p in srv.requests]
        want = ["/pxe-bootstrap.ipxe", f"/pxe/{MAC.replace(':', '-')}", "/boot/vmlinuz",
                "/boot/initrd.gz"]
        if paths[:4] != want:
            raise vmlib.VMError(f"unexpected request sequence {paths}")
        print(f"  guest address {ip}; requests: {' '.join(paths)}", flush=True)
        seen = vm.requests_log.read_text(errors="replace")
        if "User-Agent: iPXE" not in seen:
            raise vmlib.VMError(f"{vm.requests_log} did not record iPXE's requests")
    return times


def disk_boot(firmware: str) -> dict[str, float]:
    work = fresh_dir(f"{firmware}-disk")
    disk = work / "disk.raw"
    shutil.copyfile(OUT / "disk" / f"marker-{firmware}.img", disk)
    with open(disk, "r+b") as f:  # a target disk larger than the image, as in real life
        f.truncate(64 << 20)
    times: dict[str, float] = {}
    with vmlib.VM(work, firmware=firmware, net=False, no_reboot=True,
                  disks=[vmlib.Disk(disk, "bty-smoke-0")]) as vm:
        _, times["marker"] = vm.wait_for(rf"BTY-MARKER-DISK-BOOTED fw={firmware} tag=\S+", 300)
        rc = vm.wait_exit(30)
        times["exited"] = vm.elapsed()
        if rc != vmlib.MARKER_EXIT_STATUS:
            raise vmlib.VMError(f"QEMU exited with {rc}, expected {vmlib.MARKER_EXIT_STATUS}\n"
                                f"{vm.tail()}")
    return times


def local(firmware: str) -> dict[str, float]:
    """PXE first; the server answers "boot your disk"; the marker disk boots."""
    work = fresh_dir(f"{firmware}-local")
    disk = work / "disk.raw"
    shutil.copyfile(OUT / "disk" / f"marker-{firmware}.img", disk)
    with open(disk, "r+b") as f:
        f.truncate(64 << 20)
    times: dict[str, float] = {}
    with Server(OUT / "live", policy="local") as srv:
        with vmlib.VM(work, firmware=firmware, mac=MAC, server_port=srv.port, no_reboot=True,
                      disks=[vmlib.Disk(disk, "bty-smoke-0")]) as vm:
            t0 = vm.started_at
            _, times["marker"] = vm.wait_for(rf"BTY-MARKER-DISK-BOOTED fw={firmware}", 300)
            rc = vm.wait_exit(30)
            if rc != vmlib.MARKER_EXIT_STATUS:
                raise vmlib.VMError(f"QEMU exited with {rc}\n{vm.tail()}")
        paths = [p for _, _, p in srv.requests]
        if paths != ["/pxe-bootstrap.ipxe", f"/pxe/{MAC.replace(':', '-')}"]:
            raise vmlib.VMError(f"unexpected request sequence {paths}")
        times["per-MAC script request"] = srv.requests[-1][0] - t0
    return times


def flash(firmware: str, power_cut: bool = False) -> dict[str, float]:
    """The whole loop with a busybox stand-in for the agent (checks/live/standin-agent.sh): PXE ->
    live env -> flash the marker image onto the disk with the plan's serial -> report done ->
    reboot -> PXE -> "local" -> the flashed disk boots. With power_cut, the VM is killed when
    the flash starts and powered on again: no "done" arrived, so it flashes again."""
    live = OUT / "live-standin"
    subprocess.run([str(HERE.parent / "live" / "build.sh"), str(live),
                    str(HERE / "live" / "standin-agent.sh")], check=True,
                   stderr=subprocess.DEVNULL)
    work = fresh_dir(f"{firmware}-{'powercut' if power_cut else 'flash'}")
    image = (OUT / "disk" / "marker.img").read_bytes()
    disk = work / "disk.raw"
    with open(disk, "wb") as f:  # larger than the image, as a real target is
        f.truncate(max(64 << 20, len(image) + (16 << 20)))
    times: dict[str, float] = {}
    with Server(live, policy="flash") as srv:
        with vmlib.VM(work, firmware=firmware, mac=MAC, server_port=srv.port,
                      disks=[vmlib.Disk(disk, "bty-smoke-0")]) as vm:
            fail = r"Kernel panic|bty-live: agent failed|bty: flash failed"
            if power_cut:
                _, times["power cut at flash start"] = vm.wait_for(r"bty: flash starting", 300,
                                                                  fail=fail)
                vm.kill()
                if srv.flashed:
                    raise vmlib.VMError("status done arrived before the power cut")
                vm.start()  # this power-on's times count from here
            m, times["flash starting"] = vm.wait_for(r"bty: flash starting", 300, fail=fail)
            m, times["flash complete"] = vm.wait_for(r"bty: flash complete", 300,
                                                     after=m.end(), fail=fail)
            _, times["flashed disk's marker"] = vm.wait_for(
                rf"BTY-MARKER-DISK-BOOTED fw={firmware}", 300, after=m.end(), fail=fail)
            rc = vm.wait_exit(30)
            if rc != vmlib.MARKER_EXIT_STATUS:
                raise vmlib.VMError(f"QEMU exited with {rc}\n{vm.tail()}")
        if not srv.flashed:
            raise vmlib.VMError("the server never got status done")
        with open(disk, "rb") as f:
            if f.read(len(image)) != image:
                raise vmlib.VMError("the disk does not start with the image's bytes")
        d = times["flash complete"] - times["flash starting"]
        print(f"  wrote {len(image) >> 20} MiB in ~{d:.1f}s ({len(image) / d / 2**20:.1f} MiB/s "
              f"over HTTP through the guestfwd); disk bytes == image bytes", flush=True)
    return times


SCENARIOS = {
    "bios-pxe": lambda a: pxe("bios", a),
    "uefi-pxe": lambda a: pxe("uefi", a),
    "bios-disk": lambda a: disk_boot("bios"),
    "uefi-disk": lambda a: disk_boot("uefi"),
    "bios-local": lambda a: local("bios"),
    "uefi-local": lambda a: local("uefi"),
    "bios-flash": lambda a: flash("bios"),
    "uefi-flash": lambda a: flash("uefi"),
    "bios-powercut": lambda a: flash("bios", power_cut=True),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                    help=f"any of {', '.join(SCENARIOS)} (default: all)")
    ap.add_argument("--agent", help="static bty binary to put in the live environment")
    ap.add_argument("--no-build", action="store_true", help="use what is in checks/out/")
    args = ap.parse_args()
    names = args.scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(unknown)}")
    if not args.no_build:
        build(args.agent)
    print(f"accelerator: {vmlib.accel()}", flush=True)
    failed = 0
    for name in names:
        t = time.monotonic()
        print(f"== {name}", flush=True)
        try:
            times = SCENARIOS[name](bool(args.agent))
        except vmlib.VMError as e:
            print(f"FAIL {name} after {time.monotonic() - t:.1f}s: {e}", flush=True)
            failed += 1
            break
        for k, v in sorted(times.items(), key=lambda kv: kv[1]):
            print(f"  {v:6.1f}s  {k}", flush=True)
        print(f"ok   {name} ({time.monotonic() - t:.1f}s)", flush=True)
    passed = len(names) - failed if not failed else names.index(name)
    print(f"smoke: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
