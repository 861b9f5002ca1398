"""What happens to the cache, gathered in memory and handed to the inventory in batches.

A cache hit costs a dictionary update here, never a database write: the lifecycle task takes the batch every
second (or sooner when it grows, or when a blob was committed) and writes it in one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from storage.digest import Digest
from storage.interfaces import TagRecord
from storage.inventory import Changes

__all__ = ["Ledger"]

# Past this many pending entries the lifecycle task is woken early, which bounds the memory a burst can take.
MAX_PENDING = 2000


class Ledger:
    """A :class:`storage.accounting.BlobLedger` and :class:`storage.interfaces.ImageRecorder` in one.

    It also keeps the cache's size as the budget sees it: the inventory's total as last read, plus blobs committed
    since, plus the bytes of partial files being written (``in_flight``), so that a fill is counted while it grows.
    """

    def __init__(
        self,
        wake: Callable[[], None],
        make_room: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._wake = wake
        self._make_room = make_room
        self._clock = clock
        self._pending = Changes()
        self._pending_bytes = 0  # of blobs committed since the last take()
        self._taken_bytes = 0  # of those being written to the inventory right now
        self.stored = 0  # the inventory's total, as last read
        self.in_flight = 0
        self.limit: int | None = None  # the budget's max_size, while reserve() should make room past it
        self.enabled = True

    def size(self) -> int:
        return self.stored + self._taken_bytes + self._pending_bytes + self.in_flight

    # BlobLedger

    def opened(self, digest: Digest) -> None:
        if not self.enabled:
            return
        count, _ = self._pending.accessed.get(str(digest), (0, 0.0))
        self._pending.accessed[str(digest)] = (count + 1, self._clock())
        self._nudge()

    async def reserve(self, size: int) -> None:
        self.in_flight += size
        if self.limit is not None and self.size() > self.limit:
            await self._make_room()

    def committed(self, digest: Digest, size: int, reserved: int) -> None:
        self.in_flight -= reserved
        if not self.enabled:
            return
        previous = self._pending.added.get(str(digest))
        self._pending_bytes += size - (previous[0] if previous else 0)
        self._pending.added[str(digest)] = (size, self._clock())
        # Written (and the budget checked) now rather than within the second: a big commit may need eviction.
        self._wake()

    def abandoned(self, reserved: int) -> None:
        self.in_flight -= reserved

    # ImageRecorder

    def manifest_cached(self, registry: str, repository: str, digest: Digest, media_type: str, body: bytes) -> None:
        if self.enabled:
            self._pending.manifests.append((registry, repository, str(digest), media_type, body, self._clock()))
            self._nudge()

    def tag_cached(self, registry: str, repository: str, tag: str, record: TagRecord) -> None:
        if self.enabled:
            self._pending.tags[(registry, repository, tag)] = (str(record.digest), record.media_type, record.fetched_at)
            self._nudge()

    def tag_pulled(self, registry: str, repository: str, tag: str) -> None:
        if self.enabled:
            count, _ = self._pending.pulls.get((registry, repository, tag), (0, 0.0))
            self._pending.pulls[(registry, repository, tag)] = (count + 1, self._clock())
            self._nudge()

    # For the lifecycle task

    def take(self) -> Changes:
        """The pending changes, to be written; call :meth:`written` or :meth:`restore` once that is done."""
        changes, self._pending = self._pending, Changes()
        self._taken_bytes, self._pending_bytes = self._taken_bytes + self._pending_bytes, 0
        return changes

    def written(self, stored: int) -> None:
        self.stored, self._taken_bytes = stored, 0

    def restore(self, changes: Changes) -> None:
        """Put back changes whose write failed, ahead of what came meanwhile, to be tried again."""
        changes.merge(self._pending)
        self._pending = changes
        self._pending_bytes += self._taken_bytes
        self._taken_bytes = 0

    def _nudge(self) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._wake()
