#!/usr/bin/env python3
"""First end-to-end scenario on real parts: `flash-once` over PXE.

bty-web (debug build, loopback) serves iPXE scripts, the test live
environment and the marker disk image; a QEMU client PXE-boots, the real
`bty agent` reports inventory, flashes the disk whose serial the machine
record names, reports done and reboots; the next PXE boot goes to the local
disk, which prints BTY-MARKER-DISK-BOOTED.

Prerequisites (see checks/README.md):
    RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=target/static \
        cargo build --release -p bty --target x86_64-unknown-linux-gnu
    checks/live/build.sh checks/out/live-agent target/static/x86_64-unknown-linux-gnu/release/bty
    checks/disk/build.sh checks/out/disk
    cargo build -p bty-web
Run: python3 checks/e2e.py [bios|uefi]
"""
import json, os, subprocess, sys, tempfile, time, urllib.request, http.cookiejar, shutil
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import vm as V
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
work = tempfile.mkdtemp(prefix="bty-e2e-")
state = os.path.join(work, "state"); os.makedirs(state + "/boot"); os.makedirs(state + "/images")
live = root + "/checks/out/live-agent"
for f in ("vmlinuz", "initrd.gz"):
    shutil.copy(os.path.join(live, f), os.path.join(state, "boot", f))
shutil.copy(root + "/checks/out/disk/marker-bios.img.zst", state + "/images/marker.img.zst")
sha = open(root + "/checks/out/disk/marker-bios.img.zst.sha256").read().split()[0]
open(state + "/catalog.toml", "w").write(f'version = 1\n[[images]]\nname = "marker"\nsrc = "marker.img.zst"\nsha256 = "{sha}"\n')
port = 18123
env = dict(os.environ, BTY_PATHS_STATE_DIR=state, BTY_SERVER_HOST="127.0.0.1", BTY_SERVER_PORT=str(port),
           BTY_SERVER_PUBLIC_URL="http://10.0.2.100", BTY_ADMIN_PASSWORD="pw")
srv = subprocess.Popen([root + "/target/debug/bty-web"], env=env, stdout=open(work + "/web.log", "w"), stderr=subprocess.STDOUT)
try:
    base = f"http://127.0.0.1:{port}"
    for _ in range(50):
        try: urllib.request.urlopen(base + "/healthz"); break
        except Exception: time.sleep(0.1)
    cj = http.cookiejar.CookieJar(); op = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(cj))
    def req(method, path, body=None, csrf=None):
        r = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                   headers={"Content-Type": "application/json", **({"X-CSRF-Token": csrf} if csrf else {})})
        with op.open(r) as resp: t = resp.read(); return json.loads(t) if t else None
    login = req("POST", "/auth/login", {"username": "bty", "password": "pw"})
    mac = "52:54:00:12:34:56"
    print(req("PUT", f"/machines/{mac}", {"policy": "flash-once", "image": "marker", "target_disk_serial": "bty-disk-0"}, login["csrf_token"])["state"])
    disk = os.path.join(work, "disk.raw"); open(disk, "wb").truncate(64 << 20)
    fw = sys.argv[1] if len(sys.argv) > 1 else "bios"
    with V.VM(work, firmware=fw, mac=mac, disks=[V.Disk(disk, "bty-disk-0")], server_port=port) as m:
        try:
            for pat in ["bty: flash starting", "bty: flash complete", "BTY-MARKER-DISK-BOOTED"]:
                r = m.wait_for(pat, 300)
                print(f"{m.elapsed():6.1f}s  {pat}")
        except Exception as e:
            print("FAIL", e); print(m.tail(60)); sys.exit(1)
        print(m.tail(25))
    mach = req("GET", f"/machines/{mac}")
    print("state", mach["state"], "last_flashed_at", mach["last_flashed_at"])
    ok = mach["state"] == "flashed" and mach["last_flashed_at"]
    img = subprocess.run(f"zstd -dc {root}/checks/out/disk/marker-bios.img.zst | sha256sum", shell=True, capture_output=True, text=True).stdout.split()[0]
    n = os.path.getsize(root + "/checks/out/disk/marker-bios.img")
    raw = subprocess.run(f"zstd -dc {root}/checks/out/disk/marker-bios.img.zst", shell=True, capture_output=True).stdout
    got = open(disk, "rb").read(len(raw))
    # LBA 0-1 and the old backup legitimately differ: the GPT backup moved to
    # the disk's end and the protective MBR grew to cover the disk.
    holds = got[1024:len(raw) - 33 * 512] == raw[1024:len(raw) - 33 * 512]
    print("disk holds the image (outside the partition-table headers):", holds)
    print(f"e2e: {int(bool(ok and holds))} passed, {int(not (ok and holds))} failed")
    if not (ok and holds):
        sys.exit(1)
finally:
    srv.terminate(); srv.wait()
    print(open(work + "/web.log").read()[-1500:])
