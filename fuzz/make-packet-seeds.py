#!/usr/bin/env python3
"""Seeds for the tftp and dhcp targets: the packets PXE firmware, iPXE and
other clients send (EDK2's size probe, iPXE's DHCP with its user class, a
relayed DISCOVER, the 4011 REQUEST), written by hand from the RFCs since no
tool here writes them to files. Called by make-seeds.sh.

    make-packet-seeds.py SEEDS_DIR
"""

import os
import struct
import sys

seeds_dir = sys.argv[1]


def tftp(name, mode, opts, op=1):
    b = struct.pack(">H", op) + name.encode() + b"\0" + mode.encode() + b"\0"
    for k, v in opts:
        b += k.encode() + b"\0" + v.encode() + b"\0"
    return b


def dhcp(msgtype, opts, ciaddr=b"\0" * 4, giaddr=b"\0" * 4, op=1):
    h = bytes([op, 1, 6, 0]) + struct.pack(">IHH", 0x12345678, 0, 0x8000) + ciaddr + b"\0" * 8 + giaddr
    h += bytes([0x52, 0x54, 0, 0x12, 0x34, 0x56]) + b"\0" * 10 + b"\0" * 64 + b"\0" * 128 + bytes([99, 130, 83, 99])
    o = bytes([53, 1, msgtype])
    for c, v in opts:
        o += bytes([c, len(v)]) + v
    return h + o + b"\xff"


uuid = bytes([0]) + bytes(range(16))
corpora = {
    "tftp": {
        "rrq-edk2-probe": tftp("snponly.efi", "octet", [("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")]),
        "rrq-plain": tftp("undionly.kpxe", "octet", []),
        "rrq-options": tftp("/ipxe.efi", "OCTET", [("BLKSIZE", "65464"), ("timeout", "3"), ("tsize", "0"), ("unknown", "x")]),
        "wrq": tftp("x", "netascii", [], op=2),
        "ack": struct.pack(">HH", 4, 65535),
        "error-8": struct.pack(">HH", 5, 8) + b"User aborted the transfer\0",
        "data": struct.pack(">HH", 3, 1) + b"abc",
        "oack": struct.pack(">H", 6) + b"blksize\x001468\x00",
    },
    "dhcp": {
        "discover-bios": dhcp(1, [(60, b"PXEClient:Arch:00000:UNDI:002001"), (93, b"\0\0"), (97, uuid)]),
        "discover-efi": dhcp(1, [(60, b"PXEClient:Arch:00007:UNDI:003000"), (93, b"\0\x07"), (94, b"\x01\x03\x00")]),
        "discover-http": dhcp(1, [(60, b"HTTPClient:Arch:00016:UNDI:003001"), (93, b"\0\x10")]),
        "discover-ipxe": dhcp(1, [(60, b"PXEClient:Arch:00000:UNDI:002001"), (93, b"\0\0"), (77, b"iPXE"), (175, b"\x13\x01\x01")]),
        "request-4011": dhcp(3, [(60, b"PXEClient:Arch:00007:UNDI:003000"), (93, b"\0\x07")], ciaddr=bytes([192, 168, 77, 120])),
        "relayed": dhcp(1, [(60, b"PXEClient"), (93, b"\0\x09")], giaddr=bytes([10, 0, 0, 1])),
        "reply": dhcp(2, [(54, bytes([10, 0, 0, 1]))], op=2),
    },
}
for target, seeds in corpora.items():
    os.makedirs(os.path.join(seeds_dir, target), exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(seeds_dir, target, name), "wb") as f:
            f.write(data)
