"""A budgeted cache under real pulls: skopeo through the proxy (a real uvicorn process) from a real Distribution.

The budget scales with TEST_BIG_LAYER_MIB (default 200): max_size is 1.5 times the big layer (300 MiB), and the two
extra images seeded here have one layer of 0.4 times it each (80 MiB), as in issue 9.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import budget as budget_harness
from tests.harness.budget import DiskSampler, push_sized_image
from tests.harness.deadline import poll_until
from tests.harness.images import Images, PushedImage
from tests.harness.ports import LOOPBACK
from tests.harness.proxy_server import ProxyServer
from tests.harness.registry import DistributionRegistry
from tests.harness.skopeo import read_dir_layout, skopeo_copy
from tests.integration.conftest import big_layer_mib

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def budget() -> int:
    return big_layer_mib() * 3 // 2 * MIB


@pytest.fixture(scope="module")
def extras(upstream_registry: DistributionRegistry, images: Images) -> list[PushedImage]:
    """Two images of one random layer each, 0.4 times the big layer: together with it, more than the budget."""
    size = max(1, big_layer_mib() * 2 // 5) * MIB
    return [push_sized_image(upstream_registry, images.store, f"lifecycle/{key}", size) for key in ("a", "b")]


@pytest.fixture
def proxy(upstream_registry: DistributionRegistry, budget: int, tmp_path: Path) -> Iterator[ProxyServer]:
    with ProxyServer(tmp_path / "proxy", upstream_registry.url, extra_storage=f"max_size = {budget}") as server:
        yield server


def blobs_on_disk(proxy: ProxyServer) -> int:
    return budget_harness.blobs_on_disk(proxy.cache_dir)


def blob_file(proxy: ProxyServer, digest: str) -> Path:
    algorithm, hexdigest = digest.split(":")
    return proxy.cache_dir / "blobs" / algorithm / hexdigest[:2] / hexdigest


def pull(proxy: ProxyServer, image: PushedImage, dest: Path) -> None:
    skopeo_copy(proxy.ref(image.ref), dest)
    layout = read_dir_layout(dest)
    assert layout.manifest_digest == image.digest
    layout.verify_blobs()


def test_the_budget_holds_over_three_pulls_and_a_re_pull(
    proxy: ProxyServer,
    upstream_registry: DistributionRegistry,
    images: Images,
    extras: list[PushedImage],
    budget: int,
    skopeo: str,
    tmp_path: Path,
) -> None:
    big = images["big"]
    sampler = DiskSampler(proxy.cache_dir)
    sampler.start()
    try:
        for n, image in enumerate([big, *extras]):
            pull(proxy, image, tmp_path / f"pull-{n}")
            assert blobs_on_disk(proxy) <= budget, f"after pulling {image.ref}"
        assert not blob_file(proxy, big.layers[0].digest).exists()  # evicted to make room for the second extra
        mark = upstream_registry.mark()
        pull(proxy, big, tmp_path / "re-pull")
        assert blobs_on_disk(proxy) <= budget
    finally:
        peak = sampler.stop()
    upstream_registry.wait_quiet()
    refetched = [r for r in upstream_registry.requests_since(mark) if r.method == "GET" and "/blobs/" in r.path]
    assert any(r.path.endswith(big.layers[0].digest) for r in refetched)
    # Partial files count while they grow: the cache stays within its budget during a fill too, not only after.
    assert peak <= budget
    print(f"\npeak blobs on disk {peak / MIB:.1f} MiB, budget {budget / MIB:.0f} MiB")


class SlowClient(threading.Thread):
    """GETs a blob over a raw socket with a small receive buffer: the first MiB, then a trickle until released,
    then the rest, hashing every byte."""

    def __init__(self, proxy: ProxyServer, repository: str, digest: str, timeout: float = 300) -> None:
        super().__init__(daemon=True)
        self._request = (
            f"GET /v2/{repository}/blobs/{digest} HTTP/1.1\r\nHost: {proxy.host}\r\nConnection: close\r\n\r\n"
        ).encode()
        self._port = proxy.port
        self._deadline = time.monotonic() + timeout
        self.reading = threading.Event()
        self.release = threading.Event()
        self.hasher = hashlib.sha256()
        self.received = 0
        self.length = -1
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._read()
        except BaseException as exc:  # reported by the test, which asserts on it
            self.error = exc
        finally:
            self.reading.set()

    def _read(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # A small window keeps the proxy from handing the whole blob to the kernel at once.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.settimeout(30)
            sock.connect((LOOPBACK, self._port))
            sock.sendall(self._request)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                head += sock.recv(4096)
            header, _, body = head.partition(b"\r\n\r\n")
            assert header.startswith(b"HTTP/1.1 200"), header[:200]
            for line in header.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    self.length = int(line.split(b":", 1)[1])
            if body:
                self._take(body)
            while self.received < min(MIB, self.length) and time.monotonic() < self._deadline:
                self._take(sock.recv(64 * 1024))
            self.reading.set()
            while not self.release.is_set() and time.monotonic() < self._deadline:
                self._take(sock.recv(16 * 1024))
                self.release.wait(0.05)
            while self.received < self.length and time.monotonic() < self._deadline:
                self._take(sock.recv(1024 * 1024))

    def _take(self, data: bytes) -> None:
        if not data:
            raise ConnectionError(f"connection closed after {self.received} of {self.length} bytes")
        self.hasher.update(data)
        self.received += len(data)


def test_a_blob_read_by_a_slow_client_is_kept_while_others_are_evicted(
    proxy: ProxyServer, images: Images, extras: list[PushedImage], budget: int, skopeo: str, tmp_path: Path
) -> None:
    big = images["big"]
    pull(proxy, big, tmp_path / "big")
    layer = big.layers[0]
    client = SlowClient(proxy, big.repository, layer.digest)
    client.start()
    assert client.reading.wait(timeout=60) and client.error is None
    try:
        for n, image in enumerate(extras):
            pull(proxy, image, tmp_path / f"extra-{n}")
            assert blobs_on_disk(proxy) <= budget
        # The big layer was the least recently used blob worth evicting, but it is being read: it stays, and the
        # first extra image made room for the second instead.
        assert blob_file(proxy, layer.digest).exists()
        assert not blob_file(proxy, extras[0].layers[0].digest).exists()
        assert blob_file(proxy, extras[1].layers[0].digest).exists()
    finally:
        client.release.set()
        client.join(timeout=120)
    assert client.error is None
    assert client.received == client.length == layer.size
    assert f"sha256:{client.hasher.hexdigest()}" == layer.digest


def registry_proxy(*args: str) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("registry-proxy")
    return subprocess.run([str(cli), *args], capture_output=True, text=True, timeout=60, check=False)


def test_ls_lists_every_pulled_image_while_running_and_stopped(
    proxy: ProxyServer, images: Images, skopeo: str, tmp_path: Path
) -> None:
    pulled = [images["oci"], images["docker"], images["index"]]
    for n, image in enumerate(pulled):
        skopeo_copy(proxy.ref(image.ref), tmp_path / f"pull-{n}", all_images=image.is_index)
    expected = {(image.repository, image.tag): image.digest for image in pulled}

    def listed() -> dict[tuple[str, str], str] | None:
        result = registry_proxy("ls", "--config", str(proxy.config_path), "--json")
        assert result.returncode == 0, result.stderr
        rows = {(row["repository"], row["tag"]): row["digest"] for row in json.loads(result.stdout)}
        return rows if expected.items() <= rows.items() else None

    # The server writes its inventory every second; ls reads it alongside (SQLite WAL).
    assert poll_until(listed, timeout=15, interval=0.5, what="ls to list every pulled image") is not None
    proxy.stop()
    result = registry_proxy("ls", "--config", str(proxy.config_path), "--json")
    rows = {(row["repository"], row["tag"]): row for row in json.loads(result.stdout)}
    for (repository, tag), digest in expected.items():
        row = rows[(repository, tag)]
        assert row["digest"] == digest and row["registry"] == "docker.io" and row["pull_count"] >= 1
    assert rows[(images["index"].repository, "1")]["platforms"] == ["linux/amd64", "linux/arm64/v8"]
    markdown = registry_proxy("ls", "--config", str(proxy.config_path), "--markdown")
    lines = markdown.stdout.splitlines()
    assert lines[0].startswith("| Image | Digest |") and set(lines[1]) <= {"|", " ", "-"}
    for image in pulled:
        assert any(line.startswith(f"| `docker.io/{image.repository}:1` | `{image.digest}` |") for line in lines)
