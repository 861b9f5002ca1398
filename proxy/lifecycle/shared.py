"""What the processes sharing a cache agree on beyond their own inventory: whose turn it is to evict, who
prefetches, what was read lately elsewhere, and what is pinned.

On a disk every process uses the one SQLite inventory, so :class:`LocalState` needs only two ``flock``-ed files
and has nothing to exchange. Replicas on a bucket each keep an inventory of their own (their working copy, shared
by the worker processes of the replica); the bucket's implementation (``storage.s3.lifecycle``) carries the rest
in small objects, and the lifecycle then also reconciles its inventory with the bucket's listing, whose blobs
other replicas write and evict. One process of each replica does that exchange: the one holding ``SYNC_LOCK``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Protocol

from proxy.lifecycle.eviction import exclusive
from proxy.lifecycle.leader import ProcessLock
from storage.inventory import PublishedPin
from storage.paths import EVICT_LOCK

__all__ = ["PREFETCH_LOCK", "SYNC_LOCK", "Election", "LocalState", "SharedLifecycle"]

# Under the cache root: held (flock) by the one process prefetching, by the one exchanging with other replicas.
PREFETCH_LOCK = "prefetch.lock"
SYNC_LOCK = "lifecycle.sync.lock"


class Election(Protocol):
    """One process of all those sharing the cache does a job while it holds this."""

    @property
    def held(self) -> bool:
        """Still ours (a lease can be lost to another process that found it stale)."""
        ...

    async def acquire(self) -> bool:
        """Whether this process holds it now; never waits. OSError (or StorageError) if it cannot even ask."""
        ...

    async def release(self) -> None: ...


class SharedLifecycle(Protocol):
    @property
    def replicated(self) -> bool:
        """Others keep inventories of their own: this one is reconciled with the blob listing now and then, and
        takes in the accesses and pins below."""
        ...

    @property
    def access_window(self) -> float:
        """Seconds of reads that :meth:`publish_accesses` is given."""
        ...

    async def publish_accesses(self, accesses: Mapping[str, float]) -> None:
        """Every blob used in the last ``access_window`` seconds as this replica knows (its own reads and writes,
        and the others' it took in), and when last: replaces what it published before."""
        ...

    async def read_accesses(self) -> dict[str, float]:
        """What the others published lately: digest → their last read of it."""
        ...

    async def put_pin(self, pin: PublishedPin, *, renew: bool = False) -> bool:
        """Publish ``pin``; with ``renew``, only if it is still as this process last wrote it (another may have
        removed or rewritten it since: theirs, then). Whether it was written."""
        ...

    async def delete_pin(self, registry: str, repository: str, reference: str) -> None: ...

    async def read_pins(self) -> list[PublishedPin]:
        """Every pin not expired."""
        ...

    def eviction_turn(self) -> AbstractAsyncContextManager[bool]:
        """Whether this process may evict now (for as long as the block runs); never waits."""
        ...

    def prefetch_election(self) -> Election: ...


class LocalState:
    """Processes on one cache directory: the SQLite inventory is already shared, so there is nothing to exchange."""

    replicated = False
    access_window = 0.0

    def __init__(self, root: Path) -> None:
        self._root = root

    async def publish_accesses(self, accesses: Mapping[str, float]) -> None:
        pass

    async def read_accesses(self) -> dict[str, float]:
        return {}

    async def put_pin(self, pin: PublishedPin, *, renew: bool = False) -> bool:
        return True

    async def delete_pin(self, registry: str, repository: str, reference: str) -> None:
        pass

    async def read_pins(self) -> list[PublishedPin]:
        return []

    @asynccontextmanager
    async def eviction_turn(self) -> AsyncIterator[bool]:
        with exclusive(self._root / EVICT_LOCK) as mine:
            yield mine

    def prefetch_election(self) -> ProcessLock:
        return ProcessLock(self._root / PREFETCH_LOCK)
