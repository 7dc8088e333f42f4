#!/usr/bin/env python3
"""Browser UI render benchmark: every page of bty-web's UI against a database
of BENCH_MACHINES machines (default 10,000) and at least BENCH_EVENTS audit
events (default 100,000), filled through the server's own API the way a fleet
fills it: operators assign policies, images, disks and labels (PUT
/machines), machines PXE-boot (GET /pxe/{mac}), post inventories and report
flashes done or failed.

Each page is then fetched BENCH_ROUNDS times (default 40) over one keep-alive
connection, logged in with a session cookie, after two warm-up fetches. The
time is the client's: request sent to last byte of the rendered page
received, so it includes the database reads, the template rendering and the
transfer over loopback. Prints median / p90 / max per page and the page size,
checks the machines page is paginated (at most 50 rows on a page), and writes
the table to bench/out/ui-summary.txt. Not a test: it exits 1 only when a
page does not answer 200.

    bench/ui.py path/to/bty-web    (bench/ui.sh builds the release binary)
"""

import http.client
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MACHINES = int(os.environ.get("BENCH_MACHINES", "10000"))
EVENTS = int(os.environ.get("BENCH_EVENTS", "100000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "40"))
# BENCH_KEEP=1 keeps the filled state directory (to look at the database).
FILL_THREADS = 16
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
IMAGES = [f"{distro}-{v}" for distro in ("debian", "ubuntu", "fedora", "alma", "nixos") for v in ("a", "b", "c", "d")]
LABELS = [f"rack-{i:02}" for i in range(20)] + ["ci", "gpu", "storage", "edge", "lab"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mac_of(i: int) -> str:
    return "52:54:%02x:%02x:%02x:%02x" % ((i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255)


class Client:
    """One keep-alive connection, with the session cookie and CSRF token."""

    def __init__(self, port: int, cookie: str = "", csrf: str = ""):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookie, self.csrf = cookie, csrf

    def request(self, method: str, path: str, body=None, extra=None) -> tuple[int, bytes, http.client.HTTPResponse]:
        headers = dict(extra or {})
        if self.cookie:
            headers["Cookie"] = self.cookie
        if self.csrf and method != "GET":
            headers["X-CSRF-Token"] = self.csrf
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                return r.status, r.read(), r
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed the connection while it sat idle: as a browser does, reconnect once.
                self.conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def login(port: int) -> Client:
    c = Client(port)
    st, body, r = c.request("POST", "/auth/login", {"username": "bty", "password": "bty"})
    if st != 200:
        sys.exit(f"login failed: {st} {body[:200]!r}")
    cookie = r.getheader("Set-Cookie").split(";", 1)[0]
    return Client(port, cookie, json.loads(body)["csrf_token"])


def in_parallel(port: int, cookie: str, csrf: str, jobs: list, what: str) -> None:
    """Run (method, path, body) jobs on FILL_THREADS connections; any non-2xx stops the run."""
    lock = threading.Lock()
    it = iter(jobs)
    failures = []

    def worker():
        c = Client(port, cookie, csrf)
        while True:
            with lock:
                job = next(it, None)
            if job is None or failures:
                return
            if job[0] == "REPORT":
                # A live environment's report: boot first, then report with that offer's token.
                mac = job[1].split("/")[2]
                st, script, _ = c.request("GET", f"/pxe/{mac}")
                token = next((w.split("=", 1)[1] for w in script.decode().split() if w.startswith("bty.token=")), "")
                st, body, _ = c.request("POST", job[1], job[2], {"X-Bty-Offer-Token": token})
            else:
                st, body, _ = c.request(*job)
            if st >= 300:
                failures.append(f"{job[0]} {job[1]}: {st} {body[:200]!r}")

    threads = [threading.Thread(target=worker) for _ in range(FILL_THREADS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        sys.exit(f"filling ({what}) failed: {failures[0]}")
    print(f"  {what}: {len(jobs)} requests in {time.monotonic() - t0:.1f} s", flush=True)


def fill(port: int, admin: Client, rnd: random.Random) -> None:
    macs = [mac_of(0x10000 + i) for i in range(MACHINES)]
    jobs = []
    policies = {}
    for i, mac in enumerate(macs):
        policy = rnd.choices(["tui", "flash-once", "flash", "inventory", "local"], [3, 4, 2, 1, 2])[0]
        policies[mac] = policy
        body = {"policy": policy, "labels": rnd.sample(LABELS, rnd.randint(0, 3))}
        if policy in ("flash", "flash-once"):
            body |= {"image": rnd.choice(IMAGES), "target_disk_serial": f"SN{i:08}"}
        jobs.append(("PUT", f"/machines/{mac}", body))
    in_parallel(port, admin.cookie, admin.csrf, jobs, "PUT /machines (assignments)")

    jobs = []
    for i, mac in enumerate(macs):
        hw = {
            "cpu_model": "AMD EPYC 7543P 32-Core Processor", "cpu_threads": 64, "cpu_cores": 32,
            "memory_bytes": 256 << 30, "arch": "x86_64", "kernel": "6.12.8",
            "nics": [{"name": f"eno{n}", "mac": mac_of(0x20000 + 4 * i + n), "driver": "ice",
                      "speed_mbps": 25000, "operstate": "up"} for n in range(2)],
            "dmi": {"sys_vendor": "Supermicro", "product_name": "AS-1114S-WN10RT",
                    "product_serial": f"S{i:09}", "board_vendor": "Supermicro", "board_name": "H12SSW-NT",
                    "bios_vendor": "American Megatrends", "bios_version": "2.7"},
        }
        disks = [{"path": f"/dev/nvme{d}n1", "size_bytes": 3_840_755_982_336, "model": "SAMSUNG MZQL23T8HCLS",
                  "serial": f"SN{i:08}" if d == 0 else f"SN{i:08}-{d}", "transport": "nvme",
                  "removable": False, "read_only": False} for d in range(4)]
        # A machine told to boot its disk gets no live environment, so nothing to report with.
        if policies[mac] != "local":
            jobs.append(("REPORT", f"/pxe/{mac}/inventory", {"disks": disks, "hardware": hw}))
    in_parallel(port, admin.cookie, admin.csrf, jobs, "POST /pxe/{mac}/inventory")

    jobs = []
    for i, mac in enumerate(macs):
        # Flash outcomes come from flash offers (and the interactive flasher).
        if rnd.random() < 0.5 and policies[mac] in ("flash", "flash-once", "tui"):
            ok = rnd.random() < 0.97
            body = {"status": "done", "duration_s": 41.5, "bytes_written": 8 << 30} if ok else \
                {"status": "failed", "reason": "sha256 mismatch: the image is corrupt"}
            jobs.append(("REPORT", f"/pxe/{mac}/status", body))
    in_parallel(port, admin.cookie, admin.csrf, jobs, "POST /pxe/{mac}/status")

    have = events_count(admin)
    boots = []
    while have + len(boots) < EVENTS:
        boots.append(("GET", f"/pxe/{rnd.choice(macs)}", None))
    in_parallel(port, admin.cookie, admin.csrf, boots, "GET /pxe/{mac} (boots)")


def events_count(c: Client) -> int:
    # Ids are never reused and nothing here deletes events: the newest id is the count.
    st, body, _ = c.request("GET", "/events?limit=1")
    events = json.loads(body)["events"]
    return events[0]["id"] if events else 0


def measure(c: Client, path: str) -> tuple[list[float], int, bytes]:
    for _ in range(2):
        st, body, _ = c.request("GET", path)
        if st != 200:
            sys.exit(f"GET {path}: {st} {body[:300]!r}")
    times = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        st, body, _ = c.request("GET", path)
        times.append((time.perf_counter() - t0) * 1000)
        if st != 200:
            sys.exit(f"GET {path}: {st}")
    return times, len(body), body


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    binary = os.path.abspath(argv[1])
    rnd = random.Random(7)
    state = tempfile.mkdtemp(prefix="bty-bench-ui.")
    with open(os.path.join(state, "catalog.toml"), "w") as f:
        f.write("version = 1\n")
        for name in IMAGES:
            f.write(f'\n[[images]]\nname = "{name}"\nsrc = "https://images.example.org/{name}.img.zst"\n'
                    f'sha256 = "{rnd.getrandbits(256):064x}"\nformat = "zst"\nsize_bytes = {8 << 30}\n'
                    f'arch = "x86_64"\ndescription = "{name} server image"\n')
    port = free_port()
    env = dict(os.environ, BTY_PATHS_STATE_DIR=state, BTY_SERVER_HOST="127.0.0.1", BTY_SERVER_PORT=str(port),
               RUST_LOG="warn")
    log = open(os.path.join(state, "server.log"), "w")
    srv = subprocess.Popen([binary], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                st, _, _ = Client(port).request("GET", "/healthz")
                if st == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or srv.poll() is not None:
                sys.exit(f"bty-web did not start; see {state}/server.log")
            time.sleep(0.05)
        admin = login(port)
        print(f"filling: {MACHINES} machines, >= {EVENTS} events")
        fill(port, admin, rnd)
        n_events = events_count(admin)
        print(f"  database: {MACHINES} machines, {n_events} events, "
              f"{os.path.getsize(os.path.join(state, 'state.db')) >> 20} MiB (+ WAL)")

        some = mac_of(0x10000 + MACHINES // 2)
        pages = [
            ("dashboard", "/ui/"),
            ("machines", "/ui/machines"),
            ("machines, page 100", "/ui/machines?page=100"),
            ("machines, by last seen desc", "/ui/machines?sort=last_seen&dir=desc"),
            ("machines, by state", "/ui/machines?sort=state"),
            ("machines, label filter", "/ui/machines?label=rack-07"),
            ("machines, text search", "/ui/machines?q=ubuntu"),
            ("machine detail", f"/ui/machines/{some}"),
            ("images", "/ui/images"),
            ("netboot", "/ui/netboot"),
            ("events", "/ui/events"),
            ("events, unacknowledged", "/ui/events?unacked=1"),
            ("events, by kind", "/ui/events?kind=machine.flash_failed"),
            ("events, one machine", f"/ui/events?subject={some}"),
            ("backups", "/ui/backups"),
            ("settings", "/ui/settings"),
            ("account", "/ui/account"),
        ]
        rows = []
        worst = 0.0
        for name, path in pages:
            times, size, body = measure(admin, path)
            med = statistics.median(times)
            p90 = statistics.quantiles(times, n=10)[-1]
            worst = max(worst, med)
            rows.append((name, path, med, p90, max(times), size))
            if path.startswith("/ui/machines") and "/ui/machines/" not in path:
                n_rows = len(re.findall(rb'<tr[ >]', body)) - 1
                if n_rows > 50:
                    sys.exit(f"{path}: {n_rows} rows on one page; the machines page must paginate")
        lines = [f"UI pages, {MACHINES} machines, {n_events} events, {ROUNDS} fetches each "
                 f"(client time, keep-alive, loopback):",
                 f"  {'page':<30} {'median':>8} {'p90':>8} {'max':>8} {'size':>9}"]
        for name, path, med, p90, mx, size in rows:
            lines.append(f"  {name:<30} {med:6.1f}ms {p90:6.1f}ms {mx:6.1f}ms {size / 1024:7.1f}KiB")
        lines.append(f"  slowest median {worst:.1f} ms; target every page < 50 ms: "
                     f"{'met' if worst < 50 else 'NOT met'}")
        st = open(f"/proc/{srv.pid}/status").read()
        rss = int(re.search(r"VmRSS:\s+(\d+)", st).group(1)) / 1024
        lines.append(f"  bty-web RSS after the run: {rss:.1f} MiB")
        text = "\n".join(lines)
        print(text)
        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, "ui-summary.txt"), "w") as f:
            f.write(text + "\n")
    finally:
        srv.terminate()
        try:
            srv.wait(10)
        except subprocess.TimeoutExpired:
            srv.kill()
        if os.environ.get("BENCH_KEEP"):
            print(f"  state directory kept: {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
