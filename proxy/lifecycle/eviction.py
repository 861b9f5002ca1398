"""Least-recently-used eviction: one pass, shared by the server's background task and ``registry-proxy gc``."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from proxy.lifecycle.thread import InventoryThread
from storage.digest import Digest, InvalidDigest
from storage.interfaces import BlobDeleter
from storage.inventory import BlobRow, Inventory

__all__ = ["Eviction", "evict_lru", "exclusive", "stored_digest"]

# Blobs read from the inventory per query; deleted in batches of at most this many too.
_PAGE = 512


@dataclass
class Eviction:
    removed: list[BlobRow] = field(default_factory=list)
    in_use: int = 0  # candidates skipped because a reader held them
    size_after: int = 0

    @property
    def freed(self) -> int:
        return sum(row.size for row in self.removed)


async def evict_lru(
    thread: InventoryThread,
    store: BlobDeleter,
    size: int,
    target: int,
    *,
    keep: set[str],
    delete: bool = True,
) -> Eviction:
    """Delete least recently used blobs, skipping ``keep`` (pinned) and any being read, until ``size`` ≤ ``target``.

    ``size`` is the cache's size as the caller counts it (it may include partial files being written). Without
    ``delete`` nothing is deleted: the result is what would be (a dry run cannot know what will be in use).
    """
    result = Eviction(size_after=size)
    after: tuple[float, str] | None = None
    while result.size_after > target:
        page = await thread.run(partial(Inventory.least_recently_used, after=after, limit=_PAGE))
        if not page:
            break
        chosen: dict[Digest, BlobRow] = {}
        needed = result.size_after - target
        for row in page:
            after = (row.last_access, row.digest)
            digest = stored_digest(row.digest)
            if digest is None or row.digest in keep:
                continue
            chosen[digest] = row
            needed -= row.size
            if needed <= 0:
                break
        if not chosen:
            continue
        gone = await store.delete_if_unused(list(chosen)) if delete else set(chosen)
        removed = [row for digest, row in chosen.items() if digest in gone]
        result.in_use += len(chosen) - len(removed)
        if removed and delete:
            await thread.run(partial(Inventory.forget, digests=[row.digest for row in removed]))
        result.removed += removed
        result.size_after -= sum(row.size for row in removed)
    return result


@contextmanager
def exclusive(path: Path) -> Iterator[bool]:
    """Whether this process got the eviction lock (held until the block ends); never waits.

    Processes sharing a cache evict one at a time, so that two of them past the budget at once do not both evict
    down to the watermark.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def stored_digest(text: str) -> Digest | None:
    """The digest of an inventory row, or None for one not written by us (such rows are left alone)."""
    try:
        return Digest.parse(text)
    except InvalidDigest:
        return None
