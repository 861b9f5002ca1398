from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from proxy.endpoints.pages import page_params
from proxy.pagination import next_link, paginate
from proxy.services import services

__all__ = ["catalog"]


async def catalog(request: Request) -> Response:
    n, last = page_params(request)
    svc = services(request)
    access = svc.access
    # With client authentication on, a client sees only the repositories it may pull.
    visible = (lambda registry, repository: access.allows(request, registry, repository)) if access else None
    names, next_last = paginate(await svc.catalog.names(visible), n, last)
    headers = {"Link": next_link("/v2/_catalog", n, next_last)} if next_last else {}
    return Response(json.dumps({"repositories": names}).encode(), 200, headers, media_type="application/json")
