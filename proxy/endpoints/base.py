from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = ["api_base"]


async def api_base(request: Request) -> Response:
    # 200 tells clients this is a v2 registry needing no auth of its own (the proxy holds the upstream's).
    return JSONResponse({})
