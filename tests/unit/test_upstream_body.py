"""proxy.upstream.body: large bodies read past httpcore, straight into memory of ours, against real servers (uvicorn in
a thread, plain and TLS, and raw sockets for heads and bodies cut in odd places); every other response through
httpx as before."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from proxy.upstream import body
from proxy.upstream.body import raw_body
from proxy.upstream.network import BufferedStream
from proxy.upstream.receiver import HIGH_WATER, SEGMENT
from proxy.upstream.transport import PoolTransport
from tests.harness.tls import Certificates, make_certificates
from tests.unit.rawserver import raw_server, read_request
from tests.unit.uvicorn_thread import new_loop, serving

LOOPS = ["asyncio", "uvloop"]
BODY = bytes(range(251)) * (5 * 1024 * 1024 // 251)  # ~5 MiB, not a multiple of anything the reader uses


class App:
    """BODY at /length (Content-Length) and /chunked; records each request's client address (tells connections
    apart)."""

    def __init__(self) -> None:
        self.clients: list[tuple[str, int]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.clients.append(scope["client"])
        length = scope["path"] == "/length"
        headers = [(b"content-length", str(len(BODY)).encode())] if length else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        step = 300 * 1024
        for start in range(0, len(BODY), step):
            await send({"type": "http.response.body", "body": BODY[start : start + step], "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def run(loop_kind: str, test: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=lambda: new_loop(loop_kind)) as runner:
        runner.run(asyncio.wait_for(test(), 30))


def client(ssl_context: ssl.SSLContext | None = None, timeout: float = 10) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=PoolTransport(limits=httpx.Limits(), ssl_context=ssl_context), timeout=timeout)


async def read_all(response: httpx.Response) -> tuple[bytes, set[type]]:
    """The body through raw_body, and the types of its pieces (memoryview: read directly; bytes: through httpx)."""
    received = bytearray()
    kinds: set[type] = set()
    async for piece in raw_body(response):
        received += piece
        kinds.add(type(piece))
        if isinstance(piece, memoryview):
            assert piece.readonly  # what the cache is handed cannot be changed under it
    return bytes(received), kinds


async def get_twice(port: int) -> list[set[type]]:
    """GET /length twice on one client; each body must be BODY. The types of each one's pieces (see read_all)."""
    kinds = []
    async with client() as http:
        for _ in range(2):
            async with http.stream("GET", f"http://127.0.0.1:{port}/length") as response:
                received, pieces = await read_all(response)
            assert received == BODY
            kinds.append(pieces)
    return kinds


@pytest.fixture
def direct_from_1_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every body with a length is read directly (the real threshold needs bodies of 8 MiB and more)."""
    monkeypatch.setattr(body, "DIRECT_MIN", 1)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def app() -> App:
    return App()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_large_body_is_read_directly_whole_and_its_connection_is_not_reused(
    app: App, loop_kind: str, direct_from_1_byte: None
) -> None:
    async def test() -> None:
        for kinds in await get_twice(port):
            assert memoryview in kinds  # only a direct read yields views (bytes received with the head come first)

    with serving(app, loop_kind) as port:
        run(loop_kind, test)
    # httpcore never saw the end of a body read past it: it closed that connection rather than pool it.
    assert len(app.clients) == 2 and len(set(app.clients)) == 2


def test_a_large_body_is_read_directly_over_tls(app: App, certificates: Certificates, direct_from_1_byte: None) -> None:
    trusted = ssl.create_default_context(cafile=certificates.ca)

    async def test() -> None:
        async with client(ssl_context=trusted) as http, http.stream("GET", f"https://localhost:{port}/length") as r:
            assert r.extensions["network_stream"].get_extra_info("ssl_object") is not None
            received, kinds = await read_all(r)
        assert received == BODY
        assert memoryview in kinds  # only a direct read yields views (bytes received with the head come first)

    with serving(app, ssl_certfile=str(certificates.cert), ssl_keyfile=str(certificates.key)) as port:
        run("uvloop", test)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_body_under_the_threshold_goes_through_httpx_and_keeps_its_connection(app: App, loop_kind: str) -> None:
    assert len(BODY) < body.DIRECT_MIN

    async def test() -> None:
        assert await get_twice(port) == [{bytes}, {bytes}]

    with serving(app, loop_kind) as port:
        run(loop_kind, test)
    assert len(app.clients) == 2 and len(set(app.clients)) == 1


def test_a_chunked_body_goes_through_httpx(app: App, direct_from_1_byte: None) -> None:
    async def test() -> None:
        async with client() as http, http.stream("GET", f"http://127.0.0.1:{port}/chunked") as response:
            received, kinds = await read_all(response)
        assert received == BODY
        assert kinds == {bytes}

    with serving(app) as port:
        run("uvloop", test)


def respond(pieces: list[bytes], pause: float = 0.0) -> Callable[[socket.socket], None]:
    """A raw server sending ``pieces`` one send each (``pause`` between them), then waiting for the client to
    close."""

    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            conn.sendall(piece)
            if pause:
                time.sleep(pause)
        conn.recv(1)

    return handle


def head(length: int, newline: bytes = b"\r\n") -> bytes:
    return newline.join([b"HTTP/1.1 200 OK", b"Content-Length: " + str(length).encode(), b"", b""])


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@pytest.mark.parametrize(
    "pieces",
    [
        [head(len(BODY)) + BODY],  # head and body in one send: the head is read alone all the same
        [*byte_by_byte(head(len(BODY))), BODY],  # the head's end split over reads
        [head(len(BODY), b"\n"), BODY],  # bare line feeds, which h11 accepts
        [head(len(BODY))[:-1], head(len(BODY))[-1:] + BODY[:10], BODY[10:]],
    ],
    ids=["one-send", "head-byte-by-byte", "bare-lf", "split-at-the-last-byte"],
)
@pytest.mark.parametrize("loop_kind", LOOPS)
def test_the_head_ends_where_h11_ends_it_and_the_body_is_read_directly(
    loop_kind: str, pieces: list[bytes], direct_from_1_byte: None
) -> None:
    async def test() -> None:
        async with client() as http, http.stream("GET", f"http://127.0.0.1:{port}/") as response:
            assert response.status_code == 200
            received, kinds = await read_all(response)
        assert received == BODY
        assert memoryview in kinds

    with raw_server(respond(pieces, pause=0.001 if len(pieces) > 3 else 0.05)) as port:
        run(loop_kind, test)


def test_after_an_interim_response_the_body_goes_through_httpx(direct_from_1_byte: None) -> None:
    # The stream stops looking after the first head; httpcore then reads on past it, so the body is h11's to give.
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"

    async def test() -> None:
        async with client() as http, http.stream("GET", f"http://127.0.0.1:{port}/") as response:
            assert response.status_code == 200
            received, kinds = await read_all(response)
        assert received == BODY
        assert kinds == {bytes}

    with raw_server(respond([interim, head(len(BODY)) + BODY], pause=0.05)) as port:
        run("uvloop", test)


def test_a_head_too_big_to_look_through_leaves_the_body_to_httpx(direct_from_1_byte: None) -> None:
    big = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 1000) for i in range(80))
    response_bytes = big + b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY

    async def test() -> None:
        async with client() as http, http.stream("GET", f"http://127.0.0.1:{port}/") as response:
            received, kinds = await read_all(response)
        assert received == BODY
        assert kinds == {bytes}

    with raw_server(respond([response_bytes])) as port:
        run("uvloop", test)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize(
    ("rst", "error"),
    [(False, httpx.RemoteProtocolError), (True, httpx.ReadError)],
    ids=["closed", "reset"],
)
def test_a_body_cut_short_is_the_error_httpx_would_raise(
    loop_kind: str, rst: bool, error: type[Exception], direct_from_1_byte: None
) -> None:
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(head(len(BODY)) + BODY[:100_000])
        if rst:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    async def test() -> None:
        async with client() as http, http.stream("GET", f"http://127.0.0.1:{port}/") as response:
            with pytest.raises(error):
                await read_all(response)

    with raw_server(handle) as port:
        run(loop_kind, test)


def test_a_body_that_stalls_is_a_read_timeout_and_holds_little_memory_meanwhile(direct_from_1_byte: None) -> None:
    async def test() -> None:
        async with client(timeout=0.3) as http, http.stream("GET", f"http://127.0.0.1:{port}/") as response:
            stream = response.extensions["network_stream"]
            assert isinstance(stream, BufferedStream)
            with pytest.raises(httpx.ReadTimeout):
                await read_all(response)
            # A trickle is received into a small first segment, not a megabyte per connection.
            assert len(stream._receiver._segment) <= 64 * 1024

    # The head first, then a little of the body once the client is reading it directly, then nothing.
    with raw_server(respond([head(len(BODY)), BODY[:1000]], pause=0.1)) as port:
        run("uvloop", test)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_slow_reader_stops_the_connection_reading_at_the_high_water_mark(
    loop_kind: str, direct_from_1_byte: None
) -> None:
    big = BODY * 3  # ~15 MiB: far more than the high-water mark

    async def test() -> None:
        async with client() as http, http.stream("GET", f"http://127.0.0.1:{port}/") as response:
            stream = response.extensions["network_stream"]
            assert isinstance(stream, BufferedStream)
            received = bytearray()
            peak = 0
            largest = 0
            async for piece in raw_body(response):
                received += piece
                largest = max(largest, len(piece))
                await asyncio.sleep(0.01)  # a slow cache: the socket must not be drained into memory meanwhile
                peak = max(peak, stream._receiver.size)
            assert received == big
            assert peak <= HIGH_WATER + SEGMENT
            assert largest == SEGMENT  # segments grew to their full size, and no piece is bigger

    with raw_server(respond([head(len(big)) + big])) as port:
        run(loop_kind, test)
