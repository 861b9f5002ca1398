"""The referrers API (signatures, SBOMs attached to a manifest): passed through, cached for the upstream's
tag TTL (new referrers appear over time), and served from the cache when the upstream is down."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy.errors import RegistryError
from proxy.routing import Target
from proxy.upstream.client import MAX_MANIFEST_SIZE
from storage.digest import Digest
from storage.interfaces import BlobStore, RepositoryIndex, StorageError, TagRecord

__all__ = ["Referrers", "ReferrersService"]

log = logging.getLogger(__name__)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@dataclass(frozen=True)
class Referrers:
    body: bytes
    media_type: str
    filtered: bool = False  # the artifactType filter was applied (OCI-Filters-Applied)
    stale: bool = False


class ReferrersService:
    def __init__(self, blobs: BlobStore, index: RepositoryIndex, clock: Callable[[], float] = time.time) -> None:
        self._blobs = blobs
        self._index = index
        self._clock = clock

    async def get(self, target: Target, subject: Digest, artifact_type: str | None) -> Referrers:
        referrers = await self._unfiltered(target, subject)
        if artifact_type is None:
            return referrers
        return Referrers(_filter(referrers.body, artifact_type), OCI_INDEX, filtered=True, stale=referrers.stale)

    async def _unfiltered(self, target: Target, subject: Digest) -> Referrers:
        registry, repository = target.origin.registry, target.repository
        record = await self._index.get_referrers(registry, repository, subject)
        cached = await self._blobs.get(record.digest, MAX_MANIFEST_SIZE) if record is not None else None
        if record is not None and cached is not None and self._clock() - record.fetched_at < target.origin.tag_ttl:
            return Referrers(cached, record.media_type)
        try:
            page = await target.origin.remote.get_referrers(repository, subject)
        except RegistryError as exc:
            if record is not None and cached is not None and exc.is_outage:
                log.warning("serving stale referrers of %s@%s (upstream: %s)", target.name, subject, exc.message)
                return Referrers(cached, record.media_type, stale=True)
            if exc.status == 404:
                # Clients fall back to the referrers tag schema (sha256-<hex>) on a 404, which we serve too.
                raise RegistryError(
                    404, "NOT_FOUND", f"upstream {registry} does not support the referrers API"
                ) from None
            raise
        digest = Digest.of(page.body)
        try:
            await self._blobs.put(digest, page.body)
            await self._index.put_referrers(
                registry, repository, subject, TagRecord(digest, page.media_type, len(page.body), self._clock())
            )
        except StorageError as exc:
            log.error("cannot cache referrers of %s@%s: %s", target.name, subject, exc)
        return Referrers(page.body, page.media_type)


def _filter(body: bytes, artifact_type: str) -> bytes:
    # A referrers list is generated, not content-addressed: re-serializing it changes nothing a client checks.
    try:
        index = json.loads(body)
        manifests = [m for m in index.get("manifests", []) if m.get("artifactType") == artifact_type]
    except (ValueError, AttributeError, TypeError):
        raise RegistryError.bad_gateway("upstream sent an unreadable referrers index") from None
    return json.dumps({**index, "manifests": manifests}).encode()
