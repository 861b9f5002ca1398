"""proxy.upstream.transport: httpx over httpcore's pool and the buffered network backend, against real servers
(uvicorn in a thread, plain and TLS, and raw sockets for peers that misbehave)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from proxy.upstream.transport import PoolTransport, upstream_transport
from tests.harness.tls import Certificates, make_certificates
from tests.unit.rawserver import raw_server, read_request
from tests.unit.uvicorn_thread import new_loop, serving

BODY = bytes(range(256)) * (3 * 1024 * 1024 // 256)  # 3 MiB: many network reads, several buffered ones
LOOPS = ["asyncio", "uvloop"]


class App:
    """Serves BODY at /length (Content-Length) and /chunked (chunked), stalls at /stall; records each request's
    client address (which tells connections apart)."""

    def __init__(self) -> None:
        self.clients: list[tuple[str, int]] = []
        self.release = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.clients.append(scope["client"])
        path = scope["path"]
        headers = [(b"content-length", str(len(BODY)).encode())] if path == "/length" else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if path == "/stall":
            await asyncio.to_thread(self.release.wait, 10)
            await send({"type": "http.response.body", "body": b"late"})
            return
        if path == "/slow":
            await asyncio.sleep(0.2)
        step = 256 * 1024
        for start in range(0, len(BODY), step):
            await send({"type": "http.response.body", "body": BODY[start : start + step], "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def run(loop_kind: str, test: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=lambda: new_loop(loop_kind)) as runner:
        runner.run(asyncio.wait_for(test(), 30))


def client(
    limits: httpx.Limits | None = None, ssl_context: ssl.SSLContext | None = None, timeout: float = 10
) -> httpx.AsyncClient:
    transport = PoolTransport(limits=limits or httpx.Limits(), ssl_context=ssl_context)
    return httpx.AsyncClient(transport=transport, timeout=timeout)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def app() -> Iterator[App]:
    app = App()
    yield app
    app.release.set()


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("path", ["/length", "/chunked"])
def test_bodies_arrive_whole_over_plain_http(app: App, loop_kind: str, path: str) -> None:
    async def test() -> None:
        async with client() as http, http.stream("GET", f"http://127.0.0.1:{port}{path}") as response:
            assert response.status_code == 200
            assert ("content-length" in response.headers) == (path == "/length")
            received = bytearray()
            async for chunk in response.aiter_raw():
                received += chunk
            assert received == BODY

    with serving(app, loop_kind) as port:
        run(loop_kind, test)


@pytest.mark.parametrize("path", ["/length", "/chunked"])
def test_bodies_arrive_whole_over_tls(app: App, certificates: Certificates, path: str) -> None:
    trusted = ssl.create_default_context(cafile=certificates.ca)

    async def test() -> None:
        async with client(ssl_context=trusted) as http, http.stream("GET", f"https://localhost:{port}{path}") as r:
            assert r.status_code == 200
            assert r.extensions["network_stream"].get_extra_info("ssl_object") is not None
            assert await r.aread() == BODY

    with serving(app, ssl_certfile=str(certificates.cert), ssl_keyfile=str(certificates.key)) as port:
        run("uvloop", test)


def test_an_untrusted_certificate_is_a_connect_error(app: App, certificates: Certificates) -> None:
    async def test() -> None:
        async with client(ssl_context=ssl.create_default_context()) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"https://localhost:{port}/length")

    with serving(app, ssl_certfile=str(certificates.cert), ssl_keyfile=str(certificates.key)) as port:
        run("uvloop", test)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_server_that_stalls_is_a_read_timeout(app: App, loop_kind: str) -> None:
    async def test() -> None:
        async with client(timeout=0.2) as http:
            with pytest.raises(httpx.ReadTimeout):
                async with http.stream("GET", f"http://127.0.0.1:{port}/stall") as response:
                    await response.aread()
        app.release.set()

    with serving(app, loop_kind) as port:
        run(loop_kind, test)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_refused_connection_is_a_connect_error(loop_kind: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]  # closed on leaving: nothing listens there any more

    async def test() -> None:
        async with client() as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://127.0.0.1:{port}/")

    run(loop_kind, test)


def cut_short(rst: bool) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        if rst:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    return handle


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize(
    ("rst", "error"),
    [(False, httpx.RemoteProtocolError), (True, httpx.ReadError)],
    ids=["closed", "reset"],
)
def test_a_body_cut_short_is_an_error_never_a_short_body(loop_kind: str, rst: bool, error: type[Exception]) -> None:
    # Closed cleanly mid-body, h11 notices the missing bytes (as with httpx's own transport); reset, the read fails.
    async def test() -> None:
        async with client() as http, http.stream("GET", f"http://127.0.0.1:{port}/") as response:
            with pytest.raises(error):
                await response.aread()

    with raw_server(cut_short(rst)) as port:
        run(loop_kind, test)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_an_idle_connection_is_reused(app: App, loop_kind: str) -> None:
    async def test() -> None:
        async with client() as http:
            for _ in range(3):
                assert (await http.get(f"http://127.0.0.1:{port}/length")).content == BODY

    with serving(app, loop_kind) as port:
        run(loop_kind, test)
    assert len(app.clients) == 3 and len(set(app.clients)) == 1


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_connection_the_server_closed_while_idle_is_not_reused(app: App, loop_kind: str) -> None:
    async def test() -> None:
        async with client() as http:
            first = await http.get(f"http://127.0.0.1:{port}/length")
            stream = first.extensions["network_stream"]
            for _ in range(500):  # bounded: 500 x 10 ms; uvicorn closes idle connections after 0.1 s here
                if stream.get_extra_info("is_readable"):
                    break
                await asyncio.sleep(0.01)
            assert stream.get_extra_info("is_readable")
            assert (await http.get(f"http://127.0.0.1:{port}/length")).content == BODY

    with serving(app, loop_kind, timeout_keep_alive=0.1) as port:
        run(loop_kind, test)
    assert len(set(app.clients)) == 2


def test_the_pool_keeps_the_limits_it_is_given(app: App) -> None:
    async def test() -> None:
        async with client(limits=httpx.Limits(max_connections=2, max_keepalive_connections=2)) as http:
            responses = await asyncio.gather(*(http.get(f"http://127.0.0.1:{port}/slow") for _ in range(4)))
            assert all(response.content == BODY for response in responses)

    with serving(app) as port:
        run("uvloop", test)
    assert len(app.clients) == 4 and len(set(app.clients)) == 2


def test_httpx_keeps_its_own_transport_where_an_environment_proxy_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(upstream_transport(httpx.Limits()), PoolTransport)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert upstream_transport(httpx.Limits()) is None


def test_the_default_ssl_context_trusts_ssl_cert_file(
    app: App, certificates: Certificates, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As httpx's own transport does: SSL_CERT_FILE names the CAs to trust (how a private upstream's CA is given).
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates.ca))

    async def test() -> None:
        async with client() as http:
            assert (await http.get(f"https://localhost:{port}/length")).content == BODY

    with serving(app, ssl_certfile=str(certificates.cert), ssl_keyfile=str(certificates.key)) as port:
        run("uvloop", test)
