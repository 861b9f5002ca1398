"""Fetch locks on a filesystem (:class:`storage.interfaces.FetchLocks`): one ``flock``-ed file per key.

``<root>/locks/<hh>/<hash>.lock`` (:mod:`storage.paths`), created by the holder and removed when it is done; a waiter
polls, as ``flock`` cannot wait with a timeout and a blocking wait would hold a worker thread.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from storage.leases import lock_file, release_lock_file
from storage.paths import lock_path

__all__ = ["NO_FETCH_LOCKS", "FilesystemFetchLocks", "NoFetchLocks"]

# Polling a held lock: first after this long, doubling up to _POLL_MAX.
_POLL_MIN = 0.005
_POLL_MAX = 0.1


class FilesystemFetchLocks:
    def __init__(self, root: Path, max_wait: float = 30.0) -> None:
        """``max_wait``: how long a waiter waits before it asks the upstream anyway (the holder may be stuck)."""
        self._root = root
        self._max_wait = max_wait

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[bool]:
        path = self._root / lock_path(hashlib.sha256(key.encode()).hexdigest())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait
        waited = False
        interval = _POLL_MIN
        fd = await self._try(path)
        while fd is _HELD_ELSEWHERE and loop.time() < deadline:
            waited = True
            await asyncio.sleep(interval)
            interval = min(interval * 2, _POLL_MAX)
            fd = await self._try(path)
        try:
            yield waited
        finally:
            if isinstance(fd, int):
                await asyncio.to_thread(release_lock_file, path, fd)

    async def _try(self, path: Path) -> int | _Outcome:
        """The descriptor of the held lock; _HELD_ELSEWHERE; or _UNAVAILABLE when locks cannot be had at all (an
        unusable cache root): then nobody waits for anybody, which only costs upstream requests."""
        try:
            return await asyncio.to_thread(_try_lock, path)
        except OSError:
            return _Outcome.UNAVAILABLE


class _Outcome(enum.Enum):
    HELD_ELSEWHERE = "held elsewhere"
    UNAVAILABLE = "unavailable"


_HELD_ELSEWHERE = _Outcome.HELD_ELSEWHERE


def _try_lock(path: Path) -> int | _Outcome:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, held = lock_file(path)
    if held:
        return fd
    os.close(fd)
    return _Outcome.HELD_ELSEWHERE


class NoFetchLocks:
    """For a process alone on its storage (and tests): nothing to wait for."""

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[bool]:
        yield False


NO_FETCH_LOCKS = NoFetchLocks()
