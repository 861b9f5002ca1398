"""The referrers API (signatures, SBOMs attached to a manifest): passed through, cached for the upstream's
tag TTL (new referrers appear over time), and served from the cache when the upstream is down.

A list the upstream pages is passed on page by page: its ``Link`` points back at this proxy, under the client's
name and ``ns``, with the upstream's own query, which the next request hands back to the upstream as it is. Only a
list that fits one page is cached: a cached first page would lose its link (the cache records no Link), and clients
would see only that page.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from proxy.errors import RegistryError
from proxy.pagination import rewrite_opaque_link
from proxy.pullthrough.tags import namespace_params
from proxy.routing import Target
from proxy.upstream.client import MAX_MANIFEST_SIZE
from storage.digest import Digest
from storage.interfaces import BlobStore, RepositoryIndex, StorageError, TagRecord

__all__ = ["PROXY_PARAMS", "Referrers", "ReferrersService", "referrers_path"]

log = logging.getLogger(__name__)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
# Query parameters this proxy reads itself; any other is the upstream's paging, handed back to it.
PROXY_PARAMS = ("ns", "artifactType")


@dataclass(frozen=True)
class Referrers:
    body: bytes
    media_type: str
    link: str | None = None  # the next page, through this proxy
    filtered: bool = False  # the artifactType filter was applied (OCI-Filters-Applied)
    stale: bool = False


def referrers_path(target: Target, subject: Digest) -> str:
    return f"/v2/{target.name}/referrers/{subject}"


class ReferrersService:
    def __init__(self, blobs: BlobStore, index: RepositoryIndex, clock: Callable[[], float] = time.time) -> None:
        self._blobs = blobs
        self._index = index
        self._clock = clock

    async def get(
        self, target: Target, subject: Digest, artifact_type: str | None, page: Mapping[str, str] | None = None
    ) -> Referrers:
        """The first page of the referrers of ``subject``, or the one ``page`` names (the query of a Link we sent)."""
        referrers = await self._fetch(target, subject, dict(page)) if page else await self._first(target, subject)
        # The filter is applied here, page by page, so the upstream's pages stay the same whatever a client filters.
        extra = namespace_params(target)
        if artifact_type is not None:
            extra["artifactType"] = artifact_type
        link = rewrite_opaque_link(referrers.link, referrers_path(target, subject), extra, PROXY_PARAMS)
        if artifact_type is None:
            return Referrers(referrers.body, referrers.media_type, link, stale=referrers.stale)
        body = _filter(referrers.body, artifact_type)
        return Referrers(body, OCI_INDEX, link, filtered=True, stale=referrers.stale)

    async def _first(self, target: Target, subject: Digest) -> Referrers:
        registry, repository = target.origin.registry, target.repository
        record = await self._index.get_referrers(registry, repository, subject)
        cached = await self._blobs.get(record.digest, MAX_MANIFEST_SIZE) if record is not None else None
        if record is not None and cached is not None and self._clock() - record.fetched_at < target.origin.tag_ttl:
            return Referrers(cached, record.media_type)
        try:
            fetched = await self._fetch(target, subject, None)
        except RegistryError as exc:
            if record is not None and cached is not None and exc.is_outage:
                log.warning("serving stale referrers of %s@%s (upstream: %s)", target.name, subject, exc.message)
                return Referrers(cached, record.media_type, stale=True)
            raise
        if fetched.link is None:
            await self._remember(target, subject, fetched)
        return fetched

    async def _fetch(self, target: Target, subject: Digest, page: dict[str, str] | None) -> Referrers:
        try:
            fetched = await target.origin.remote.get_referrers(target.repository, subject, page)
        except RegistryError as exc:
            if exc.status == 404:
                # Clients fall back to the referrers tag schema (sha256-<hex>) on a 404, which we serve too.
                raise RegistryError(
                    404, "NOT_FOUND", f"upstream {target.origin.registry} does not support the referrers API"
                ) from None
            raise
        return Referrers(fetched.body, fetched.media_type, fetched.link)

    async def _remember(self, target: Target, subject: Digest, referrers: Referrers) -> None:
        digest = Digest.of(referrers.body)
        record = TagRecord(digest, referrers.media_type, len(referrers.body), self._clock())
        try:
            await self._blobs.put(digest, referrers.body)
            await self._index.put_referrers(target.origin.registry, target.repository, subject, record)
        except StorageError as exc:
            log.error("cannot cache referrers of %s@%s: %s", target.name, subject, exc)


def _filter(body: bytes, artifact_type: str) -> bytes:
    # A referrers list is generated, not content-addressed: re-serializing it changes nothing a client checks.
    try:
        index = json.loads(body)
        manifests = [m for m in index.get("manifests", []) if m.get("artifactType") == artifact_type]
    except (ValueError, AttributeError, TypeError):
        raise RegistryError.bad_gateway("upstream sent an unreadable referrers index") from None
    return json.dumps({**index, "manifests": manifests}).encode()
