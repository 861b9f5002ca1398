"""Connection hygiene (proxy.server.connections) on a real uvicorn server: header deadline, header cap, and the
connection cap, each answered with a registry error."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from proxy.server.connections import ConnectionLimits, auto_max_connections, guarded_protocol
from tests.unit.uvicorn_thread import read_for, serving

LOOPS = ["asyncio", "uvloop"]


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b"hello"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": body})


@contextmanager
def guarded(loop_kind: str, **limits: Any) -> Iterator[int]:
    chosen = ConnectionLimits(**{"header_timeout": 0.5, "max_header_bytes": 8192, "max_connections": 50, **limits})
    with serving(hello, loop_kind, http=guarded_protocol(chosen), timeout_keep_alive=30) as port:
        yield port


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def status_and_error(response: bytes) -> tuple[int, str]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)["errors"][0]["code"]


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_silent_connection_is_closed_after_the_header_timeout(loop_kind: str) -> None:
    with guarded(loop_kind) as port, connect(port) as sock:
        received, closed = read_for(sock, 5)
        assert closed and received == b""


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_dripped_headers_get_408_at_the_header_timeout(loop_kind: str) -> None:
    with guarded(loop_kind) as port, connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for _ in range(12):  # one header byte every 0.1 s: well past the 0.5 s deadline
            try:
                sock.sendall(b"X")
            except ConnectionError:
                break
            time.sleep(0.1)
        received, closed = read_for(sock, 5)
        assert closed
        assert status_and_error(received) == (408, "REQUEST_TIMEOUT")


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_header_flood_is_cut_at_the_cap_with_431(loop_kind: str) -> None:
    line = b"X-Flood: " + b"a" * 1000 + b"\r\n"
    with guarded(loop_kind) as port, connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        sent = 0
        for _ in range(1000):  # up to ~1 MB, far past the 8 KiB cap; the server cuts us off long before
            try:
                sock.sendall(line)
            except ConnectionError:
                break
            sent += len(line)
        received, closed = read_for(sock, 5)
        assert closed
        assert status_and_error(received) == (431, "HEADERS_TOO_LARGE")
    # A header line that never ends is cut the same way (httptools would hold it whole).
    with guarded(loop_kind) as port, connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        for _ in range(200):
            try:
                sock.sendall(b"b" * 1024)
            except ConnectionError:
                break
        received, closed = read_for(sock, 5)
        assert closed and status_and_error(received) == (431, "HEADERS_TOO_LARGE")


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_uri_longer_than_the_cap_is_414(loop_kind: str) -> None:
    with guarded(loop_kind) as port, connect(port) as sock:
        try:
            sock.sendall(b"GET /v2/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        except ConnectionError:
            pass
        received, closed = read_for(sock, 5)
        assert closed and status_and_error(received) == (414, "URI_TOO_LONG")


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_connections_past_the_cap_get_503_and_the_rest_keep_working(loop_kind: str) -> None:
    with guarded(loop_kind, max_connections=5, header_timeout=30) as port, ExitStack() as stack:
        held = [stack.enter_context(connect(port)) for _ in range(5)]
        extra = stack.enter_context(connect(port))
        received, closed = read_for(extra, 5)
        assert closed
        assert status_and_error(received) == (503, "TOOMANYREQUESTS")
        assert b"retry-after: 1" in received.lower()
        # The held connections are served normally.
        held[0].sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response, _ = read_for(held[0], 1)
        assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"hello")


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_normal_keep_alive_and_pipelined_requests_are_untouched(loop_kind: str) -> None:
    big_header = b"X-Big: " + b"v" * 6000 + b"\r\n"  # under the 8 KiB cap
    request = b"GET / HTTP/1.1\r\nHost: x\r\n" + big_header + b"\r\n"
    with guarded(loop_kind) as port, connect(port) as sock:
        for _ in range(3):
            sock.sendall(request)
            response, closed = read_for(sock, 1)
            assert not closed and response.startswith(b"HTTP/1.1 200") and response.endswith(b"hello")
            time.sleep(0.7)  # idle longer than the header timeout between requests: keep-alive governs that
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        response, _ = read_for(sock, 1)
        assert response.count(b"HTTP/1.1 200") == 3


def test_auto_connection_cap_leaves_room_for_files() -> None:
    assert auto_max_connections(1024) == 64
    assert auto_max_connections(10000) == 10000 - 1024
    assert auto_max_connections(1 << 20) == 16384
