"""An upstream failure says what failed, to the client and (once, then now and then) in the log: on real sockets."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from proxy.app import create_app
from proxy.config import Settings, StorageSettings, UpstreamSettings

MANIFEST = "/v2/library/alpine/manifests/3.20"


def proxy_for(tmp_path: Path, url: str) -> TestClient:
    upstream = UpstreamSettings(registry="docker.io", url=url, connect_timeout=2.0, read_timeout=2.0)
    return TestClient(create_app(Settings(storage=StorageSettings(root=tmp_path / "cache"), upstreams=(upstream,))))


def message(response: object) -> str:
    return str(response.json()["errors"][0]["message"])  # type: ignore[attr-defined]


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "proxy.upstream.client"
    ]


def test_a_host_that_does_not_resolve(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # .invalid never resolves (RFC 6761), whatever the resolver.
    with proxy_for(tmp_path, "https://registry-1.docker.invalid") as client, caplog.at_level(logging.WARNING):
        response = client.get(MANIFEST)
        again = client.get(MANIFEST)
    assert response.status_code == 503
    assert message(response).startswith(
        "upstream docker.io unreachable: DNS lookup of registry-1.docker.invalid failed ("
    )
    assert message(again) == message(response)
    # Said at WARNING the first time; the repeat within the minute is counted, not logged again.
    assert warnings(caplog) == [message(response)]


@pytest.fixture
def closed_port() -> Iterator[int]:
    # Bound but not listening: connections are refused, and no other process can take the port meanwhile.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_a_refused_connection(tmp_path: Path, closed_port: int, caplog: pytest.LogCaptureFixture) -> None:
    with proxy_for(tmp_path, f"http://127.0.0.1:{closed_port}") as client, caplog.at_level(logging.WARNING):
        response = client.get(MANIFEST)
    assert response.status_code == 503
    assert message(response) == f"upstream docker.io unreachable: connection to 127.0.0.1:{closed_port} refused"
    assert warnings(caplog) == [message(response)]


@pytest.fixture
def plain_http_port() -> Iterator[int]:
    """A server that answers plain HTTP to whatever it receives: a TLS client gets no handshake from it."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        for _ in range(500):  # at most ~100 s, normally a few rounds
            if stop.is_set():
                return
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    listener.close()


def test_a_tls_handshake_that_fails(tmp_path: Path, plain_http_port: int) -> None:
    with proxy_for(tmp_path, f"https://127.0.0.1:{plain_http_port}") as client:
        response = client.get(MANIFEST)
    assert response.status_code == 503
    assert message(response) == (
        "upstream docker.io unreachable: TLS error with 127.0.0.1: wrong version number (it may speak plain HTTP: "
        "check the scheme of the upstream's url)"
    )


def test_a_silent_upstream_times_out_after_its_read_timeout(tmp_path: Path) -> None:
    # Accepts the connection (the kernel does, from the backlog) and never answers.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        upstream = UpstreamSettings(registry="docker.io", url=f"http://127.0.0.1:{port}", read_timeout=0.5)
        settings = Settings(storage=StorageSettings(root=tmp_path / "cache"), upstreams=(upstream,))
        with TestClient(create_app(settings)) as client:
            response = client.get(MANIFEST)
    assert response.status_code == 504
    assert message(response) == "upstream docker.io timed out after 0.5 s waiting for 127.0.0.1 to answer"
