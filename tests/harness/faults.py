"""A fault-injecting HTTP/1.1 reverse proxy, to put between the registry proxy and its upstream.

``FaultyUpstream(target_url)`` listens on 127.0.0.1 and forwards every request to ``target_url`` as it came: the raw
request target (never normalized, query string included), the headers minus hop-by-hop ones, Host rewritten to the
target. Responses are streamed back as they come: status line and headers kept (minus hop-by-hop ones), no content
decoding, a few 64 KiB pieces in memory at most whatever the body size. Faults added with :meth:`FaultyUpstream.add`
change what happens to the requests they match: delay them, cut or stall their bodies, flip a byte, or answer
without asking the target. :meth:`FaultyUpstream.pause` makes the port refuse connections (an outage as a client
sees it) and :meth:`FaultyUpstream.resume` listens again on the same port.

HTTP/1.1 is spoken by hand over asyncio streams rather than through an HTTP library, because the faults need what
libraries hide: the exact bytes of the request target, and control over when and how a TCP connection ends. It runs
its own event loop in a background thread, so synchronous tests can drive it and a proxy in a subprocess can use it.

Body framing: a body with a Content-Length keeps it; a chunked body stays chunked (the chunk boundaries may move);
a body that the target delimits by closing the connection is sent chunked, so that a cut always shows to the client
as an incomplete body. Fault offsets count body bytes, never chunk framing.

The fault kinds are defined in :mod:`tests.harness.fault_kinds` and the HTTP/1.1 message code in
:mod:`tests.harness.http1`; this module re-exports the fault kinds (and every constant it has always offered), so
tests import everything from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import re
import socket
import struct
import termios
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from tests.harness.deadline import poll_until
from tests.harness.fault_kinds import (
    MAX_FAULT_SECONDS,
    AnyFault,
    CutAfter,
    Delay,
    Fault,
    FlipByte,
    Respond,
    StallAfter,
    registry_error,
)
from tests.harness.http1 import (
    CHUNK,
    HEAD_LIMIT,
    HOP_BY_HOP,
    IO_TIMEOUT,
    MAX_BODY_READS,
    MAX_HEAD_ROUNDS,
    BodyReader,
    Framing,
    Head,
    ProtocolError,
    Response,
    discard,
    encode_head,
    end_to_end,
    read_head,
    read_response_head,
    request_framing,
    response_framing,
    send,
)
from tests.harness.ports import LOOPBACK

# Every name this module has always offered, wherever it is defined now: the fault kinds live in fault_kinds, and
# the HTTP/1.1 constants in http1.
__all__ = [
    "CHUNK",
    "CONNECT_TIMEOUT",
    "CONTROL_TIMEOUT",
    "HEAD_LIMIT",
    "HOP_BY_HOP",
    "IDLE_TIMEOUT",
    "IO_TIMEOUT",
    "MAX_BODY_READS",
    "MAX_FAULT_SECONDS",
    "MAX_HEAD_ROUNDS",
    "MAX_REQUESTS_PER_CONNECTION",
    "RESET_FLUSH_TIMEOUT",
    "AnyFault",
    "CutAfter",
    "Delay",
    "Fault",
    "FaultHandle",
    "FaultyRequest",
    "FaultyUpstream",
    "FlipByte",
    "Framing",
    "Respond",
    "StallAfter",
    "registry_error",
]

T = TypeVar("T")

CONNECT_TIMEOUT: Final = 5.0
IDLE_TIMEOUT: Final = 60.0
"""How long a kept-alive client connection may wait for its next request."""
CONTROL_TIMEOUT: Final = 10.0
"""start(), stop(), pause() and resume() from the test thread."""
RESET_FLUSH_TIMEOUT: Final = 5.0
"""CutAfter(reset=True): how long to wait for the client to acknowledge the bytes it is meant to get."""
MAX_REQUESTS_PER_CONNECTION: Final = 100_000


# -- faults ------------------------------------------------------------------------------------------------------------


class FaultHandle:
    """A fault as added to one FaultyUpstream: how often it applied, whether it still will, and its removal."""

    def __init__(self, lock: threading.Lock, fault: AnyFault) -> None:
        self.fault = fault
        self._lock = lock
        self._pattern = re.compile(fault.path)
        self._method = fault.method.upper() if fault.method is not None else None
        self._hits = 0
        self._removed = False

    @property
    def hits(self) -> int:
        """How many requests this fault has applied to."""
        with self._lock:
            return self._hits

    @property
    def active(self) -> bool:
        """False once removed or used up."""
        with self._lock:
            return self._active()

    def remove(self) -> None:
        """Stop applying this fault to new requests (a request it already applies to carries on)."""
        with self._lock:
            self._removed = True

    def _active(self) -> bool:
        return not self._removed and (self.fault.times is None or self._hits < self.fault.times)

    def _take(self, method: str, path: str) -> bool:
        """Called with the lock held: whether this fault applies to the request, counting it if so."""
        if not self._active() or (self._method is not None and self._method != method):
            return False
        if self._pattern.search(path) is None:
            return False
        self._hits += 1
        return True


# -- accounting --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultyRequest:
    """One request as the FaultyUpstream handled it. Equality looks at the first five fields only."""

    method: str
    path: str
    """The raw path, without the query string."""
    status: int
    """The status sent to the client: the target's, a Respond's, or 502 when the target could not be reached.
    0 when the client got no response head at all (the connection was dropped first)."""
    body_bytes_sent: int
    """Body bytes written to the client (framing not counted)."""
    fault: str | None
    """The kind of fault that applied (``"CutAfter"``...), or None."""
    target: str = field(default="", compare=False)
    """The raw request target, query string included."""


@dataclass
class _Entry:
    method: str
    path: str
    target: str
    fault: str | None
    status: int = 0
    sent: int = 0

    def freeze(self) -> FaultyRequest:
        return FaultyRequest(self.method, self.path, self.status, self.sent, self.fault, self.target)


# -- the proxy ---------------------------------------------------------------------------------------------------------


class FaultyUpstream:
    """The reverse proxy: ``with FaultyUpstream(registry.url) as faulty: ... faulty.url ...``.

    Thread-safe from any thread but its own (its methods wait for its event loop, so call them from tests or
    fixtures, never from a callback on that loop). The port is chosen on the first start and kept across
    ``pause()``/``resume()`` and ``stop()``/``start()``.
    """

    def __init__(self, target_url: str) -> None:
        target = urlsplit(target_url)
        if target.scheme != "http" or not target.hostname:
            raise ValueError(f"target must be an http:// URL with a host; got {target_url!r}")
        self.target_url = target_url
        self._target_host = target.hostname
        self._target_port = target.port or 80
        self._host_header = f"{target.hostname}:{self._target_port}".encode("ascii")
        self.port: int | None = None
        self._lock = threading.Lock()
        self._handles: list[FaultHandle] = []
        self._log: list[FaultyRequest] = []
        self._in_flight = 0
        self._errors: list[str] = []
        self._accepted = 0
        # Owned by the loop thread:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> FaultyUpstream:
        if self._loop is not None:
            return self
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_run_loop, args=(loop,), name="faulty-upstream", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._call(self._listen())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._close())
        finally:
            self._loop, self._thread = None, None
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=CONTROL_TIMEOUT)

    def __enter__(self) -> FaultyUpstream:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def pause(self) -> None:
        """Close the listening socket (new connections are refused) and drop every open connection."""
        self._call(self._close())

    def resume(self) -> None:
        """Listen again, on the same port."""
        self._call(self._listen())

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        if self.port is None:
            raise RuntimeError("FaultyUpstream was never started")
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    # -- faults ------------------------------------------------------------------------------------------------

    def add(self, fault: AnyFault) -> FaultHandle:
        handle = FaultHandle(self._lock, fault)
        with self._lock:
            self._handles.append(handle)
        return handle

    def clear(self) -> None:
        """Remove every fault."""
        with self._lock:
            for handle in self._handles:
                handle._removed = True
            self._handles.clear()

    def _match(self, method: str, path: str) -> AnyFault | None:
        with self._lock:
            self._handles = [handle for handle in self._handles if handle._active()]
            for handle in self._handles:
                if handle._take(method, path):
                    return handle.fault
        return None

    # -- accounting --------------------------------------------------------------------------------------------

    @property
    def log(self) -> list[FaultyRequest]:
        """A snapshot of every finished request, in the order they finished."""
        with self._lock:
            return list(self._log)

    def mark(self) -> int:
        """A position in :attr:`log`, for :meth:`since`. Call :meth:`wait_quiet` first if requests may be in flight."""
        with self._lock:
            return len(self._log)

    def since(self, mark: int) -> list[FaultyRequest]:
        with self._lock:
            return self._log[mark:]

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def wait_quiet(self, seconds: float = 0.5, timeout: float = 10.0) -> None:
        """Return once no request is in flight and none has started or finished for ``seconds``; TimeoutError if
        that does not happen within ``timeout``. A stalled or delayed request keeps it from being quiet."""

        def state() -> tuple[int, int]:
            with self._lock:
                return len(self._log), self._in_flight

        last_state = state()
        last_change = time.monotonic()

        def settled() -> bool | None:
            nonlocal last_state, last_change
            now_state, now = state(), time.monotonic()
            if now_state != last_state:
                last_state, last_change = now_state, now
            return True if now_state[1] == 0 and now - last_change >= seconds else None

        poll_until(settled, timeout=timeout, interval=min(0.05, seconds / 4), what="the faulty upstream to go quiet")

    @property
    def accepted(self) -> int:
        """Client connections accepted so far: fewer than requests when clients keep connections alive."""
        with self._lock:
            return self._accepted

    @property
    def errors(self) -> list[str]:
        """Unexpected exceptions in the proxy itself (bugs, not network failures); a test can assert it is empty."""
        with self._lock:
            return list(self._errors)

    def _begin(self) -> None:
        with self._lock:
            self._in_flight += 1

    def _finish(self, entry: _Entry) -> None:
        with self._lock:
            self._log.append(entry.freeze())
            self._in_flight -= 1

    # -- the loop thread ---------------------------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coroutine.close()
            raise RuntimeError("FaultyUpstream is not running")
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        try:
            return future.result(timeout=CONTROL_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise

    async def _listen(self) -> None:
        if self._server is not None:
            return
        # Port 0 the first time: the kernel picks a free port while we hold it, so no other process can race us.
        server = await asyncio.start_server(self._accept, LOOPBACK, self.port or 0, limit=HEAD_LIMIT, backlog=512)
        self._server = server
        if self.port is None:
            self.port = int(server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        connections = list(self._connections)
        for connection in connections:
            connection.drop()
        tasks = [connection.task for connection in connections if connection.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=CONTROL_TIMEOUT)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CONTROL_TIMEOUT):
                    await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:
            # Accepted by the kernel just before pause() closed the listener: paused means no connection is served.
            writer.transport.abort()
            return
        connection = _Connection(self, reader, writer)
        self._connections.add(connection)
        with self._lock:
            self._accepted += 1
        try:
            await connection.serve()
        except Exception as exc:
            # A bug here, not a network event: kept for tests to assert on rather than logged by a task nobody awaits.
            with self._lock:
                self._errors.append(f"{type(exc).__name__}: {exc}")
            writer.transport.abort()
        finally:
            self._connections.discard(connection)

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                return await asyncio.open_connection(self._target_host, self._target_port, limit=HEAD_LIMIT)
        except (OSError, TimeoutError) as exc:
            raise _UpstreamDown(f"cannot connect to {self.target_url}: {exc!r}") from exc


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        # stop() has dropped every connection already; this only sweeps up what was left mid-way.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=CONTROL_TIMEOUT))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


# -- one client connection ---------------------------------------------------------------------------------------------


class _ClientGone(Exception):
    """The client's side failed while its request body was being forwarded."""


class _UpstreamDown(Exception):
    """No response head could be had from the target."""


class _Connection:
    """One client connection, and the target connection that serves it: opened on its first request, and reused
    for the next ones while both sides keep the connection alive (so the target sees the client's keep-alive)."""

    def __init__(self, owner: FaultyUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.owner = owner
        self.reader = reader
        self.writer = writer
        self.task = asyncio.current_task()
        self._upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def serve(self) -> None:
        try:
            for _ in range(MAX_REQUESTS_PER_CONNECTION):
                head = await read_head(self.reader, IDLE_TIMEOUT)
                if head is None or not await self._exchange(head):
                    break
        except (ProtocolError, _ClientGone, OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or spoke nonsense: nobody to answer
        finally:
            self._close_upstream()
            # close(), not abort(): the end of the last response may still be in the transport's buffer.
            self.writer.close()
            try:
                async with asyncio.timeout(IO_TIMEOUT):
                    await self.writer.wait_closed()
            except (OSError, TimeoutError):
                self.writer.transport.abort()

    def drop(self) -> None:
        """pause()/stop(): end both connections now, mid-response or not, and the task serving them."""
        self._close_upstream()
        self.writer.transport.abort()
        if self.task is not None:
            self.task.cancel()

    async def _exchange(self, request: Head) -> bool:
        """Answer one request; True if the client connection can carry another one."""
        method, target, version = request.start
        path = target.partition(b"?")[0]
        fault = self.owner._match(method.decode("latin-1"), path.decode("latin-1"))
        entry = _Entry(
            method.decode("latin-1"), path.decode("latin-1"), target.decode("latin-1"), fault.kind if fault else None
        )
        client_keeps = version == b"HTTP/1.1" and b"close" not in request.tokens(b"connection")
        self.owner._begin()
        try:
            # Expect is answered here, and dropped upstream: the client sends its body at once and the target never
            # makes anyone wait for a 100 that would have to be passed on.
            if b"100-continue" in request.tokens(b"expect"):
                await send(self.writer, b"HTTP/1.1 100 Continue\r\n\r\n")
            body = BodyReader(self.reader, request_framing(request))
            if isinstance(fault, Delay):
                await asyncio.sleep(fault.seconds)
            if isinstance(fault, Respond):
                await discard(body)
                headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in fault.headers.items()]
                return await self._respond(entry, method, fault.status, headers, fault.body, client_keeps)
            try:
                response = await self._forward(request, body)
            except _UpstreamDown as exc:
                # The rest of a request body that was not read in full would be taken for the next request.
                keep = client_keeps and body.done
                message = f"faulty upstream: {exc}\n".encode()
                return await self._respond(entry, method, 502, [(b"Content-Type", b"text/plain")], message, keep)
            return await self._relay(entry, method, response, fault, client_keeps)
        finally:
            self.owner._finish(entry)

    async def _respond(
        self,
        entry: _Entry,
        method: bytes,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        client_keeps: bool,
    ) -> bool:
        """Send a response made here (a Respond fault, or a 502)."""
        declared = [value for name, value in headers if name.lower() == b"content-length"]
        if not declared:
            headers = [*headers, (b"Content-Length", str(len(body)).encode())]
        # A declared length that is not the body's would leave the client waiting or reading the next response.
        keep = client_keeps and (not declared or declared == [str(len(body)).encode()])
        if not keep:
            headers = [*headers, (b"Connection", b"close")]
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        entry.status = status
        await send(self.writer, encode_head(f"HTTP/1.1 {status} {reason}".encode("latin-1"), headers))
        if method != b"HEAD" and body:
            await send(self.writer, body)
            entry.sent = len(body)
        return keep

    async def _forward(self, request: Head, body: BodyReader) -> Response:
        """Send the request on to the target and read its response head."""
        method, target, _ = request.start
        framing = body.framing
        # Host is the target's; Expect is answered here; a chunked body has no length (RFC 9112 6.3).
        dropped = {b"host", b"expect", b"content-length"} if framing == "chunked" else {b"host", b"expect"}
        headers = [(b"Host", self.owner._host_header)]
        headers += [(name, value) for name, value in end_to_end(request) if name.lower() not in dropped]
        if framing == "chunked":
            headers.append((b"Transfer-Encoding", b"chunked"))
        head = encode_head(b" ".join((method, target, b"HTTP/1.1")), headers)
        # A kept-alive target connection may have been closed by the target meanwhile (a restart, say): then a
        # request without a body is sent again, once, on a new connection, as HTTP clients do.
        for attempt in range(2):
            reused = self._upstream is not None
            reader, writer = self._upstream or await self.owner._open_upstream()
            self._upstream = reader, writer
            try:
                await send(writer, head)
                await _copy_request_body(body, writer)
                response = await read_response_head(reader)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError) as exc:
                self._close_upstream()
                if attempt == 0 and reused and framing == 0:
                    continue
                raise _UpstreamDown(f"{self.owner.target_url} failed: {exc!r}") from exc
            return Response(response, reader)
        raise AssertionError("unreachable")

    async def _relay(
        self, entry: _Entry, method: bytes, response: Response, fault: AnyFault | None, client_keeps: bool
    ) -> bool:
        """Stream the target's response to the client, applying a body fault on the way."""
        head = response.head
        status = response.status
        framing = response_framing(method, status, head)
        target_keeps = head.start[0] == b"HTTP/1.1" and b"close" not in head.tokens(b"connection")
        chunked_out = framing in ("chunked", "close")
        headers = [
            (name, value) for name, value in end_to_end(head) if not (chunked_out and name.lower() == b"content-length")
        ]
        if chunked_out:
            headers.append((b"Transfer-Encoding", b"chunked"))
        if not client_keeps:
            headers.append((b"Connection", b"close"))
        entry.status = status
        await send(self.writer, encode_head(b" ".join(head.start), headers))

        limit = fault.n_bytes if isinstance(fault, CutAfter | StallAfter) else None
        flip = fault.offset if isinstance(fault, FlipByte) else None
        body = BodyReader(response.reader, framing)
        for _ in range(MAX_BODY_READS):
            try:
                piece = await body.read()
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError):
                # The target broke off mid-body: pass that on, as an incomplete body.
                await self._hang_up(reset=False)
                return False
            if not piece:
                break
            if flip is not None and entry.sent <= flip < entry.sent + len(piece):
                piece = _flipped(piece, flip - entry.sent)
            if limit is not None and entry.sent + len(piece) > limit:
                await self._write_piece(entry, piece[: limit - entry.sent], chunked_out)
                self._close_upstream()  # the rest of the body is never read: that connection is spoilt
                if isinstance(fault, StallAfter):
                    await asyncio.sleep(fault.seconds)
                await self._hang_up(reset=isinstance(fault, CutAfter) and fault.reset)
                return False
            await self._write_piece(entry, piece, chunked_out)
        else:
            raise ProtocolError(f"a body longer than {MAX_BODY_READS} reads")
        if chunked_out:
            await send(self.writer, b"0\r\n\r\n")
        if not (target_keeps and framing != "close"):
            self._close_upstream()
        return client_keeps

    async def _write_piece(self, entry: _Entry, piece: bytes, chunked: bool) -> None:
        if not piece:
            return  # an empty chunk would end a chunked body
        if chunked:
            await send(self.writer, b"%x\r\n" % len(piece), piece, b"\r\n")
        else:
            await send(self.writer, piece)
        entry.sent += len(piece)

    async def _hang_up(self, *, reset: bool) -> None:
        """End the client connection after what was written so far: FIN by default, RST with ``reset``."""
        self._close_upstream()
        transport = self.writer.transport
        if not reset:
            # close() sends what is still buffered, then FIN: the client reads every byte written, then EOF.
            self.writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(IO_TIMEOUT):
                    await self.writer.wait_closed()
            return
        # An RST makes the kernel drop whatever it has not sent yet, so first wait (bounded) until the client's
        # kernel has acknowledged every byte; Linux lets the client read those before it reports the reset.
        sock = self.writer.get_extra_info("socket")
        for _ in range(int(RESET_FLUSH_TIMEOUT / 0.01)):
            if transport.get_write_buffer_size() == 0 and _unacknowledged(sock) == 0:
                break
            await asyncio.sleep(0.01)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def _close_upstream(self) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream[1].transport.abort()


async def _copy_request_body(body: BodyReader, upstream: asyncio.StreamWriter) -> None:
    """Forward the client's request body (re-chunked if it came chunked). Client failures raise _ClientGone, so that
    they are not taken for the target's."""
    chunked = body.framing == "chunked"
    if body.done:
        return
    for _ in range(MAX_BODY_READS):
        try:
            data = await body.read()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError) as exc:
            raise _ClientGone(repr(exc)) from exc
        if not data:
            break
        await send(upstream, *((b"%x\r\n" % len(data), data, b"\r\n") if chunked else (data,)))
    else:
        raise _ClientGone(f"a request body longer than {MAX_BODY_READS} reads")
    if chunked:
        await send(upstream, b"0\r\n\r\n")


def _flipped(piece: bytes, index: int) -> bytes:
    changed = bytearray(piece)
    changed[index] ^= 0xFF
    return bytes(changed)


def _unacknowledged(sock: Any) -> int:
    """Bytes in the socket's send queue not yet acknowledged by the peer (Linux SIOCOUTQ); 0 where unsupported."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", raw)[0])
