"""A fill's way to disk: chunks of any size written in order, reading held back while the writer is behind, and
readers served as the blob grows."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from proxy.app import create_app
from proxy.config import Settings, StorageSettings, UpstreamSettings
from proxy.pullthrough.fill import _MAX_PENDING, _WRITE_SIZE, _next_write
from storage.blobs import FilesystemBlobWriter
from tests.unit.asgi import running
from tests.unit.fakes import CDN, FAKE_REDIRECT_HOSTS, FAKE_TOKEN_REALMS, REGISTRY, FakeRegistry
from tests.unit.uvicorn_thread import serving

SIZES = [1, 7, 300_000, 65_536, 3, 1_100_000, 200_000, 40_000, 2_000_000, 9]


def pattern(size: int) -> bytes:
    return (bytes(range(251)) * (size // 251 + 1))[:size]


class Streamed(httpx.AsyncByteStream):
    """A blob body in chunks of the given sizes (cycled), optionally stopping at ``hold_at`` until ``release``."""

    def __init__(self, body: bytes, sizes: list[int], hold_at: int | None = None) -> None:
        self.body = body
        self.sizes = sizes
        self.hold_at = hold_at
        self.release = threading.Event()
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        offset = 0
        for n in range(len(self.body)):  # bounded: at least one byte per chunk
            if offset >= len(self.body):
                break
            if self.hold_at is not None and offset >= self.hold_at:
                self.hold_at = None
                await asyncio.to_thread(self.release.wait, 10)
            chunk = self.body[offset : offset + self.sizes[n % len(self.sizes)]]
            offset += len(chunk)
            self.sent = offset
            await asyncio.sleep(0)
            yield chunk


class Upstream:
    """The fake registry, with its blob bodies served by ``stream``."""

    def __init__(self, fake: FakeRegistry, stream: Streamed) -> None:
        self.fake = fake
        self.stream = stream

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        response = self.fake(request)
        if request.url.host != CDN or request.method != "GET":
            return response
        return httpx.Response(response.status_code, headers=response.headers, stream=self.stream)


def make_app(tmp_path: Path, upstream: Upstream) -> Starlette:
    upstreams = (
        UpstreamSettings(
            registry="docker.io", url=REGISTRY, redirect_hosts=FAKE_REDIRECT_HOSTS, token_realms=FAKE_TOKEN_REALMS
        ),
    )
    settings = Settings(storage=StorageSettings(root=tmp_path / "cache"), upstreams=upstreams)
    return create_app(settings, transport=httpx.MockTransport(upstream))


def test_a_write_takes_the_queued_chunks_up_to_the_write_size() -> None:
    big = _WRITE_SIZE + 1
    chunks: deque[bytes | memoryview] = deque(
        [b"a" * 10, b"b" * 20, b"c" * big, b"d" * 5, b"e" * (_WRITE_SIZE - 5), b"f"]
    )
    writes = []
    for _ in range(10):  # bounded
        if not chunks:
            break
        writes.append(_next_write(chunks))
    assert writes == [b"a" * 10 + b"b" * 20, b"c" * big, b"d" * 5 + b"e" * (_WRITE_SIZE - 5), b"f"]


async def test_a_blob_in_chunks_of_every_size_is_cached_whole(tmp_path: Path) -> None:
    blob = pattern(12 * 1024 * 1024 + 17)
    fake = FakeRegistry()
    digest = fake.add_blob(blob)
    upstream = Upstream(fake, Streamed(blob, SIZES))
    async with running(make_app(tmp_path, upstream)) as client:
        assert (await client.get(f"/v2/library/app/blobs/{digest}")).content == blob
        assert (await client.get(f"/v2/library/app/blobs/{digest}")).content == blob  # from the cache
    assert fake.hits[f"GET /v2/library/app/blobs/{digest}"] == 1


@pytest.fixture
def slow_writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Every write waits until the event is set (at most 10 s)."""
    go = threading.Event()
    original = FilesystemBlobWriter._write_and_hash

    def held(self: FilesystemBlobWriter, data: bytes, *args: Any) -> None:
        go.wait(10)
        original(self, data, *args)

    monkeypatch.setattr(FilesystemBlobWriter, "_write_and_hash", held)
    yield go
    go.set()


async def test_the_download_waits_while_the_writer_is_behind(tmp_path: Path, slow_writes: threading.Event) -> None:
    chunk = 256 * 1024
    blob = pattern(40 * chunk)
    fake = FakeRegistry()
    digest = fake.add_blob(blob)
    stream = Streamed(blob, [chunk])
    async with running(make_app(tmp_path, Upstream(fake, stream))) as client:
        pull = asyncio.create_task(client.get(f"/v2/library/app/blobs/{digest}"))
        steady = 0
        last = -1
        for _ in range(500):  # bounded: 500 x 10 ms; until the download stopped reading
            await asyncio.sleep(0.01)
            steady = steady + 1 if stream.sent == last else 0
            last = stream.sent
            if steady >= 20 and last > 0:
                break
        # Queued: at most _MAX_PENDING and the chunk that reached it, plus the one being written.
        assert 0 < stream.sent <= _MAX_PENDING + 2 * chunk < len(blob)
        slow_writes.set()
        response = await asyncio.wait_for(pull, 30)
    assert response.content == blob


def test_a_reader_gets_bytes_before_a_slow_upstream_finishes(tmp_path: Path) -> None:
    blob = pattern(3 * 1024 * 1024)
    fake = FakeRegistry()
    digest = fake.add_blob(blob)
    stream = Streamed(blob, [64 * 1024], hold_at=256 * 1024)
    with serving(make_app(tmp_path, Upstream(fake, stream)), lifespan="on") as port:
        url = f"http://127.0.0.1:{port}/v2/library/app/blobs/{digest}"
        with httpx.stream("GET", url, timeout=10) as response:
            received = bytearray()
            chunks = response.iter_raw()
            for piece in chunks:  # bounded by the held upstream: what the fill has while it waits
                received += piece
                if len(received) >= 256 * 1024:
                    break
            # Less than a batch, held by a stalled upstream: sent anyway after a short wait, not at the end.
            assert len(received) == 256 * 1024 and stream.sent == 256 * 1024
            stream.release.set()
            for piece in chunks:
                received += piece
    assert bytes(received) == blob
