"""``[[prefetch]]``: warming through the services, one HEAD per check, pins that follow the tag and the config,
failures that are warnings, one process of several, and prefetches that are not counted as pulls."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from proxy.app import create_app, upstream_registry
from proxy.config import PrefetchSettings, Settings, StorageSettings, UpstreamSettings
from proxy.lifecycle.leader import ProcessLock
from proxy.lifecycle.prefetch import PREFETCH_LOCK, Prefetcher, targets
from proxy.lifecycle.pulls import UncountedPulls
from proxy.lifecycle.service import Lifecycle
from proxy.lifecycle.shared import Election
from proxy.media_types import Accept
from proxy.pullthrough.blobs import BlobService
from proxy.pullthrough.manifests import ManifestService
from proxy.routing import Origin, Router
from storage.accounting import AccountedBlobStore
from storage.blobs import FilesystemBlobStore
from storage.digest import Digest
from storage.index import FilesystemIndex
from storage.inventory import Inventory, Pin
from storage.paths import INVENTORY, blob_path
from tests.unit.fakes import FAKE_REDIRECT_HOSTS, FAKE_TOKEN_REALMS, OCI_INDEX, OCI_MANIFEST, REGISTRY, FakeRegistry

UPSTREAM = UpstreamSettings(
    registry="docker.io", url=REGISTRY, redirect_hosts=FAKE_REDIRECT_HOSTS, token_realms=FAKE_TOKEN_REALMS
)


def push_image(fake: FakeRegistry, repository: str, tag: str | None, name: str, arch: str = "amd64") -> tuple[str, str]:
    """An image of one config and one layer; (manifest digest, layer digest)."""
    layer = fake.add_blob(f"layer of {name}".encode() * 100)
    config_data = json.dumps({"architecture": arch, "os": "linux", "name": name}).encode()
    config = fake.add_blob(config_data)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config,
                "size": len(config_data),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": len(fake.blobs[layer])}
            ],
        }  # fmt: skip
    ).encode()
    return fake.add_manifest(repository, tag, OCI_MANIFEST, manifest), layer


class RecordingPins:
    """The lifecycle's pins, recording what each pin call said the pin keeps; ``on_pin`` runs at each call."""

    def __init__(self, inner: Lifecycle) -> None:
        self.inner = inner
        self.calls: list[tuple[str, set[str]]] = []
        self.on_pin: Callable[[], None] = lambda: None

    async def pin(self, registry: str, repository: str, reference: str, content: Collection[Digest] = ()) -> None:
        self.calls.append((f"{registry}/{repository}:{reference}", {str(digest) for digest in content}))
        self.on_pin()
        await self.inner.pin(registry, repository, reference, content)

    async def unpin(self, registry: str, repository: str, reference: str) -> bool:
        return await self.inner.unpin(registry, repository, reference)

    async def pins(self) -> list[Pin]:
        return await self.inner.pins()


@dataclass
class Parts:
    root: Path
    lifecycle: Lifecycle
    prefetcher: Prefetcher
    manifests: ManifestService
    origin: Origin
    pins: RecordingPins

    async def inventory(self, read: Callable[[Inventory], object]) -> object:
        await self.lifecycle.settle()
        inventory = Inventory.open(self.root / INVENTORY, create=False)
        try:
            return read(inventory)
        finally:
            inventory.close()


@asynccontextmanager
async def proxy(
    root: Path, fake: FakeRegistry, *entries: PrefetchSettings, election: Election | None = None
) -> AsyncIterator[Parts]:
    """The services as proxy.app wires them, and a prefetcher over them that the test drives by hand."""
    store, index = FilesystemBlobStore(root), FilesystemIndex(root)
    lifecycle = Lifecycle(root, store, index, None, flush_interval=0.05)
    await lifecycle.start()
    remote = upstream_registry(UPSTREAM, httpx.MockTransport(fake))
    origin = Origin("docker.io", remote, UPSTREAM.tag_ttl)
    cache, pulls = AccountedBlobStore(store, lifecycle.ledger), UncountedPulls(lifecycle.ledger)
    manifests, blobs = ManifestService(cache, index, images=pulls), BlobService(cache, index)
    pins = RecordingPins(lifecycle)
    prefetcher = Prefetcher(targets(entries), Router([origin]), manifests, blobs, pins, pulls,
                            election or ProcessLock(root / PREFETCH_LOCK))  # fmt: skip
    try:
        yield Parts(root, lifecycle, prefetcher, manifests, origin, pins)
    finally:
        await prefetcher.stop()
        await lifecycle.stop()
        await remote.aclose()


def cached(root: Path, digest: str) -> bool:
    return (root / blob_path(Digest.parse(digest))).exists()


def upstream_requests(fake: FakeRegistry) -> list[str]:
    return sorted(key for key, n in fake.hits.items() for _ in range(n))


async def test_a_check_caches_the_image_and_the_next_one_is_a_single_head(tmp_path: Path) -> None:
    fake = FakeRegistry()
    digest, layer = push_image(fake, "hashicorp/vault", "1.15", "vault")
    async with proxy(tmp_path, fake, PrefetchSettings("hashicorp/vault:1.15")) as parts:
        assert await parts.prefetcher.check(0)
        assert cached(tmp_path, digest) and cached(tmp_path, layer)
        assert fake.count("GET", "/manifests/1.15") == 1
        before = upstream_requests(fake)
        assert await parts.prefetcher.check(0)
        # Whatever the upstream's tag_ttl (5 minutes here), a check asks; and asks only with a HEAD.
        new = list(upstream_requests(fake))
        for key in before:
            new.remove(key)
        assert new == ["HEAD /v2/hashicorp/vault/manifests/1.15"]


async def test_a_moved_tag_is_fetched_and_the_pin_follows_it(tmp_path: Path) -> None:
    fake = FakeRegistry()
    old, old_layer = push_image(fake, "library/app", "1", "old")
    async with proxy(tmp_path, fake, PrefetchSettings("app:1", pin=True)) as parts:
        await parts.prefetcher.reconcile_pins()
        assert await parts.prefetcher.check(0)
        pinned = await parts.inventory(Inventory.pinned_digests)
        assert isinstance(pinned, set) and {old, old_layer} <= pinned
        new, new_layer = push_image(fake, "library/app", "1", "new")
        assert await parts.prefetcher.check(0)
        assert fake.count("HEAD", "/manifests/1") == 1 and fake.count("GET", "/manifests/1") == 2
        assert cached(tmp_path, new_layer)
        pinned = await parts.inventory(Inventory.pinned_digests)
        assert isinstance(pinned, set) and {new, new_layer} <= pinned and not {old, old_layer} & pinned


async def test_a_pinned_check_pins_every_digest_its_walk_went_through(tmp_path: Path) -> None:
    # Replicas whose inventories do not know the image keep what the walk says, not what their inventory says.
    fake = FakeRegistry()
    digest, layer = push_image(fake, "library/app", "1", "app")
    async with proxy(tmp_path, fake, PrefetchSettings("app:1", pin=True), PrefetchSettings("other:1")) as parts:
        push_image(fake, "library/other", "1", "other")
        assert await parts.prefetcher.check(0) and await parts.prefetcher.check(1)
        [(reference, content)] = parts.pins.calls  # the entry without pin = true pins nothing
        assert reference == "docker.io/library/app:1"
        assert {digest, layer} < content and len(content) == 3  # and the config


class LosableElection:
    def __init__(self) -> None:
        self.won = 0
        self.held = False

    async def acquire(self) -> bool:
        self.won += 1
        self.held = True
        return True

    async def release(self) -> None:
        self.held = False


async def test_a_process_that_lost_the_election_stops_and_stands_again(tmp_path: Path) -> None:
    fake = FakeRegistry()
    push_image(fake, "library/app", "1", "app")
    election = LosableElection()
    async with proxy(tmp_path, fake, PrefetchSettings("app:1", pin=True), election=election) as parts:

        def lose() -> None:
            if len(parts.pins.calls) == 2:  # the check's pin, after the election's
                election.held = False  # as when another replica took the lease over during a slow check

        parts.pins.on_pin = lose
        parts.prefetcher.start()
        deadline = time.monotonic() + 20
        for _ in range(400):
            if election.won >= 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert election.won == 2 and election.held
        # One check, then nothing until its refresh: the new term only brought the pins in line again.
        assert fake.count("GET", "/manifests/1") == 1
        assert [reference for reference, _ in parts.pins.calls] == ["docker.io/library/app:1"] * 3


async def test_only_the_configured_platforms_of_an_index(tmp_path: Path) -> None:
    fake = FakeRegistry()
    amd64, amd64_layer = push_image(fake, "library/multi", None, "amd64")
    arm64, arm64_layer = push_image(fake, "library/multi", None, "arm64", arch="arm64")
    entries = [
        {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(fake.manifests[("library/multi", digest)][1]),
         "platform": {"os": "linux", "architecture": arch}}
        for digest, arch in ((amd64, "amd64"), (arm64, "arm64"))
    ]  # fmt: skip
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    fake.add_manifest("library/multi", "1", OCI_INDEX, index)
    async with proxy(tmp_path, fake, PrefetchSettings("multi:1", platforms=("linux/arm64",))) as parts:
        assert await parts.prefetcher.check(0)
        assert cached(tmp_path, arm64) and cached(tmp_path, arm64_layer)
        assert not cached(tmp_path, amd64) and not cached(tmp_path, amd64_layer)
        assert fake.count("GET", amd64_layer) == 0


async def test_failures_are_warnings_naming_the_image_and_a_later_check_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeRegistry()
    async with proxy(tmp_path, fake, PrefetchSettings("hashicorp/vault:1.15")) as parts:
        with caplog.at_level(logging.WARNING, logger="proxy.lifecycle.prefetch"):
            assert not await parts.prefetcher.check(0)  # no such tag yet
            fake.fail = 503
            assert not await parts.prefetcher.check(0)  # the upstream is down
        warnings = [r.getMessage() for r in caplog.records if r.name == "proxy.lifecycle.prefetch"]
        assert len(warnings) == 2 and all("docker.io/hashicorp/vault:1.15" in w for w in warnings)
        assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "proxy.lifecycle.prefetch")
        fake.fail = None
        _, layer = push_image(fake, "hashicorp/vault", "1.15", "vault")
        assert await parts.prefetcher.check(0)
        assert cached(tmp_path, layer)


async def test_pins_follow_the_configuration(tmp_path: Path) -> None:
    fake = FakeRegistry()
    entries = (PrefetchSettings("app:1", pin=True), PrefetchSettings("other:2"))
    async with proxy(tmp_path, fake, *entries) as parts:
        await parts.lifecycle.pin("docker.io", "library/removed", "1")  # from an entry since removed
        await parts.lifecycle.pin("docker.io", "library/other", "2")  # from before pin = false
        await parts.prefetcher.reconcile_pins()
        assert [(p.repository, p.reference) for p in await parts.lifecycle.pins()] == [("library/app", "1")]


async def test_prefetches_are_not_counted_as_pulls(tmp_path: Path) -> None:
    fake = FakeRegistry()
    push_image(fake, "library/app", "1", "app")
    async with proxy(tmp_path, fake, PrefetchSettings("app:1")) as parts:
        assert await parts.prefetcher.check(0)
        rows = await parts.inventory(Inventory.images)
        assert isinstance(rows, list) and [(r.tag, r.pull_count) for r in rows] == [("1", 0)]
        await parts.manifests.by_tag(parts.origin, "library/app", "1", Accept.every_type())  # a client's pull
        rows = await parts.inventory(Inventory.images)
        assert isinstance(rows, list) and [(r.tag, r.pull_count) for r in rows] == [("1", 1)]


async def test_one_process_of_several_holds_the_prefetch_lock(tmp_path: Path) -> None:
    # Two opens are two open file descriptions, which flock tells apart as it does two worker processes.
    first, second = ProcessLock(tmp_path / PREFETCH_LOCK), ProcessLock(tmp_path / PREFETCH_LOCK)
    assert await first.acquire() and first.held
    assert not await second.acquire() and not second.held
    await first.release()
    assert await second.acquire()
    await second.release()


def test_the_server_prefetches_after_start_up_without_any_pull(tmp_path: Path) -> None:
    fake = FakeRegistry()
    digest, layer = push_image(fake, "hashicorp/vault", "1.15", "vault")
    settings = Settings(
        storage=StorageSettings(root=tmp_path / "cache"),
        upstreams=(UPSTREAM,),
        prefetch=(PrefetchSettings("hashicorp/vault:1.15", pin=True),),
    )
    with TestClient(create_app(settings, transport=httpx.MockTransport(fake))) as client:
        deadline = time.monotonic() + 20
        for _ in range(400):
            if cached(tmp_path / "cache", layer) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert cached(tmp_path / "cache", digest) and cached(tmp_path / "cache", layer)
        before = dict(fake.hits)
        response = client.get("/v2/hashicorp/vault/manifests/1.15", headers={"Accept": OCI_MANIFEST})
        assert response.status_code == 200 and response.headers["docker-content-digest"] == digest
        assert client.get(f"/v2/hashicorp/vault/blobs/{layer}").headers["x-cache"] == "HIT"
        assert dict(fake.hits) == before  # served from what the prefetch cached
