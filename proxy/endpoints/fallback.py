from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from proxy.errors import RegistryError

__all__ = ["not_found_or_unsupported"]

_READS = ("GET", "HEAD")


async def not_found_or_unsupported(request: Request) -> Response:
    """Anything under /v2/ that no route served: writes are unsupported, reads name no endpoint."""
    if request.method not in _READS:
        raise RegistryError.unsupported("this is a read-only pull-through cache")
    raise RegistryError(404, "NOT_FOUND", "no such endpoint", {"path": request.url.path[:300]})
