#!/usr/bin/env python3
"""Builds a second initramfs archive that gives the busybox live environment Python and the
pinned cijoe (checks/out/cijoe, from checks/deps.sh), for the cijoe-offline VM scenario:

    /opt/cijoe/bin/python3.X        the interpreter cijoe's virtual environment was made with
    /opt/cijoe/lib/python3.X/...    the standard library and site-packages cijoe uses
    /opt/cijoe/lib/*.so*, /lib64/   the shared libraries they link (the initramfs has no libc)
    /bin/cijoe                      PYTHONHOME=/opt/cijoe … -m cijoe

The kernel unpacks concatenated archives in order, so `cat initrd.gz cijoe.cpio.gz` is a live
environment with cijoe (iPXE loads it as one initrd). What to carry is learnt by running cijoe
here on a passing and a failing task and keeping every package that imported (whole), the
standard library's top-level modules and C extensions; the Nix live environment packages cijoe
as a whole instead.

Usage: checks/live/cijoe-layer.py OUT.cpio.gz
"""
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VENV = os.path.join(ROOT, "checks", "out", "cijoe")
NEWC = os.path.join(ROOT, "live", "newc.py")

PROBE = r"""
import sys, atexit
MODS = sys.argv[1]
def dump():
    with open(MODS, "a") as f:
        for m in list(sys.modules.values()):
            p = getattr(m, "__file__", None)
            if p:
                f.write(p + "\n")
atexit.register(dump)
sys.argv = ["cijoe", sys.argv[2], "-c", sys.argv[3], "-o", sys.argv[4], "--monitor"]
from cijoe.cli.cli import main
sys.exit(main())
"""


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = os.path.abspath(sys.argv[1])
    py = os.path.join(VENV, "bin", "python3")
    if not os.path.exists(py):
        print("cijoe-layer: checks/out/cijoe is missing; run checks/deps.sh", file=sys.stderr)
        return 1
    info = run([py, "-c", "import sys, sysconfig; print(sys.base_prefix); print(sysconfig.get_paths()['stdlib']);"
                         "print(sysconfig.get_paths()['purelib']); print('%d.%d' % sys.version_info[:2]);"
                         "print(sys._base_executable)"]).split("\n")
    base_prefix, stdlib, purelib, ver, exe = info[:5]
    exe = os.path.realpath(exe)
    with tempfile.TemporaryDirectory(prefix="bty-cijoe-layer.") as work:
        mods = os.path.join(work, "modules.txt")
        target = os.path.join(work, "target")
        os.makedirs(target)
        cfg = os.path.join(work, "bty.toml")
        open(cfg, "w").write(f'[bty]\nmac = "52:54:00:00:00:01"\ntarget_root = "{target}"\n')
        for i, task in enumerate([
            "doc: probe\nsteps:\n- name: write\n  run: echo ok > {{ config.bty.target_root }}/ok\n",
            "doc: probe\nsteps:\n- name: fail\n  run: 'false'\n- name: after\n  run: 'true'\n",
        ]):
            t = os.path.join(work, f"task{i}.yaml")
            open(t, "w").write(task)
            r = subprocess.run([py, "-c", PROBE, mods, t, cfg, os.path.join(work, f"out{i}")], cwd=work,
                               capture_output=True, text=True)
            if not os.path.exists(mods):
                print(f"cijoe-layer: the probe run of cijoe failed:\n{r.stderr[-2000:]}", file=sys.stderr)
                return 1
        used = {os.path.realpath(p) for p in open(mods).read().split()}

        root = os.path.join(work, "root")
        opt = os.path.join(root, "opt", "cijoe")
        lib = os.path.join(opt, "lib", f"python{ver}")
        site = os.path.join(lib, "site-packages")
        os.makedirs(site)
        os.makedirs(os.path.join(opt, "bin"))
        skip = shutil.ignore_patterns("test", "tests", "idle_test")
        # The standard library: every top-level module, every package something imported,
        # every C extension.
        stdlib = os.path.realpath(stdlib)
        for name in os.listdir(stdlib):
            src = os.path.join(stdlib, name)
            if name.endswith(".py"):
                shutil.copy2(src, os.path.join(lib, name))
            elif name == "lib-dynload":
                # No Tk, no test modules: they pull in libraries nothing here uses.
                shutil.copytree(src, os.path.join(lib, name), ignore=shutil.ignore_patterns("_tkinter*", "_test*", "xxlimited*"))
            elif os.path.isdir(src) and name not in ("site-packages", "__pycache__") and \
                    any(u.startswith(src + os.sep) for u in used):
                shutil.copytree(src, os.path.join(lib, name), ignore=skip)
        # site-packages: the packages something imported (whole), their metadata.
        purelib = os.path.realpath(purelib)
        for name in os.listdir(purelib):
            src = os.path.join(purelib, name)
            stem = name.split(".")[0]
            imported = any(u == src or u.startswith(src + os.sep) for u in used) or \
                any(os.path.basename(u).split(".")[0] == stem and os.path.dirname(u) == purelib for u in used)
            if name.endswith(".dist-info") or imported:
                if os.path.isdir(src):
                    shutil.copytree(src, os.path.join(site, name), ignore=skip)
                else:
                    shutil.copy2(src, os.path.join(site, name))
        shutil.copy2(exe, os.path.join(opt, "bin", f"python{ver}"))
        # Shared libraries of the interpreter and every extension module.
        elves = [exe] + [os.path.join(d, f) for d, _, fs in os.walk(opt) for f in fs if ".so" in f]
        libs = set()
        for e in elves:
            r = subprocess.run(["ldd", e], capture_output=True, text=True)
            for line in r.stdout.splitlines():
                parts = line.split("=>")
                path = (parts[1] if len(parts) == 2 else parts[0]).split("(")[0].strip()
                if path.startswith("/"):
                    libs.add(path)
        os.makedirs(os.path.join(root, "lib64"))
        for p in sorted(libs):
            if os.path.basename(p).startswith("ld-linux"):
                shutil.copy2(os.path.realpath(p), os.path.join(root, "lib64", os.path.basename(p)))
            else:
                shutil.copy2(os.path.realpath(p), os.path.join(opt, "lib", os.path.basename(p)))
        # Debug symbols are most of libpython's size: not needed to run.
        for d, _, fs in os.walk(root):
            for f in fs:
                p = os.path.join(d, f)
                if ".so" in f or f.startswith("python"):
                    subprocess.run(["strip", "--strip-unneeded", p], capture_output=True)
        os.makedirs(os.path.join(root, "bin"))
        wrapper = os.path.join(root, "bin", "cijoe")
        open(wrapper, "w").write(
            "#!/bin/sh\n# cijoe from the layer checks/live/cijoe-layer.py builds\n"
            "export PYTHONHOME=/opt/cijoe LD_LIBRARY_PATH=/opt/cijoe/lib PYTHONDONTWRITEBYTECODE=1\n"
            f"exec /opt/cijoe/bin/python{ver} -c 'import sys; from cijoe.cli.cli import main; "
            "sys.argv[0] = \"cijoe\"; sys.exit(main())' \"$@\"\n")
        os.chmod(wrapper, 0o755)
        cpio = os.path.join(work, "layer.cpio")
        subprocess.run([sys.executable, NEWC, root, cpio], check=True)
        with open(out + ".tmp", "wb") as f:
            subprocess.run(["gzip", "-6", "-n", "-c", cpio], stdout=f, check=True)
        os.replace(out + ".tmp", out)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
        print(f"cijoe-layer: {out} ({os.path.getsize(out) >> 20} MiB, {size >> 20} MiB unpacked, "
              f"Python {ver}, {len(libs)} shared libraries)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
