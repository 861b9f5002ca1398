"""Manifests and tag answers from memory (proxy.pullthrough.memo): bounded, per repository, within the tag's TTL,
and with the side effects of a hit kept (pull counting, reads for the cache budget)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from proxy.app import upstream_registry
from proxy.config import UpstreamSettings
from proxy.errors import RegistryError
from proxy.media_types import Accept
from proxy.pullthrough.manifests import Manifest, ManifestService
from proxy.pullthrough.memo import ENTRY_OVERHEAD, ManifestMemo
from proxy.routing import Origin
from storage.blobs import FilesystemBlobStore
from storage.digest import Digest
from storage.index import FilesystemIndex
from storage.interfaces import ManifestRecord, TagRecord
from storage.inventory import Inventory
from storage.paths import INVENTORY
from tests.unit.conftest import ClientFactory
from tests.unit.fakes import FAKE_REDIRECT_HOSTS, FAKE_TOKEN_REALMS, OCI_MANIFEST, REGISTRY, FakeRegistry

TTL = 300.0
UPSTREAM = UpstreamSettings(
    registry="docker.io", url=REGISTRY, tag_ttl=TTL, redirect_hosts=FAKE_REDIRECT_HOSTS, token_realms=FAKE_TOKEN_REALMS
)
EVERY_TYPE = Accept.every_type()


def manifest(n: int, size: int = 100) -> Manifest:
    body = (b"%d " % n).ljust(size, b"x")
    return Manifest(Digest("sha256", hashlib.sha256(body).hexdigest()), OCI_MANIFEST, body, cached=True)


def test_the_memo_is_bounded_by_bytes_and_drops_the_least_recently_used_first() -> None:
    entry = 1000 + ENTRY_OVERHEAD
    memo = ManifestMemo(max_bytes=10 * entry)
    kept = [manifest(n, 1000) for n in range(10)]
    for m in kept:
        memo.remember_manifest("docker.io", "library/a", m)
    assert memo.size == 10 * entry
    assert memo.manifest("docker.io", "library/a", kept[0].digest) is kept[0]  # now the most recently used
    memo.remember_manifest("docker.io", "library/a", manifest(10, 1000))
    assert memo.size <= 10 * entry
    assert memo.manifest("docker.io", "library/a", kept[1].digest) is None
    assert memo.manifest("docker.io", "library/a", kept[0].digest) is kept[0]
    # Tag answers count too: many of them cannot grow the memo past its bound either.
    for n in range(100):
        memo.remember_tag("docker.io", "library/a", f"t{n}", TagRecord(kept[0].digest, OCI_MANIFEST, 1000, 0.0))
    assert memo.size <= 10 * entry
    assert len(memo) == 10 * entry // ENTRY_OVERHEAD


def test_the_memo_leaves_a_large_manifest_to_the_disk() -> None:
    memo = ManifestMemo(max_bytes=64 * 1024)
    large, small = manifest(1, 8 * 1024), manifest(2, 1024)
    memo.remember_manifest("docker.io", "library/a", large)
    memo.remember_manifest("docker.io", "library/a", small)
    assert memo.manifest("docker.io", "library/a", large.digest) is None
    assert memo.manifest("docker.io", "library/a", small.digest) is small


def test_the_memo_finds_a_manifest_only_under_the_repository_and_registry_it_was_remembered_for() -> None:
    memo = ManifestMemo()
    m = manifest(1)
    memo.remember_manifest("docker.io", "library/a", m)
    memo.remember_tag("docker.io", "library/a", "1", TagRecord(m.digest, OCI_MANIFEST, 100, 0.0))
    assert memo.manifest("docker.io", "library/a", m.digest) is m
    assert memo.manifest("docker.io", "library/b", m.digest) is None
    assert memo.manifest("ghcr.io", "library/a", m.digest) is None
    assert memo.tag("docker.io", "library/b", "1") is None
    assert memo.tag("docker.io", "library/a", "1") is not None
    # A tag and a manifest never answer for each other.
    assert memo.tag("docker.io", "library/a", str(m.digest)) is None


class CountingIndex(FilesystemIndex):
    """The filesystem index, counting the reads a hit would make."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads = 0

    async def get_manifest(self, registry: str, repository: str, digest: Digest) -> ManifestRecord | None:
        self.reads += 1
        return await super().get_manifest(registry, repository, digest)

    async def get_tag(self, registry: str, repository: str, tag: str) -> TagRecord | None:
        self.reads += 1
        return await super().get_tag(registry, repository, tag)


@dataclass
class Recorder:
    """An ImageRecorder that keeps what it is told; also the service's ``accessed`` callback."""

    pulls: list[tuple[str, str, str]] = field(default_factory=list)
    reads: list[Digest] = field(default_factory=list)

    def manifest_cached(self, registry: str, repository: str, digest: Digest, media_type: str, body: bytes) -> None:
        pass

    def tag_cached(self, registry: str, repository: str, tag: str, record: TagRecord) -> None:
        pass

    def tag_pulled(self, registry: str, repository: str, tag: str) -> None:
        self.pulls.append((registry, repository, tag))

    def accessed(self, digest: Digest) -> None:
        self.reads.append(digest)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Parts:
    service: ManifestService
    origin: Origin
    index: CountingIndex
    recorder: Recorder
    clock: Clock
    fake: FakeRegistry
    digest: Digest


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    fake = FakeRegistry()
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": []}).encode()
    digest = Digest.parse(fake.add_manifest("library/a", "1", OCI_MANIFEST, body))
    index, recorder, clock = CountingIndex(tmp_path), Recorder(), Clock()
    service = ManifestService(
        FilesystemBlobStore(tmp_path), index, clock, images=recorder, memo=ManifestMemo(), accessed=recorder.accessed
    )
    remote = upstream_registry(UPSTREAM, httpx.MockTransport(fake))
    try:
        yield Parts(service, Origin("docker.io", remote, TTL), index, recorder, clock, fake, digest)
    finally:
        await remote.aclose()


async def test_hits_of_a_fresh_tag_and_of_its_digest_read_nothing_from_disk_or_upstream(parts: Parts) -> None:
    service, origin = parts.service, parts.origin
    first = await service.by_tag(origin, "library/a", "1", EVERY_TYPE)
    assert not first.cached
    reads, upstream = parts.index.reads, sum(parts.fake.hits.values())
    for _ in range(3):
        by_tag = await service.by_tag(origin, "library/a", "1", EVERY_TYPE)
        by_digest = await service.by_digest(origin, "library/a", parts.digest, EVERY_TYPE)
        assert by_tag.body == by_digest.body == first.body
        assert by_tag.cached and by_digest.cached
    assert (parts.index.reads, sum(parts.fake.hits.values())) == (reads, upstream)


async def test_hits_from_memory_still_count_pulls_and_reads(parts: Parts) -> None:
    service, origin = parts.service, parts.origin
    for _ in range(4):
        await service.by_tag(origin, "library/a", "1", EVERY_TYPE)
    await service.by_digest(origin, "library/a", parts.digest, EVERY_TYPE)
    # Every client's pull of the tag is counted; every hit is a read of the manifest for the budget's LRU.
    assert parts.recorder.pulls == [("docker.io", "library/a", "1")] * 4
    assert parts.recorder.reads == [parts.digest] * 4


async def test_a_tag_is_asked_upstream_again_once_its_answer_in_memory_expires(parts: Parts) -> None:
    service, origin, fake = parts.service, parts.origin, parts.fake
    await service.by_tag(origin, "library/a", "1", EVERY_TYPE)
    parts.clock.now += TTL - 1
    await service.by_tag(origin, "library/a", "1", EVERY_TYPE)
    assert fake.count("HEAD") == 0
    parts.clock.now += 1
    await service.by_tag(origin, "library/a", "1", EVERY_TYPE)
    assert fake.count("HEAD") == 1  # revalidated, as from disk: one HEAD, not a GET
    assert fake.count("GET", "/manifests/") == 1
    # The confirmed answer is fresh again, in memory.
    reads = parts.index.reads
    await service.by_tag(origin, "library/a", "1", EVERY_TYPE)
    assert (fake.count("HEAD"), parts.index.reads) == (1, reads)


async def test_another_repository_is_not_answered_from_memory(parts: Parts) -> None:
    service, origin, fake = parts.service, parts.origin, parts.fake
    await service.by_tag(origin, "library/a", "1", EVERY_TYPE)
    # library/b does not have the manifest upstream: its bytes in memory must not make it look as if it had.
    with pytest.raises(RegistryError) as raised:
        await service.by_digest(origin, "library/b", parts.digest, EVERY_TYPE)
    assert raised.value.status == 404
    assert fake.count("HEAD", "/v2/library/b/manifests/") == 1


def test_a_client_pulling_a_cached_tag_is_counted_and_the_manifest_read(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    client = make_client()
    for _ in range(5):
        response = client.get("/v2/library/alpine/manifests/3.20")
        assert response.status_code == 200
    assert response.headers["x-cache"] == "HIT"
    digest = response.headers["docker-content-digest"]
    client.__exit__(None, None, None)  # the lifecycle writes what the ledger holds as it stops
    inventory = Inventory.open(tmp_path / "cache" / INVENTORY, create=False)
    try:
        [image] = [row for row in inventory.images() if row.tag == "3.20"]
        blob = inventory.blob(digest)
    finally:
        inventory.close()
    assert image.pull_count == 5
    assert blob is not None and blob.access_count == 4  # the first pull fetched it; four hits read it
