"""uvicorn, plus the ASGI zero-copy send extension: blob bytes go from the page cache to the socket with
``os.sendfile`` in worker threads, instead of through Python buffers on the event loop.

Why: serving is the proxy's main work, and a CI fleet pulls the same big layers many times at once. With
plain sends the event loop thread copies every byte into the socket itself, holding the GIL, so one core
caps the whole proxy, fills included; sendfile in threads hands that work to the kernel on every core and
leaves the loop to the fills.

uvicorn does not implement the extension, so this subclasses its httptools protocol: each request's
``send`` is wrapped to handle ``http.response.zerocopysend`` (asgiref "Zero Copy Send") and pass every
other message to uvicorn unchanged. It relies on these attributes of uvicorn's request cycle: ``transport``,
``disconnected`` and ``expected_content_length``; ``tests/unit/test_server.py`` fails if they change.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from proxy.extensions import ZEROCOPY_SEND

__all__ = ["zero_copy_protocol"]

log = logging.getLogger(__name__)

# A client that takes no bytes for this long is treated as gone.
IDLE_TIMEOUT = 60.0


def zero_copy_protocol(executor: ThreadPoolExecutor) -> type[HttpToolsProtocol]:
    """An httptools protocol class for ``uvicorn.Config(http=...)`` whose requests may use zero-copy sends."""

    class ZeroCopyHttpToolsProtocol(HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            cycle = self.cycle
            # A new cycle shares this request's scope; an upgrade or a rejected request leaves the old one.
            if cycle is not None and cycle.scope is self.scope and "send" not in vars(cycle):
                self.scope.setdefault("extensions", {})[ZEROCOPY_SEND] = {}
                cycle.send = ZeroCopySend(cycle, cycle.send, executor)  # type: ignore[method-assign]

    return ZeroCopyHttpToolsProtocol


class ZeroCopySend:
    """A request's ``send``: zero-copy messages are sent here, everything else by uvicorn."""

    def __init__(
        self, cycle: RequestResponseCycle, send: Callable[[Any], Awaitable[None]], executor: ThreadPoolExecutor
    ) -> None:
        self._cycle = cycle
        self._send = send
        self._executor = executor

    async def __call__(self, message: Any) -> None:
        if message["type"] != ZEROCOPY_SEND:
            await self._send(message)
            return
        cycle = self._cycle
        if cycle.disconnected:
            return
        count = int(message["count"])
        if count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        transport = cycle.transport
        # Bytes uvicorn already queued (the response head) must reach the socket before the file's bytes.
        if not await _flushed(transport):
            cycle.disconnected = True
            transport.close()
            return
        sock_fd = transport.get_extra_info("socket").fileno()
        loop = asyncio.get_running_loop()
        file_fd = message["file"].fileno()
        sent = await loop.run_in_executor(self._executor, _sendfile, sock_fd, file_fd, int(message["offset"]), count)
        cycle.expected_content_length -= sent
        if sent < count:
            # The client went away or stopped reading; the response cannot be completed.
            cycle.disconnected = True
            transport.close()
            return
        if not message.get("more_body", False):
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})


async def _flushed(transport: asyncio.Transport, timeout: float = IDLE_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while transport.get_write_buffer_size():
        if transport.is_closing() or time.monotonic() > deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    return not transport.is_closing()


def _sendfile(sock_fd: int, file_fd: int, offset: int, count: int) -> int:
    """Runs in a worker thread: send ``count`` bytes, waiting for the (non-blocking) socket as needed."""
    sent = 0
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    while sent < count:
        try:
            n = os.sendfile(sock_fd, file_fd, offset + sent, count - sent)
        except BlockingIOError:
            if not poller.poll(IDLE_TIMEOUT * 1000):
                log.warning("client took no data for %.0f s; dropping it", IDLE_TIMEOUT)
                break
            continue
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF):
                log.error("sendfile failed: %s", exc)
            break
        if n == 0:
            break  # the file ended early: the caller cuts the response
        sent += n
    return sent
