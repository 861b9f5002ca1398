"""Manifests: by digest from the cache forever; by tag trusted for the upstream's ``tag_ttl``.

A tag is always asked of the upstream with every manifest type, so its record holds the upstream's one answer
(a multi-arch tag's index) whatever the client that happened to ask first accepts; each client is then answered
from that record (:mod:`proxy.pullthrough.negotiation`).

Past the TTL a tag is revalidated with one upstream HEAD (which Docker Hub does not count as a pull);
the manifest itself is only fetched again when the tag moved to a digest this repository lacks.

Manifests served and tag answers are also kept in memory (:mod:`proxy.pullthrough.memo`): a hit of a fresh tag or
of a digest the repository holds is answered from there without touching the disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from proxy.errors import RegistryError
from proxy.media_types import DOCKER_MANIFEST_LIST, Accept
from proxy.pullthrough.events import NO_PULL_EVENTS, PullEvents
from proxy.pullthrough.memo import ManifestMemo
from proxy.pullthrough.negative import NegativeCache
from proxy.pullthrough.negotiation import default_image, not_accepted
from proxy.pullthrough.singleflight import SingleFlight
from proxy.routing import Origin
from proxy.upstream.client import MAX_MANIFEST_SIZE, FetchedManifest, embedded_media_type
from storage.contents import CONFIG, LAYER, contents_of
from storage.digest import Digest
from storage.interfaces import (
    BlobStore,
    FetchLocks,
    ImageRecorder,
    ManifestRecord,
    RepositoryIndex,
    StorageError,
    TagRecord,
)
from storage.locks import NO_FETCH_LOCKS

__all__ = ["Manifest", "ManifestService"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Manifest:
    digest: Digest
    media_type: str
    body: bytes  # exactly the upstream's bytes: the digest is computed over them
    stale: bool = False  # served from the cache past its TTL because the upstream failed
    cached: bool = False  # read from the cache (X-Cache: HIT), not fetched from the upstream for this request


class ManifestService:
    def __init__(
        self,
        blobs: BlobStore,
        index: RepositoryIndex,
        clock: Callable[[], float] = time.time,
        negative: NegativeCache | None = None,
        images: ImageRecorder | None = None,
        events: PullEvents = NO_PULL_EVENTS,
        memo: ManifestMemo | None = None,
        accessed: Callable[[Digest], None] | None = None,
        locks: FetchLocks = NO_FETCH_LOCKS,
    ) -> None:
        """``memo``: manifests and tag answers in memory (a small one of its own if not given); ``accessed``: told
        when a manifest is served from memory, as a read of its cached file would be (the cache budget's LRU);
        ``locks``: shared with the other processes (and replicas) using this storage, so that they ask the upstream
        for one tag or manifest one at a time (none: this process alone)."""
        self._blobs = blobs
        self._index = index
        self._clock = clock
        # The upstream's recent "no such manifest" answers, by (registry, repository, tag or digest).
        self._negative = negative or NegativeCache()
        self._images = images  # the inventory's record of cached images and their pulls
        self._memo = memo if memo is not None else ManifestMemo()
        self._accessed = accessed
        self._locks = locks
        # Concurrent pulls of one tag or digest share one lookup and at most one upstream round trip.
        self._flights: SingleFlight[Manifest] = SingleFlight(on_join=lambda: events.joined("manifest"))

    async def by_digest(self, origin: Origin, repository: str, digest: Digest, accept: Accept) -> Manifest:
        manifest = await self._digest(origin, repository, digest)
        _check_accepted(manifest, accept, str(digest))
        return manifest

    async def by_tag(self, origin: Origin, repository: str, tag: str, accept: Accept) -> Manifest:
        manifest = self._fresh_in_memory(origin, repository, tag)
        if manifest is None:
            # One answer per tag, whatever this client accepts: clients with different Accept headers share one lookup.
            key = ("tag", origin.registry, repository, tag)
            manifest = await self._flights.do(key, lambda: self._by_tag(origin, repository, tag))
        if self._images is not None:
            self._images.tag_pulled(origin.registry, repository, tag)  # per client, outside the shared flight
        if accept.allows(manifest.media_type):
            return manifest
        if manifest.media_type != DOCKER_MANIFEST_LIST:
            raise not_accepted(tag, manifest.media_type)
        image = default_image(manifest.body)
        if image is None:
            raise RegistryError.manifest_unknown(
                tag, "the manifest list has no linux/amd64 image, and the request's Accept header does not allow lists"
            )
        # Through the by-digest path, so the image is cached like any other.
        found = await self._digest(origin, repository, image)
        _check_accepted(found, accept, tag)
        return replace(found, stale=manifest.stale)

    async def _digest(self, origin: Origin, repository: str, digest: Digest) -> Manifest:
        found = self._in_memory(origin, repository, digest)
        if found is not None:
            return found
        key = ("digest", origin.registry, repository, digest)
        return await self._flights.do(key, lambda: self._by_digest(origin, repository, digest))

    async def _by_digest(self, origin: Origin, repository: str, digest: Digest) -> Manifest:
        cached = await self._cached(origin, repository, digest)
        if cached is None:
            cached = await self._confirm_cached(origin, repository, digest)
        if cached is not None:
            return cached
        # As for a tag (_by_tag): one process sharing the cache at a time asks the upstream for it.
        async with self._locks.hold(f"manifest {origin.registry}/{repository}@{digest}") as waited:
            if waited and (cached := await self._cached(origin, repository, digest)) is not None:
                return cached
            # The digest fixes the content, so ask for every type; whether this client accepts it is
            # checked per caller (callers with different Accept headers share this fetch).
            fetched = await self._ask(origin, repository, digest, origin.remote.get_manifest)
            if fetched.digest != digest:
                raise RegistryError.bad_gateway(f"upstream {origin.registry} sent a manifest other than {digest}")
            return await self._remember(origin, repository, fetched)

    def _fresh_in_memory(self, origin: Origin, repository: str, tag: str) -> Manifest | None:
        record = self._memo.tag(origin.registry, repository, tag)
        if record is None or self._clock() - record.fetched_at >= origin.tag_ttl:
            return None
        return self._in_memory(origin, repository, record.digest)

    def _in_memory(self, origin: Origin, repository: str, digest: Digest) -> Manifest | None:
        found = self._memo.manifest(origin.registry, repository, digest)
        if found is not None and self._accessed is not None:
            self._accessed(digest)
        return found

    async def _by_tag(self, origin: Origin, repository: str, tag: str) -> Manifest:
        fresh, cached = await self._tag_on_disk(origin, repository, tag)
        if fresh:
            assert cached is not None
            return cached
        # Other processes sharing this cache (workers, replicas on one bucket) may be asking the upstream for this tag
        # right now: one at a time, and one that waited takes the answer the other stored (Docker Hub counts
        # manifest GETs against its pull limit, so N workers must not make N).
        async with self._locks.hold(f"tag {origin.registry}/{repository}:{tag}") as waited:
            if waited:
                fresh, cached = await self._tag_on_disk(origin, repository, tag)
                if fresh:
                    assert cached is not None
                    return cached
            try:
                return await self._refresh_tag(origin, repository, tag, cached)
            except RegistryError as exc:
                if cached is None or not exc.is_outage:
                    raise
                # The cache is more available than the registry behind it: a pull that worked before still works.
                log.warning("serving stale %s/%s:%s (upstream: %s)", origin.registry, repository, tag, exc.message)
                return replace(cached, stale=True)

    async def _tag_on_disk(self, origin: Origin, repository: str, tag: str) -> tuple[bool, Manifest | None]:
        """Whether the stored answer for the tag is fresh, and the manifest it points to if cached."""
        # From disk, not memory: another process sharing the cache may have refreshed the tag since.
        try:
            record = await self._index.get_tag(origin.registry, repository, tag)
        except (StorageError, OSError) as exc:
            log.error("cannot read tag %s/%s:%s from the cache: %s", origin.registry, repository, tag, exc)
            record = None
        cached = await self._cached(origin, repository, record.digest) if record is not None else None
        if cached is not None and record is not None and self._clock() - record.fetched_at < origin.tag_ttl:
            self._memo.remember_tag(origin.registry, repository, tag, record)
            return True, cached
        return False, cached

    async def _ask(
        self,
        origin: Origin,
        repository: str,
        reference: str | Digest,
        call: Callable[[str, str, Accept], Awaitable[T]],
    ) -> T:
        """``call`` upstream for the reference with every manifest type, unless it recently said there is none."""
        key = ("manifest", origin.registry, repository, reference)
        self._negative.check(key)
        try:
            return await call(repository, str(reference), Accept.every_type())
        except RegistryError as exc:
            self._negative.remember(key, exc, origin.not_found_ttl)
            raise

    async def _refresh_tag(self, origin: Origin, repository: str, tag: str, cached: Manifest | None) -> Manifest:
        if cached is not None:
            # One HEAD (which Docker Hub does not count as a pull) tells whether the tag still points there.
            head = await self._ask(origin, repository, tag, origin.remote.head_manifest)
            if head.digest == cached.digest:
                await self._remember_tag(origin, repository, tag, cached)
                return cached
            if head.digest is not None and (moved := await self._cached(origin, repository, head.digest)):
                await self._remember_tag(origin, repository, tag, moved)
                return moved
        fetched = await self._ask(origin, repository, tag, origin.remote.get_manifest)
        manifest = await self._remember(origin, repository, fetched)
        await self._remember_tag(origin, repository, tag, manifest)
        return manifest

    async def _confirm_cached(self, origin: Origin, repository: str, digest: Digest) -> Manifest | None:
        """A manifest whose bytes another repository brought, once this repository is confirmed to hold it too: one
        HEAD (which Docker Hub does not count as a pull) instead of a GET. None when the bytes are not cached."""
        body = await self._blobs.get(digest, MAX_MANIFEST_SIZE)
        if body is None or Digest.of(body, digest.algorithm) != digest:
            return None
        head = await self._ask(origin, repository, digest, origin.remote.head_manifest)
        if head.digest is not None and head.digest != digest:
            raise RegistryError.bad_gateway(f"upstream {origin.registry} answered for a manifest other than {digest}")
        media_type = head.media_type or embedded_media_type(body)
        if not media_type:
            return None  # the GET will say
        # Served from the cache's bytes (X-Cache: HIT): the upstream was only asked whether this repository has them.
        return replace(await self._remember(origin, repository, FetchedManifest(digest, media_type, body)), cached=True)

    async def _cached(self, origin: Origin, repository: str, digest: Digest) -> Manifest | None:
        found = self._in_memory(origin, repository, digest)
        if found is not None:
            return found
        try:
            record = await self._index.get_manifest(origin.registry, repository, digest)
            if record is None:
                return None
            body = await self._blobs.get(digest, MAX_MANIFEST_SIZE)
        except (StorageError, OSError) as exc:
            # The storage failing (a bucket out of reach) is a miss: the upstream answers instead, never a 500.
            log.error("cannot read manifest %s of %s/%s from the cache: %s", digest, origin.registry, repository, exc)
            return None
        # Manifests are small: re-hashing on every hit costs microseconds and means a damaged cache file
        # is refetched instead of served.
        if body is None or Digest.of(body, digest.algorithm) != digest:
            return None
        manifest = Manifest(digest, record.media_type, body, cached=True)
        self._memo.remember_manifest(origin.registry, repository, manifest)
        return manifest

    async def _remember(self, origin: Origin, repository: str, fetched: FetchedManifest) -> Manifest:
        manifest = Manifest(fetched.digest, fetched.media_type, fetched.body)
        # Verified bytes the upstream gave for this repository: served from memory next time (even if the disk
        # write below fails, which spares the upstream a GET per pull while the disk is full).
        self._memo.remember_manifest(origin.registry, repository, replace(manifest, cached=True))
        try:
            await self._blobs.put(fetched.digest, fetched.body)
            record = ManifestRecord(fetched.digest, fetched.media_type, len(fetched.body))
            await self._index.put_manifest(origin.registry, repository, record)
            # Its config and layers may now be served under this repository's name.
            references = contents_of(fetched.body).references
            blobs = [ref.digest for ref in references if ref.kind in (CONFIG, LAYER)]
            if blobs:
                await self._index.link_blobs(origin.registry, repository, blobs)
            if self._images is not None:
                self._images.manifest_cached(
                    origin.registry, repository, fetched.digest, fetched.media_type, fetched.body
                )
        except StorageError as exc:
            # The client still gets its manifest; only the caching is lost.
            log.error("cannot cache manifest %s of %s/%s: %s", fetched.digest, origin.registry, repository, exc)
        return manifest

    async def _remember_tag(self, origin: Origin, repository: str, tag: str, manifest: Manifest) -> None:
        record = TagRecord(manifest.digest, manifest.media_type, len(manifest.body), self._clock())
        self._memo.remember_tag(origin.registry, repository, tag, record)
        try:
            await self._index.put_tag(origin.registry, repository, tag, record)
            if self._images is not None:
                self._images.tag_cached(origin.registry, repository, tag, record)
        except StorageError as exc:
            log.error("cannot record tag %s/%s:%s: %s", origin.registry, repository, tag, exc)


def _check_accepted(manifest: Manifest, accept: Accept, reference: str) -> None:
    if not accept.allows(manifest.media_type):
        raise not_accepted(reference, manifest.media_type)
