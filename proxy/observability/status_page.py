"""The status page at ``/``: what an operator wants to see in a browser, rendered on the server (Jinja2)."""

from __future__ import annotations

import asyncio
import time

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from proxy import __version__
from proxy.observability.guard import check_access
from proxy.observability.metrics import Metrics
from proxy.observability.summary import summarize

__all__ = ["StatusPage"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


class StatusPage:
    def __init__(self, metrics: Metrics, access: str) -> None:
        self._metrics = metrics
        self._access = access
        # Autoescaping: repository names and upstream error messages come from clients and upstreams.
        self._templates = jinja2.Environment(
            loader=jinja2.PackageLoader("proxy.observability", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._templates.filters["size"] = human_size
        self._templates.filters["percent"] = percent
        self._templates.filters["duration"] = duration

    async def serve(self, request: Request) -> Response:
        check_access(request, self._access)
        # With several workers this reads every worker's files: off the event loop.
        families = await asyncio.to_thread(self._metrics.collect)
        summary = summarize(families, self._metrics.upstreams)
        html = self._templates.get_template("status.html").render(summary=summary, version=__version__, now=time.time())
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})


def human_size(value: float | None) -> str:
    if value is None:
        return "–"
    size = float(value)
    for unit in _UNITS:
        if abs(size) < 1024 or unit == _UNITS[-1]:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
