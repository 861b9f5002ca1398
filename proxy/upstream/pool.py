"""One upstream's connections: a fair cap in front of httpx's pool, and requests that cancellation cannot wedge.

This is the one place that works around httpcore 1.0.9 losing pool connections to cancellation, for good (until the
process restarts; encode/httpcore#1093, open, and the second case in encode/httpx#3782):

- A request that waits for a pooled connection and is cancelled just after another request's release handed it a
  freshly created one leaves that connection in the pool as CONNECTING: never idle, closed or expired, so never
  reclaimed; never available, so never used. httpx's own pool timeout cancels like this too.
- A task cancelled a second time while it releases a response (``Task.cancel()`` goes through the anyio shield httpcore
  closes under) leaves the connection ACTIVE with no request on it: just as stuck.

Once ``max_connections`` of them pile up, every request waits out its pool timeout, and the upstream sees no
connection at all. Both are avoided here, with public httpx API only:

- Nothing waits inside httpcore's pool. A :class:`~proxy.upstream.limiter.Limiter` admits at most ``limit`` requests
  (the others wait their turn there, where cancellation is harmless); the pool is sized to the same ``limit``
  (:func:`pool_limits`); and a slot is given back only once its response is closed. So an admitted request always
  finds a connection, or room for one, at once.
- No cancellation reaches httpcore. Sending a request, reading a bounded body and closing a response each run in a task
  of their own that the caller awaits shielded: a caller that is cancelled stops waiting, and its :class:`Lease` lets
  the work end (the request is answered or times out, the response is closed) before it gives the slot back.

The body of a blob is the exception: it is read, chunk by chunk, by its own reader (a fill or a relay, which nothing
cancels before shutdown), since a task per chunk would cost more than it protects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx

from proxy.errors import RegistryError
from proxy.upstream.limiter import Limiter, Slot

__all__ = ["Congested", "Lease", "RequestPool", "pool_limits"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# A body left unread up to this size is read before its response is closed, rather than dropped with its connection.
_DRAIN_LIMIT = 64 * 1024


class Congested(RegistryError):
    """Too many requests to the upstream at once: the proxy's congestion, never counted as the upstream failing."""

    def __init__(self, why: str) -> None:
        super().__init__(503, "UPSTREAM_UNAVAILABLE", why, headers={"Retry-After": "1"})


def pool_limits(limit: int) -> httpx.Limits:
    """httpx's pool for an upstream whose requests a ``Limiter(limit)`` admits: one connection per slot.

    Keep-alive for as many: httpcore 1.0.9 closes an idle connection whenever the pool holds more connections than
    ``max_keepalive_connections`` (it counts them all, not the idle ones), so a smaller number makes a busy pool
    reconnect on nearly every request.
    """
    return httpx.Limits(max_connections=limit, max_keepalive_connections=limit)


class RequestPool:
    """Admits requests to one upstream; each admitted request is a :class:`Lease`."""

    def __init__(self, name: str, limiter: Limiter, queue_timeout: float) -> None:
        """``queue_timeout``: how long a request waits for its turn before it is refused (503, Retry-After)."""
        self.name = name
        self.limiter = limiter
        self._queue_timeout = queue_timeout
        # Strong references: the event loop keeps only weak ones, and a collected task would never give its slot back.
        self._tasks: set[asyncio.Task[Any]] = set()

    async def lease(self, *, streaming: bool = False) -> Lease:
        """Wait for this request's turn; ``streaming`` if its body is a blob that will be read as it arrives."""
        try:
            async with asyncio.timeout(self._queue_timeout):
                slot = await self.limiter.acquire(streaming)
        except TimeoutError:
            why = f"too many requests to upstream {self.name} at once; waited {self._queue_timeout:g} s for a turn"
            raise Congested(why) from None
        return Lease(slot, self._spawn)

    def _spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


class Lease:
    """One admitted request's hold on the pool, from its slot to its closed response (redirect hops included).

    Close it once done, on every path: :meth:`aclose` (or :meth:`abandon`, which does not wait).
    """

    def __init__(self, slot: Slot, spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]) -> None:
        self._slot = slot
        self._spawn = spawn
        self._response: httpx.Response | None = None
        self._pending: asyncio.Task[Any] | None = None  # work a cancelled caller stopped waiting for
        self._closing: asyncio.Task[None] | None = None

    @property
    def response(self) -> httpx.Response:
        """The last response :meth:`send` returned (its headers stay readable once closed)."""
        assert self._response is not None, "no response yet"
        return self._response

    async def send(self, client: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        """``client.send(request, stream=True)``; the previous response, if any, is closed first (a redirect hop)."""
        await self.close_response()
        response: httpx.Response = await self.run(client.send(request, stream=True, follow_redirects=False, **kwargs))
        self._response = response
        return response

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """``work`` (a send, a bounded read of the response) in a task of its own, which the caller's cancellation
        does not reach: if the caller is cancelled, the work still ends, and the lease waits for it when it closes."""
        if self._closing is not None:
            work.close()
            raise RuntimeError("lease already closed")
        task: asyncio.Task[T] = self._spawn(work)
        self._pending = task
        try:
            result = await asyncio.shield(task)
        except Exception:
            self._pending = None  # the work's own failure, which its caller now has
            raise
        # Cancelled callers skip this: the work stays pending, and whatever it yields is the lease's to close.
        self._pending = None
        return result

    async def close_response(self) -> None:
        """Give the current response's connection back to the pool, keeping the slot (for the next hop)."""
        if self._response is not None:
            response, self._response = self._response, None
            await self.run(_close(response))
            self._response = response  # closed: still there for its status and headers

    def abandon(self) -> asyncio.Task[None]:
        """Close in the background: end any work left pending, close the response, then give the slot back."""
        if self._closing is None:
            self._closing = self._spawn(self._finish())
        return self._closing

    async def aclose(self) -> None:
        """Close, and wait for it unless the caller is being cancelled."""
        closing = self.abandon()
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            return  # on its way out: the lease finishes in the background rather than hold the caller up
        await asyncio.shield(closing)

    async def _finish(self) -> None:
        try:
            pending, self._pending = self._pending, None
            if pending is not None:
                await asyncio.wait([pending])
                if not pending.cancelled() and pending.exception() is None:
                    result = pending.result()
                    if isinstance(result, httpx.Response):
                        self._response = result  # a response its caller never saw: closed below like any other
            if self._response is not None:
                await _close(self._response)
        except Exception as exc:  # closing failed: the connection is dropped by httpcore either way
            log.debug("closing an upstream response failed: %s", type(exc).__name__)
        finally:
            self._slot.release()


async def _close(response: httpx.Response) -> None:
    """Close ``response``, keeping its connection for the next request where that is cheap.

    httpcore reuses a connection only when the response was read to its end, and a HEAD's empty body, a redirect's or
    an error's few bytes are not read by anyone: read them here, rather than pay a new connection (and TLS handshake)
    for every HEAD. A body cut short (a blob its reader left) is dropped with its connection, as it must be.
    """
    length = response.headers.get("content-length", "")
    short = response.request.method == "HEAD" or (length.isdigit() and int(length) <= _DRAIN_LIMIT)
    if short and not response.is_stream_consumed and not response.is_closed:
        try:
            async for _ in response.aiter_raw():
                pass
        except httpx.HTTPError:
            pass  # closed below all the same; the connection is dropped
    await response.aclose()
