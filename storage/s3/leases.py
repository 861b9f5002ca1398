"""Leases in the bucket: which replica fetches something from the upstream, and whether it is still alive.

Fills of blobs (:mod:`storage.s3.blobs`) and fetch locks on manifests (:mod:`storage.s3.locks`) both use them. A
lease is a small object (:mod:`storage.s3.layout`) created with ``If-None-Match: *``: of any number of replicas
creating it at once exactly one succeeds. Its holder rewrites it every ``heartbeat`` seconds with ``If-Match`` on
the version it wrote last (each body holds a random holder token and a counter, so every version has its own
ETag). Age is measured on the server's clock alone (the answer's ``Date`` less the lease's ``Last-Modified``),
so the replicas' clocks do not matter; both have one-second resolution, hence the second of slack in
:func:`is_stale`.

Taking over a stale lease is one conditional write: ``PutObject`` with ``If-Match`` on the stale version's ETag.
Of several replicas that find the same stale lease, exactly one succeeds; the others get 412 and follow the
winner. There is no moment without a lease, which a conditional delete followed by a create would have: a follower
polling then would see the lease gone with no blob and try to claim too (harmless, but one more upstream fetch).
A holder that was only slow, not dead, learns at its next heartbeat that its lease was taken (412) and stops
beating; it may still complete its upload, which is harmless: the content is verified and content-addressed,
and the completion is conditional (``If-None-Match: *``), so the first completion stays.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass

from storage.interfaces import StorageError
from storage.s3.objects import ObjectClient, PreconditionFailed

__all__ = ["Lease", "LeaseView", "read_lease", "take"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LeaseView:
    etag: str
    started: bool
    size: int | None
    age: float | None  # seconds since its holder last wrote it, on the server's clock (None: no Date header)

    def is_stale(self, heartbeat: float) -> bool:
        """Three heartbeats missed (plus the second the timestamps are rounded to): its holder is gone."""
        return self.age is not None and self.age > 3 * heartbeat + 1


async def read_lease(client: ObjectClient, key: str) -> LeaseView | None:
    found = await client.get(key)
    if found is None:
        return None
    data, info = found
    try:
        body = json.loads(data)
        started, size = bool(body.get("started")), body.get("size")
    except (ValueError, AttributeError):
        started, size = False, None  # not ours, or torn: treat as a lease that says nothing
    age = (info.server_now - info.modified).total_seconds() if info.server_now else None
    return LeaseView(info.etag, started, size if isinstance(size, int) else None, age)


async def take(client: ObjectClient, key: str, heartbeat: float, *, what: str = "lease") -> Lease | None:
    """The lease at ``key`` if it is free or its holder is gone; None while a live holder has it (or another
    replica took it just now). One round of a few requests, looking first (a GET is cheaper than a conditional PUT
    bound to fail): for a caller that found it held and tries again, as often as it sees fit.
    """
    lease = Lease(client, key, heartbeat, what=what)
    view = await read_lease(client, key)
    if view is None:
        # Released (or never there): whoever creates it now has it.
        return lease if await lease.create() else None
    if view.is_stale(heartbeat) and await lease.take_over(view.etag):
        log.info("took over the abandoned %s %s (%.0f s old)", what, key, view.age)
        return lease
    return None


class Lease:
    """The lease this process holds (or tries to take) on one fill or fetch; ``what`` names it in the log."""

    def __init__(self, client: ObjectClient, key: str, heartbeat: float, *, what: str = "fill lease") -> None:
        self.key = key
        self.what = what
        self._client = client
        self._heartbeat = heartbeat
        self._holder = secrets.token_hex(8)
        self._beat = 0
        self._started = False
        self._size: int | None = None
        self._etag: str | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.lost = False

    def _body(self) -> bytes:
        self._beat += 1
        fields = {"holder": self._holder, "beat": self._beat, "started": self._started, "size": self._size}
        return json.dumps(fields).encode()

    async def create(self) -> bool:
        """Take the lease if nobody holds it; False if someone does."""
        try:
            self._etag = await self._client.put(self.key, self._body(), if_none_match=True)
        except PreconditionFailed:
            return False
        self._start()
        return True

    async def take_over(self, stale_etag: str) -> bool:
        """Replace the stale version ``stale_etag`` with ours; False if it changed meanwhile (someone else won)."""
        try:
            self._etag = await self._client.put(self.key, self._body(), if_match=stale_etag)
        except PreconditionFailed:
            return False
        self._start()
        return True

    async def started(self, size: int | None) -> None:
        """The upstream answered: followers learn the size (one write now, not at the next beat)."""
        self._started, self._size = True, size
        await self._write()

    async def release(self) -> None:
        """Stop beating and delete the lease, unless it is someone else's by now."""
        # The lock first: a renewal cancelled while its write is in flight may still be applied by the server, and
        # the delete's If-Match would then miss the version it wrote, leaving the lease until it goes stale. Holding
        # the lock, the renewal task is asleep or waiting for it, never inside a write.
        async with self._lock:
            if self._task is not None:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
                self._task = None
            if self._etag is None or self.lost:
                return
            try:
                await self._client.delete(self.key, if_match=self._etag)
            except PreconditionFailed:
                pass  # taken over meanwhile: the new holder's
            except StorageError as exc:
                # Left behind, it goes stale and the next claim takes it over (or a sweep removes it).
                log.warning("cannot remove the %s %s: %s", self.what, self.key, exc)
            self._etag = None

    def _start(self) -> None:
        self._task = asyncio.create_task(self._beat_forever(), name=f"lease {self.key}")

    async def _beat_forever(self) -> None:
        while not self.lost:
            await asyncio.sleep(self._heartbeat)
            try:
                await self._write()
            except StorageError as exc:
                # The bucket is unreachable for now: try again next beat (followers wait 3 beats before taking over).
                log.warning("cannot renew the %s %s: %s", self.what, self.key, exc)

    async def _write(self) -> None:
        async with self._lock:
            if self._etag is None or self.lost:
                return
            try:
                self._etag = await self._client.put(self.key, self._body(), if_match=self._etag)
            except PreconditionFailed:
                # Another replica found our lease stale and took it over: the work goes on (a fill's result is
                # verified and content-addressed; a fetch only costs one more upstream request), but the lease is
                # no longer ours to renew or delete.
                self.lost = True
                log.warning("lost the %s %s to another replica", self.what, self.key)
