"""Zero-copy blob sends: the ASGI "Zero Copy Send" extension on uvicorn's httptools server.

Why: serving cached layers is the proxy's main work. With plain sends every byte is copied from the file
into Python and then into the socket on the event loop; with ``os.sendfile`` the kernel moves it from the
page cache straight to the socket.

uvicorn does not implement the extension. Only a ``send`` that *is* uvicorn's httptools
``RequestResponseCycle.send`` gets it (see :mod:`proxy.server.uvicorn_internals` for what is relied on and
the start-up check), so any other server or protocol (h11, a test client) simply sees no extension. The
middleware wraps ``send`` when the app is called, not when the protocol builds the request's task, so it
holds when the loop runs tasks eagerly (Python 3.12's ``eager_task_factory``).

How the bytes are sent, and why each step:

- on the event loop, with the socket in non-blocking mode: ``os.sendfile`` copies what the socket buffer
  takes and returns; when the buffer is full the loop waits for writability (``add_writer``). No thread is
  ever parked on a slow client, so hundreds of stalled readers cost file descriptors, not workers.
- on a private ``os.dup`` of the socket's descriptor, closed by this code: uvicorn closes its own descriptor
  when the client goes away, and the kernel may hand that number to the next accepted connection at once.
  Sending on a number we do not own would write one client's blob into another client's connection.
- a client that takes no byte for ``stall_timeout`` seconds, or whose connection uvicorn has closed, is cut.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from typing import Any

from proxy.extensions import ZEROCOPY_SEND
from proxy.server.uvicorn_internals import cycle_class

__all__ = ["ZeroCopyMiddleware"]

log = logging.getLogger(__name__)

# How often a send waiting for a full socket buffer checks whether uvicorn closed the connection meanwhile.
_CLOSE_CHECK_INTERVAL = 1.0


class ZeroCopyMiddleware:
    """Outermost ASGI middleware: offers the zero-copy extension on uvicorn's httptools connections."""

    def __init__(self, app: Any, *, stall_timeout: float = 60.0) -> None:
        self.app = app
        self._stall_timeout = stall_timeout
        # uvicorn's own ``RequestResponseCycle.send``: a ``send`` bound to it is a connection we know how to use.
        self._cycle_send: Any = getattr(cycle_class(), "send", None)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # Never over TLS: sendfile writes to the TCP socket beneath the TLS layer, so it would send plaintext.
        if scope["type"] == "http" and scope.get("scheme") == "http" and self._cycle_send is not None:
            if getattr(send, "__func__", None) is self._cycle_send:
                scope.setdefault("extensions", {})[ZEROCOPY_SEND] = {}
                send = _ZeroCopySend(send.__self__, send, self._stall_timeout)
        await self.app(scope, receive, send)


class _ZeroCopySend:
    """One request's ``send``: zero-copy messages are sent here, everything else by uvicorn."""

    def __init__(self, cycle: Any, send: Any, stall_timeout: float) -> None:
        self._cycle = cycle
        self._send = send
        self._stall_timeout = stall_timeout

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] != ZEROCOPY_SEND:
            await self._send(message)
            return
        cycle = self._cycle
        transport: asyncio.Transport = cycle.transport
        if cycle.disconnected or transport.is_closing():
            return
        count = int(message["count"])
        if count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        # The response head uvicorn queued must reach the socket before the file's bytes.
        if not await self._flushed(transport):
            self._drop(cycle, transport)
            return
        sock = transport.get_extra_info("socket")
        if sock is None or transport.get_extra_info("ssl_object") is not None or transport.is_closing():
            self._drop(cycle, transport)
            return
        # Our own descriptor for the connection: see the module docstring. No await between the check above
        # and this call, so the number still belongs to this transport.
        sock_fd = os.dup(sock.fileno())
        try:
            sent = await self._sendfile(transport, sock_fd, message["file"].fileno(), int(message["offset"]), count)
        finally:
            os.close(sock_fd)
        cycle.expected_content_length -= sent
        if sent < count:
            # The client went away or stopped reading: the response cannot be completed.
            self._drop(cycle, transport)
            return
        if not message.get("more_body", False):
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _sendfile(self, transport: asyncio.Transport, sock_fd: int, file_fd: int, offset: int, count: int) -> int:
        loop = asyncio.get_running_loop()
        sent = 0
        while sent < count:
            if transport.is_closing():
                break
            try:
                n = os.sendfile(sock_fd, file_fd, offset + sent, count - sent)
            except BlockingIOError:
                if not await self._writable(loop, transport, sock_fd):
                    break
                continue
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                    log.error("sendfile failed: %s", exc)
                break
            if n == 0:
                break  # the file ended early: the caller cuts the response
            sent += n
        return sent

    async def _writable(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, sock_fd: int) -> bool:
        """Wait until the socket takes more bytes; False if the client stalled or uvicorn closed the connection."""
        waited = 0.0
        while waited < self._stall_timeout:
            if transport.is_closing():
                return False
            ready = loop.create_future()
            loop.add_writer(sock_fd, _resolve, ready)
            step = min(_CLOSE_CHECK_INTERVAL, self._stall_timeout - waited)
            try:
                await asyncio.wait_for(ready, step)
                return True
            except TimeoutError:
                waited += step
            finally:
                loop.remove_writer(sock_fd)
        log.warning("client took no data for %.0f s; dropping it", self._stall_timeout)
        return False

    async def _flushed(self, transport: asyncio.Transport) -> bool:
        # The head is small and the transport writes it at once unless the socket is full (a pipelining client
        # that does not read): poll briefly, bounded by the stall timeout.
        delay, waited = 0.0005, 0.0
        while transport.get_write_buffer_size():
            if transport.is_closing() or waited > self._stall_timeout:
                return False
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.05)
        return not transport.is_closing()

    @staticmethod
    def _drop(cycle: Any, transport: asyncio.Transport) -> None:
        cycle.disconnected = True
        transport.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
