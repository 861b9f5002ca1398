"""The lifecycle in a running server: one background task keeps the inventory in step and the cache in budget.

At start-up it reconciles the inventory with the disk (a walk of ``blobs/``, and the manifests and tags of the
repository index that the inventory lacks, such as a cache from before the inventory). Then, every second or
when woken, it writes the ledger's batch and, past the budget, evicts. Nothing here runs on the request path:
requests only touch the :class:`~proxy.lifecycle.ledger.Ledger`, and a fill's ``reserve`` waits for a pass only
while the cache is over its budget.

Replicas on a bucket (:class:`~proxy.lifecycle.shared.SharedLifecycle` ``replicated``) each keep an inventory of
their own, which only sees their own reads and writes. So every ``sync_interval`` one process of each replica
(whichever holds ``SYNC_LOCK`` under the root) publishes the blobs used lately as its inventory has them, takes
in what the other replicas published, and, every ``rescan_interval``, reconciles the inventory with the bucket's
listing (blobs the others wrote or evicted, so that the budget is checked against the bucket's real size). The
process whose turn it is to evict does the same first (the listing unless it is seconds old), and keeps every pin
in the bucket. Pins are published by the process that pins (the prefetcher's), which also renews them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Protocol

from proxy.lifecycle.budget import Budget
from proxy.lifecycle.eviction import evict_lru
from proxy.lifecycle.leader import ProcessLock
from proxy.lifecycle.ledger import Ledger
from proxy.lifecycle.shared import SYNC_LOCK, LocalState, SharedLifecycle
from proxy.lifecycle.thread import InventoryThread
from proxy.upstream.client import MAX_MANIFEST_SIZE
from storage.digest import Digest, InvalidDigest
from storage.interfaces import BlobDeleter, BlobLister, ManifestRecord, StorageError, TagRecord
from storage.inventory import Changes, Inventory, InventoryDamaged, NewerSchema, Pin, PublishedPin, Reconciled
from storage.paths import INVENTORY
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
# Replicas: how often each publishes its reads, takes in the others', and renews the pins it published ...
SYNC_INTERVAL = 30.0
# ... how often each lists the bucket, and how old a listing may be for an eviction pass.
RESCAN_INTERVAL = 120.0
RESCAN_BEFORE_EVICTION = 5.0
# A pin in the bucket counts this long unless renewed; its publisher renews it once half of that has passed.
PIN_TTL = 3600.0

PinKey = tuple[str, str, str]  # registry, repository, reference


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
        shared: SharedLifecycle | None = None,
        sync_interval: float = SYNC_INTERVAL,
        rescan_interval: float = RESCAN_INTERVAL,
    ) -> None:
        """``on_evicted``: told the blobs and bytes each eviction pass removed (metrics). ``shared``: what the
        processes using this cache agree on (by default, processes on this one directory)."""
        self._on_evicted = on_evicted or (lambda blobs, size: None)
        self._root = root
        self._shared: SharedLifecycle = shared if shared is not None else LocalState(root)
        self._sync_interval = sync_interval
        self._rescan_interval = rescan_interval
        self._sync_lock = ProcessLock(root / SYNC_LOCK)
        self._published_reads: dict[str, float] | None = None  # as last published, to write only what changed
        self._last_sync = float("-inf")
        self._last_rescan = float("-inf")
        self._pin_content: dict[PinKey, frozenset[str]] = {}  # what the prefetcher's walk said a pin keeps
        # Pins this process keeps in the bucket, as last published (None: not yet, the bucket could not be reached).
        self._published_pins: dict[PinKey, PublishedPin | None] = {}
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
            if self._sync_lock.held:
                try:
                    await self._publish_accesses()
                except Exception as exc:
                    log.warning("could not publish the last blob reads to the other replicas: %s", exc)
        await self._thread.close()
        await self._sync_lock.release()
        # Fills may still finish after this; their commits are found by the next start-up reconciliation.
        self.ledger.enabled = False

    async def totals(self) -> tuple[int, int] | None:
        """Bytes and blobs in the cache, as the inventory has them; None without a usable inventory."""
        try:
            return await self._thread.run(lambda inventory: inventory.total())
        except RuntimeError:  # not open (unusable, or stopped)
            return None

    # The pin mechanism (for prefetch): pinned images are never evicted. Without a usable inventory this process
    # never evicts, so its pins only matter to other replicas (which get the pin's content, if the caller knew it).

    async def pin(self, registry: str, repository: str, reference: str, content: Collection[Digest] = ()) -> None:
        """Keep ``reference`` (a tag: whatever it points to now; or a digest) and everything it refers to.

        ``content``: the digests the caller knows it keeps (what the prefetcher just walked); replicas that keep
        inventories of their own are given those as well as what this inventory knows, as one pin in the bucket.
        Raises ValueError for a name or reference that is not valid. Pinning what is not cached yet is fine: it is
        kept from the moment it is.
        """
        _check_reference(registry, repository, reference)
        key = (registry, repository, reference)
        if self._task is not None:
            await self._thread.run(lambda inventory: inventory.pin(registry, repository, reference, self._clock()))
        if self._shared.replicated:
            if content:
                self._pin_content[key] = frozenset(str(digest) for digest in content)
            self._published_pins.setdefault(key, None)  # if this write fails, the next sync's is the first
            await self._publish_pin(key)

    async def unpin(self, registry: str, repository: str, reference: str) -> bool:
        """Whether there was such a pin."""
        key = (registry, repository, reference)
        existed = False
        if self._task is not None:
            existed = await self._thread.run(lambda inventory: inventory.unpin(registry, repository, reference))
        if self._shared.replicated:
            self._pin_content.pop(key, None)
            self._published_pins.pop(key, None)
            existed = any(pin.key == key for pin in await self._shared.read_pins()) or existed
            await self._shared.delete_pin(*key)
        return existed

    async def pins(self) -> list[Pin]:
        """This inventory's pins; with replicas, also those in the bucket."""
        pins = await self._thread.run(Inventory.pins) if self._task is not None else []
        if self._shared.replicated:
            known = {(pin.registry, pin.repository, pin.reference) for pin in pins}
            for published in await self._shared.read_pins():
                if published.key not in known:
                    pins.append(Pin(*published.key, published.pinned_at))
        return sorted(pins, key=lambda pin: (pin.registry, pin.repository, pin.reference))

    async def _pin_digests(self, key: PinKey) -> frozenset[str]:
        """What the pin keeps, as this process knows: the prefetcher's walk, and the inventory's expansion."""
        digests = self._pin_content.get(key, frozenset())
        if self._task is not None:
            digests |= await self._thread.run(lambda inventory: inventory.closure([key]))
        return digests

    async def _publish_pin(self, key: PinKey, *, renew: bool = False) -> None:
        """``renew``: only over the version this process wrote last. Without, over whatever is there: a pin call
        comes from the prefetcher, which holds the election now."""
        digests = await self._pin_digests(key)
        now = self._clock()
        before = self._published_pins.get(key)
        pin = PublishedPin(*key, digests, before.pinned_at if before else now, now + PIN_TTL)
        if await self._shared.put_pin(pin, renew=renew):
            self._published_pins[key] = pin
        else:
            # Another replica removed or rewrote it since (it won the prefetch election, with its configuration).
            self._published_pins.pop(key, None)
            log.info("no longer renewing the pin of %s/%s:%s: another replica changed it", *key)

    async def _renew_pins(self) -> None:
        """Publish the pins not published yet, and again those whose content changed here (a tag moved) or that
        are half-way to expiring."""
        for key, pin in list(self._published_pins.items()):
            if pin is None:
                await self._publish_pin(key)  # its pin call could not reach the bucket
            elif await self._pin_digests(key) != pin.digests or self._clock() >= pin.expires - PIN_TTL / 2:
                await self._publish_pin(key, renew=True)

    async def settle(self) -> None:
        """Write what is pending, exchange with the other replicas, and run a budget check now (for tests and tools;
        the task does this by itself)."""
        await self._flush()
        if self._shared.replicated:
            await self._sync_logged()
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
                if self._shared.replicated and time.monotonic() - self._last_sync >= self._sync_interval:
                    await self._sync_logged()
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
        self._last_rescan = time.monotonic()
        await self._flush()
        if self._shared.replicated:
            await self._sync_logged()
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

    async def _sync(self) -> None:
        """Publish this replica's reads; take in the others' (after a listing, if the last is old); renew pins."""
        self._last_sync = time.monotonic()
        # The inventory is the replica's, shared by its processes: one of them does the exchange for all.
        if await self._sync_lock.acquire():
            await self._publish_accesses()
            await self._take_in(self._rescan_interval)
        await self._renew_pins()

    async def _sync_logged(self) -> None:
        try:
            await self._sync()
        except (StorageError, OSError) as exc:
            log.warning("cannot exchange cache lifecycle data with the other replicas (retrying): %s", exc)

    async def _publish_accesses(self) -> None:
        since = self._clock() - self._shared.access_window
        reads = await self._thread.run(lambda inventory: inventory.accessed_since(since))
        if reads != self._published_reads:  # at most one write per sync, none while nothing changes
            await self._shared.publish_accesses(reads)
            self._published_reads = reads

    async def _take_in(self, rescan_after: float) -> None:
        """Reconcile with the blob listing if the last one is older than ``rescan_after`` seconds, then take in the
        other replicas' reads (after the listing: a read of a blob only the listing brings must find its row)."""
        if time.monotonic() - self._last_rescan >= rescan_after:
            started = self._clock()
            blobs = await self._store.list_blobs()
            await self._thread.run(lambda inventory: inventory.reconcile(blobs, started))
            self._last_rescan = time.monotonic()
        accesses = await self._shared.read_accesses()
        if accesses:
            await self._thread.run(lambda inventory: inventory.touch(accesses))
        self.ledger.written(await self._thread.run(lambda inventory: inventory.total()[0]))

    async def _pinned(self) -> set[str]:
        if not self._shared.replicated:
            return await self._thread.run(Inventory.pinned_digests)
        # The bucket's pins alone: this inventory's own are the prefetcher's, which published them (a replica that
        # lost the election may hold pins the configuration dropped since). A tag pin also keeps what this
        # inventory knows the tag points to, in case it learned of a move before the pin's publisher did.
        pins = await self._shared.read_pins()
        keys = [pin.key for pin in pins]
        pinned = await self._thread.run(lambda inventory: inventory.closure(keys))
        for pin in pins:
            pinned |= pin.digests
        return pinned

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
        except StorageError as exc:
            # No pass on a partial view of the other replicas (their pins above all): the next check tries again.
            log.warning("no eviction pass: cannot reach what the replicas share: %s", exc)
        finally:
            self._passes_done += 1
            async with self._pass_done:
                self._pass_done.notify_all()

    async def _evict_to(self, budget: Budget) -> None:
        async with self._shared.eviction_turn() as mine:
            if not mine:
                return  # another process sharing this cache is evicting right now
            if self._shared.replicated:
                # Blobs the others wrote and read: the pass sees the whole bucket, not what this replica did.
                await self._take_in(RESCAN_BEFORE_EVICTION)
            pinned = await self._pinned()
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
