"""A content-addressed directory of the blobs the tests pushed, so a test can compare what it pulled byte for byte."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from tests.harness.oci import CHUNK, Descriptor, sha256_digest


class HashingWriter:
    """A write-only file object that hashes and counts what goes through it on the way to ``target``.

    ``tell()`` is there because tarfile asks for the position when it starts writing.
    """

    def __init__(self, target: BinaryIO) -> None:
        self._target = target
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self._target.write(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._target.flush()

    @property
    def digest(self) -> str:
        return f"sha256:{self._hash.hexdigest()}"


class BlobStore:
    """Blobs stored as ``<root>/sha256/<hex>``, written once each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        algorithm, _, hex_digest = digest.partition(":")
        return self.root / algorithm / hex_digest

    def read(self, digest: str) -> bytes:
        """Read a (small) blob whole. Big ones: open :meth:`path` and stream."""
        return self.path(digest).read_bytes()

    def add_bytes(self, data: bytes, media_type: str) -> Descriptor:
        digest = sha256_digest(data)
        path = self.path(digest)
        if not path.exists():
            path.write_bytes(data)
        return Descriptor(media_type, digest, len(data))

    def add_streamed(self, write: Callable[[HashingWriter], None], media_type: str) -> Descriptor:
        """Store what ``write`` writes, hashing it on the way, without ever holding it in memory."""
        temporary = self.root / f"incoming-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            with temporary.open("wb", buffering=CHUNK) as f:
                writer = HashingWriter(f)
                write(writer)
            temporary.replace(self.path(writer.digest))
        finally:
            temporary.unlink(missing_ok=True)
        return Descriptor(media_type, writer.digest, writer.size)
