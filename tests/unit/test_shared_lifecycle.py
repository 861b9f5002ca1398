"""The lifecycle of a replica, with what it shares kept in memory: what it publishes and when, pins it could not
publish or that another replica took, and no eviction on a partial view."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from proxy.lifecycle.budget import Budget
from proxy.lifecycle.service import PIN_TTL, Lifecycle
from proxy.lifecycle.shared import Election
from storage.accounting import AccountedBlobStore
from storage.blobs import FilesystemBlobStore
from storage.digest import Digest
from storage.index import FilesystemIndex
from storage.interfaces import StorageError
from storage.inventory import PublishedPin
from storage.paths import blob_path

PinKey = tuple[str, str, str]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


class MemoryShared:
    """A SharedLifecycle in memory; ``down`` makes every call fail as an unreachable bucket does."""

    replicated = True
    access_window = 3600.0

    def __init__(self) -> None:
        self.published: list[dict[str, float]] = []
        self.others: dict[str, float] = {}
        self.pins: dict[PinKey, PublishedPin] = {}
        self.writes: list[tuple[PinKey, bool]] = []
        self.taken: set[PinKey] = set()  # pins another replica rewrote since
        self.down = False

    def _reach(self) -> None:
        if self.down:
            raise StorageError("the bucket is unreachable")

    async def publish_accesses(self, accesses: Mapping[str, float]) -> None:
        self._reach()
        self.published.append(dict(accesses))

    async def read_accesses(self) -> dict[str, float]:
        self._reach()
        return dict(self.others)

    async def put_pin(self, pin: PublishedPin, *, renew: bool = False) -> bool:
        self._reach()
        self.writes.append((pin.key, renew))
        if renew and pin.key in self.taken:
            return False
        self.pins[pin.key] = pin
        return True

    async def delete_pin(self, registry: str, repository: str, reference: str) -> None:
        self._reach()
        self.pins.pop((registry, repository, reference), None)

    async def read_pins(self) -> list[PublishedPin]:
        self._reach()
        return list(self.pins.values())

    @asynccontextmanager
    async def eviction_turn(self) -> AsyncIterator[bool]:
        self._reach()
        yield True

    def prefetch_election(self) -> Election:
        raise NotImplementedError


@asynccontextmanager
async def replica(root: Path, shared: MemoryShared, budget: Budget | None = None, clock: Clock | None = None
                  ) -> AsyncIterator[tuple[Lifecycle, AccountedBlobStore]]:  # fmt: skip
    store = FilesystemBlobStore(root)
    lifecycle = Lifecycle(
        root, store, FilesystemIndex(root), budget, clock=clock or Clock(), flush_interval=0.05, shared=shared,
        sync_interval=3600.0,
    )  # fmt: skip
    await lifecycle.start()
    try:
        await lifecycle.settle()
        yield lifecycle, AccountedBlobStore(store, lifecycle.ledger)
    finally:
        await lifecycle.stop()


def blob(name: str) -> tuple[Digest, bytes]:
    data = name.encode().ljust(300, b".")
    return Digest.of(data), data


async def test_reads_are_published_when_they_change_and_at_shutdown(tmp_path: Path) -> None:
    shared = MemoryShared()
    async with replica(tmp_path, shared) as (lifecycle, store):
        (a, data_a), (b, data_b) = blob("a"), blob("b")
        await store.put(a, data_a)
        await lifecycle.settle()
        assert list(shared.published[-1]) == [str(a)]  # written: a use
        writes = len(shared.published)
        await lifecycle.settle()
        await lifecycle.settle()
        assert len(shared.published) == writes  # nothing new, nothing written
        await store.put(b, data_b)
        assert await store.get(a, 300) == data_a
    # Stopping publishes what the last sync did not.
    assert len(shared.published) == writes + 1 and set(shared.published[-1]) == {str(a), str(b)}
    assert shared.published[-1][str(a)] > shared.published[-2][str(a)]


async def test_no_eviction_pass_without_the_replicas_pins(tmp_path: Path) -> None:
    shared = MemoryShared()
    async with replica(tmp_path, shared, Budget(1000, 600)) as (lifecycle, store):
        blobs = [blob(f"b-{n}") for n in range(4)]
        shared.pins[("docker.io", "library/app", "1")] = PublishedPin(
            "docker.io", "library/app", "1", frozenset({str(blobs[0][0])}), 0.0, float("inf")
        )
        shared.down = True
        for digest, data in blobs:
            await store.put(digest, data)
        await lifecycle.settle()
        # Over budget, but the pins cannot be read: nothing is evicted rather than maybe a pinned blob.
        assert all((tmp_path / blob_path(digest)).exists() for digest, _ in blobs)
        shared.down = False
        await lifecycle.settle()
        assert [(tmp_path / blob_path(digest)).exists() for digest, _ in blobs] == [True, False, False, True]


async def test_a_pin_the_bucket_did_not_take_is_published_at_the_next_sync(tmp_path: Path) -> None:
    shared = MemoryShared()
    async with replica(tmp_path, shared) as (lifecycle, _):
        shared.down = True
        lone = blob("lone")[0]
        try:
            await lifecycle.pin("docker.io", "library/app", "1", content=[lone])
        except StorageError:
            pass  # the prefetcher logs it
        else:
            raise AssertionError("the pin call should say the bucket was unreachable")
        shared.down = False
        await lifecycle.settle()
        assert shared.pins[("docker.io", "library/app", "1")].digests == {str(lone)}


async def test_a_pin_another_replica_took_is_not_renewed_any_more(tmp_path: Path) -> None:
    shared, clock = MemoryShared(), Clock()
    key = ("docker.io", "library/app", "1")
    async with replica(tmp_path, shared, clock=clock) as (lifecycle, _):
        await lifecycle.pin(*key, content=[blob("x")[0]])
        await lifecycle.settle()
        assert shared.writes == [(key, False)]  # not due yet
        clock.now += PIN_TTL / 2
        await lifecycle.settle()
        assert shared.writes == [(key, False), (key, True)]  # renewed, half-way to expiring
        shared.taken.add(key)
        clock.now += PIN_TTL / 2
        await lifecycle.settle()
        clock.now += PIN_TTL
        await lifecycle.settle()
        assert shared.writes == [(key, False), (key, True), (key, True)]  # refused once, then left alone
        await lifecycle.pin(*key)  # pinned again by this replica's prefetcher: its own again
        assert shared.writes[-1] == (key, False)
