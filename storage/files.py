"""Low-level file operations shared by the filesystem backend: atomic writes, fsync, positional reads.

Blocking system calls run in worker threads so that the event loop keeps serving other clients.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import aiofiles
import aiofiles.os

from storage.interfaces import StorageError
from storage.leases import claim_is_held, remove_free_claim, take_read_lease
from storage.paths import CLAIM_SUFFIX, LOCK_SUFFIX, LOCKS, PARTIAL_SUFFIX, partial_name

__all__ = [
    "FileReader",
    "Leftover",
    "fsync_dir",
    "leftover_partials",
    "new_partial_path",
    "sweep_partials",
    "write_atomic",
]


def new_partial_path(final: Path) -> Path:
    return final.with_name(partial_name(final.name, secrets.token_hex(8)))


def fsync_dir(path: Path) -> None:
    # A rename is only durable once the directory entry is; without this a crash can lose a committed file.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def write_atomic(final: Path, data: bytes) -> None:
    """Write ``data`` to ``final`` so that readers see either the old file or the whole new one."""
    partial = new_partial_path(final)
    try:
        await aiofiles.os.makedirs(final.parent, exist_ok=True)
        async with aiofiles.open(partial, "xb") as f:
            await f.write(data)
            await f.flush()
            await asyncio.to_thread(os.fsync, f.fileno())
        await aiofiles.os.replace(partial, final)
        await asyncio.to_thread(fsync_dir, final.parent)
    except BaseException as exc:
        await asyncio.to_thread(_unlink_quietly, partial)
        if isinstance(exc, OSError):
            raise StorageError(f"cannot write {final.name}: {exc.strerror or exc}") from exc
        raise


def sweep_partials(root: Path, spare_younger_than: float = 0.0) -> int:
    """Delete in-progress files under ``root`` at start-up: all of them when this process is the cache's only writer,
    else those untouched for ``spare_younger_than`` seconds (a running write touches its file with every chunk).

    Never a fill's partial file while a process holds its claim (another process, or another instance on this
    cache, is filling it), and claim and fetch lock files only once free (:mod:`storage.claims`, :mod:`storage.locks`).
    """
    cutoff = time.time() - spare_younger_than
    removed = 0
    locks = root / LOCKS
    for directory, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith(CLAIM_SUFFIX) or (name.endswith(LOCK_SUFFIX) and Path(directory).parent == locks):
                removed += remove_free_claim(Path(directory, name))
            elif name.endswith(PARTIAL_SUFFIX):
                path = Path(directory, name)
                if claim_is_held(path.with_name(name.removesuffix(PARTIAL_SUFFIX) + CLAIM_SUFFIX)):
                    continue
                if spare_younger_than > 0:
                    try:
                        if path.stat().st_mtime >= cutoff:
                            continue
                    except OSError:
                        continue
                _unlink_quietly(path)
                removed += 1
    return removed


@dataclass(frozen=True)
class Leftover:
    path: Path
    size: int
    modified: float  # seconds since the epoch


def leftover_partials(root: Path, older_than: float) -> list[Leftover]:
    """In-progress files under ``root`` last written before ``older_than`` (seconds since the epoch).

    A running write touches its file with every chunk, so one untouched for a while has no writer left; unlike
    :func:`sweep_partials` this is safe while the server runs.
    """
    found: list[Leftover] = []
    for directory, _dirs, files in os.walk(root):
        for name in files:
            if not name.endswith(PARTIAL_SUFFIX):
                continue
            path = Path(directory, name)
            if claim_is_held(path.with_name(name.removesuffix(PARTIAL_SUFFIX) + CLAIM_SUFFIX)):
                continue  # a fill is running (waiting on a slow upstream, perhaps): not a leftover
            try:
                st = path.stat()
            except OSError:
                continue  # finished or removed meanwhile
            if st.st_mtime < older_than:
                found.append(Leftover(path, st.st_size, st.st_mtime))
    return sorted(found, key=lambda leftover: leftover.path)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # already gone, or never created (its directory could not be)


class FileReader:
    """Positional reads on an open file descriptor, under a read lease; safe while another task appends to it."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def open(cls, path: Path) -> FileReader:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        # Held until close: eviction leaves a file alone while anyone reads it (storage.leases).
        take_read_lease(fd)
        return cls(fd)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def fileno(self) -> int | None:
        return self._fd if self._fd >= 0 else None

    async def read(self, offset: int, length: int) -> bytes:
        if self._fd < 0:
            raise ValueError("read from a closed reader")
        return await asyncio.to_thread(os.pread, self._fd, length, offset)

    async def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
