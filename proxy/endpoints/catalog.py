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
    names, next_last = paginate(await services(request).catalog.names(), n, last)
    headers = {"Link": next_link("/v2/_catalog", n, next_last)} if next_last else {}
    return Response(json.dumps({"repositories": names}).encode(), 200, headers, media_type="application/json")
