"""Blobs: served from the cache when there, otherwise filled from the upstream while clients read."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from proxy.errors import RegistryError
from proxy.pullthrough.fill import CHUNK_SIZE, BlobFill, FillFailed
from proxy.routing import Origin
from storage.digest import Digest
from storage.interfaces import BlobStore

__all__ = ["BlobService", "BlobSource", "CachedBlob"]


class BlobSource(Protocol):
    """Where a response's bytes come from: the cache, or a fill in progress (:class:`BlobFill`)."""

    @property
    def size(self) -> int | None: ...

    def stream(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]: ...


class CachedBlob:
    def __init__(self, store: BlobStore, digest: Digest, size: int) -> None:
        self._store = store
        self._digest = digest
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    async def stream(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        # Opened here rather than up front so that a response that never sends its body holds no file.
        opened = await self._store.open(self._digest)
        if opened is None:
            raise FillFailed(f"{self._digest} left the cache before it was read")
        reader, _size = opened
        end = self._size if end is None else end
        pos = start
        try:
            while pos < end:
                data = await reader.read(pos, min(CHUNK_SIZE, end - pos))
                if not data:
                    # The file is shorter than its recorded size: never pad, cut the response instead.
                    raise FillFailed(f"cached {self._digest} is shorter than its recorded size")
                pos += len(data)
                yield data
        finally:
            await reader.close()


class BlobService:
    def __init__(self, store: BlobStore) -> None:
        self._store = store
        # Fills in progress, by digest: every request for a blob being downloaded reads the same fill.
        self._fills: dict[Digest, BlobFill] = {}

    async def stat(self, origin: Origin, repository: str, digest: Digest) -> int:
        size = await self._store.stat(digest)
        if size is not None:
            return size
        fill = self._fills.get(digest)
        if fill is not None and (size := await fill.ready()) is not None:
            return size
        size = await origin.remote.head_blob(repository, digest)
        if size is None:
            raise RegistryError.bad_gateway(f"upstream {origin.registry} did not say the size of {digest}")
        return size

    async def open(self, origin: Origin, repository: str, digest: Digest) -> BlobSource:
        size = await self._store.stat(digest)
        if size is not None:
            return CachedBlob(self._store, digest, size)
        fill = self._fills.get(digest)
        if fill is None:
            fill = BlobFill(
                digest,
                self._store,
                lambda: origin.remote.open_blob(repository, digest),
                self._forget,
            )
            self._fills[digest] = fill
            fill.start()
        try:
            await fill.ready()
        except RegistryError:
            raise
        except Exception as exc:
            raise RegistryError.bad_gateway(f"cannot fetch {digest}: {exc}") from None
        return fill

    def _forget(self, fill: BlobFill) -> None:
        if self._fills.get(fill.digest) is fill:
            del self._fills[fill.digest]
