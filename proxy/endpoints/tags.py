from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from proxy.errors import RegistryError
from proxy.services import services

__all__ = ["list_tags"]

_MAX_PAGE = 10_000


async def list_tags(request: Request) -> Response:
    svc = services(request)
    origin, repository = svc.router.resolve(request.path_params["name"])
    n_param = request.query_params.get("n")
    n: int | None = None
    if n_param is not None:
        # isdigit() alone admits "²" and other digits int() refuses.
        if not (n_param.isascii() and n_param.isdigit()) or len(n_param) > 6 or int(n_param) > _MAX_PAGE:
            raise RegistryError(400, "PAGINATION_NUMBER_INVALID", "invalid number of results requested")
        n = int(n_param)
    page = await svc.tags.list(origin, repository, n, request.query_params.get("last"))
    headers = {"Link": page.link} if page.link else {}
    return Response(page.body, 200, headers, media_type="application/json")
