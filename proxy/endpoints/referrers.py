from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from proxy.endpoints.references import parse_digest
from proxy.endpoints.target import echo_namespace, target
from proxy.errors import RegistryError
from proxy.pullthrough.referrers import PROXY_PARAMS
from proxy.responses import STALE_WARNING
from proxy.services import services

__all__ = ["list_referrers"]

# The query of a next-page link is the upstream's to define; it is handed back to it, within these bounds.
_MAX_PAGE_PARAMS = 8
_MAX_PAGE_PARAM_LENGTH = 1024


async def list_referrers(request: Request) -> Response:
    where = target(request)
    subject = parse_digest(request.path_params["digest"])
    artifact_type = request.query_params.get("artifactType") or None
    page = _page(request)
    referrers = await services(request).referrers.get(where, subject, artifact_type, page)
    headers = {}
    if referrers.link:
        headers["Link"] = referrers.link
    if referrers.filtered:
        headers["OCI-Filters-Applied"] = "artifactType"
    if referrers.stale:
        headers["Warning"] = STALE_WARNING
    return echo_namespace(Response(referrers.body, 200, headers, media_type=referrers.media_type), where)


def _page(request: Request) -> dict[str, str]:
    """Which page the client follows a Link to: the query minus what the proxy reads itself; empty for the first."""
    page = {key: value for key, value in request.query_params.multi_items() if key not in PROXY_PARAMS}
    too_long = any(len(key) + len(value) > _MAX_PAGE_PARAM_LENGTH for key, value in page.items())
    if len(page) > _MAX_PAGE_PARAMS or too_long:
        raise RegistryError(400, "PAGINATION_NUMBER_INVALID", "invalid pagination parameters")
    return page
