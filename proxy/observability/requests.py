"""Pure ASGI middleware that counts every request and writes its access log line, once it is answered."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.endpoints.target import TARGET_SCOPE_KEY
from proxy.extensions import ZEROCOPY_SEND
from proxy.observability.access_log import AccessLog
from proxy.observability.metrics import Metrics
from proxy.routing import Target
from proxy.upstream.sanitize import printable

__all__ = ["RequestObserver"]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CACHE = {b"HIT": "hit", b"MISS": "miss", b"STALE": "stale", b"RELAYED": "relayed"}


class RequestObserver:
    def __init__(
        self, app: ASGIApp, metrics: Metrics, endpoints: Mapping[Any, str], access_log: AccessLog | None
    ) -> None:
        """``endpoints``: the name each route's endpoint is counted under; ``access_log``: None for none."""
        self.app = app
        self._metrics = metrics
        self._endpoints = endpoints
        self._access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        sent = 0
        cache = b""

        async def observed(message: Message) -> None:
            nonlocal status, sent, cache
            kind = message["type"]
            if kind == "http.response.body":
                sent += len(message.get("body", b""))
            elif kind == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"x-cache":
                        cache = value
            elif kind == ZEROCOPY_SEND:
                sent += message["count"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            # An exception with nothing sent becomes a 500 further out (Starlette's error middleware).
            self._record(scope, status or 500, sent, cache, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, sent: int, x_cache: bytes, seconds: float) -> None:
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        endpoint = self._endpoints.get(scope.get("endpoint"), "none")
        cache = _CACHE.get(x_cache) or ("error" if status >= 500 or status == 429 else "none")
        target = scope.get(TARGET_SCOPE_KEY)
        upstream = target.origin.registry if isinstance(target, Target) else ""
        self._metrics.request(endpoint, method, status, cache, upstream, sent, seconds)
        if endpoint == "manifest" and status in (200, 304) and isinstance(target, Target):
            if ":" not in scope.get("path_params", {}).get("reference", ":"):  # by tag: an image pulled
                self._metrics.image_pulled(upstream, target.repository)
        if self._access_log is not None and self._access_log.enabled():
            client = scope.get("client")
            self._access_log.write(
                client=f"{client[0]}:{client[1]}" if client else "-",
                user=_user(scope),
                method=method if method != "OTHER" else scope["method"],
                path=scope["path"],
                query=scope.get("query_string", b""),
                http=scope.get("http_version", "1.1"),
                status=status,
                sent=sent,
                seconds=seconds,
                cache=cache,
                upstream=upstream,
            )


def _user(scope: Scope) -> str:
    # Set by Starlette's AuthenticationMiddleware when client authentication ([auth]) is on.
    user = scope.get("user")
    if user is None or not getattr(user, "is_authenticated", False):
        return "-"
    return printable(str(user.display_name), 100).replace(" ", "_") or "-"
