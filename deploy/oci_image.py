#!/usr/bin/env python3
"""Write bty-web's container image as an OCI archive (an OCI image layout in a tar, what
`podman load -i` and `skopeo copy oci-archive:` read), without Docker, buildah or Nix.

Reproducible: one layer whose tar lists its entries in a fixed order with fixed owners, modes
and timestamps (SOURCE_DATE_EPOCH, default 0), gzip without a name or time, JSON with sorted
keys. The same inputs give the same bytes, so the same commit gives the same image digest.

  deploy/oci_image.py --bty-web PATH --bty PATH --version V --out FILE.oci.tar
                      --source URL --license SPDX [--revision SHA] [--ca-bundle PATH]

Prints the image's manifest digest (sha256:...) on stdout.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

UID = GID = 10001  # the image's non-root user, `bty`
STATE = "/var/lib/bty"
CACHE = "/var/cache/bty"


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class Layer:
    """A tar built in memory, every header fixed but the ones given."""

    def __init__(self, mtime: int):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)
        self.mtime = mtime
        self.seen = set()

    def _info(self, name: str, kind, mode: int, uid: int, gid: int, size: int = 0) -> tarfile.TarInfo:
        t = tarfile.TarInfo(name.lstrip("/"))
        t.type, t.mode, t.uid, t.gid, t.size, t.mtime = kind, mode, uid, gid, size, self.mtime
        t.uname = t.gname = ""
        return t

    def dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0):
        # Parents first, each once.
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in self.seen:
                self.seen.add(parent)
                self.tar.addfile(self._info(parent, tarfile.DIRTYPE, 0o755, 0, 0))
        name = path.strip("/")
        if name not in self.seen:
            self.seen.add(name)
            self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, uid, gid))

    def file(self, path: str, data: bytes, mode: int = 0o644):
        self.dir(os.path.dirname(path))
        self.tar.addfile(self._info(path, tarfile.REGTYPE, mode, 0, 0, len(data)), io.BytesIO(data))

    def symlink(self, path: str, target: str):
        self.dir(os.path.dirname(path))
        t = self._info(path, tarfile.SYMTYPE, 0o777, 0, 0)
        t.linkname = target
        self.tar.addfile(t)

    def finish(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bty-web", required=True)
    ap.add_argument("--bty", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--revision", default="")
    ap.add_argument("--source", required=True)
    ap.add_argument("--license", required=True)
    ap.add_argument("--ca-bundle", default="/etc/ssl/certs/ca-certificates.crt")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    layer = Layer(epoch)
    # /run/secrets: where compose and podman mount secrets.
    for d in ("etc", "run", "run/secrets", "tmp", "usr/local/bin", "etc/ssl/certs"):
        layer.dir(d, 0o1777 if d == "tmp" else 0o755)
    layer.file("/etc/passwd", b"root:x:0:0:root:/root:/sbin/nologin\n"
                              b"bty:x:10001:10001:bty-web:/var/lib/bty:/sbin/nologin\n")
    layer.file("/etc/group", b"root:x:0:\nbty:x:10001:\n")
    # Static glibc resolves names through these two only.
    layer.file("/etc/nsswitch.conf", b"hosts: files dns\npasswd: files\ngroup: files\n")
    layer.file("/etc/hosts", b"127.0.0.1 localhost\n::1 localhost\n")
    with open(a.ca_bundle, "rb") as f:
        layer.file("/etc/ssl/certs/ca-certificates.crt", f.read())
    for name, src in (("bty-web", a.bty_web), ("bty", a.bty)):
        with open(src, "rb") as f:
            layer.file(f"/usr/local/bin/{name}", f.read(), 0o755)
    # The volumes, owned by the user the server runs as.
    layer.dir(STATE, 0o750, UID, GID)
    layer.dir(CACHE, 0o750, UID, GID)
    raw = layer.finish()

    gz = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=0, compresslevel=9) as g:
        g.write(raw)
    blob = gz.getvalue()
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    layer_digest = "sha256:" + hashlib.sha256(blob).hexdigest()

    # The platform the binaries were built for (the build host's).
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    created = "1970-01-01T00:00:00Z" if epoch == 0 else \
        __import__("datetime").datetime.fromtimestamp(epoch, __import__("datetime").timezone.utc) \
        .strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = {
        "org.opencontainers.image.title": "bty-web",
        "org.opencontainers.image.description": "bty's provisioning server (bty-web) and the bty CLI",
        "org.opencontainers.image.version": a.version,
        "org.opencontainers.image.source": a.source,
        "org.opencontainers.image.licenses": a.license,
        "org.opencontainers.image.created": created,
    }
    if a.revision:
        labels["org.opencontainers.image.revision"] = a.revision
    config = {
        "architecture": arch,
        "os": "linux",
        "created": created,
        "config": {
            "User": f"{UID}:{GID}",
            "Entrypoint": ["/usr/local/bin/bty-web"],
            "Cmd": [],
            "WorkingDir": STATE,
            "Env": [
                "PATH=/usr/local/bin",
                f"BTY_PATHS_STATE_DIR={STATE}",
                f"BTY_PATHS_CACHE_DIR={CACHE}",
                "BTY_SERVER_HOST=0.0.0.0",
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
            ],
            "ExposedPorts": {"8080/tcp": {}, "69/udp": {}, "67/udp": {}, "4011/udp": {}},
            "Volumes": {STATE: {}, CACHE: {}},
            "StopSignal": "SIGTERM",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "deploy/oci_image.py: bty-web, bty, CA certificates"}],
    }
    config_bytes = canonical(config)
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest,
                    "size": len(blob)}],
        "annotations": labels,
    }
    manifest_bytes = canonical(manifest)
    manifest_digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": len(manifest_bytes),
            "platform": {"architecture": arch, "os": "linux"},
            # What `podman load` names the image.
            "annotations": {"org.opencontainers.image.ref.name": f"localhost/bty-web:{a.version}"},
        }],
    }

    out = Layer(epoch)
    out.file("oci-layout", canonical({"imageLayoutVersion": "1.0.0"}))
    out.file("index.json", canonical(index))
    for digest, data in sorted([(config_digest, config_bytes), (layer_digest, blob),
                                (manifest_digest, manifest_bytes)]):
        out.file("blobs/sha256/" + digest.split(":")[1], data)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    tmp = a.out + ".partial"
    with open(tmp, "wb") as f:
        f.write(out.finish())
    os.replace(tmp, a.out)
    print(manifest_digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
