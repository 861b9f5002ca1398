"""The zero-copy send extension (proxy.server.zerocopy) on a real uvicorn server, on each event loop production may use.

The server runs in a thread with its own loop; the clients are plain blocking sockets in the test's thread.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from proxy.extensions import ZEROCOPY_SEND
from proxy.server import uvicorn_internals
from proxy.server.uvicorn_internals import unsupported
from proxy.server.zerocopy import ZeroCopyMiddleware
from tests.unit import uvicorn_thread

DATA = os.urandom(3 * 1024 * 1024 + 17)
BIG = 48 * 1024 * 1024

LOOPS = [
    "asyncio",
    "uvloop",
    pytest.param(
        "uvloop-eager",
        marks=pytest.mark.skipif(sys.version_info < (3, 12), reason="eager_task_factory is Python 3.12+"),
    ),
]


def file_app(path: Path, sizes: list[int]) -> Any:
    """Sends ``path`` as zero-copy segments of ``sizes`` bytes when offered, else as plain bodies."""
    total = sum(sizes)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        zero_copy = ZEROCOPY_SEND in scope.get("extensions", {})
        headers = [(b"content-length", str(total).encode()), (b"x-zero-copy", b"yes" if zero_copy else b"no")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        with open(path, "rb") as f:
            offset = 0
            for size in sizes:
                if zero_copy:
                    await send({"type": ZEROCOPY_SEND, "file": f, "offset": offset, "count": size, "more_body": True})
                else:
                    f.seek(offset)
                    await send({"type": "http.response.body", "body": f.read(size), "more_body": True})
                offset += size
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


@contextmanager
def serving(app: Any, loop_kind: str, stall_timeout: float = 60.0) -> Iterator[int]:
    """uvicorn (httptools) with ``app`` behind ZeroCopyMiddleware."""
    with uvicorn_thread.serving(ZeroCopyMiddleware(app, stall_timeout=stall_timeout), loop_kind) as port:
        yield port


def request(port: int, path: str = "/", timeout: float = 30) -> tuple[bytes, bytes]:
    """One GET on a new connection: (head, body), the body read up to its Content-Length."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return read_response(sock)


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    buffer = b""
    for _ in range(10_000):  # bounded; each recv also has the socket's timeout
        if b"\r\n\r\n" in buffer:
            break
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the response head"
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    length = int(lengths[0])
    parts = [body]
    received = len(body)
    for _ in range(1_000_000):  # bounded
        if received >= length:
            break
        chunk = sock.recv(1 << 20)
        assert chunk, f"connection closed after {received} of {length} body bytes"
        parts.append(chunk)
        received += len(chunk)
    return head, b"".join(parts)


def read_for(sock: socket.socket, seconds: float) -> bytes:
    return uvicorn_thread.read_for(sock, seconds)[0]


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    path = tmp_path / "blob"
    path.write_bytes(DATA)
    return path


@pytest.fixture
def big_blob(tmp_path: Path) -> Path:
    path = tmp_path / "big"
    with path.open("wb") as f:
        f.truncate(BIG)  # sparse: the bytes' values do not matter here, only where they go
    return path


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_segments_are_sent_in_order_and_complete(blob: Path, loop_kind: str) -> None:
    sizes = [1, 1024 * 1024, 2 * 1024 * 1024, 16]
    with serving(file_app(blob, sizes), loop_kind) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            for _ in range(3):  # keep-alive: the connection stays usable after zero-copy responses
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                head, body = read_response(sock)
                assert b"x-zero-copy: yes" in head
                assert body == DATA


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_half_closing_client_never_leaks_into_a_new_connection(big_blob: Path, loop_kind: str) -> None:
    """Client A half-closes mid-blob and stops reading; uvicorn closes its connection and may reuse the
    descriptor number for B, which connects meanwhile and sends nothing. B must receive nothing."""
    with serving(file_app(big_blob, [BIG]), loop_kind, stall_timeout=5) as port:
        for attempt in range(4):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as a:
                a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                a.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert a.recv(65536).startswith(b"HTTP/1.1 200")
                a.shutdown(socket.SHUT_WR)
                with socket.create_connection(("127.0.0.1", port), timeout=10) as b:
                    leaked = read_for(b, 1)
                assert leaked == b"", f"attempt {attempt}: a silent client received {len(leaked)} bytes"
        # Still serving.
        head, body = request(port)
        assert len(body) == BIG


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_stalled_readers_hold_nothing_a_new_client_needs(blob: Path, big_blob: Path, loop_kind: str) -> None:
    """More stalled readers than any thread pool would have: a new request is still answered whole."""
    big, small = file_app(big_blob, [BIG]), file_app(blob, [len(DATA)])

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await (big if scope["path"] == "/big" else small)(scope, receive, send)

    stalled: list[socket.socket] = []
    with serving(app, loop_kind) as port:
        try:
            for _ in range(64):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                stalled.append(sock)
            assert stalled[-1].recv(1024).startswith(b"HTTP/1.1 200")
            head, body = request(port, "/", timeout=10)
            assert b"x-zero-copy: yes" in head and body == DATA
        finally:
            for sock in stalled:
                sock.close()


@pytest.mark.parametrize("loop_kind", ["uvloop"])
def test_a_stalled_reader_is_cut_after_the_stall_timeout(big_blob: Path, loop_kind: str) -> None:
    with serving(file_app(big_blob, [BIG]), loop_kind, stall_timeout=0.5) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(2)  # stall well past the timeout, then read what there is: the server has hung up
            received = read_for(sock, 10)
            assert 0 < len(received) < BIG


def test_other_servers_get_no_extension() -> None:
    """Only uvicorn's httptools cycle gets the extension; any other ``send`` passes through untouched."""
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 204, "headers": []})

    sent: list[dict[str, Any]] = []

    async def plain_send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    asyncio.run(ZeroCopyMiddleware(app)({"type": "http", "path": "/"}, receive, plain_send))
    assert ZEROCOPY_SEND not in seen[0].get("extensions", {})
    assert sent == [{"type": "http.response.start", "status": 204, "headers": []}]


def test_self_check_accepts_the_installed_uvicorn() -> None:
    assert unsupported() is None


@pytest.mark.parametrize("version", ["0.29.0", "0.55.0", "1.0.0", "unknown"])
def test_self_check_refuses_untested_uvicorn_releases(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    monkeypatch.setattr(uvicorn, "__version__", version)
    reason = unsupported()
    assert reason is not None and version in reason


def test_self_check_refuses_a_changed_request_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    class Changed:
        def __init__(self) -> None:
            self.transport = None  # no "disconnected", no "expected_content_length"

        async def send(self, message: Any) -> None:
            pass

    monkeypatch.setattr(uvicorn_internals, "cycle_class", lambda: Changed)
    reason = unsupported()
    assert reason is not None and "disconnected" in reason and "expected_content_length" in reason


def test_self_check_refuses_a_missing_httptools_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    nothing: Callable[[], None] = lambda: None  # noqa: E731
    monkeypatch.setattr(uvicorn_internals, "protocol_class", nothing)
    assert unsupported() is not None
