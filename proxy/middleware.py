"""Pure ASGI middleware: the API version header on every response, and limits on request size."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.errors import RegistryError

__all__ = ["MAX_HEADER_BYTES", "MAX_PATH_BYTES", "ApiVersionHeaderMiddleware", "RequestLimitsMiddleware"]

_HEADER = (b"docker-distribution-api-version", b"registry/2.0")

# No registry request comes near these: names are at most 255 characters, and clients send a handful of
# short headers (the longest is a bearer token, a few KiB). Anything bigger is refused before any work.
MAX_PATH_BYTES = 4096
MAX_HEADER_BYTES = 64 * 1024


class ApiVersionHeaderMiddleware:
    """Adds ``Docker-Distribution-API-Version: registry/2.0`` to every response, as Distribution does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), _HEADER]
            await send(message)

        await self.app(scope, receive, send_with_header)


class RequestLimitsMiddleware:
    """Refuses absurdly long paths (414) and header sections (431) with a registry error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            error = None
            if (
                len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b""))
                > MAX_PATH_BYTES
            ):
                error = RegistryError(414, "URI_TOO_LONG", "request URI too long")
            elif sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
                error = RegistryError(431, "HEADERS_TOO_LARGE", "request header fields too large")
            if error is not None:
                body = error.body()
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": error.status, "headers": headers})
                await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
                return
        await self.app(scope, receive, send)
