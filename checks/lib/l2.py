"""A real layer-2 segment for the end-to-end checks, made of network namespaces this module
creates and removes (nothing outside them is touched; root only):

    <tag>-lan    a bridge, br0, with one tap device per client VM (QEMU runs in here)
    <tag>-dhcp   the LAN's own DHCP server: dnsmasq assigning addresses from
                 192.168.77.100-150 and nothing else (no PXE options), plus IPv6 router
                 advertisements, so iPXE does not wait for IPv6 autoconfiguration
    <tag>-srv    the bty server at 192.168.77.2 (bty-web with TFTP and ProxyDHCP on s0)

`in_ns(name, fn)` runs `fn` on a thread inside a namespace, so the harness reaches bty-web's
API at 127.0.0.1 of <tag>-srv without any interface in the host's own namespace.

    seg = Segment("e2e")
    seg.tap("tap0")                                   # for one VM
    seg.start_lan_dhcp()
    srv = subprocess.Popen(seg.exec("srv", ["bty-web"]), env=...)
    seg.in_ns("srv", lambda: urllib.request.urlopen("http://127.0.0.1:8080/healthz"))
    seg.close()
"""
from __future__ import annotations

import ctypes
import os
import queue
import socket
import struct
import subprocess
import threading
import time

CLONE_NEWNET = 0x40000000
SERVER_IP = "192.168.77.2"
LAN_DHCP_IP = "192.168.77.1"
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def run(*args: str) -> None:
    r = subprocess.run(list(args), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")


class NetnsThread:
    """A worker thread living in one network namespace; sockets it creates stay there."""

    def __init__(self, path: str):
        self.jobs: queue.Queue = queue.Queue()
        ready: queue.Queue = queue.Queue()

        def worker():
            fd = os.open(path, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    ready.put(OSError(ctypes.get_errno(), f"setns {path}"))
                    return
            finally:
                os.close(fd)
            ready.put(None)
            while True:
                job = self.jobs.get()
                if job is None:
                    return
                fn, out = job
                try:
                    out.put((True, fn()))
                except BaseException as e:  # handed to the caller
                    out.put((False, e))

        self.thread = threading.Thread(target=worker, daemon=True)
        self.thread.start()
        err = ready.get()
        if err:
            raise err

    def call(self, fn):
        out: queue.Queue = queue.Queue()
        self.jobs.put((fn, out))
        ok, value = out.get()
        if not ok:
            raise value
        return value

    def close(self):
        self.jobs.put(None)


class Segment:
    def __init__(self, tag: str):
        self.tag = f"bty{tag}{os.getpid() % 10000}"
        self.procs: list[subprocess.Popen] = []
        self.threads: dict[str, NetnsThread] = {}
        self.names = [f"{self.tag}-{n}" for n in ("lan", "dhcp", "srv")]
        for n in self.names:
            run("ip", "netns", "add", n)
        try:
            lan = self.ns("lan")
            run("ip", "-n", lan, "link", "add", "br0", "type", "bridge")
            run("ip", "-n", lan, "link", "set", "br0", "type", "bridge", "forward_delay", "0")
            run("ip", "-n", lan, "link", "set", "br0", "up")
            for n, dev, v4, v6 in (("dhcp", "d0", LAN_DHCP_IP, "fd00:77::1"), ("srv", "s0", SERVER_IP, None)):
                run("ip", "link", "add", dev, "netns", self.ns(n), "type", "veth", "peer", "name", dev + "p",
                    "netns", lan)
                run("ip", "-n", lan, "link", "set", dev + "p", "master", "br0", "up")
                run("ip", "-n", self.ns(n), "addr", "add", f"{v4}/24", "dev", dev)
                if v6:
                    run("ip", "-n", self.ns(n), "addr", "add", f"{v6}/64", "dev", dev, "nodad")
                run("ip", "-n", self.ns(n), "link", "set", dev, "up")
                run("ip", "-n", self.ns(n), "link", "set", "lo", "up")
        except Exception:
            self.close()
            raise

    def ns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def exec(self, name: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(name), *argv]

    def tap(self, ifname: str) -> tuple[str, str]:
        """A tap device on the bridge for one VM: (namespace, ifname) for QEMU."""
        lan = self.ns("lan")
        run("ip", "-n", lan, "tuntap", "add", ifname, "mode", "tap")
        run("ip", "-n", lan, "link", "set", ifname, "master", "br0", "up")
        return lan, ifname

    def start_lan_dhcp(self, log: str) -> None:
        """The LAN's DHCP server: addresses only, and IPv6 router advertisements."""
        argv = ["dnsmasq", "-d", "--conf-file=/dev/null", "--port=0", "-i", "d0", "--bind-interfaces",
                "--dhcp-range=192.168.77.100,192.168.77.150,1h", "--leasefile-ro", "--log-dhcp",
                "--enable-ra", "--dhcp-range=fd00:77::,ra-only", "--pid-file=",
                # dnsmasq pings an address for 3 s before offering it; nothing else is on this LAN.
                "--no-ping"]
        self.procs.append(subprocess.Popen(self.exec("dhcp", argv), stdout=open(log, "w"),
                                           stderr=subprocess.STDOUT))

    def in_ns(self, name: str, fn):
        if name not in self.threads:
            self.threads[name] = NetnsThread(f"/run/netns/{self.ns(name)}")
        return self.threads[name].call(fn)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        for t in self.threads.values():
            t.close()
        for n in reversed(self.names):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


BIOS_PXE_VENDOR = b"PXEClient:Arch:00000:UNDI:002001"


def dhcp_packet(msgtype: int, xid: int, mac: bytes, vendor: bytes = BIOS_PXE_VENDOR, arch: int = 0,
                ciaddr: str = "0.0.0.0", item: bytes | None = None) -> bytes:
    """A DHCP request as PXE firmware sends it: options 53, 60, 93 and 97 (a machine id made
    from the MAC), broadcast flag set; `item`, the PXE boot item picked from an offer's menu
    (option 43, suboption 71), as BIOS PXE ROMs send it to a server that offered one."""
    hdr = struct.pack(">BBBBIHH", 1, 1, 6, 0, xid, 0, 0x8000) + socket.inet_aton(ciaddr) + b"\0" * 12
    hdr += mac + b"\0" * 10 + b"\0" * 192 + bytes([99, 130, 83, 99])
    opts = bytes([53, 1, msgtype, 60, len(vendor)]) + vendor + bytes([93, 2]) + struct.pack(">H", arch)
    opts += bytes([97, 17, 0]) + mac + b"\0" * 10
    if item:
        opts += bytes([43, 7, 71, 4]) + item + b"\0\0\xff"
    return hdr + opts + b"\xff"


def dhcp_options(data: bytes) -> dict[int, bytes]:
    """The options of a DHCP message (the first of each code)."""
    out: dict[int, bytes] = {}
    i = 240
    while i + 1 < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        code, ln = data[i], data[i + 1]
        out.setdefault(code, data[i + 2:i + 2 + ln])
        i += 2 + ln
    return out


def dhcp_reply(data: bytes) -> dict | None:
    """A reply's transaction, message type, server id, assigned address and boot file (the
    `file` field, else option 67); None when it is too short to be one."""
    if len(data) < 240:
        return None
    o = dhcp_options(data)
    file = data[108:236].split(b"\0")[0].decode(errors="replace")
    if not file and 67 in o:
        file = o[67].split(b"\0")[0].decode(errors="replace")
    return {
        "xid": struct.unpack(">I", data[4:8])[0],
        "type": o[53][0] if len(o.get(53, b"")) == 1 else None,
        "server": socket.inet_ntoa(o[54]) if len(o.get(54, b"")) == 4 else None,
        "yiaddr": socket.inet_ntoa(data[16:20]),
        "file": file,
    }


def menu_item(data: bytes) -> bytes | None:
    """The first boot item type of an offer's PXE menu (option 43, suboption 9), if any."""
    v, j = dhcp_options(data).get(43, b""), 0
    while j + 1 < len(v) and v[j] != 255:
        if v[j] == 9 and v[j + 1] >= 2:
            return v[j + 2:j + 4]
        j += 2 + v[j + 1]
    return None


def dhcp_probe(seg: Segment, vendor: bytes, arch: int, mac: bytes, seconds: float = 2.0) -> list[dict]:
    """Broadcast one PXE DISCOVER from a throwaway namespace on the segment; every OFFER seen."""
    name = "probe"
    ns = seg.ns(name)
    if ns not in seg.names:
        run("ip", "netns", "add", ns)
        seg.names.append(ns)
        run("ip", "link", "add", "p0", "netns", ns, "type", "veth", "peer", "name", "p0p", "netns", seg.ns("lan"))
        run("ip", "-n", seg.ns("lan"), "link", "set", "p0p", "master", "br0", "up")
        run("ip", "-n", ns, "link", "set", "p0", "up")

    def probe():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"p0")
        s.bind(("0.0.0.0", 68))
        s.settimeout(0.2)
        xid = 0x5A5A0000 | arch
        s.sendto(dhcp_packet(1, xid, mac, vendor, arch), ("255.255.255.255", 67))
        offers, until = [], time.monotonic() + seconds
        while time.monotonic() < until:
            try:
                data, _ = s.recvfrom(1500)
            except socket.timeout:
                continue
            r = dhcp_reply(data)
            if r and r["xid"] == xid:
                offers.append({k: r[k] for k in ("server", "yiaddr", "file")})
        s.close()
        return offers

    return seg.in_ns(name, probe)
