"""Re-hashing the whole cache: finds blobs whose bytes no longer match their digest (disk or operator damage)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from storage.digest import Digest, InvalidDigest
from storage.paths import CLAIM_SUFFIX, PARTIAL_SUFFIX, blob_path

__all__ = ["Finding", "verify_blobs"]

_READ_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Finding:
    path: Path
    problem: str | None  # None: the blob is intact
    size: int
    removed: bool = False


def verify_blobs(root: Path, *, remove: bool) -> Iterator[Finding]:
    """One finding per file under ``<root>/blobs``; with ``remove``, corrupt blobs are deleted.

    A removed blob is simply a miss for the proxy: the next pull fetches it again.
    """
    blobs = root / "blobs"
    for algorithm in sorted(os.listdir(blobs)) if blobs.is_dir() else []:
        for directory, _dirs, files in os.walk(blobs / algorithm):
            for name in sorted(files):
                if name.endswith((PARTIAL_SUFFIX, CLAIM_SUFFIX)):
                    continue  # a write in progress and its claim (or left by a crash, swept at start-up)
                path = Path(directory, name)
                yield _check(root, path, algorithm, name, remove)


def _check(root: Path, path: Path, algorithm: str, name: str, remove: bool) -> Finding:
    try:
        digest = Digest.parse(f"{algorithm}:{name}")
    except InvalidDigest:
        return Finding(path, "not a blob of this cache (unexpected file name)", _size(path))
    if root / blob_path(digest) != path:
        return Finding(path, "blob in the wrong directory", _size(path))
    hasher = hashlib.new(digest.algorithm)
    size = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_READ_SIZE):
                hasher.update(chunk)
                size += len(chunk)
    except OSError as exc:
        return Finding(path, f"unreadable: {exc.strerror}", size)
    if hasher.hexdigest() == digest.hex:
        return Finding(path, None, size)
    removed = False
    if remove:
        try:
            os.unlink(path)
            removed = True
        except FileNotFoundError:
            removed = True
    return Finding(path, f"content hashes to {digest.algorithm}:{hasher.hexdigest()}", size, removed)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
