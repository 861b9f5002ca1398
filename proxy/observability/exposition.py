"""``/metrics``: the Prometheus text exposition, as prometheus-client writes it."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from proxy.observability.guard import check_access
from proxy.observability.metrics import Metrics

__all__ = ["MetricsEndpoint"]


class MetricsEndpoint:
    def __init__(self, metrics: Metrics, access: str) -> None:
        self._metrics = metrics
        self._access = access

    async def serve(self, request: Request) -> Response:
        check_access(request, self._access)
        # With several workers this reads every worker's files: off the event loop.
        body = await asyncio.to_thread(lambda: generate_latest(self._metrics.exposition_registry()))
        return Response(body, headers={"Cache-Control": "no-store"}, media_type=CONTENT_TYPE_LATEST)
