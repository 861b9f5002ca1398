"""A network backend for httpcore that hands it everything already received, not one socket read at a time.

httpcore's own backend (anyio) returns one protocol chunk per read, at most 64 KiB, and each read then costs a
round through httpcore, h11 and anyio: about 170 µs of Python on the event loop, paid ~3,300 times for a 200 MiB
blob (~12,800 times over TLS, one 16 KiB record per read). Here a protocol of ours (:mod:`proxy.upstream.receiver`)
collects what the loop receives, and a read takes all of it (up to :data:`READ_CHUNK`), so a fast body arrives in a
few hundred large pieces.

A response's head is handed to httpcore alone, never with body bytes after it (:meth:`BufferedStream.read`). So when
httpcore returns a response, h11 holds none of its body, and the body can be read past h11, straight from the
connection into memory of ours (:meth:`BufferedStream.read_body`, used by :mod:`proxy.upstream.body`).

Only public API is used: httpcore's :class:`httpcore.AsyncNetworkBackend`/:class:`httpcore.AsyncNetworkStream`
interfaces and exceptions, and the event loop's transports (plain or ``loop.start_tls``). Memory stays bounded: a
connection stops reading from its socket while :data:`HIGH_WATER` bytes wait unread.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import httpcore

from proxy.upstream.receiver import HIGH_WATER, READ_CHUNK, Receiver

__all__ = ["HIGH_WATER", "READ_CHUNK", "BufferedBackend", "BufferedStream"]

# Connecting to a host with several addresses: the next one is tried after this long (RFC 8305), as anyio does.
_HAPPY_EYEBALLS_DELAY = 0.25
# The end of a message's head, as h11 finds it: the first empty line, CRLF or bare LF.
_HEAD_END = re.compile(b"\n\r?\n")
# Bytes of a head looked through for its end; past this, the stream stops looking and never offers a body read.
_HEAD_LIMIT = 64 * 1024
# A body read waits for this many bytes, or for _BODY_PATIENCE seconds once some came: in large pieces, each a hop to
# the cache writer's thread, but never holding back a slow upstream's bytes for long.
_BODY_BATCH = 1024 * 1024
_BODY_PATIENCE = 0.02

SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


class BufferedStream(httpcore.AsyncNetworkStream):
    """One connection, plain or TLS, as httpcore reads and writes it."""

    def __init__(self, transport: asyncio.Transport, receiver: Receiver) -> None:
        self._transport = transport
        self._receiver = receiver
        # The head of the response to the last request written: bytes of it read so far (-1: not looking, past it
        # or given up), and its last two bytes (an end split between two reads).
        self._head_read = -1
        self._head_tail = b""
        self._at_body = False

    @property
    def at_body(self) -> bool:
        """The last read ended exactly with a response's head: nothing of its body was read yet."""
        return self._at_body

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Everything received so far, up to ``max(max_bytes, READ_CHUNK)``; waits only when nothing was. A response's
        head is returned without anything after it.

        More than ``max_bytes`` is fine for httpcore's HTTP/1.1, which feeds whatever it reads to h11: asking for
        64 KiB is only its way of saying how much it is ready for.
        """
        receiver = self._receiver
        await self._received(timeout)
        self._at_body = False
        if receiver.size:
            data = receiver.take(max(max_bytes, READ_CHUNK))
            return self._through_head(data) if self._head_read >= 0 else data
        if receiver.error is not None:
            raise httpcore.ReadError(_describe(receiver.error)) from receiver.error
        return b""  # the server closed the connection; h11 decides whether that cut a message short

    async def read_body(self, max_bytes: int, timeout: float | None = None) -> bytes | memoryview:
        """Up to ``max_bytes`` of a body, received straight into memory of ours (see :mod:`proxy.upstream.receiver`):
        once :attr:`at_body` held, in place of httpcore's reads, which the connection is then closed without.

        Waits for ``min(max_bytes, batch)`` bytes, or less once some came and no more did for ``patience`` seconds;
        b"" when the connection ended.
        """
        receiver = self._receiver
        receiver.start_body()
        await self._received(timeout)
        want = min(max_bytes, _BODY_BATCH)
        if receiver.size < want and not receiver.ended:
            try:
                async with asyncio.timeout(_BODY_PATIENCE):
                    await receiver.received(want)
            except TimeoutError:
                pass  # a slow upstream: the cache gets what there is
        if receiver.size:
            return receiver.take_body(max_bytes)
        if receiver.error is not None:
            raise httpcore.ReadError(_describe(receiver.error)) from receiver.error
        return b""

    async def _received(self, timeout: float | None) -> None:
        """Wait until something was received or the connection ended; ReadTimeout after ``timeout`` seconds."""
        receiver = self._receiver
        if receiver.closed:
            raise httpcore.ReadError("read from a closed connection")
        if not receiver.size and not receiver.ended:
            try:
                async with asyncio.timeout(timeout):
                    await receiver.received()
            except TimeoutError:
                raise httpcore.ReadTimeout(f"nothing received for {timeout:g} s") from None

    def _through_head(self, data: bytes) -> bytes:
        """``data`` up to the end of the head it ends (the rest is put back), or all of it if the head goes on."""
        tail = self._head_tail
        room = _HEAD_LIMIT - self._head_read
        window = tail + data[:room]
        match = _HEAD_END.search(window)
        if match is not None:
            end = match.end() - len(tail)
            self._receiver.unread(data[end:])
            self._head_read = -1
            self._at_body = True
            return data[:end]
        if len(data) >= room:
            self._head_read = -1  # no head is this big: leave this response to httpcore alone
        else:
            self._head_read += len(data)
            self._head_tail = window[-2:]
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        receiver = self._receiver
        if receiver.closed or receiver.lost or self._transport.is_closing():
            raise httpcore.WriteError(_describe(receiver.error) if receiver.error else "the connection is closed")
        # A new request: the next bytes read are its response's head.
        self._head_read = 0
        self._head_tail = b""
        self._at_body = False
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
                    transport, receiver = await loop.create_connection(Receiver, sock=sock)
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
