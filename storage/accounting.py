"""A BlobStore decorator that tells a ledger what happens to blobs: reads, bytes about to be written, commits.

The request path never waits on the ledger except in :meth:`BlobLedger.reserve`, which a fill (or a manifest
write) calls before writing bytes: past the budget it waits until eviction has made room, so the cache stays
within its size even while a large blob is being filled, not just after.
"""

from __future__ import annotations

from typing import Protocol

from storage.digest import Digest
from storage.interfaces import BlobReader, BlobStore, BlobWriter, ForeignFill
from storage.whole import write_whole

__all__ = ["AccountedBlobStore", "BlobLedger"]


class BlobLedger(Protocol):
    def opened(self, digest: Digest) -> None:
        """A committed blob was opened for reading (a hit, or a fill's reader after the commit)."""
        ...

    async def reserve(self, size: int) -> None:
        """``size`` more bytes are about to be written to a partial file; may wait for eviction to make room."""
        ...

    def committed(self, digest: Digest, size: int, reserved: int) -> None:
        """A blob of ``size`` bytes was committed; the ``reserved`` bytes of its partial file are now that blob."""
        ...

    def abandoned(self, reserved: int) -> None:
        """A partial file holding ``reserved`` bytes was removed without a commit."""
        ...


class AccountedBlobStore:
    def __init__(self, inner: BlobStore, ledger: BlobLedger) -> None:
        self._inner = inner
        self._ledger = ledger

    async def stat(self, digest: Digest) -> int | None:
        return await self._inner.stat(digest)

    async def open(self, digest: Digest) -> tuple[BlobReader, int] | None:
        opened = await self._inner.open(digest)
        if opened is not None:
            self._ledger.opened(digest)
        return opened

    async def get(self, digest: Digest, max_size: int) -> bytes | None:
        data = await self._inner.get(digest, max_size)
        if data is not None:
            self._ledger.opened(digest)
        return data

    async def put(self, digest: Digest, data: bytes) -> None:
        # Through our own writer, so that small writes (manifests) reserve room and count like fills.
        await write_whole(await self.create(digest), data)

    async def create(self, digest: Digest) -> AccountedBlobWriter:
        return AccountedBlobWriter(await self._inner.create(digest), self._ledger)

    async def claim(self, digest: Digest, key: str) -> AccountedBlobWriter | ForeignFill:
        claimed = await self._inner.claim(digest, key)
        if isinstance(claimed, ForeignFill):
            return claimed  # the filling process counts its bytes
        writer = AccountedBlobWriter(claimed, self._ledger)
        if claimed.written:
            # Taken over from a filler that died: its bytes are ours to count now.
            try:
                await writer.reserve(claimed.written)
            except BaseException:
                await writer.cancel()
                raise
        return writer

    async def sweep(self, spare_younger_than: float = 0.0) -> int:
        return await self._inner.sweep(spare_younger_than)


class AccountedBlobWriter:
    def __init__(self, inner: BlobWriter, ledger: BlobLedger) -> None:
        self._inner = inner
        self._ledger = ledger
        self._reserved = 0
        self._settled = False

    @property
    def digest(self) -> Digest:
        return self._inner.digest

    @property
    def written(self) -> int:
        return self._inner.written

    async def started(self, size: int | None) -> None:
        await self._inner.started(size)

    async def reserve(self, size: int) -> None:
        # Counted before the wait: a write cancelled while waiting for room is still released by cancel().
        self._reserved += size
        await self._ledger.reserve(size)

    async def write(self, data: bytes | memoryview) -> None:
        await self.reserve(len(data))
        await self._inner.write(data)

    def open_reader(self) -> BlobReader:
        return self._inner.open_reader()

    async def commit(self, expected_size: int | None = None) -> None:
        try:
            await self._inner.commit(expected_size)
        except BaseException:
            self._settle(None)
            raise
        self._settle(self._inner.written)

    async def cancel(self) -> None:
        try:
            await self._inner.cancel()
        finally:
            self._settle(None)

    def _settle(self, committed_size: int | None) -> None:
        # Exactly once: a failed commit cancels the inner writer, and the caller may cancel again after it.
        if self._settled:
            return
        self._settled = True
        if committed_size is None:
            self._ledger.abandoned(self._reserved)
        else:
            self._ledger.committed(self._inner.digest, committed_size, self._reserved)
