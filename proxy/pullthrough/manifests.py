"""Manifests: by digest from the cache forever; by tag trusted for the upstream's ``tag_ttl``.

Past the TTL a tag is revalidated with one upstream HEAD (which Docker Hub does not count as a pull);
the manifest itself is only fetched again when the tag moved to a digest this repository lacks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from proxy.errors import RegistryError
from proxy.media_types import Accept
from proxy.pullthrough.singleflight import SingleFlight
from proxy.routing import Origin
from proxy.upstream.client import MAX_MANIFEST_SIZE, FetchedManifest
from storage.digest import Digest
from storage.interfaces import BlobStore, ManifestRecord, RepositoryIndex, StorageError, TagRecord

__all__ = ["Manifest", "ManifestService"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Manifest:
    digest: Digest
    media_type: str
    body: bytes  # exactly the upstream's bytes: the digest is computed over them
    stale: bool = False  # served from the cache past its TTL because the upstream failed


class ManifestService:
    def __init__(self, blobs: BlobStore, index: RepositoryIndex, clock: Callable[[], float] = time.time) -> None:
        self._blobs = blobs
        self._index = index
        self._clock = clock
        # Concurrent pulls of one tag or digest share one lookup and at most one upstream round trip.
        self._flights: SingleFlight[Manifest] = SingleFlight()

    async def by_digest(self, origin: Origin, repository: str, digest: Digest, accept: Accept) -> Manifest:
        key = ("digest", origin.registry, repository, digest)
        manifest = await self._flights.do(key, lambda: self._by_digest(origin, repository, digest))
        _check_accepted(manifest, accept, str(digest))
        return manifest

    async def by_tag(self, origin: Origin, repository: str, tag: str, accept: Accept) -> Manifest:
        key = ("tag", origin.registry, repository, tag, accept)
        return await self._flights.do(key, lambda: self._by_tag(origin, repository, tag, accept))

    async def _by_digest(self, origin: Origin, repository: str, digest: Digest) -> Manifest:
        cached = await self._cached(origin, repository, digest)
        if cached is None:
            # The digest fixes the content, so ask for every type; whether this client accepts it is
            # checked per caller (callers with different Accept headers share this fetch).
            fetched = await origin.remote.get_manifest(repository, str(digest), Accept())
            if fetched.digest != digest:
                raise RegistryError.bad_gateway(f"upstream {origin.registry} sent a manifest other than {digest}")
            cached = await self._remember(origin, repository, fetched)
        return cached

    async def _by_tag(self, origin: Origin, repository: str, tag: str, accept: Accept) -> Manifest:
        record = await self._index.get_tag(origin.registry, repository, tag)
        cached = None
        if record is not None and accept.allows(record.media_type):
            cached = await self._cached(origin, repository, record.digest)
        if cached is not None and record is not None and self._clock() - record.fetched_at < origin.tag_ttl:
            return cached
        try:
            return await self._refresh_tag(origin, repository, tag, accept, cached)
        except RegistryError as exc:
            if cached is None or not exc.is_outage:
                raise
            # The cache is more available than the registry behind it: a pull that worked before still works.
            log.warning("serving stale %s/%s:%s (upstream: %s)", origin.registry, repository, tag, exc.message)
            return replace(cached, stale=True)

    async def _refresh_tag(
        self, origin: Origin, repository: str, tag: str, accept: Accept, cached: Manifest | None
    ) -> Manifest:
        if cached is not None:
            # One HEAD (which Docker Hub does not count as a pull) tells whether the tag still points there.
            head = await origin.remote.head_manifest(repository, tag, accept)
            if head.digest == cached.digest:
                await self._remember_tag(origin, repository, tag, cached)
                return cached
            if head.digest is not None and (moved := await self._cached(origin, repository, head.digest)):
                await self._remember_tag(origin, repository, tag, moved)
                return moved
        fetched = await origin.remote.get_manifest(repository, tag, accept)
        manifest = await self._remember(origin, repository, fetched)
        await self._remember_tag(origin, repository, tag, manifest)
        return manifest

    async def _cached(self, origin: Origin, repository: str, digest: Digest) -> Manifest | None:
        record = await self._index.get_manifest(origin.registry, repository, digest)
        if record is None:
            return None
        body = await self._blobs.get(digest, MAX_MANIFEST_SIZE)
        # Manifests are small: re-hashing on every hit costs microseconds and means a damaged cache file
        # is refetched instead of served.
        if body is None or Digest.of(body, digest.algorithm) != digest:
            return None
        return Manifest(digest, record.media_type, body)

    async def _remember(self, origin: Origin, repository: str, fetched: FetchedManifest) -> Manifest:
        manifest = Manifest(fetched.digest, fetched.media_type, fetched.body)
        try:
            await self._blobs.put(fetched.digest, fetched.body)
            record = ManifestRecord(fetched.digest, fetched.media_type, len(fetched.body))
            await self._index.put_manifest(origin.registry, repository, record)
        except StorageError as exc:
            # The client still gets its manifest; only the caching is lost.
            log.error("cannot cache manifest %s of %s/%s: %s", fetched.digest, origin.registry, repository, exc)
        return manifest

    async def _remember_tag(self, origin: Origin, repository: str, tag: str, manifest: Manifest) -> None:
        record = TagRecord(manifest.digest, manifest.media_type, len(manifest.body), self._clock())
        try:
            await self._index.put_tag(origin.registry, repository, tag, record)
        except StorageError as exc:
            log.error("cannot record tag %s/%s:%s: %s", origin.registry, repository, tag, exc)


def _check_accepted(manifest: Manifest, accept: Accept, reference: str) -> None:
    if not accept.allows(manifest.media_type):
        raise RegistryError.manifest_unknown(
            reference, f"manifest is {manifest.media_type}, which the request's Accept header does not allow"
        )
