"""A network backend for httpcore that hands it everything already received, not one socket read at a time.

httpcore's own backend (anyio) returns one protocol chunk per read, at most 64 KiB, and each read then costs a
round through httpcore, h11 and anyio: about 170 µs of Python on the event loop, paid ~3,300 times for a 200 MiB
blob (~12,800 times over TLS, one 16 KiB record per read). Here an asyncio protocol collects what the loop receives,
and a read takes all of it (up to :data:`READ_CHUNK`), so a fast body arrives in a few hundred large pieces.

Only public API is used: httpcore's :class:`httpcore.AsyncNetworkBackend`/:class:`httpcore.AsyncNetworkStream`
interfaces and exceptions, and the event loop's transports (plain or ``loop.start_tls``). Memory stays bounded: a
connection stops reading from its socket while :data:`HIGH_WATER` bytes wait unread.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, cast

import httpcore

__all__ = ["HIGH_WATER", "READ_CHUNK", "BufferedBackend", "BufferedStream"]

# The most one read returns. 256 KiB to 1 MiB read a 200 MiB body alike (~0.12 s here); 2 and 4 MiB were slower
# (~0.3 s: every piece is copied several times in h11, and larger pieces fall out of the CPU's caches).
READ_CHUNK = 1024 * 1024
# Unread bytes at which a connection stops reading from its socket, and below which it starts again.
HIGH_WATER = 2 * READ_CHUNK
LOW_WATER = READ_CHUNK
# Connecting to a host with several addresses: the next one is tried after this long (RFC 8305), as anyio does.
_HAPPY_EYEBALLS_DELAY = 0.25

SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


class _Receiver(asyncio.Protocol):
    """What one connection received and nobody read yet, and whether (and how) it ended."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._chunks: deque[bytes] = deque()
        self.size = 0
        self.eof = False
        self.error: BaseException | None = None
        self.lost = False
        self.closed = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._drained: asyncio.Future[None] | None = None

    # The transport's side.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._chunks.append(data)
        self.size += len(data)
        if self.size >= HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self.eof = True
        self._wake()
        return None  # close the transport: an HTTP/1.1 client has nothing to send once the server is done

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # The stream's side.

    def take(self, limit: int) -> bytes:
        """Up to ``limit`` bytes of what was received, at least one if anything was."""
        parts = []
        taken = 0
        while self._chunks and taken + len(self._chunks[0]) <= limit:
            chunk = self._chunks.popleft()
            parts.append(chunk)
            taken += len(chunk)
        if not parts and self._chunks:
            chunk = self._chunks.popleft()
            parts.append(chunk[:limit])
            self._chunks.appendleft(chunk[limit:])
            taken = limit
        self.size -= taken
        if self._paused and self.size <= LOW_WATER and self.transport is not None and not self.transport.is_closing():
            self._paused = False
            self.transport.resume_reading()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def received(self) -> None:
        """Wait until something was received, or the connection ended."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def drained(self) -> None:
        """Wait until the transport takes writes again (or the connection ended)."""
        if not self._writing_paused or self.lost:
            return
        self._drained = asyncio.get_running_loop().create_future()
        try:
            await self._drained
        finally:
            self._drained = None


class BufferedStream(httpcore.AsyncNetworkStream):
    """One connection, plain or TLS, as httpcore reads and writes it."""

    def __init__(self, transport: asyncio.Transport, receiver: _Receiver) -> None:
        self._transport = transport
        self._receiver = receiver

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Everything received so far, up to ``max(max_bytes, READ_CHUNK)``; waits only when nothing was.

        More than ``max_bytes`` is fine for httpcore's HTTP/1.1, which feeds whatever it reads to h11: asking for
        64 KiB is only its way of saying how much it is ready for.
        """
        receiver = self._receiver
        if receiver.closed:
            raise httpcore.ReadError("read from a closed connection")
        if not receiver.size and not receiver.eof and not receiver.lost:
            try:
                async with asyncio.timeout(timeout):
                    await receiver.received()
            except TimeoutError:
                raise httpcore.ReadTimeout(f"nothing received for {timeout:g} s") from None
        if receiver.size:
            return receiver.take(max(max_bytes, READ_CHUNK))
        if receiver.error is not None:
            raise httpcore.ReadError(_describe(receiver.error)) from receiver.error
        return b""  # the server closed the connection; h11 decides whether that cut a message short

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        receiver = self._receiver
        if receiver.closed or receiver.lost or self._transport.is_closing():
            raise httpcore.WriteError(_describe(receiver.error) if receiver.error else "the connection is closed")
        self._transport.write(buffer)
        try:
            async with asyncio.timeout(timeout):
                await receiver.drained()
        except TimeoutError:
            raise httpcore.WriteTimeout(f"could not write for {timeout:g} s") from None
        if receiver.lost:
            raise httpcore.WriteError(_describe(receiver.error) if receiver.error else "the connection was closed")

    async def aclose(self) -> None:
        # Like httpcore's anyio backend (TLS without the closing handshake): nothing a closed HTTP/1.1 connection
        # could still send matters, and a TLS shutdown would keep reading an abandoned body for up to 30 s.
        self._receiver.closed = True
        self._transport.abort()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                tls = await loop.start_tls(
                    self._transport, self._receiver, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            await self.aclose()
            raise httpcore.ConnectTimeout(f"TLS handshake took longer than {timeout:g} s") from None
        except OSError as exc:  # ssl.SSLError included
            await self.aclose()
            raise httpcore.ConnectError(_describe(exc)) from exc
        if tls is None:  # the connection was closed meanwhile
            await self.aclose()
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        # The same receiver goes on under TLS: pausing and resuming now go through the TLS transport.
        self._receiver.transport = tls
        return BufferedStream(tls, self._receiver)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        if info == "is_readable":
            # httpcore asks this of an idle pooled connection: anything received (normally the server closing it)
            # means it must not be used again. The loop reads on its own, so the answer is already here.
            receiver = self._receiver
            return bool(receiver.size or receiver.eof or receiver.lost)
        return None


class BufferedBackend(httpcore.AsyncNetworkBackend):
    """Connections for ``httpcore.AsyncConnectionPool(network_backend=BufferedBackend())``, on the running loop."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        options = list(socket_options or ())
        try:
            async with asyncio.timeout(timeout):
                sock = await _connect(loop, host, port, local_address, options)
                try:
                    transport, receiver = await loop.create_connection(_Receiver, sock=sock)
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"connecting to {host}:{port} took longer than {timeout:g} s") from None
        except OSError as exc:
            raise httpcore.ConnectError(_describe(exc)) from exc
        return BufferedStream(transport, receiver)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connect(
    loop: asyncio.AbstractEventLoop, host: str, port: int, local_address: str | None, options: list[SocketOption]
) -> socket.socket:
    """A connected socket to ``host``: its addresses tried in turn, each given a head start of
    ``_HAPPY_EYEBALLS_DELAY`` before the next one starts (uvloop's ``create_connection`` has no happy eyeballs, and an
    address that swallows packets must not cost the whole connect timeout)."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = _interleave(infos)
    running: set[asyncio.Task[socket.socket]] = set()
    errors: list[OSError] = []
    try:
        while addresses or running:
            if addresses:
                running.add(asyncio.create_task(_attempt(loop, addresses.popleft(), local_address, options)))
            done, running = await asyncio.wait(
                running, timeout=_HAPPY_EYEBALLS_DELAY if addresses else None, return_when=asyncio.FIRST_COMPLETED
            )
            connected: socket.socket | None = None
            for task in done:
                exc = task.exception()
                if exc is None:
                    if connected is None:
                        connected = task.result()
                    else:
                        task.result().close()
                elif isinstance(exc, OSError):
                    errors.append(exc)
                else:
                    raise exc
            if connected is not None:
                return connected
        raise errors[0] if errors else OSError(f"no address for {host}")
    finally:
        for task in running:
            task.cancel()
            # One may have connected in the same moment: its socket is closed rather than left open.
            task.add_done_callback(_close_connected)


def _interleave(infos: Sequence[tuple[Any, ...]]) -> deque[tuple[Any, ...]]:
    """Addresses alternating between families, starting with the resolver's first choice (RFC 8305)."""
    by_family: dict[int, deque[tuple[Any, ...]]] = {}
    for info in infos:
        by_family.setdefault(info[0], deque()).append(info)
    ordered: deque[tuple[Any, ...]] = deque()
    queues = list(by_family.values())
    while queues:
        for queue in queues:
            ordered.append(queue.popleft())
        queues = [queue for queue in queues if queue]
    return ordered


async def _attempt(
    loop: asyncio.AbstractEventLoop, info: tuple[Any, ...], local_address: str | None, options: list[SocketOption]
) -> socket.socket:
    family, kind, proto, _, address = info
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for option in options:
            sock.setsockopt(*option)
        if local_address is not None:
            sock.bind((local_address, 0))
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


def _close_connected(task: asyncio.Task[socket.socket]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
