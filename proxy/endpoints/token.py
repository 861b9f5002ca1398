"""The proxy's token service (the Bearer realm of its challenge), as Distribution's token spec describes it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.auth.principal import Principal
from proxy.errors import RegistryError
from proxy.services import services

__all__ = ["issue_token"]

# A pull asks for one scope, a multi-repository operation a few; more is not a registry client.
_MAX_SCOPES = 16
_MAX_SCOPE_LENGTH = 512


async def issue_token(request: Request) -> Response:
    svc = services(request)
    if svc.tokens is None:
        raise RegistryError(404, "NOT_FOUND", "client authentication is not enabled on this proxy")
    scopes = request.query_params.getlist("scope")
    if len(scopes) > _MAX_SCOPES or any(len(scope) > _MAX_SCOPE_LENGTH for scope in scopes):
        raise RegistryError(400, "INVALID_SCOPE", "too many or too long scopes")
    # Credentials, if any, were checked by the authentication middleware: a wrong password never gets here.
    user = request.user
    issued = svc.tokens.issue(user if isinstance(user, Principal) else None, scopes)
    body = {
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": issued.issued_at,
    }
    return JSONResponse(body, headers={"Cache-Control": "no-store"})
