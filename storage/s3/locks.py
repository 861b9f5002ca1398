"""Fetch locks in an S3 bucket (:class:`storage.interfaces.FetchLocks`): one lease object per key.

The lease is a fill's (:mod:`storage.s3.leases`): created with ``If-None-Match: *``, renewed with ``If-Match``
while the upstream is slow to answer, taken over once its holder stopped renewing it, deleted when the holder is
done. A manifest usually comes back before the first renewal, so holding a lock costs two requests (the create and
the delete). A waiter polls the lease with GETs, backing off, and takes it when it is gone or stale; past
``max_wait`` it goes ahead without it (a second upstream request beats a stuck pull). If the bucket cannot be
reached, nobody waits for anybody: that only costs upstream requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from storage.interfaces import StorageError
from storage.s3.layout import lock_key, locks_prefix
from storage.s3.leases import Lease, read_lease, take
from storage.s3.objects import ObjectClient, PreconditionFailed

__all__ = ["S3FetchLocks"]

log = logging.getLogger(__name__)

# How often a holder renews its lock; waiters take it over after 3 missed beats (plus a second of clock rounding).
HEARTBEAT = 2.0
# Polling a held lock: first after this long, doubling up to _POLL_MAX (each poll is one GET).
_POLL_MIN = 0.05
_POLL_MAX = 0.25
_WHAT = "fetch lock"


class S3FetchLocks:
    def __init__(self, client: ObjectClient, *, max_wait: float = 30.0, heartbeat: float = HEARTBEAT) -> None:
        """``max_wait``: how long a waiter waits before it asks the upstream anyway (the holder may be stuck)."""
        self._client = client
        self._prefix = client.settings.prefix
        self._max_wait = max_wait
        self._heartbeat = heartbeat

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[bool]:
        name = lock_key(self._prefix, key)
        lease, waited = await self._acquire(name)
        try:
            yield waited
        finally:
            if lease is not None:
                await lease.release()

    async def _acquire(self, name: str) -> tuple[Lease | None, bool]:
        """The lease (None: going ahead without it), and whether another replica held it when this one asked."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait
        interval = _POLL_MIN
        waited = False
        try:
            mine = Lease(self._client, name, self._heartbeat, what=_WHAT)
            if await mine.create():
                return mine, waited
            # Held: even if it is free by the time we look again, its holder may have stored the answer meanwhile.
            waited = True
            lease: Lease | None = None
            # Bounded by time, and by count: every round but the last sleeps at least _POLL_MIN.
            for _ in range(int(self._max_wait / _POLL_MIN) + 1):
                lease = await take(self._client, name, self._heartbeat, what=_WHAT)
                remaining = deadline - loop.time()
                if lease is not None or remaining <= 0:
                    break
                await asyncio.sleep(min(interval, remaining))
                interval = min(interval * 2, _POLL_MAX)
        except StorageError as exc:
            log.warning("cannot take the %s %s, going ahead without it: %s", _WHAT, name, exc)
            return None, waited
        if lease is None:
            log.warning("waited %.0f s for the %s %s; asking the upstream anyway", self._max_wait, _WHAT, name)
        return lease, True

    async def sweep(self, spare_younger_than: float = 0.0) -> int:
        """Remove locks whose holders are gone (stale: 3 beats untouched) and untouched for ``spare_younger_than``
        seconds; how many. Each is removed only in the version found stale, so a lock just taken over stays."""
        cutoff = time.time() - max(spare_younger_than, 3 * self._heartbeat + 1)
        removed = 0
        async for key, _size, modified in self._client.list_objects(locks_prefix(self._prefix)):
            if modified.timestamp() >= cutoff:
                continue  # by this replica's clock; the server's clock decides below
            view = await read_lease(self._client, key)
            if view is None or not view.is_stale(self._heartbeat):
                continue
            try:
                await self._client.delete(key, if_match=view.etag)
            except PreconditionFailed:
                continue  # taken over meanwhile: held again
            removed += 1
        return removed
