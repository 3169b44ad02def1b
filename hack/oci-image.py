#!/usr/bin/env python3
"""Writes a single-layer OCI image archive (an OCI layout in a tar) from local files, without
Docker or a registry: the layer is a reproducible tar (mtime 0, numeric owners, sorted), the
config names entrypoint, cmd, user, exposed ports and labels, and index.json carries the
`io.containerd.image.name` annotation so `ctr images import` names the image.

  hack/oci-image.py --name NAME --out ARCHIVE [--entrypoint JSON] [--cmd JSON] [--user U:G]
      [--expose PORT]... [--label K=V]... [--env K=V]...
      (--file SRC:DST[:MODE] | --dir DST[:MODE[:UID:GID]] | --text DST:MODE:CONTENT)...
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import tarfile


def layer(entries):
    """A gzip-compressed tar of the entries, byte for byte the same on every run."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = set()
        for path, _, _ in entries:
            parts = path.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        explicit = {p.strip("/") for p, kind, _ in entries if kind == "dir"}
        for d in sorted(dirs - explicit):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for path, kind, (mode, data, *owner) in sorted(entries, key=lambda e: e[0]):
            info = tarfile.TarInfo(path.strip("/"))
            uid, gid = owner if owner else (0, 0)
            info.mtime, info.uid, info.gid, info.mode = 0, uid, gid, mode
            info.uname = info.gname = ""
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    diff = raw.getvalue()
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0) as gz:
        gz.write(diff)
    return diff, compressed.getvalue()


def blob(tar, data):
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--entrypoint")
    p.add_argument("--cmd")
    p.add_argument("--user")
    p.add_argument("--workdir", default="/")
    p.add_argument("--expose", action="append", default=[])
    p.add_argument("--label", action="append", default=[])
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--file", action="append", default=[])
    p.add_argument("--dir", action="append", default=[])
    p.add_argument("--text", action="append", default=[])
    a = p.parse_args()

    entries = []
    for spec in a.file:
        src, dst, *mode = spec.split(":")
        with open(src, "rb") as f:
            data = f.read()
        entries.append((dst, "file", (int(mode[0], 8) if mode else 0o755, data)))
    for spec in a.dir:
        dst, *rest = spec.split(":")
        mode = int(rest[0], 8) if rest else 0o755
        owner = (int(rest[1]), int(rest[2])) if len(rest) == 3 else (0, 0)
        entries.append((dst, "dir", (mode, b"", *owner)))
    for spec in a.text:
        dst, mode, content = spec.split(":", 2)
        entries.append((dst, "file", (int(mode, 8), content.encode())))
    diff, compressed = layer(entries)

    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": a.user or "",
            "WorkingDir": a.workdir,
            "Env": a.env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "ExposedPorts": {f"{port}/tcp": {} for port in a.expose},
            "Labels": dict(l.split("=", 1) for l in a.label),
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(diff).hexdigest()]},
        "history": [{"created_by": "hack/oci-image.py"}],
    }
    if a.entrypoint:
        config["config"]["Entrypoint"] = json.loads(a.entrypoint)
    if a.cmd:
        config["config"]["Cmd"] = json.loads(a.cmd)
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()

    tmp = a.out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        layer_digest = blob(tar, compressed)
        config_digest = blob(tar, config_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config_bytes),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest,
                    "size": len(compressed),
                }
            ],
        }
        manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        manifest_digest = blob(tar, manifest_bytes)
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": len(manifest_bytes),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": a.name,
                        "org.opencontainers.image.ref.name": a.name.rsplit(":", 1)[-1],
                    },
                }
            ],
        }
        for name, data in (
            ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
            ("index.json", json.dumps(index, sort_keys=True).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, a.out)
    print(manifest_digest)


if __name__ == "__main__":
    main()
