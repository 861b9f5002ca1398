from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from proxy.endpoints.pages import page_params
from proxy.endpoints.target import echo_namespace, target
from proxy.responses import STALE_WARNING
from proxy.services import services

__all__ = ["list_tags"]


async def list_tags(request: Request) -> Response:
    where = target(request)
    n, last = page_params(request)
    tags = await services(request).tags.list(where, n, last)
    headers = {"Link": tags.link} if tags.link else {}
    if tags.stale:
        headers["Warning"] = STALE_WARNING
    return echo_namespace(Response(tags.body, 200, headers, media_type="application/json"), where)
