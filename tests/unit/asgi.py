"""Driving the app in-process with an async client, lifespan included (for tests of concurrency)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send


@asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """An AsyncClient talking to ``app`` after its lifespan started; the state reaches requests as uvicorn does it.

    httpx.ASGITransport neither runs the lifespan nor buffers less than the whole body, which is fine for
    the small blobs these tests use.
    """
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            yield client


def envelope_code(response: httpx.Response) -> Any:
    return response.json()["errors"][0]["code"]
