"""Everything this project takes from uvicorn beyond its public API, and the start-up check that it is there.

uvicorn implements neither the ASGI zero-copy send extension nor timeouts and size limits on a request's
header section, so :mod:`proxy.server.zerocopy` uses its httptools ``RequestResponseCycle`` and
:mod:`proxy.server.connections` subclasses its ``HttpToolsProtocol``. Both are private. Hence:

- the tested uvicorn range is pinned here and in ``pyproject.toml``;
- :func:`unsupported` checks at start-up that the names used are there; when they are not, the server runs
  on plain uvicorn (no zero-copy, uvicorn's own limits) and logs one line saying why.
"""

from __future__ import annotations

import os
from typing import Any

import uvicorn

__all__ = ["TESTED_UVICORN", "cycle_class", "protocol_class", "unsupported"]

# The uvicorn releases this was tested with: [lowest, first untested). Keep in step with pyproject.toml.
TESTED_UVICORN = ((0, 30), (0, 55))

# RequestResponseCycle attributes the zero-copy sender reads or updates.
CYCLE_ATTRIBUTES = ("transport", "disconnected", "expected_content_length")
# HttpToolsProtocol methods the connection guard overrides, and attributes it reads.
PROTOCOL_METHODS = ("connection_made", "connection_lost", "data_received", "on_message_begin", "on_headers_complete")
PROTOCOL_ATTRIBUTES = ("transport", "connections", "cycle")


def cycle_class() -> Any | None:
    try:
        from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
    except ImportError:
        return None
    return RequestResponseCycle


def protocol_class() -> Any | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None
    return HttpToolsProtocol


def unsupported() -> str | None:
    """Why the installed uvicorn cannot be extended as this project does, or None when it can."""
    if not hasattr(os, "sendfile"):
        return "os.sendfile is not available on this platform"
    version = _version_tuple(uvicorn.__version__)
    low, high = TESTED_UVICORN
    if version is None or not low <= version < high:
        return f"uvicorn {uvicorn.__version__} is outside the tested range {_dotted(low)} to before {_dotted(high)}"
    cycle, protocol = cycle_class(), protocol_class()
    if cycle is None or protocol is None:
        return "uvicorn's httptools protocol (or httptools) is not importable"
    missing = _unset(cycle, CYCLE_ATTRIBUTES) + _unset(protocol, PROTOCOL_ATTRIBUTES)
    missing += [name for name in ("send",) if not callable(getattr(cycle, name, None))]
    missing += [name for name in PROTOCOL_METHODS if not callable(getattr(protocol, name, None))]
    if missing:
        return f"uvicorn's httptools classes changed (missing: {', '.join(missing)})"
    return None


def _unset(cls: Any, names: tuple[str, ...]) -> list[str]:
    # Instance attributes are set in __init__ (or connection_made); their code objects name every attribute stored.
    stored: set[str] = set()
    for method in ("__init__", "connection_made"):
        code = getattr(getattr(cls, method, None), "__code__", None)
        if code is not None:
            stored.update(code.co_names)
    return [name for name in names if name not in stored]


def _version_tuple(version: str) -> tuple[int, int] | None:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def _dotted(version: tuple[int, int]) -> str:
    return ".".join(map(str, version))
