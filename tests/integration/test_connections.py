"""Hostile connections against the real proxy: what one client does to its connection never reaches another."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx

from tests.harness.images import Images
from tests.harness.ports import LOOPBACK
from tests.harness.proxy_server import ProxyServer
from tests.harness.registry import DistributionRegistry

ATTEMPTS = 5


def read_for(sock: socket.socket, seconds: float, limit: int = 1 << 30) -> bytes:
    """Whatever arrives on ``sock`` within ``seconds`` (bounded by time and by ``limit`` bytes)."""
    received = bytearray()
    deadline = time.monotonic() + seconds
    while len(received) < limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            data = sock.recv(1 << 16)
        except (TimeoutError, ConnectionError):
            break
        if not data:
            break
        received += data
    return bytes(received)


def test_a_half_closed_blob_download_never_reaches_another_connection(
    upstream_registry: DistributionRegistry, images: Images, tmp_path: Path
) -> None:
    """Client A asks for a cached big blob, reads a little, half-closes and stops reading; client B connects
    meanwhile and sends nothing. B must receive nothing at all: not A's bytes, not anything."""
    big = images["big"]
    layer = big.layers[0]
    path = f"/v2/{big.repository}/blobs/{layer.digest}"
    with ProxyServer(tmp_path / "proxy", upstream_registry.url) as proxy:
        with httpx.stream("GET", proxy.url + path, timeout=120) as warm:
            assert warm.status_code == 200
            for _ in warm.iter_raw(1 << 20):
                pass
        for attempt in range(ATTEMPTS):
            with socket.create_connection((LOOPBACK, proxy.port), timeout=10) as a:
                a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                a.sendall(f"GET {path} HTTP/1.1\r\nHost: {proxy.host}\r\n\r\n".encode())
                head = read_for(a, 5, limit=64 * 1024)
                assert head.startswith(b"HTTP/1.1 200"), (attempt, head[:200])
                a.shutdown(socket.SHUT_WR)
                # Connect B while A's response is still being sent (A no longer reads).
                with socket.create_connection((LOOPBACK, proxy.port), timeout=10) as b:
                    leaked = read_for(b, 3)
                assert leaked == b"", f"attempt {attempt}: a silent client received {len(leaked)} bytes"
        # The proxy is still healthy and serves the blob whole.
        response = httpx.get(proxy.url + f"/v2/{big.repository}/manifests/{big.tag}", timeout=30,
                             headers={"Accept": big.media_type})  # fmt: skip
        assert response.status_code == 200
