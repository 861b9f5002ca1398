"""Blobs: served from the cache when there, otherwise filled from the upstream while clients read."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable

from proxy.errors import RegistryError
from proxy.pullthrough.errors import FillFailed
from proxy.pullthrough.events import NO_PULL_EVENTS, PullEvents
from proxy.pullthrough.fill import BlobFill
from proxy.pullthrough.negative import NegativeCache
from proxy.pullthrough.relay import RelayedBlob
from proxy.pullthrough.segments import Chunk, chunk_size, next_chunk
from proxy.pullthrough.singleflight import SingleFlight
from proxy.pullthrough.sources import BlobSource, ByteRange
from proxy.routing import Origin
from proxy.upstream.client import BlobDownload
from storage.digest import Digest
from storage.interfaces import BlobStore, RepositoryIndex, StorageError

__all__ = ["BlobService", "BlobSource", "CachedBlob", "RelayedBlob"]

log = logging.getLogger(__name__)


class CachedBlob:
    def __init__(self, store: BlobStore, digest: Digest, size: int) -> None:
        self._store = store
        self._digest = digest
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    async def for_range(self, start: int, end: int) -> tuple[BlobSource, ByteRange | None]:
        return self, (start, end)  # committed bytes were verified

    async def stream(
        self, start: int = 0, end: int | None = None, zero_copy: bool = False
    ) -> AsyncGenerator[Chunk, None]:
        # Opened here rather than up front so that a response that never sends its body holds no file.
        try:
            opened = await self._store.open(self._digest)
        except StorageError as exc:
            raise FillFailed(str(exc)) from None
        if opened is None:
            raise FillFailed(f"{self._digest} left the cache before it was read")
        reader, _size = opened
        end = self._size if end is None else end
        pos = start
        try:
            while pos < end:
                chunk = await next_chunk(reader, pos, end - pos, zero_copy, str(self._digest))
                pos += chunk_size(chunk)
                yield chunk
        finally:
            await reader.close()


# What one upstream request asks for: (registry, repository, digest). Work is shared only between requests that would
# ask the upstream the same thing; a repository that lacks the blob must not fail a request under one that has it.
UpstreamKey = tuple[str, str, Digest]


class BlobService:
    def __init__(
        self,
        store: BlobStore,
        index: RepositoryIndex,
        negative: NegativeCache | None = None,
        events: PullEvents = NO_PULL_EVENTS,
    ) -> None:
        self._store = store
        self._events = events
        # Which repositories are known to hold which blobs: committed bytes are shared by digest, but a blob is served
        # under a repository only once that repository is known to hold it (else anyone could read a private
        # repository's layers through any public name, or another registry's prefix, by asking for the digest).
        self._index = index
        # The upstream's recent "no such blob" answers: a request that would ask again is answered from here.
        self._negative = negative or NegativeCache()
        # Fills in progress: every request for a blob being downloaded under the same name reads the same fill.
        # Only committed bytes are shared across repositories (the cache is keyed by digest alone).
        self._fills: dict[UpstreamKey, BlobFill] = {}
        self._heads: SingleFlight[int] = SingleFlight()

    async def stat(self, origin: Origin, repository: str, digest: Digest) -> int:
        return (await self.head(origin, repository, digest))[0]

    async def head(self, origin: Origin, repository: str, digest: Digest) -> tuple[int, bool]:
        """The blob's size, and whether the cache had it (else the upstream, or a fill, said it)."""
        size = await self._cached_size(digest)
        if size is not None and await self._linked(origin, repository, digest):
            return size, True
        key = (origin.registry, repository, digest)
        fill = self._fills.get(key)
        if fill is not None:
            try:
                if (size := await fill.ready()) is not None:
                    return size, False
            except (RegistryError, StorageError):
                pass  # the fill's own trouble; a HEAD of our own decides
        return await self._confirm(origin, repository, digest), False

    async def _confirm(self, origin: Origin, repository: str, digest: Digest) -> int:
        """The blob's size by one upstream HEAD under this repository (shared by concurrent callers); the
        repository is then known to hold it."""
        key = (origin.registry, repository, digest)
        self._negative.check(("blob", *key))
        # Concurrent HEADs of one uncached blob share one upstream HEAD, and a HEAD never downloads.
        try:
            size = await self._heads.do(key, lambda: self._head(origin, repository, digest))
        except RegistryError as exc:
            self._negative.remember(("blob", *key), exc, origin.not_found_ttl)
            raise
        await self._link(origin, repository, digest)
        return size

    async def _linked(self, origin: Origin, repository: str, digest: Digest) -> bool:
        """Whether a cached blob may be served under this repository: known to hold it, or confirmed upstream now.

        Raises the upstream's answer (404 BLOB_UNKNOWN, 401...) when it says the repository does not have it, or an
        outage error: a blob the repository is not known to hold is never served on trust.
        """
        try:
            if await self._index.has_blob(origin.registry, repository, digest):
                return True
        except (StorageError, OSError) as exc:
            log.error("cannot check %s/%s holds %s, asking the upstream: %s", origin.registry, repository, digest, exc)
        await self._confirm(origin, repository, digest)
        return True

    async def _link(self, origin: Origin, repository: str, digest: Digest) -> None:
        try:
            await self._index.link_blobs(origin.registry, repository, [digest])
        except StorageError as exc:
            # Only costs another HEAD next time.
            log.error("cannot record that %s/%s holds %s: %s", origin.registry, repository, digest, exc)

    async def _head(self, origin: Origin, repository: str, digest: Digest) -> int:
        size = await origin.remote.head_blob(repository, digest)
        if size is None:
            raise RegistryError.bad_gateway(f"upstream {origin.registry} did not say the size of {digest}")
        return size

    async def open(self, origin: Origin, repository: str, digest: Digest) -> BlobSource:
        size = await self._cached_size(digest)
        if size is not None and await self._linked(origin, repository, digest):
            return CachedBlob(self._store, digest, size)

        def download(offset: int) -> Awaitable[BlobDownload]:
            return origin.remote.open_blob(repository, digest, offset)

        key = (origin.registry, repository, digest)
        fill = self._fills.get(key)
        if fill is None:
            self._negative.check(("blob", *key))
            # Fills of one digest under two names may run at once: each writes a partial file of its own, and
            # committing identical content twice is an atomic replace.
            fill = BlobFill(digest, self._store, download, lambda done: self._forget(key, done), _claim_key(key))
            self._fills[key] = fill
            self._events.fill_started()
            fill.start()
        else:
            self._events.joined("blob")
        try:
            await fill.ready()
        except RegistryError as exc:
            self._negative.remember(("blob", *key), exc, origin.not_found_ttl)
            raise
        except StorageError:
            # Logged by the fill. The cache cannot take it, but the client still gets its blob.
            return RelayedBlob(await download(0), digest)
        # The upstream is serving it under this name: the repository holds it.
        await self._link(origin, repository, digest)
        return fill

    async def _cached_size(self, digest: Digest) -> int | None:
        try:
            return await self._store.stat(digest)
        except StorageError as exc:
            log.error("cache lookup of %s failed, treating it as a miss: %s", digest, exc)
            return None

    def _forget(self, key: UpstreamKey, fill: BlobFill) -> None:
        self._events.fill_finished()
        if self._fills.get(key) is fill:
            del self._fills[key]


def _claim_key(key: UpstreamKey) -> str:
    # The claim (one fill across processes) is scoped like the in-process table: per upstream question.
    registry, repository, _digest = key
    return f"{registry}/{repository}"
