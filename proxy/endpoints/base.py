from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.auth.backend import ANONYMOUS_TOKEN
from proxy.auth.challenge import challenge
from proxy.errors import RegistryError
from proxy.services import services

__all__ = ["api_base"]


async def api_base(request: Request) -> Response:
    access = services(request).access
    if access is not None and not request.user.is_authenticated and ANONYMOUS_TOKEN not in request.auth.scopes:
        # Clients learn how to log in here (dockerd only ever from here): the challenge names our token service.
        # Anonymous pulls of public repositories still work: the token service issues anonymous tokens.
        error = RegistryError.unauthorized("authentication required")
        error.headers["WWW-Authenticate"] = challenge(request, access.service)
        raise error
    # 200 tells clients this is a v2 registry and, without [auth], that it needs no login of its own.
    return JSONResponse({})
