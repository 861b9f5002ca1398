"""``/healthz``: the process answers. ``/readyz``: it can do its job, which is to cache.

Readiness fails (503, a registry error whose detail is the report) only when the cache root cannot take a file.
The upstreams are reported, each with its last outcome and breaker state, but never fail it: a proxy whose
upstream is down still serves what it has cached, and taking it out of a load balancer would lose that too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.errors import RegistryError
from proxy.observability.upstreams import UpstreamStatus
from storage.preflight import check_root

__all__ = ["Health"]

log = logging.getLogger(__name__)

# Probes may come every second from several load balancers; the disk is asked at most this often.
_CHECK_INTERVAL = 1.0


class Health:
    def __init__(self, root: Path, upstreams: UpstreamStatus, clock: Callable[[], float] = time.monotonic) -> None:
        self._root = root
        self._upstreams = upstreams
        self._clock = clock
        self._checked_at: float | None = None
        self._problem: str | None = None
        self._lock = asyncio.Lock()

    async def alive(self, request: Request) -> Response:
        return JSONResponse({"status": "alive"}, headers={"Cache-Control": "no-store"})

    async def ready(self, request: Request) -> Response:
        problem = await self._cache_problem()
        report: dict[str, Any] = {
            "status": "ready" if problem is None else "not ready",
            "cache": {"writable": problem is None, "problem": problem},
            "upstreams": [
                {
                    "registry": state.registry,
                    "reachable": state.reachable,
                    "breaker": "open" if state.breaker_open else "closed",
                    "last_error": state.failure,
                }
                for state in self._upstreams.states.values()
            ],
        }
        if problem is not None:
            raise RegistryError(503, "UNAVAILABLE", f"not ready: the cache is not writable ({problem})", report)
        return JSONResponse(report, headers={"Cache-Control": "no-store"})

    async def _cache_problem(self) -> str | None:
        async with self._lock:
            now = self._clock()
            if self._checked_at is None or now - self._checked_at >= _CHECK_INTERVAL:
                problem = await asyncio.to_thread(check_root, self._root)
                if problem != self._problem:
                    if problem is not None:
                        log.warning("cache root %s is not writable (%s): /readyz fails", self._root, problem)
                    else:
                        log.info("cache root %s is writable again", self._root)
                self._checked_at, self._problem = now, problem
            return self._problem
