"""Layers, image configs and manifests made from bytes, deterministically (same input, same digests)."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from tests.harness.blobstore import BlobStore, HashingWriter
from tests.harness.oci import CHUNK, Descriptor, Platform, sha256_digest

# Fixed timestamps make the tar headers, gzip headers and configs, and so every digest, the same on every run.
EPOCH_MTIME = 0
CREATED = "2024-01-01T00:00:00Z"


@dataclass(frozen=True)
class Layer:
    descriptor: Descriptor
    diff_id: str
    """Digest of the uncompressed tar, as the config's ``rootfs.diff_ids`` lists it."""


def tar_bytes(files: Mapping[str, bytes]) -> bytes:
    """A tar of regular files, sorted by name, owned by root, dated 1970."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            data = files[name]
            tar.addfile(_file_info(name, len(data)), io.BytesIO(data))
    return buffer.getvalue()


def gzip_layer(store: BlobStore, files: Mapping[str, bytes], media_type: str) -> Layer:
    """A small gzip-compressed layer, built in memory."""
    tar = tar_bytes(files)
    # mtime=0 and no file name in the gzip header: the compressed bytes depend on the content only.
    descriptor = store.add_bytes(gzip.compress(tar, compresslevel=6, mtime=EPOCH_MTIME), media_type)
    return Layer(descriptor, sha256_digest(tar))


def rootfs_layer(
    store: BlobStore,
    media_type: str,
    *,
    executables: Mapping[str, bytes],
    files: Mapping[str, bytes] | None = None,
    symlinks: Mapping[str, str] | None = None,
) -> Layer:
    """A small gzip layer a container can run from: ``executables`` (mode 0755), ``files`` (0644) and ``symlinks``
    (path → target), with a 0755 directory entry for every parent, all sorted by name, owned by root, dated 1970.

    Parent directories get entries of their own because runtimes extract layers as given: without one, ``bin/``
    would be created with whatever mode and owner the extracting tool picks.
    """
    regular = {**(files or {}), **executables}
    links = dict(symlinks or {})
    paths = [*regular, *links]
    directories = {"/".join(path.split("/")[:n]) for path in paths for n in range(1, path.count("/") + 1)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        # Sorted, so a directory comes before what it holds and the bytes do not depend on dict order.
        for name in sorted({*directories, *paths}):
            if name in directories:
                tar.addfile(_entry_info(name + "/", tarfile.DIRTYPE, 0o755))
            elif name in links:
                info = _entry_info(name, tarfile.SYMTYPE, 0o777)
                info.linkname = links[name]
                tar.addfile(info)
            else:
                data = regular[name]
                info = _file_info(name, len(data))
                info.mode = 0o755 if name in executables else 0o644
                tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    descriptor = store.add_bytes(gzip.compress(data, compresslevel=6, mtime=EPOCH_MTIME), media_type)
    return Layer(descriptor, sha256_digest(data))


def random_tar_layer(store: BlobStore, size: int, media_type: str, name: str = "random.bin") -> Layer:
    """An uncompressed tar layer holding one file of ``size`` random bytes, streamed straight to disk.

    Uncompressed on purpose: random data does not compress, and gzip would only cost seconds at seeding.
    """

    def write(out: HashingWriter) -> None:
        # In "w" mode tarfile only ever calls write() and tell(), which is all HashingWriter has.
        target = cast(BinaryIO, out)
        with tarfile.TarFile(fileobj=target, mode="w", format=tarfile.USTAR_FORMAT, copybufsize=CHUNK) as tar:
            tar.addfile(_file_info(name, size), _RandomReader(size))

    descriptor = store.add_streamed(write, media_type)
    # An uncompressed layer is its own diff.
    return Layer(descriptor, descriptor.digest)


def image_config(
    store: BlobStore,
    media_type: str,
    platform: Platform,
    layers: Sequence[Layer],
    *,
    labels: Mapping[str, str] | None = None,
    cmd: Sequence[str] = ("/bin/sh",),
) -> Descriptor:
    """An image config; the Docker and OCI config formats agree on every field used here."""
    config: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "created": CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": list(cmd),
            "Labels": dict(labels or {}),
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": CREATED, "created_by": "tests.harness"} for _ in layers],
    }
    if platform.variant:
        config["variant"] = platform.variant
    return store.add_bytes(_json_bytes(config), media_type)


def image_manifest(media_type: str, config: Descriptor, layers: Sequence[Layer]) -> bytes:
    """An OCI image manifest or Docker schema2 manifest: the two have the same shape."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.to_json(),
        "layers": [layer.descriptor.to_json() for layer in layers],
    }
    return _json_bytes(manifest)


def index_manifest(media_type: str, children: Sequence[Descriptor]) -> bytes:
    """An OCI image index or Docker manifest list over already pushed child manifests."""
    if any(child.platform is None for child in children):
        raise ValueError("every entry of an index needs a platform")
    return _json_bytes({"schemaVersion": 2, "mediaType": media_type, "manifests": [c.to_json() for c in children]})


def _json_bytes(value: dict[str, Any]) -> bytes:
    # Indented like the manifests that docker and buildx push, so byte-for-byte comparisons are meaningful.
    return json.dumps(value, indent=3).encode("utf-8")


def _file_info(name: str, size: int) -> tarfile.TarInfo:
    info = _entry_info(name, tarfile.REGTYPE, 0o644)
    info.size = size
    return info


def _entry_info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime = EPOCH_MTIME
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


class _RandomReader:
    """A file-like source of ``size`` random bytes, read in whatever chunks the consumer asks for."""

    def __init__(self, size: int) -> None:
        self._remaining = size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._remaining:
            n = self._remaining
        self._remaining -= n
        return os.urandom(n)
