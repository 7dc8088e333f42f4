#!/usr/bin/env python3
"""Write a Linux initramfs (cpio "newc") from a directory, deterministically and without root.

    newc.py SRC_DIR OUT.cpio [--dev PATH:c|b:MAJOR:MINOR:MODE ...]

Every entry is owned by root with mtime 0 and is written in sorted order, so the same tree
gives the same bytes. `--dev` adds device nodes (e.g. dev/console) that an unprivileged build
cannot mknod: the kernel needs /dev/console in the initramfs to give /init a console.
"""
from __future__ import annotations

import os
import stat
import sys


def _header(ino: int, mode: int, nlink: int, size: int, rdevmajor: int, rdevminor: int,
            namesize: int) -> bytes:
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdevmajor, rdevminor, namesize, 0]
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def _pad(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


class Writer:
    def __init__(self, out):
        self.out = out
        self.ino = 721  # arbitrary start; only uniqueness matters

    def entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
              nlink: int = 1) -> None:
        nb = name.encode() + b"\0"
        self.ino += 1
        hdr = _header(self.ino, mode, nlink, len(data), rdev[0], rdev[1], len(nb))
        self.out.write(hdr + nb + _pad(len(hdr) + len(nb)))
        self.out.write(data + _pad(len(data)))

    def trailer(self) -> None:
        self.ino = -1
        nb = b"TRAILER!!!\0"
        hdr = _header(0, 0, 1, 0, 0, 0, len(nb))
        self.out.write(hdr + nb + _pad(len(hdr) + len(nb)))


def walk(src: str):
    for root, dirs, files in os.walk(src):
        dirs.sort()
        rel_root = os.path.relpath(root, src)
        names = sorted(dirs + files)
        for n in names:
            yield os.path.normpath(os.path.join(rel_root, n)), os.path.join(root, n)


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = argv[1], argv[2]
    devs = []
    rest = argv[3:]
    while rest:
        if rest[0] != "--dev" or len(rest) < 2:
            print(f"newc: bad argument {rest[0]!r}", file=sys.stderr)
            return 2
        path, kind, major, minor, mode = rest[1].split(":")
        devs.append((path.strip("/"), kind, int(major), int(minor), int(mode, 8)))
        rest = rest[2:]
    entries = sorted(walk(src))
    have = {e[0] for e in entries}
    with open(dst, "wb") as out:
        w = Writer(out)
        for rel, full in entries:
            st = os.lstat(full)
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                w.entry(rel, stat.S_IFDIR | perm, nlink=2)
            elif stat.S_ISLNK(st.st_mode):
                w.entry(rel, stat.S_IFLNK | 0o777, os.readlink(full).encode())
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    w.entry(rel, stat.S_IFREG | perm, f.read())
            else:
                print(f"newc: skipping special file {rel}", file=sys.stderr)
        for path, kind, major, minor, mode in devs:
            parent = os.path.dirname(path)
            if parent and parent not in have:
                w.entry(parent, stat.S_IFDIR | 0o755, nlink=2)
                have.add(parent)
            fmt = stat.S_IFCHR if kind == "c" else stat.S_IFBLK
            w.entry(path, fmt | mode, rdev=(major, minor))
        w.trailer()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
