#!/usr/bin/env python3
"""Boot storm: N simulated PXE clients at once against bty-web's ProxyDHCP and TFTP, and the
same storm against dnsmasq in proxy mode with its own TFTP server (the anchor).

Everything runs in network namespaces this script makes (checks/lib/l2.py: a bridge, the
server at 192.168.77.2, the clients at 192.168.77.10); nothing outside them is touched. The
clients are one Rust process (rust/bty-netboot/examples/boot_storm.rs, one thread, one socket
per client) so that what they cost the machine stays small next to the servers. Each client
does what BIOS PXE firmware does:

  1. DISCOVER, broadcast, with options 60/93/97, until an OFFER from 192.168.77.2 (4 tries);
  2. REQUEST to 192.168.77.2:4011, until an ACK naming the boot file (4 tries);
  3. TFTP read of that file (a 1 MiB stand-in for undionly.kpxe) at blksize 1468, each block
     acknowledged, retransmitting its ACK on a timeout;
  4. bty-web only: GET /pxe/{mac} (dnsmasq has no HTTP side).

Prints completions, failures and p50/p99 per phase for both servers and the ratio of their
completion rates, and writes the table to bench/out/netboot-summary.txt. Not a test. Root only.

    bench/netboot.py BTY_WEB BOOT_STORM [N]   (bench/netboot.sh builds both; N default 1000)
    BENCH_RAMP_S=2 (power-on spread), BENCH_KEEP=1 (keep the servers' logs in /tmp)
"""
from __future__ import annotations

import json
import os
import resource
import shutil
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


def run_storm(seg: L2.Segment, storm: str, n: int, http: bool) -> dict:
    """The clients (rust/bty-netboot/examples/boot_storm.rs) in their namespace; their JSON."""
    argv = [storm, SERVER, CLIENT_IP, "c0", str(n), "--ramp", str(RAMP_S), "--blksize", str(BLKSIZE),
            "--bytes", str(FILE_BYTES)]
    if http:
        argv += ["--http", str(HTTP_PORT)]
    out = subprocess.run(seg.exec("cli", argv), check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def ms(phase: list) -> str:
    count, p50, p99 = phase
    return f"{p50:,.0f} / {p99:,.0f}" if count else "-"


def main() -> int:
    if os.geteuid() != 0:
        print("bench/netboot.py: needs root (network namespaces)", file=sys.stderr)
        return 3
    bty_web, storm = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else int(os.environ.get("BENCH_CLIENTS", "1000"))
    # Both servers and the clients hold a socket per transfer.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
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
                        f"--tftp-root={root}", "--tftp-max=16384", "--pid-file=", "--leasefile-ro"]
            log = open(os.path.join(work, f"{name}.log"), "w")
            proc = subprocess.Popen(seg.exec("srv", argv), env=env, stdout=log, stderr=subprocess.STDOUT)
            time.sleep(2 if name == "bty" else 1)
            if proc.poll() is not None:
                print(open(os.path.join(work, f"{name}.log")).read()[-2000:], file=sys.stderr)
                return 1
            print(f"-- {name}: {n} clients", flush=True)
            cpu0 = server_cpu(proc.pid)
            r = run_storm(seg, storm, n, http=(name == "bty"))
            r["server_cpu_s"] = server_cpu(proc.pid) - cpu0
            proc.terminate()
            proc.wait(10)
            results[name] = r
            print(f"   {r['completed']} completed, failures {r['failures'] or 0}, {r['took_s']:.1f} s, "
                  f"{r['completed'] / r['took_s']:.0f} clients/s, server CPU {r['server_cpu_s']:.1f} s, "
                  f"clients' CPU {r['client_cpu_s']:.1f} s, {r['duplicate_blocks']} duplicate blocks", flush=True)
    finally:
        seg.close()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    lines = [f"Boot storm, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, {os.cpu_count()} CPUs shared by "
             f"server and clients; {n} BIOS PXE clients powering on over {RAMP_S:g} s; 1 MiB boot file at "
             f"blksize {BLKSIZE}",
             f"{'':22}{'bty-web':>28}{'dnsmasq':>28}",
             f"{'':22}{'p50 / p99 ms':>28}{'p50 / p99 ms':>28}"]
    for ph, label in (("dhcp", "DISCOVER -> OFFER"), ("pxe4011", "REQUEST 4011 -> ACK"), ("tftp", "TFTP 1 MiB"),
                      ("http", "GET /pxe/{mac}"), ("total", "whole client")):
        lines.append(f"{label:22}" + "".join(f"{ms(results[name]['phases'][ph]):>28}" for name in ("bty", "dnsmasq")))
    rates = {}
    for name in ("bty", "dnsmasq"):
        r = results[name]
        rates[name] = r["completed"] / r["took_s"]
        fails = sum(r["failures"].values())
        lines.append(f"{name + ' completed':22}{r['completed']:>12} of {n}, {fails} failed {r['failures'] or ''}, "
                     f"{r['took_s']:.1f} s, {rates[name]:.0f} clients/s, server CPU {r['server_cpu_s']:.1f} s, "
                     f"{r['duplicate_blocks']} duplicate blocks")
    ratio = rates["bty"] / rates["dnsmasq"] if rates["dnsmasq"] else float("inf")
    lines.append(f"completion rate bty-web / dnsmasq: {ratio:.2f}x "
                 f"(bty-web's clients also did GET /pxe/{{mac}}); target >= 1.5x, 0 failures")
    text = "\n".join(lines)
    print(text)
    open(os.path.join(OUT, "netboot-summary.txt"), "w").write(text + "\n")
    return 0


def server_cpu(pid: int) -> float:
    """User + system CPU seconds of the server (the child of `ip netns exec`, which execs it)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
