"""``registry-proxy gc``: remove what no longer belongs in the cache, safely while the server runs.

1. partial files no writer touched for ``partial_grace`` (a running fill writes to its file continuously);
2. blobs no cached manifest is or refers to, unread for ``grace`` (layers pulled by digest alone, old referrers
   indexes), never pinned ones;
3. past the budget, least recently used blobs down to the low watermark, as the server would.

Blobs go through the same read-lease check as the server's eviction: one being read is kept.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from proxy.lifecycle.budget import Budget
from proxy.lifecycle.eviction import evict_lru, exclusive, stored_digest
from proxy.lifecycle.service import LifecycleStore, ScannableIndex, reconcile_inventory
from proxy.lifecycle.thread import InventoryThread
from storage.digest import Digest
from storage.files import leftover_partials
from storage.inventory import BlobRow, Inventory
from storage.paths import EVICT_LOCK

__all__ = ["GcReport", "Removal", "collect_garbage"]

PARTIAL = "partial"
UNREFERENCED = "unreferenced"
OVER_BUDGET = "over budget"


@dataclass(frozen=True)
class Removal:
    reason: str  # PARTIAL, UNREFERENCED or OVER_BUDGET
    name: str  # a path under the root, or a digest
    size: int


@dataclass
class GcReport:
    removed: list[Removal] = field(default_factory=list)
    in_use: int = 0  # blobs kept because a reader held them
    notes: list[str] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(removal.size for removal in self.removed)


async def collect_garbage(
    root: Path,
    thread: InventoryThread,
    store: LifecycleStore,
    index: ScannableIndex,
    budget: Budget | None,
    *,
    grace: float,
    partial_grace: float,
    dry_run: bool,
    clock: Callable[[], float] = time.time,
) -> GcReport:
    report = GcReport()
    now = clock()
    # The inventory first matches the disk (and knows every manifest of the index), or "unreferenced" would be wrong.
    await reconcile_inventory(thread, store, index, clock)

    for leftover in leftover_partials(root, now - partial_grace):
        if not dry_run:
            try:
                os.unlink(leftover.path)
            except FileNotFoundError:
                pass  # its writer finished or gave up meanwhile
            except OSError as exc:
                report.notes.append(f"cannot remove {leftover.path}: {exc.strerror}")
                continue
        report.removed.append(Removal(PARTIAL, str(leftover.path.relative_to(root)), leftover.size))

    pinned = await thread.run(Inventory.pinned_digests)
    candidates: dict[Digest, BlobRow] = {}
    for row in await thread.run(partial(Inventory.unreferenced, before=now - grace)):
        digest = stored_digest(row.digest)
        if digest is not None and row.digest not in pinned:
            candidates[digest] = row
    gone = set(candidates) if dry_run else await store.delete_if_unused(list(candidates))
    removed = [row for digest, row in candidates.items() if digest in gone]
    if removed and not dry_run:
        await thread.run(partial(Inventory.forget, digests=[row.digest for row in removed]))
    report.in_use += len(candidates) - len(removed)
    report.removed += [Removal(UNREFERENCED, row.digest, row.size) for row in removed]

    if budget is None:
        return report
    with exclusive(root / EVICT_LOCK) as mine:
        if not mine:
            report.notes.append("the server is evicting right now: the budget is being enforced")
            return report
        size = (await thread.run(Inventory.total))[0]
        if dry_run:
            size -= sum(row.size for row in removed)  # as if step 2 had run
        if size <= budget.max_size:
            return report
        keep = pinned | {row.digest for row in removed}
        eviction = await evict_lru(thread, store, size, budget.low_watermark, keep=keep, delete=not dry_run)
    report.in_use += eviction.in_use
    report.removed += [Removal(OVER_BUDGET, row.digest, row.size) for row in eviction.removed]
    return report
