"""The A/B appliance of the `ab-update` scenario (checks/e2e.py), made on the host from what
checks/ab/build.sh built (Python 3.11 standard library; minisign, zstd, objcopy, sgdisk,
mkfs.vfat and mtools as tools):

- `keypair` makes a release key with the real minisign, `key_layer` an initramfs layer that
  puts its public half at /etc/ab/minisign.pub;
- `uki` packs a unified kernel image with objcopy and systemd's stub: `.osrel` with `ID=bty`
  and `VERSION_ID=<version>` (systemd-boot sorts entries of one ID by version, newest
  first), `.cmdline`, `.linux`, `.initrd`; one UKI serves either slot;
- `root_image` is a slot's "root filesystem": a header line `bty-root VERSION health=good|bad`
  that the appliance's /init reads to decide whether it is healthy, then filler;
- `release` writes a signed release (`latest`, `V/manifest.json` + `.minisig`, `root.img.zst`,
  `bty.efi`), or one whose manifest was changed after it was signed;
- `Appliance` is the disk: GPT with an ESP (systemd-boot as the removable-media loader,
  `loader.conf` with `timeout 0`, slot A's blessed entry), `bty-a`, `bty-b` and `bty-state`
  (a seeded pattern), and what the test reads back from it after the VM powered off.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SD_BOOT = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
STUB = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
CMDLINE = "console=ttyS0 quiet panic=10"
ROOT_IMAGE_BYTES = 1 << 20
MIB = 1 << 20
ESP_MIB, SLOT_MIB, STATE_MIB = 64, 8, 8
ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1", TZ="UTC")


def run(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=True, capture_output=True, env=ENV, **kw)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- keys and UKIs ------------------------------------------------------------------------------

def keypair(d: str) -> tuple[str, str]:
    """A minisign key pair without a password: (public key file, secret key file)."""
    pub, sec = os.path.join(d, "minisign.pub"), os.path.join(d, "minisign.key")
    run("minisign", "-G", "-W", "-f", "-p", pub, "-s", sec)
    return pub, sec


def key_layer(d: str, pub: str) -> str:
    """A gzipped newc archive holding etc/ab/minisign.pub (appended to the base initramfs)."""
    tree = os.path.join(d, "key-layer")
    os.makedirs(os.path.join(tree, "etc", "ab"), exist_ok=True)
    shutil.copy(pub, os.path.join(tree, "etc", "ab", "minisign.pub"))
    cpio = os.path.join(d, "key-layer.cpio")
    run("python3", os.path.join(ROOT, "live", "newc.py"), tree, cpio)
    out = cpio + ".gz"
    with open(out, "wb") as f:
        subprocess.run(["gzip", "-9", "-n", "-c", cpio], stdout=f, check=True)
    return out


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def uki(out: str, version: str, kernel: str, initrds: list[str]) -> str:
    """A UKI of `version` from systemd's stub (its sections stay below 0x20000)."""
    d = tempfile.mkdtemp(prefix="bty-uki.")
    try:
        osrel = os.path.join(d, "osrel")
        with open(osrel, "w") as f:
            f.write(f'NAME="bty appliance"\nID=bty\nVERSION_ID={version}\nPRETTY_NAME="bty {version}"\n')
        cmdline = os.path.join(d, "cmdline")
        with open(cmdline, "w") as f:
            f.write(CMDLINE)
        initrd = os.path.join(d, "initrd")
        with open(initrd, "wb") as f:
            for p in initrds:  # the kernel unpacks concatenated archives in order
                with open(p, "rb") as part:
                    f.write(part.read())
        linux_at = 0x1000000
        initrd_at = _align(linux_at + os.path.getsize(kernel), 0x100000)
        run("objcopy",
            "--add-section", f".osrel={osrel}", "--change-section-vma", ".osrel=0x20000",
            "--add-section", f".cmdline={cmdline}", "--change-section-vma", ".cmdline=0x30000",
            "--add-section", f".linux={kernel}", "--change-section-vma", f".linux={linux_at:#x}",
            "--add-section", f".initrd={initrd}", "--change-section-vma", f".initrd={initrd_at:#x}",
            STUB, out)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return out


# --- releases -----------------------------------------------------------------------------------

def root_image(version: str, health: str) -> bytes:
    """A slot's contents: the header line the appliance's /init reads, then seeded filler."""
    head = f"bty-root {version} health={health}\n".encode()
    filler = random.Random(f"bty-root-{version}").randbytes(ROOT_IMAGE_BYTES - len(head))
    return head + filler


def release(base: str, version: str, health: str, uki_path: str, seckey: str,
            tamper: bool = False) -> dict:
    """Release `version` under `base`, signed with `seckey` (trusted comment `version=V type=os`).
    `tamper`: then its root image is swapped for another and the manifest's digest and size
    changed to match, after signing (what a compromised mirror would serve)."""
    d = os.path.join(base, version)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "root.img"), "wb") as f:
        f.write(root_image(version, health))
    run("zstd", "-q", "-f", "-19", "--no-progress", os.path.join(d, "root.img"),
        "-o", os.path.join(d, "root.img.zst"))
    os.remove(os.path.join(d, "root.img"))
    shutil.copy(uki_path, os.path.join(d, "bty.efi"))

    def entry(role: str, name: str) -> dict:
        data = open(os.path.join(d, name), "rb").read()
        return {"role": role, "name": name, "url": name, "sha256": sha256(data), "size": len(data)}

    manifest = {"version": version, "arch": "x86_64", "type": "os",
                "files": [entry("root", "root.img.zst"), entry("uki", "bty.efi")]}
    path = os.path.join(d, "manifest.json")
    with open(path, "w") as f:
        json.dump(manifest, f, indent=2)
    run("minisign", "-S", "-s", seckey, "-m", path, "-x", path + ".minisig",
        "-t", f"version={version} type=os")
    if tamper:
        with open(os.path.join(d, "root.img"), "wb") as f:
            f.write(root_image(version, "good").replace(b"health=good", b"health=evil"))
        run("zstd", "-q", "-f", "--no-progress", os.path.join(d, "root.img"),
            "-o", os.path.join(d, "root.img.zst"))
        os.remove(os.path.join(d, "root.img"))
        manifest["files"][0] = entry("root", "root.img.zst")
        with open(path, "w") as f:
            json.dump(manifest, f, indent=2)
    return manifest


def set_latest(base: str, version: str) -> None:
    with open(os.path.join(base, "latest"), "w") as f:
        f.write(version + "\n")


# --- the disk -----------------------------------------------------------------------------------

class Appliance:
    """The appliance's disk image: partitions 1 ESP, 2 bty-a, 3 bty-b, 4 bty-state."""

    PARTS = [  # (number, name, type code, MiB)
        (1, "ESP", "EF00", ESP_MIB), (2, "bty-a", "8304", SLOT_MIB),
        (3, "bty-b", "8304", SLOT_MIB), (4, "bty-state", "8300", STATE_MIB)]

    def __init__(self, path: str):
        self.path = path
        self.offsets: dict[str, tuple[int, int]] = {}  # name -> (byte offset, bytes)
        at = MIB
        for _, name, _, mib in self.PARTS:
            self.offsets[name] = (at, mib * MIB)
            at += mib * MIB
        self.size = at + MIB  # the backup GPT

    def make(self, esp_files: dict[str, str], slot_a: bytes, work: str) -> None:
        """GPT (fixed GUIDs), the ESP filled with mtools from `esp_files` (path in the ESP ->
        file), `slot_a` at the start of bty-a, bty-b zeros, bty-state a seeded pattern."""
        with open(self.path, "wb") as f:
            f.truncate(self.size)
        args = ["sgdisk", "-U", "6b7a0c1e-5c2b-4e8e-9f0a-b7e0000ab000"]
        for n, name, code, mib in self.PARTS:
            args += [f"-n{n}:0:+{mib}M", f"-t{n}:{code}", f"-c{n}:{name}",
                     f"-u{n}:6b7a0c1e-5c2b-4e8e-9f0a-b7e0000ab00{n}"]
        run(*args, self.path)
        for n, name, _, _ in self.PARTS:  # what sgdisk made is what this class reads
            info = run("sgdisk", "-i", str(n), self.path, text=True).stdout
            first = int(info.split("First sector: ")[1].split()[0])
            check_eq(first * 512, self.offsets[name][0], f"partition {name} starts where expected")
        esp = os.path.join(work, "esp.img")
        with open(esp, "wb") as f:
            f.truncate(ESP_MIB * MIB)
        run("mkfs.vfat", "-n", "BTY-ESP", "-i", "B7E0AB00", esp)
        dirs = sorted({os.path.dirname(p) for p in esp_files})
        made: set[str] = set()
        for dpath in dirs:
            parts = dpath.split("/")
            for i in range(1, len(parts) + 1):
                sub = "/".join(parts[:i])
                if sub and sub not in made:
                    run("mmd", "-i", esp, "::/" + sub)
                    made.add(sub)
        for dest, src in esp_files.items():
            run("mcopy", "-i", esp, src, "::/" + dest)
        with open(self.path, "r+b") as f:
            f.seek(self.offsets["ESP"][0])
            f.write(open(esp, "rb").read())
            f.seek(self.offsets["bty-a"][0])
            f.write(slot_a)
            f.seek(self.offsets["bty-state"][0])
            rng = random.Random("bty-state")
            f.write(b"bty-state: the appliance's own data, never touched by an update\n".ljust(4096, b"\0"))
            f.write(rng.randbytes(self.offsets["bty-state"][1] - 4096))
        os.remove(esp)

    def read(self, name: str, length: int | None = None) -> bytes:
        off, size = self.offsets[name]
        with open(self.path, "rb") as f:
            f.seek(off)
            return f.read(size if length is None else length)

    def esp_files(self, work: str) -> dict[str, str]:
        """Every file in the ESP: path -> SHA-256 (read with mtools, the VM powered off)."""
        esp = os.path.join(work, "esp-read.img")
        with open(esp, "wb") as f:
            f.write(self.read("ESP"))
        out = os.path.join(work, "esp-read")
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        names = run("mdir", "-i", esp, "-/", "-b", "::/", text=True).stdout.split()
        files = {}
        for n in names:
            if n.endswith("/"):
                continue
            tmp = os.path.join(out, "f")
            try:
                run("mcopy", "-n", "-i", esp, n, tmp)
            except subprocess.CalledProcessError:
                continue  # a directory (mdir -b prints them without a slash)
            if os.path.isdir(tmp):
                shutil.rmtree(tmp)
                continue
            files[n.removeprefix("::/")] = sha256(open(tmp, "rb").read())
            os.remove(tmp)
        os.remove(esp)
        shutil.rmtree(out, ignore_errors=True)
        return files

    def snapshot(self, work: str) -> dict:
        """What an update may or may not change: each slot's and the state's SHA-256, the ESP's files."""
        return {"bty-a": sha256(self.read("bty-a")), "bty-b": sha256(self.read("bty-b")),
                "bty-state": sha256(self.read("bty-state")), "esp": self.esp_files(work)}


def check_eq(got, want, what: str) -> None:
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")
