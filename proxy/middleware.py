from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ApiVersionHeaderMiddleware"]

_HEADER = (b"docker-distribution-api-version", b"registry/2.0")


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
