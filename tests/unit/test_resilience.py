"""Single flight, resume, serve-stale, circuit breaker and a failing cache, against an in-memory upstream."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.app import create_app
from proxy.config import Settings, StorageSettings, UpstreamSettings
from storage.blobs import FilesystemBlobStore, FilesystemBlobWriter
from storage.interfaces import StorageError
from storage.paths import INVENTORY
from tests.unit.asgi import envelope_code, running
from tests.unit.fakes import FAKE_REDIRECT_HOSTS, FAKE_TOKEN_REALMS, OCI_MANIFEST, REGISTRY, FakeRegistry, sha256

BLOB = bytes(range(256)) * 4096  # 1 MiB


class Gate:
    """Holds upstream answers until the test has sent all its concurrent requests."""

    def __init__(self) -> None:
        self.open = asyncio.Event()

    async def wait(self) -> None:
        await asyncio.wait_for(self.open.wait(), timeout=10)


class SlowUpstream:
    """Wraps a FakeRegistry: every answer waits for the gate, blob bodies arrive in small chunks."""

    def __init__(self, fake: FakeRegistry, gate: Gate, break_after: int | None = None) -> None:
        self.fake = fake
        self.gate = gate
        self.break_after = break_after  # cut the first full blob body after this many bytes

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        await self.gate.wait()
        response = self.fake(request)
        if request.url.host != "cdn.example.net" or request.method != "GET":
            return response
        body = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
        cut = self.break_after if "range" not in request.headers else None
        if cut is not None:
            self.break_after = None
        return httpx.Response(response.status_code, headers=response.headers, stream=Chunked(body, cut))


class Chunked(httpx.AsyncByteStream):
    def __init__(self, body: bytes, cut: int | None) -> None:
        self.body = body
        self.cut = cut

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for offset in range(0, len(self.body), 16384):
            if self.cut is not None and offset >= self.cut:
                raise httpx.ReadError("connection reset by peer")
            await asyncio.sleep(0)
            yield self.body[offset : offset + 16384]


def make_app(tmp_path: Path, handler: object, tag_ttl: float = 300, root: Path | None = None):
    settings = Settings(
        storage=StorageSettings(root=root or tmp_path / "cache"),
        upstreams=(
            UpstreamSettings(
                registry="docker.io",
                url=REGISTRY,
                tag_ttl=tag_ttl,
                redirect_hosts=FAKE_REDIRECT_HOSTS,
                token_realms=FAKE_TOKEN_REALMS,
            ),
        ),
    )
    return create_app(settings, transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


@pytest.fixture
def fake() -> FakeRegistry:
    registry = FakeRegistry()
    registry.add_blob(BLOB)
    registry.add_manifest(
        "library/app", "1", OCI_MANIFEST, b'{"schemaVersion":2,"mediaType":"' + OCI_MANIFEST.encode() + b'"}'
    )
    return registry


async def test_concurrent_blob_gets_share_one_download(tmp_path: Path, fake: FakeRegistry) -> None:
    gate = Gate()
    async with running(make_app(tmp_path, SlowUpstream(fake, gate))) as client:
        requests = [asyncio.create_task(client.get(f"/v2/library/app/blobs/{sha256(BLOB)}")) for _ in range(10)]
        await asyncio.sleep(0.05)
        gate.open.set()
        responses = await asyncio.wait_for(asyncio.gather(*requests), timeout=30)
    assert all(r.status_code == 200 and r.content == BLOB for r in responses)
    assert fake.count("GET", "cdn/") == 1


async def test_two_processes_on_one_cache_share_one_download(tmp_path: Path, fake: FakeRegistry) -> None:
    # Two apps on one cache directory stand for two worker processes: they share nothing but the files.
    gate = Gate()
    handler = SlowUpstream(fake, gate)
    root = tmp_path / "shared"
    async with (
        running(make_app(tmp_path, handler, root=root)) as a,
        running(make_app(tmp_path, handler, root=root)) as b,
    ):
        url = f"/v2/library/app/blobs/{sha256(BLOB)}"
        requests = [asyncio.create_task((a if i % 2 else b).get(url)) for i in range(10)]
        await asyncio.sleep(0.05)
        gate.open.set()
        responses = await asyncio.wait_for(asyncio.gather(*requests), timeout=30)
    assert all(r.status_code == 200 and r.content == BLOB for r in responses)
    assert fake.count("GET", "cdn/") == 1


@pytest.mark.parametrize("reference", ["1", "digest"])
async def test_two_processes_on_one_cache_ask_for_a_manifest_once(
    reference: str, tmp_path: Path, fake: FakeRegistry
) -> None:
    # Docker Hub counts manifest GETs: worker processes sharing a cache must not each make one.
    digest = next(iter(fake.manifests))[1]
    gate = Gate()
    handler = SlowUpstream(fake, gate)
    root = tmp_path / "shared"
    async with (
        running(make_app(tmp_path, handler, root=root)) as a,
        running(make_app(tmp_path, handler, root=root)) as b,
    ):
        url = f"/v2/library/app/manifests/{digest if reference == 'digest' else reference}"
        requests = [asyncio.create_task((a if i % 2 else b).get(url)) for i in range(10)]
        await asyncio.sleep(0.05)
        gate.open.set()
        responses = await asyncio.wait_for(asyncio.gather(*requests), timeout=30)
    assert all(r.status_code == 200 and r.headers["docker-content-digest"] == digest for r in responses)
    assert fake.count("GET", "/manifests/") == 1


async def test_concurrent_blob_heads_share_one_upstream_head_and_never_download(
    tmp_path: Path, fake: FakeRegistry
) -> None:
    gate = Gate()
    async with running(make_app(tmp_path, SlowUpstream(fake, gate))) as client:
        requests = [asyncio.create_task(client.head(f"/v2/library/app/blobs/{sha256(BLOB)}")) for _ in range(10)]
        await asyncio.sleep(0.05)
        gate.open.set()
        responses = await asyncio.wait_for(asyncio.gather(*requests), timeout=30)
    assert all(r.status_code == 200 and r.headers["content-length"] == str(len(BLOB)) for r in responses)
    assert fake.count("HEAD", "/v2/library/app/blobs/") == 1
    assert fake.count("GET", "cdn/") == 0


async def test_concurrent_tag_pulls_share_one_manifest_fetch_and_token(tmp_path: Path, fake: FakeRegistry) -> None:
    gate = Gate()
    async with running(make_app(tmp_path, SlowUpstream(fake, gate))) as client:
        requests = [asyncio.create_task(client.get("/v2/library/app/manifests/1")) for _ in range(10)]
        await asyncio.sleep(0.05)
        gate.open.set()
        responses = await asyncio.wait_for(asyncio.gather(*requests), timeout=30)
    assert all(r.status_code == 200 for r in responses)
    assert fake.count("GET", "/manifests/1") == 1
    assert len(fake.token_requests) == 1


async def test_broken_download_is_resumed_with_range(tmp_path: Path, fake: FakeRegistry) -> None:
    gate = Gate()
    gate.open.set()
    async with running(make_app(tmp_path, SlowUpstream(fake, gate, break_after=300_000))) as client:
        response = await client.get(f"/v2/library/app/blobs/{sha256(BLOB)}")
        assert response.status_code == 200
        assert response.content == BLOB
        ranges = [r.headers.get("range") for r in fake.requests if r.url.host == "cdn.example.net"]
        assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
        assert int(ranges[1].removeprefix("bytes=").rstrip("-")) > 0
        # ... and the resumed blob was committed: a second GET is a hit.
        assert (await client.get(f"/v2/library/app/blobs/{sha256(BLOB)}")).content == BLOB
    assert fake.count("GET", "cdn/") == 2


@pytest.mark.parametrize(("status", "stale"), [(503, True), (502, True), (429, True), (500, True), (404, False)])
async def test_stale_tag_is_served_when_the_upstream_fails(
    tmp_path: Path, fake: FakeRegistry, status: int, stale: bool
) -> None:
    async with running(make_app(tmp_path, fake, tag_ttl=0)) as client:
        first = await client.get("/v2/library/app/manifests/1")
        assert first.status_code == 200 and "warning" not in first.headers
        fake.fail = status
        again = await client.get("/v2/library/app/manifests/1")
    if stale:
        assert again.status_code == 200
        assert again.content == first.content
        assert again.headers["warning"] == '110 - "Response is Stale"'
    else:
        assert again.status_code == 404  # an answer, not an outage: the tag is gone


async def test_circuit_breaker_stops_asking_a_dead_upstream(tmp_path: Path, fake: FakeRegistry) -> None:
    calls = 0

    def refuse(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("connection refused", request=request)

    async with running(make_app(tmp_path, refuse)) as client:
        for _ in range(3):
            assert (await client.get("/v2/library/app/manifests/1")).status_code == 503
        assert calls == 3
        response = await client.get("/v2/library/app/manifests/2")
        assert response.status_code == 503
        assert envelope_code(response) == "UPSTREAM_UNAVAILABLE"
        assert "next attempt" in response.json()["errors"][0]["message"]
        assert calls == 3  # the breaker answered without trying


async def test_unusable_cache_root_still_serves_blobs(tmp_path: Path, fake: FakeRegistry) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("the cache root cannot live under a file")
    async with running(make_app(tmp_path, fake, root=not_a_dir / "cache")) as client:
        response = await client.get(f"/v2/library/app/blobs/{sha256(BLOB)}")
        assert response.status_code == 200
        assert response.content == BLOB
        assert (await client.get("/v2/library/app/manifests/1")).status_code == 200


@pytest.fixture
def disk_full_after_256k(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blob writes fail with ENOSPC once a blob has 256 KiB written."""
    original = FilesystemBlobWriter._write_and_hash

    def full_after_256k(self: FilesystemBlobWriter, data: bytes, *args: Any) -> None:
        if self.written + len(data) > 256 * 1024:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, data, *args)

    monkeypatch.setattr(FilesystemBlobWriter, "_write_and_hash", full_after_256k)


async def test_disk_full_during_a_fill_still_serves_the_blob(
    tmp_path: Path, fake: FakeRegistry, disk_full_after_256k: None
) -> None:
    gate = Gate()
    gate.open.set()
    async with running(make_app(tmp_path, SlowUpstream(fake, gate))) as client:
        response = await client.get(f"/v2/library/app/blobs/{sha256(BLOB)}")
        assert response.status_code == 200
        assert response.content == BLOB
    # Nothing half-written remains (the record that the repository holds the blob is complete, and true; the
    # inventory's database is the cache's own bookkeeping).
    leftovers = [
        p
        for p in (tmp_path / "cache").rglob("*")
        if p.is_file() and "_layers" not in p.parts and not p.name.startswith(INVENTORY)
    ]
    assert leftovers == []


# -- upstream work is keyed by what it asks the upstream (issue 7, item 4) ---------------------------------------------


class HoldRepository:
    """Wraps a FakeRegistry: answers for ``held`` wait until a blob request under another repository reached the
    upstream (at most ``bound`` seconds, so that a request that never comes does not hang the test)."""

    def __init__(self, fake: FakeRegistry, held: str, bound: float = 2.0) -> None:
        self.fake = fake
        self.held = f"/v2/{held}/"
        self.bound = bound
        self.held_arrived = asyncio.Event()
        self.other_arrived = asyncio.Event()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith(self.held):
            self.held_arrived.set()
            try:
                await asyncio.wait_for(self.other_arrived.wait(), self.bound)
            except TimeoutError:
                pass
        elif "/blobs/" in path:
            self.other_arrived.set()
        return self.fake(request)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_request_under_a_name_without_the_blob_does_not_fail_one_under_a_name_with_it(
    tmp_path: Path, fake: FakeRegistry, method: str
) -> None:
    digest = sha256(BLOB)
    fake.blob_repositories[digest] = {"library/app"}
    upstream = HoldRepository(fake, "library/wrong")
    async with running(make_app(tmp_path, upstream)) as client:
        wrong = asyncio.create_task(client.request(method, f"/v2/library/wrong/blobs/{digest}"))
        # The request under the wrong name is at the upstream (its fill or HEAD under way) before the right one starts.
        await asyncio.wait_for(upstream.held_arrived.wait(), timeout=10)
        right = await asyncio.wait_for(client.request(method, f"/v2/library/app/blobs/{digest}"), timeout=30)
        refused = await asyncio.wait_for(wrong, timeout=30)
    assert right.status_code == 200
    assert right.headers["content-length"] == str(len(BLOB))
    assert right.content == (BLOB if method == "GET" else b"")
    assert refused.status_code == 404
    if method == "GET":
        assert envelope_code(refused) == "BLOB_UNKNOWN"


async def test_concurrent_fills_of_one_digest_under_two_names_both_commit(tmp_path: Path, fake: FakeRegistry) -> None:
    digest = sha256(BLOB)
    gate = Gate()
    async with running(make_app(tmp_path, SlowUpstream(fake, gate))) as client:
        requests = [
            asyncio.create_task(client.get(f"/v2/{name}/blobs/{digest}")) for name in ("library/app", "library/other")
        ]
        await asyncio.sleep(0.05)
        gate.open.set()
        responses = await asyncio.wait_for(asyncio.gather(*requests), timeout=30)
        assert all(r.status_code == 200 and r.content == BLOB for r in responses)
        # Committed bytes are shared by digest: a third name is a hit.
        assert (await client.get(f"/v2/library/third/blobs/{digest}")).content == BLOB
    assert fake.count("GET", "cdn/") == 2
    blob_dir = tmp_path / "cache" / "blobs" / "sha256" / digest[7:9]
    assert [p.name for p in blob_dir.iterdir()] == [digest.removeprefix("sha256:")]  # no partial file left
    assert (blob_dir / digest.removeprefix("sha256:")).read_bytes() == BLOB


# -- a range short of the blob's end is answered only from verified bytes (issue 7, item 7) ----------------------------


def unusable_root(tmp_path: Path) -> Path:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("the cache root cannot live under a file")
    return not_a_dir / "cache"


async def test_range_short_of_the_end_on_a_corrupt_miss_is_an_error_not_bytes(
    tmp_path: Path, fake: FakeRegistry
) -> None:
    fake.corrupt_blobs = True  # the upstream flips the first byte
    async with running(make_app(tmp_path, fake)) as client:
        response = await client.get(f"/v2/library/app/blobs/{sha256(BLOB)}", headers={"Range": "bytes=0-99"})
        assert response.status_code == 502
        assert envelope_code(response) == "UPSTREAM_ERROR"
        fake.corrupt_blobs = False
        response = await client.get(f"/v2/library/app/blobs/{sha256(BLOB)}", headers={"Range": "bytes=0-99"})
        assert response.status_code == 206
        assert response.content == BLOB[:100]


async def test_range_short_of_the_end_waits_for_the_commit(tmp_path: Path, fake: FakeRegistry) -> None:
    gate = Gate()
    gate.open.set()
    async with running(make_app(tmp_path, SlowUpstream(fake, gate))) as client:
        response = await client.get(f"/v2/library/app/blobs/{sha256(BLOB)}", headers={"Range": "bytes=5-104"})
        assert response.status_code == 206
        assert response.content == BLOB[5:105]
        assert response.headers["content-range"] == f"bytes 5-104/{len(BLOB)}"
        # Answered from the committed blob: it is in the cache already, with no partial file beside it.
        cached = [p for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()]
        assert [p.name for p in cached] == [sha256(BLOB).removeprefix("sha256:")]


async def test_relay_answers_a_range_short_of_the_end_with_the_whole_verified_blob(
    tmp_path: Path, fake: FakeRegistry
) -> None:
    async with running(make_app(tmp_path, fake, root=unusable_root(tmp_path))) as client:
        response = await client.get(f"/v2/library/app/blobs/{sha256(BLOB)}", headers={"Range": "bytes=10-19"})
    assert response.status_code == 200
    assert "content-range" not in response.headers
    assert response.content == BLOB


async def test_disk_full_during_a_fill_answers_a_short_range_with_the_whole_blob(
    tmp_path: Path, fake: FakeRegistry, disk_full_after_256k: None
) -> None:
    gate = Gate()
    gate.open.set()
    async with running(make_app(tmp_path, SlowUpstream(fake, gate))) as client:
        response = await client.get(f"/v2/library/app/blobs/{sha256(BLOB)}", headers={"Range": "bytes=0-99"})
    assert response.status_code == 200
    assert response.content == BLOB


async def test_a_cache_that_fails_to_read_a_manifest_is_a_miss_not_a_500(
    tmp_path: Path, fake: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate()
    gate.open.set()
    root = tmp_path / "cache"
    async with running(make_app(tmp_path, SlowUpstream(fake, gate), root=root)) as client:
        assert (await client.get("/v2/library/app/manifests/1")).status_code == 200

    async def unreadable(self: FilesystemBlobStore, digest: object, max_size: int) -> bytes | None:
        raise StorageError("the bucket is out of reach")

    monkeypatch.setattr(FilesystemBlobStore, "get", unreadable)
    before = fake.count("GET", "/manifests/")
    # A new process (nothing in memory): the cached manifest cannot be read, so the upstream answers.
    async with running(make_app(tmp_path, SlowUpstream(fake, gate), root=root, tag_ttl=0)) as client:
        response = await client.get("/v2/library/app/manifests/1")
    assert response.status_code == 200
    assert fake.count("GET", "/manifests/") == before + 1
