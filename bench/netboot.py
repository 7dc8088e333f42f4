#!/usr/bin/env python3
"""Boot storm: N simulated PXE clients at once against bty-web's ProxyDHCP and TFTP, and the
same storm against dnsmasq in proxy mode with its own TFTP server (the anchor).

Everything runs in network namespaces this script makes (checks/lib/l2.py: a bridge, the
server at 192.168.77.2, the clients at 192.168.77.10); nothing outside them is touched. Each
client does what BIOS PXE firmware does:

  1. DISCOVER, broadcast, with options 60/93/97, until an OFFER from 192.168.77.2 (4 tries);
  2. REQUEST to 192.168.77.2:4011, until an ACK naming the boot file (4 tries);
  3. TFTP read of that file (a 1 MiB stand-in for undionly.kpxe) at blksize 1468, each block
     acknowledged, retransmitting its ACK on a timeout;
  4. bty-web only: GET /pxe/{mac} (dnsmasq has no HTTP side).

Prints completions, failures and p50/p99 per phase for both servers and the ratio of their
completion rates, and writes the table to bench/out/netboot-summary.txt. Not a test. Root only.

    bench/netboot.py BTY_WEB [N]     (bench/netboot.sh builds the release binary; N default 1000)
    BENCH_RAMP_S=2 (power-on spread), BENCH_KEEP=1 (keep the servers' logs in /tmp)
"""
from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "checks", "lib"))
import l2 as L2  # noqa: E402

SERVER = L2.SERVER_IP
CLIENT_IP = "192.168.77.10"
HTTP_PORT = 8080
FILE_BYTES = 1 << 20
BLKSIZE = 1468
# Clients power on over this many seconds (a rack on one switch, not one instant).
RAMP_S = float(os.environ.get("BENCH_RAMP_S", "2"))
OUT = os.path.join(HERE, "out")


class Udp(asyncio.DatagramProtocol):
    def __init__(self):
        self.q: asyncio.Queue = asyncio.Queue()

    def datagram_received(self, data, addr):
        self.q.put_nowait((data, addr))


async def udp(local: tuple[str, int], broadcast: bool = False):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if broadcast:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"c0")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(local)
    s.setblocking(False)
    t, p = await asyncio.get_running_loop().create_datagram_endpoint(Udp, sock=s)
    return t, p


async def recv(p: Udp, timeout: float):
    return await asyncio.wait_for(p.q.get(), timeout)


class Storm:
    def __init__(self, n: int, http: bool):
        self.n, self.http = n, http
        self.waiting: dict[int, asyncio.Queue] = {}
        self.phases: dict[str, list[float]] = {"dhcp": [], "pxe4011": [], "tftp": [], "http": [], "total": []}
        self.failures: dict[str, int] = {}

    def fail(self, phase: str):
        self.failures[phase] = self.failures.get(phase, 0) + 1

    async def dispatch(self, p: Udp):
        while True:
            data, _ = await p.q.get()
            if len(data) >= 240:
                q = self.waiting.get(struct.unpack(">I", data[4:8])[0])
                if q:
                    q.put_nowait(data)

    async def client(self, i: int, bcast):
        await asyncio.sleep(random.random() * RAMP_S)
        mac = bytes([0x52, 0x54, 0x01, (i >> 16) & 255, (i >> 8) & 255, i & 255])
        xid = 0x10000000 + i
        t0 = time.monotonic()
        mine: asyncio.Queue = asyncio.Queue()
        self.waiting[xid] = mine
        offer = None
        try:
            for attempt in range(4):
                bcast.sendto(L2.dhcp_packet(1, xid, mac), ("255.255.255.255", 67))
                end = time.monotonic() + 2 + attempt * 2
                while offer is None and time.monotonic() < end:
                    try:
                        data = await asyncio.wait_for(mine.get(), max(0.01, end - time.monotonic()))
                    except asyncio.TimeoutError:
                        break
                    r = L2.dhcp_reply(data)
                    if r and r["type"] == 2 and r["server"] == SERVER:
                        offer = data
                if offer:
                    break
        finally:
            del self.waiting[xid]
        if offer is None:
            return self.fail("dhcp")
        t1 = time.monotonic()
        self.phases["dhcp"].append(t1 - t0)
        t, p = await udp((CLIENT_IP, 0))
        try:
            ack = None
            for attempt in range(4):
                t.sendto(L2.dhcp_packet(3, xid, mac, ciaddr=CLIENT_IP, item=L2.menu_item(offer)), (SERVER, 4011))
                try:
                    data, _ = await recv(p, 1 + attempt)
                except asyncio.TimeoutError:
                    continue
                r = L2.dhcp_reply(data)
                if r and r["type"] == 5:
                    ack = data
                    break
            if ack is None:
                return self.fail("pxe4011")
            t2 = time.monotonic()
            self.phases["pxe4011"].append(t2 - t1)
            file = L2.dhcp_reply(ack)["file"] or L2.dhcp_reply(offer)["file"]
            got = await self.tftp(t, p, file)
            if got != FILE_BYTES:
                return self.fail("tftp")
            t3 = time.monotonic()
            self.phases["tftp"].append(t3 - t2)
        finally:
            t.close()
        if self.http:
            macs = ":".join(f"{b:02x}" for b in mac)
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(SERVER, HTTP_PORT), 10)
                w.write(f"GET /pxe/{macs} HTTP/1.1\r\nHost: {SERVER}:{HTTP_PORT}\r\nConnection: close\r\n\r\n".encode())
                body = await asyncio.wait_for(r.read(), 20)
                w.close()
                if not body.startswith(b"HTTP/1.1 200"):
                    return self.fail("http")
            except (OSError, asyncio.TimeoutError):
                return self.fail("http")
            self.phases["http"].append(time.monotonic() - t3)
        self.phases["total"].append(time.monotonic() - t0)

    async def tftp(self, t, p: Udp, file: str) -> int:
        rrq = struct.pack(">H", 1) + file.encode() + b"\0octet\0blksize\0" + str(BLKSIZE).encode() + b"\0"
        t.sendto(rrq, (SERVER, 69))
        size, expect, peer, blk, tries = 0, 1, None, 512, 0
        last_ack = None
        while True:
            try:
                data, addr = await recv(p, 2)
                tries = 0
            except asyncio.TimeoutError:
                tries += 1
                if tries > 5:
                    return -1
                t.sendto(last_ack if last_ack else rrq, peer or (SERVER, 69))
                continue
            op = struct.unpack(">H", data[:2])[0]
            if op == 6:  # OACK
                peer = addr
                blk = BLKSIZE if b"blksize" in data else 512
                last_ack = struct.pack(">HH", 4, 0)
                t.sendto(last_ack, peer)
            elif op == 3:
                peer = addr
                n = struct.unpack(">H", data[2:4])[0]
                if n == expect & 0xFFFF:
                    size += len(data) - 4
                    expect += 1
                    last_ack = struct.pack(">HH", 4, n)
                    t.sendto(last_ack, peer)
                    if len(data) - 4 < blk:
                        return size
                elif last_ack:
                    t.sendto(last_ack, peer)
            elif op == 5:
                return -1

    async def run(self) -> float:
        bt, bp = await udp(("0.0.0.0", 68), broadcast=True)
        d = asyncio.create_task(self.dispatch(bp))
        t0 = time.monotonic()
        await asyncio.gather(*(self.client(i, bt) for i in range(self.n)))
        took = time.monotonic() - t0
        d.cancel()
        bt.close()
        return took


def pct(v: list[float], q: float) -> str:
    if not v:
        return "-"
    v = sorted(v)
    return f"{v[min(len(v) - 1, int(q * len(v)))] * 1000:.0f}"


def run_storm(seg: L2.Segment, n: int, http: bool) -> tuple[Storm, float]:
    s = Storm(n, http)
    took = seg.in_ns("cli", lambda: asyncio.run(s.run()))
    return s, took


def main() -> int:
    if os.geteuid() != 0:
        print("bench/netboot.py: needs root (network namespaces)", file=sys.stderr)
        return 3
    bty_web = os.path.abspath(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else int(os.environ.get("BENCH_CLIENTS", "1000"))
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bty-netboot-bench.")
    os.chmod(work, 0o755)  # dnsmasq reads its TFTP root as nobody
    seg = L2.Segment("nb")
    results = {}
    try:
        # The clients' namespace, on the same bridge.
        cli = seg.ns("cli")
        L2.run("ip", "netns", "add", cli)
        seg.names.append(cli)
        L2.run("ip", "link", "add", "c0", "netns", cli, "type", "veth", "peer", "name", "c0p", "netns", seg.ns("lan"))
        L2.run("ip", "-n", seg.ns("lan"), "link", "set", "c0p", "master", "br0", "up")
        L2.run("ip", "-n", cli, "addr", "add", f"{CLIENT_IP}/24", "dev", "c0")
        L2.run("ip", "-n", cli, "link", "set", "c0", "up")
        L2.run("ip", "-n", cli, "link", "set", "lo", "up")
        payload = os.urandom(FILE_BYTES)
        for name in ("bty", "dnsmasq"):
            root = os.path.join(work, name)
            os.makedirs(root, mode=0o755)
            for f in ("undionly.kpxe", "undionly.0"):
                open(os.path.join(root, f), "wb").write(payload)
                os.chmod(os.path.join(root, f), 0o644)
            if name == "bty":
                env = dict(os.environ, BTY_PATHS_STATE_DIR=root, BTY_PATHS_BOOT_DIR=root, BTY_SERVER_PORT=str(HTTP_PORT),
                           BTY_SERVER_PUBLIC_URL=f"http://{SERVER}:{HTTP_PORT}", BTY_TFTP_ENABLED="true",
                           BTY_TFTP_ADDRESS=SERVER, BTY_PROXY_DHCP_ENABLED="true", BTY_PROXY_DHCP_INTERFACE="s0",
                           NO_COLOR="1", RUST_LOG="warn")
                argv = [bty_web]
            else:
                env = dict(os.environ)
                # Proxy mode with its own TFTP, and the same transfer cap as bty-web's default.
                argv = ["dnsmasq", "-d", "--conf-file=/dev/null", "--port=0", "-i", "s0", "--bind-interfaces",
                        "--dhcp-range=192.168.77.0,proxy", "--pxe-service=x86PC,bty,undionly", "--enable-tftp",
                        f"--tftp-root={root}", "--tftp-max=1024", "--pid-file=", "--leasefile-ro"]
            log = open(os.path.join(work, f"{name}.log"), "w")
            proc = subprocess.Popen(seg.exec("srv", argv), env=env, stdout=log, stderr=subprocess.STDOUT)
            time.sleep(2 if name == "bty" else 1)
            if proc.poll() is not None:
                print(open(os.path.join(work, f"{name}.log")).read()[-2000:], file=sys.stderr)
                return 1
            print(f"-- {name}: {n} clients", flush=True)
            storm, took = run_storm(seg, n, http=(name == "bty"))
            proc.terminate()
            proc.wait(10)
            results[name] = (storm, took)
            done = len(storm.phases["total"])
            print(f"   {done} completed, failures {storm.failures or 0}, {took:.1f} s, {done / took:.0f} clients/s",
                  flush=True)
    finally:
        seg.close()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    lines = [f"Boot storm, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, {os.cpu_count()} CPUs shared by "
             f"server and clients; {n} BIOS PXE clients powering on over {RAMP_S:.0f} s; 1 MiB boot file at "
             f"blksize {BLKSIZE}",
             f"{'':22}{'bty-web':>28}{'dnsmasq 2.90':>28}",
             f"{'':22}{'p50 / p99 ms':>28}{'p50 / p99 ms':>28}"]
    for ph, label in (("dhcp", "DISCOVER -> OFFER"), ("pxe4011", "REQUEST 4011 -> ACK"), ("tftp", "TFTP 1 MiB"),
                      ("http", "GET /pxe/{mac}"), ("total", "whole client")):
        row = f"{label:22}"
        for name in ("bty", "dnsmasq"):
            v = results[name][0].phases[ph]
            row += f"{(pct(v, 0.5) + ' / ' + pct(v, 0.99)) if v else '-':>28}"
        lines.append(row)
    rates = {}
    for name in ("bty", "dnsmasq"):
        s, took = results[name]
        done = len(s.phases["total"])
        rates[name] = done / took
        fails = sum(s.failures.values())
        lines.append(f"{name + ' completed':22}{done:>12} of {n}, {fails} failed {s.failures or ''}, "
                     f"{took:.1f} s, {rates[name]:.0f} clients/s")
    ratio = rates["bty"] / rates["dnsmasq"] if rates["dnsmasq"] else float("inf")
    lines.append(f"completion rate bty-web / dnsmasq: {ratio:.2f}x "
                 f"(bty-web's clients also did GET /pxe/{{mac}}); target >= 1.5x, 0 failures")
    text = "\n".join(lines)
    print(text)
    open(os.path.join(OUT, "netboot-summary.txt"), "w").write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
