from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from proxy.endpoints.references import parse_digest
from proxy.endpoints.target import echo_namespace, target
from proxy.pullthrough.blobs import CachedBlob, RelayedBlob
from proxy.ranges import parse_range
from proxy.responses import BlobResponse
from proxy.services import services

__all__ = ["get_blob"]


async def get_blob(request: Request) -> Response:
    svc = services(request)
    where = target(request)
    origin, repository = where.origin, where.repository
    digest = parse_digest(request.path_params["digest"])
    if request.method == "HEAD":
        # Answered from the cache or an upstream HEAD: a HEAD never starts a download.
        size, cached = await svc.blobs.head(origin, repository, digest)
        head = BlobResponse(digest, size, None)
        head.headers["X-Cache"] = "HIT" if cached else "MISS"
        return echo_namespace(head, where)
    source = await svc.blobs.open(origin, repository, digest)
    # Whether these bytes were on disk or come from the upstream (a fill or a relay), decided before a range may
    # swap the source: `registry-proxy warm` counts what was cached already by it, and it is what an operator
    # looks for when a pull is slow. RELAYED: the cache could not take it, so the next pull fetches it again.
    cache = "HIT" if isinstance(source, CachedBlob) else "RELAYED" if isinstance(source, RelayedBlob) else "MISS"
    # When the upstream did not announce a size, a range cannot be checked: the whole blob is sent (200).
    byte_range = parse_range(request.headers.get("range"), source.size) if source.size is not None else None
    if byte_range is not None:
        # The source may wait until the bytes are verified, or answer with the whole blob instead.
        source, byte_range = await source.for_range(*byte_range)
    response = BlobResponse(digest, source.size, source, byte_range)
    response.headers["X-Cache"] = cache
    return echo_namespace(response, where)
