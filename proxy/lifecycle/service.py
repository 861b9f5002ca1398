"""The lifecycle in a running server: one background task keeps the inventory in step and the cache in budget.

At start-up it reconciles the inventory with the disk (a walk of ``blobs/``, and the manifests and tags of the
repository index that the inventory lacks, such as a cache from before the inventory). Then, every second or
when woken, it writes the ledger's batch and, past the budget, evicts. Nothing here runs on the request path:
requests only touch the :class:`~proxy.lifecycle.ledger.Ledger`, and a fill's ``reserve`` waits for a pass only
while the cache is over its budget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from proxy.lifecycle.budget import Budget
from proxy.lifecycle.eviction import evict_lru, exclusive
from proxy.lifecycle.ledger import Ledger
from proxy.lifecycle.thread import InventoryThread
from proxy.upstream.client import MAX_MANIFEST_SIZE
from storage.digest import Digest, InvalidDigest
from storage.interfaces import BlobDeleter, BlobLister, ManifestRecord, StorageError, TagRecord
from storage.inventory import Changes, Inventory, InventoryDamaged, NewerSchema, Pin, Reconciled
from storage.paths import EVICT_LOCK, INVENTORY
from storage.references import is_registry, is_repository, is_tag

__all__ = ["Lifecycle", "LifecycleStore", "ScannableIndex", "import_index", "open_inventory", "reconcile_inventory"]

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0
# Even with nothing new, the budget is checked this often: other processes sharing the cache add blobs too, and
# blobs that were being read when a pass skipped them may be free now.
CHECK_INTERVAL = 30.0
# A fill waiting for room gives up waiting (and writes anyway) after this: over budget beats a failed pull.
ROOM_TIMEOUT = 10.0
# Stopping waits this long for the task to finish what it is doing before cancelling it.
STOP_TIMEOUT = 5.0


class LifecycleStore(BlobDeleter, BlobLister, Protocol):
    async def get(self, digest: Digest, max_size: int) -> bytes | None: ...


class ScannableIndex(Protocol):
    async def list_repositories(self) -> list[tuple[str, str]]: ...

    async def list_manifests(self, registry: str, repository: str) -> list[Digest]: ...

    async def get_manifest(self, registry: str, repository: str, digest: Digest) -> ManifestRecord | None: ...

    async def list_tags(self, registry: str, repository: str) -> list[str]: ...

    async def get_tag(self, registry: str, repository: str, tag: str) -> TagRecord | None: ...


class Lifecycle:
    def __init__(
        self,
        root: Path,
        store: LifecycleStore,
        index: ScannableIndex,
        budget: Budget | None,
        clock: Callable[[], float] = time.time,
        flush_interval: float = FLUSH_INTERVAL,
        on_evicted: Callable[[int, int], None] | None = None,
    ) -> None:
        """``on_evicted``: told the blobs and bytes each eviction pass removed (metrics)."""
        self._on_evicted = on_evicted or (lambda blobs, size: None)
        self._root = root
        self._store = store
        self._index = index
        self._budget = budget
        self._clock = clock
        self._flush_interval = flush_interval
        self._thread = InventoryThread()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ready = False
        self._stopping = False
        self._room_wanted = False
        self._passes_started = 0
        self._passes_done = 0
        self._pass_done = asyncio.Condition()
        self._starved = False  # the last pass could not get under max_size: everything left is pinned or in use
        self._last_check = 0.0
        self.ledger = Ledger(self._wake.set, self._make_room, clock)
        self.ledger.limit = budget.max_size if budget is not None else None

    async def start(self) -> None:
        """Open the inventory and start the background task; on failure the proxy runs without a lifecycle."""
        try:
            await open_inventory(self._thread, self._root / INVENTORY)
        except (OSError, InventoryDamaged, NewerSchema) as exc:
            log.error("cache inventory unusable (%s): no size budget, no `registry-proxy ls` data", exc)
            self.ledger.enabled = False
            return
        self._task = asyncio.create_task(self._run(), name="cache lifecycle")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True
            self._wake.set()
            # The task ends at its next turn; one still busy (a start-up walk of a huge cache) is cancelled.
            await asyncio.wait({task}, timeout=STOP_TIMEOUT)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            try:
                await self._flush()
            except Exception as exc:
                log.warning("could not write the last inventory changes: %s", exc)
        await self._thread.close()
        # Fills may still finish after this; their commits are found by the next start-up reconciliation.
        self.ledger.enabled = False

    async def totals(self) -> tuple[int, int] | None:
        """Bytes and blobs in the cache, as the inventory has them; None without a usable inventory."""
        try:
            return await self._thread.run(lambda inventory: inventory.total())
        except RuntimeError:  # not open (unusable, or stopped)
            return None

    # The pin mechanism (for prefetch): pinned images are never evicted. Without a usable inventory nothing is ever
    # evicted, so pins have nothing to protect and are no-ops.

    async def pin(self, registry: str, repository: str, reference: str) -> None:
        """Keep ``reference`` (a tag: whatever it points to now; or a digest) and everything it refers to.

        Raises ValueError for a name or reference that is not valid. Pinning what is not cached yet is fine: it is
        kept from the moment it is.
        """
        _check_reference(registry, repository, reference)
        if self._task is not None:
            await self._thread.run(lambda inventory: inventory.pin(registry, repository, reference, self._clock()))

    async def unpin(self, registry: str, repository: str, reference: str) -> bool:
        """Whether there was such a pin."""
        if self._task is None:
            return False
        return await self._thread.run(lambda inventory: inventory.unpin(registry, repository, reference))

    async def pins(self) -> list[Pin]:
        if self._task is None:
            return []
        return await self._thread.run(Inventory.pins)

    async def settle(self) -> None:
        """Write what is pending and run a budget check now (for tests and tools; the task does this by itself)."""
        await self._flush()
        await self._evict()

    # The background task

    async def _run(self) -> None:
        try:
            await self._start_up()
        except Exception:
            log.exception("cache inventory reconciliation failed; the budget is enforced from what is recorded")
        self._ready = True
        while not self._stopping:
            try:
                # asyncio.timeout rather than wait_for, which in 3.11 can swallow a cancellation.
                async with asyncio.timeout(self._flush_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if self._stopping:
                break
            try:
                added = await self._flush()
                now = time.monotonic()
                periodic = now - self._last_check >= CHECK_INTERVAL
                if self._room_wanted or ((added or periodic) and self._over_budget()):
                    self._last_check = now
                    await self._evict()
            except Exception:
                log.exception("cache inventory update failed; retrying")
                await asyncio.sleep(self._flush_interval)

    async def _start_up(self) -> None:
        started = time.monotonic()
        on_disk, reconciled, imported = await reconcile_inventory(self._thread, self._store, self._index, self._clock)
        log.info(
            "cache inventory reconciled in %.2f s: %d blobs on disk; %d added, %d dropped, %d resized; "
            "%d manifests imported from the index",
            time.monotonic() - started, on_disk, reconciled.added, reconciled.dropped, reconciled.resized, imported,
        )  # fmt: skip
        await self._flush()
        await self._evict()

    async def _flush(self) -> bool:
        """Write the pending changes; whether any blob was added."""
        changes = self.ledger.take()
        try:
            stored = await self._thread.run(lambda inventory: _record(inventory, changes))
        except BaseException:
            self.ledger.restore(changes)
            raise
        self.ledger.written(stored)
        if changes.added:
            self._starved = False
        return bool(changes.added)

    def _over_budget(self) -> bool:
        return self._budget is not None and self.ledger.size() > self._budget.max_size

    async def _make_room(self) -> None:
        """Called by a writer past the budget: wait for the next eviction pass to end (bounded)."""
        if not self._ready or self._starved or self._task is None:
            return
        wanted = self._passes_started + 1
        self._room_wanted = True
        self._wake.set()
        try:
            async with asyncio.timeout(ROOM_TIMEOUT), self._pass_done:
                await self._pass_done.wait_for(lambda: self._passes_done >= wanted)
        except TimeoutError:
            log.warning("no room made within %.0f s; writing past the budget", ROOM_TIMEOUT)

    async def _evict(self) -> None:
        self._room_wanted = False
        self._passes_started += 1
        try:
            if self._budget is not None and self.ledger.size() > self._budget.max_size:
                await self._evict_to(self._budget)
        finally:
            self._passes_done += 1
            async with self._pass_done:
                self._pass_done.notify_all()

    async def _evict_to(self, budget: Budget) -> None:
        with exclusive(self._root / EVICT_LOCK) as mine:
            if not mine:
                return  # another process sharing this cache is evicting right now
            pinned = await self._thread.run(Inventory.pinned_digests)
            # Fresh totals: other processes may have added (or evicted) since the last flush.
            self.ledger.written(await self._thread.run(lambda inventory: inventory.total()[0]))
            size = self.ledger.size()
            started = time.monotonic()
            result = await evict_lru(self._thread, self._store, size, budget.low_watermark, keep=pinned)
            self._on_evicted(len(result.removed), result.freed)
            self.ledger.written(await self._thread.run(lambda inventory: inventory.total()[0]))
            self._starved = self.ledger.size() > budget.max_size
            if result.removed or result.in_use:
                log.info(
                    "evicted %d blobs (%.1f MiB) in %.2f s; cache now %.1f MiB of %.1f MiB%s",
                    len(result.removed), result.freed / 2**20, time.monotonic() - started,
                    self.ledger.size() / 2**20, budget.max_size / 2**20,
                    f"; {result.in_use} being read were kept" if result.in_use else "",
                )  # fmt: skip
            if self._starved:
                log.warning(
                    "cache is %.1f MiB, over its budget of %.1f MiB: everything else is pinned or being read",
                    self.ledger.size() / 2**20, budget.max_size / 2**20,
                )  # fmt: skip


async def open_inventory(thread: InventoryThread, path: Path) -> None:
    """Open the inventory; a damaged one is moved aside and rebuilt (it holds nothing the cache cannot re-derive
    but pins and pull counts, and pins come back from the configuration)."""
    try:
        await thread.open(path)
    except InventoryDamaged as exc:
        aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
        log.error("cache inventory damaged (%s); moved to %s and rebuilt", exc, aside)
        path.rename(aside)
        for suffix in ("-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        await thread.open(path)


async def reconcile_inventory(
    thread: InventoryThread, store: LifecycleStore, index: ScannableIndex, clock: Callable[[], float] = time.time
) -> tuple[int, Reconciled, int]:
    """Make the inventory match the cache on disk: blobs walked, repository index imported.

    Returns the number of blobs on disk, what changed, and how many manifests were imported.
    """
    started = clock()
    blobs = await store.list_blobs()
    reconciled = await thread.run(lambda inventory: inventory.reconcile(blobs, started))
    imported = await import_index(thread, index, store, clock)
    return len(blobs), reconciled, imported


async def import_index(
    thread: InventoryThread, index: ScannableIndex, blobs: LifecycleStore, clock: Callable[[], float] = time.time
) -> int:
    """Record the repository index's manifests that the inventory lacks, and every tag; how many manifests."""
    known = await thread.run(Inventory.known_manifests)
    changes = Changes()
    now = clock()
    for registry, repository in await index.list_repositories():
        for digest in await index.list_manifests(registry, repository):
            if (registry, repository, str(digest)) in known:
                continue
            record = await index.get_manifest(registry, repository, digest)
            try:
                body = await blobs.get(digest, MAX_MANIFEST_SIZE)
            except StorageError:
                body = None
            if record is None or body is None or Digest.of(body, digest.algorithm) != digest:
                continue  # evicted (or damaged): recorded when it is fetched again
            changes.manifests.append((registry, repository, str(digest), record.media_type, body, now))
        for tag in await index.list_tags(registry, repository):
            tag_record = await index.get_tag(registry, repository, tag)
            if tag_record is not None:
                key = (registry, repository, tag)
                changes.tags[key] = (str(tag_record.digest), tag_record.media_type, tag_record.fetched_at)
    await thread.run(lambda inventory: inventory.record(changes))
    return len(changes.manifests)


def _record(inventory: Inventory, changes: Changes) -> int:
    if changes:
        inventory.record(changes)
    return inventory.total()[0]


def _check_reference(registry: str, repository: str, reference: str) -> None:
    if not is_registry(registry) or not is_repository(repository):
        raise ValueError(f"not a registry and repository name: {registry!r}, {repository!r}")
    if not is_tag(reference):
        try:
            Digest.parse(reference)
        except InvalidDigest:
            raise ValueError(f"not a tag or digest: {reference!r}") from None
