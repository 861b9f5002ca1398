from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from proxy.endpoints.references import parse_digest
from proxy.endpoints.target import echo_namespace, target
from proxy.responses import STALE_WARNING
from proxy.services import services

__all__ = ["list_referrers"]


async def list_referrers(request: Request) -> Response:
    where = target(request)
    subject = parse_digest(request.path_params["digest"])
    artifact_type = request.query_params.get("artifactType") or None
    referrers = await services(request).referrers.get(where, subject, artifact_type)
    headers = {}
    if referrers.filtered:
        headers["OCI-Filters-Applied"] = "artifactType"
    if referrers.stale:
        headers["Warning"] = STALE_WARNING
    return echo_namespace(Response(referrers.body, 200, headers, media_type=referrers.media_type), where)
