"""Connection hygiene that uvicorn lacks: a deadline and a size cap on each request's header section, and a
cap on open connections with a clear refusal beyond it.

Why each one:

- uvicorn waits forever for a request's headers: a connection that never sends a byte, or drips one a
  second (slowloris), is kept open indefinitely, and enough of them use up the process's descriptors.
  Here the header section must be complete ``header_timeout`` seconds after the connection opens or the
  request's first byte arrives; otherwise the connection is closed (with 408 when it had started a request).
- httptools accumulates a header line in memory until it ends, and uvicorn checks no size at all: two
  clients sending 300 MB header lines took RSS to 2.4 GB. Here the bytes received while a header section
  is incomplete are counted as they arrive, and past ``max_header_bytes`` the request gets 431 (414 when
  the URI is what is too long) and the connection is closed. What is held is bounded by the cap plus one read.
- Past ``max_connections`` open connections, a new one gets 503 with ``Retry-After`` and is closed at
  once, instead of the accept loop failing with EMFILE and every new client getting an empty reply.

Errors are the registry JSON envelope, like every other error the proxy sends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from dataclasses import dataclass
from typing import Any

from proxy.server.uvicorn_internals import protocol_class

__all__ = ["ConnectionLimits", "guarded_protocol", "raise_descriptor_limit"]

log = logging.getLogger(__name__)

# Descriptors kept for everything but client connections: cache files being read or written, upstream
# connections, the SQLite-style files later issues add, logs.
_RESERVED_DESCRIPTORS = 1024
# Even with a huge descriptor limit, each open connection costs memory; this many idle ones is plenty.
_MAX_AUTO_CONNECTIONS = 16384
# After refusing a request, read and drop what the client still sends for this long before closing: closing
# with unread input resets the connection, and the reset can destroy the error response before it is read.
_LINGER = 1.0


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 20.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 4096


def raise_descriptor_limit() -> int:
    """Raise the soft limit on open descriptors to the hard limit where allowed; the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
    return soft


def auto_max_connections(descriptor_limit: int) -> int:
    """Client connections that fit under the descriptor limit with room for everything else."""
    return max(64, min(_MAX_AUTO_CONNECTIONS, descriptor_limit - _RESERVED_DESCRIPTORS))


def guarded_protocol(limits: ConnectionLimits) -> type[Any]:
    """uvicorn's httptools protocol with the limits above; pass it as ``uvicorn.Config(http=...)``."""
    base: Any = protocol_class()
    if base is None:
        raise RuntimeError("uvicorn's httptools protocol is not importable")

    class GuardedHttpToolsProtocol(base):  # type: ignore[misc]
        _header_timer: asyncio.TimerHandle | None = None
        _header_bytes = 0
        _started_request = False
        _in_request_line = True
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                log.warning("refusing a connection: %d open, the limit is %d", len(self.connections) - 1,
                            limits.max_connections)  # fmt: skip
                self._refuse(503, "TOOMANYREQUESTS", "too many open connections to the proxy; retry shortly",
                             retry_after="1")  # fmt: skip
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # lingering: dropped unread
            if self._header_timer is not None:
                # Counted before the parser sees it, so a header line that never ends is never held whole.
                before = self._header_bytes
                self._header_bytes += len(data)
                self._started_request = True
                line_end = data.find(b"\n")
                if self._header_bytes > limits.max_header_bytes:
                    # The request line alone is past the cap: the URI is what is too long.
                    if self._in_request_line and (line_end < 0 or before + line_end >= limits.max_header_bytes):
                        self._refuse(414, "URI_TOO_LONG", "request URI too long")
                    else:
                        self._refuse(431, "HEADERS_TOO_LARGE", "request header fields too large")
                    return
                if line_end >= 0:
                    self._in_request_line = False
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:
                self._arm()
            self._started_request = True

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def _arm(self) -> None:
            self._header_bytes = 0
            self._started_request = False
            # Approximate for a keep-alive request armed mid-read (its line end may be in the read that began it).
            self._in_request_line = True
            self._header_timer = self.loop.call_later(limits.header_timeout, self._header_timed_out)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self._started_request:
                self._refuse(408, "REQUEST_TIMEOUT", f"request headers not received within {limits.header_timeout:g} s")
            else:
                self.transport.close()  # never said anything: nothing to answer

        def _refuse(self, status: int, code: str, message: str, retry_after: str | None = None) -> None:
            self._disarm()
            body = json.dumps({"errors": [{"code": code, "message": message, "detail": {}}]}).encode()
            head = [
                f"HTTP/1.1 {status} {_REASONS[status]}",
                "content-type: application/json",
                f"content-length: {len(body)}",
                "connection: close",
                "docker-distribution-api-version: registry/2.0",
            ]
            if retry_after is not None:
                head.append(f"retry-after: {retry_after}")
            self._refused = True
            transport = self.transport
            transport.write(("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body)
            if transport.can_write_eof():
                transport.write_eof()
            self.loop.call_later(_LINGER, transport.close)

    return GuardedHttpToolsProtocol


_REASONS = {
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
