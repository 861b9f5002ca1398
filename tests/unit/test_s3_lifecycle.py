"""Replicas' lifecycles on one bucket of a real S3 server (SeaweedFS on loopback): reads, pins and eviction turns
shared through the bucket, each replica with an inventory of its own."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from proxy.app import create_app
from proxy.config import S3StorageSettings, Settings, StorageSettings, UpstreamSettings
from proxy.lifecycle.budget import Budget
from proxy.lifecycle.service import Lifecycle
from storage.accounting import AccountedBlobStore
from storage.digest import Digest
from storage.index import FilesystemIndex
from storage.interfaces import TagRecord
from storage.inventory import PublishedPin
from storage.s3 import S3BlobStore, S3Settings
from storage.s3.layout import blob_key
from storage.s3.lifecycle import ACCESS, EVICT_LEASE, PREFETCH_LEASE, BucketLifecycle, pin_key
from storage.s3.objects import ObjectClient
from tests.harness.seaweed import SeaweedS3
from tests.unit.fakes import FAKE_REDIRECT_HOSTS, FAKE_TOKEN_REALMS, REGISTRY, FakeRegistry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
HEARTBEAT = 0.5  # leases are stale after 3 beats and a second: 2.5 s
SIZE = 300


class Clock:
    """The time, but strictly increasing, so that the least recently used blob is never a tie."""

    def __init__(self) -> None:
        self._last = 0.0

    def __call__(self) -> float:
        self._last = max(time.time(), self._last + 0.001)
        return self._last


@dataclass
class Replica:
    lifecycle: Lifecycle
    store: AccountedBlobStore  # as the services use it: reads and writes reach the ledger
    shared: BucketLifecycle


@pytest.fixture(scope="module")
def bucket() -> str:
    return "lifecycle-" + secrets.token_hex(6)


@pytest.fixture
def settings(seaweed: SeaweedS3, bucket: str) -> S3Settings:
    prefix = f"t-{secrets.token_hex(4)}/"
    return S3Settings(seaweed.endpoint, bucket, seaweed.region, seaweed.access_key, seaweed.secret_key, prefix)


@pytest.fixture
async def objects(settings: S3Settings) -> AsyncIterator[ObjectClient]:
    async with ObjectClient(settings) as client:
        await client.ensure_bucket()
        yield client


@asynccontextmanager
async def replica(settings: S3Settings, root: Path, budget: Budget | None) -> AsyncIterator[Replica]:
    """One replica's blob store and lifecycle as proxy.app wires them; it exchanges with the bucket when a test
    calls ``settle()`` (and lists the bucket each time), not on its own. Its leases are not renewed within a test:
    a release that races a renewal in flight can leave a lease behind until it is stale (storage.s3.leases), which
    would make the eviction turns depend on timing."""
    root.mkdir(exist_ok=True)
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(S3BlobStore.connect(settings, root, heartbeat=HEARTBEAT))
        shared = await stack.enter_async_context(BucketLifecycle.connect(settings, root, heartbeat=60.0))
        lifecycle = Lifecycle(
            root,
            store,
            FilesystemIndex(root),
            budget,
            clock=Clock(),
            flush_interval=0.05,
            shared=shared,
            sync_interval=3600.0,
            rescan_interval=0.0,
        )
        await lifecycle.start()
        stack.push_async_callback(lifecycle.stop)
        await lifecycle.settle()
        yield Replica(lifecycle, AccountedBlobStore(store, lifecycle.ledger), shared)


def blob(name: str, size: int = SIZE) -> tuple[Digest, bytes]:
    data = name.encode().ljust(size, b".")
    return Digest.of(data), data


async def in_bucket(objects: ObjectClient, *digests: Digest) -> list[bool]:
    prefix = objects.settings.prefix
    return [await objects.head(blob_key(prefix, digest)) is not None for digest in digests]


async def put(replica: Replica, *blobs: tuple[Digest, bytes]) -> None:
    for digest, data in blobs:
        await replica.store.put(digest, data)


async def keys(objects: ObjectClient, under: str) -> list[str]:
    return sorted([key async for key, _, _ in objects.list_objects(objects.settings.prefix + under)])


@pytest.mark.parametrize("published", [True, False])
async def test_reads_on_one_replica_protect_a_blob_from_the_others_eviction(
    settings: S3Settings, objects: ObjectClient, tmp_path: Path, published: bool
) -> None:
    budget = Budget(1000, 700)
    async with replica(settings, tmp_path / "a", budget) as a, replica(settings, tmp_path / "b", budget) as b:
        x, y, z, w = blob("x"), blob("y"), blob("z"), blob("w")
        await put(a, x)
        # B learns of A's blobs from the listing, whose times have whole seconds: x is written in an earlier one.
        await asyncio.sleep(1.1)
        await put(a, y, z)
        assert await a.store.get(x[0], SIZE) == x[1]  # only A has read x
        if published:
            await a.lifecycle.settle()
        await put(b, w)
        await b.lifecycle.settle()  # B lists 1200 bytes: past the budget, it evicts down to 700
        kept = await in_bucket(objects, x[0], y[0], z[0], w[0])
        if published:
            assert kept == [True, False, False, True]
        else:  # the control: without A's reads, x is the oldest blob B knows of
            assert kept[0] is False and kept[3] is True and sum(kept) == 2


async def test_a_pin_written_by_one_replica_is_kept_by_the_others_eviction(
    settings: S3Settings, objects: ObjectClient, tmp_path: Path
) -> None:
    async with replica(settings, tmp_path / "a", None) as a, replica(settings, tmp_path / "b", Budget(1000, 600)) as b:
        (config, config_data), (layer, layer_data), lone = blob("config"), blob("layer"), blob("lone")
        manifest = json.dumps(
            {
                "mediaType": OCI_MANIFEST,
                "config": {"digest": str(config), "size": SIZE},
                "layers": [{"digest": str(layer), "size": SIZE}],
            }
        ).encode()
        await put(a, (config, config_data), (layer, layer_data), lone)
        # A knows the image (B's inventory never will): its pin carries what the tag keeps ...
        a.lifecycle.ledger.manifest_cached("docker.io", "library/app", Digest.of(manifest), OCI_MANIFEST, manifest)
        record = TagRecord(Digest.of(manifest), OCI_MANIFEST, len(manifest), time.time())
        a.lifecycle.ledger.tag_cached("docker.io", "library/app", "1", record)
        await a.lifecycle.settle()
        await a.lifecycle.pin("docker.io", "library/app", "1")
        # ... and what a prefetch walk said a digest pin keeps, which not even A's inventory knows.
        await a.lifecycle.pin("docker.io", "library/lone", str(Digest.of(b"lone-manifest")), content=[lone[0]])
        assert [pin.reference for pin in await b.lifecycle.pins()] == ["1", str(Digest.of(b"lone-manifest"))]

        others = [blob(f"other-{n}") for n in range(4)]
        await put(b, *others)
        await b.lifecycle.settle()
        assert await in_bucket(objects, config, layer, lone[0]) == [True, True, True]
        # 900 bytes pinned, over the low watermark: the others all go, and nothing pinned does.
        assert await in_bucket(objects, *(digest for digest, _ in others)) == [False] * 4

        # Unpinned (by the replica that prefetches, say), the image is what goes next: 1200 bytes, down to 600.
        assert await a.lifecycle.unpin("docker.io", "library/app", "1")
        assert [pin.reference for pin in await b.lifecycle.pins()] == [str(Digest.of(b"lone-manifest"))]
        await put(b, blob("another"))
        await b.lifecycle.settle()
        assert await in_bucket(objects, config, layer, lone[0]) == [False, False, True]


async def test_one_replica_evicts_at_a_time(settings: S3Settings, objects: ObjectClient, tmp_path: Path) -> None:
    budget = Budget(1000, 900)
    async with replica(settings, tmp_path / "a", budget) as a, replica(settings, tmp_path / "b", budget) as b:
        entered, everyone_in = 0, asyncio.Event()

        async def turn(shared: BucketLifecycle) -> bool:
            nonlocal entered
            async with shared.eviction_turn() as mine:
                entered += 1
                if entered == 4:
                    everyone_in.set()
                async with asyncio.timeout(30):
                    await everyone_in.wait()  # every turn is asked for while the others are still held
                return mine

        assert sorted(await asyncio.gather(*(turn(s) for s in (a.shared, b.shared, a.shared, b.shared)))) == [
            False,
            False,
            False,
            True,
        ]

        blobs = [blob(f"b-{n}") for n in range(5)]
        async with a.shared.eviction_turn() as mine:
            assert mine
            await put(b, *blobs)
            await b.lifecycle.settle()  # past the budget, but A's turn lasts
            assert await in_bucket(objects, *(digest for digest, _ in blobs)) == [True] * 5
        await b.lifecycle.settle()
        assert sum(await in_bucket(objects, *(digest for digest, _ in blobs))) == 3
        assert await keys(objects, EVICT_LEASE) == []  # each turn gives its lease back


async def test_a_turn_left_by_a_replica_that_died_is_taken_over(
    settings: S3Settings, objects: ObjectClient, tmp_path: Path
) -> None:
    # What a replica killed in its eviction pass leaves: a lease that nobody renews any more.
    key = settings.prefix + EVICT_LEASE
    await objects.put(key, json.dumps({"holder": "gone", "beat": 1, "started": False, "size": None}).encode())
    async with BucketLifecycle.connect(settings, tmp_path, heartbeat=HEARTBEAT) as shared:
        async with shared.eviction_turn() as mine:
            assert not mine  # fresh: its holder may be busy evicting
        deadline = time.monotonic() + 20
        for _ in range(100):
            async with shared.eviction_turn() as mine:
                if mine or time.monotonic() > deadline:
                    break
            await asyncio.sleep(0.2)
        assert mine


async def test_one_access_object_per_replica_whatever_the_traffic_and_processes(
    settings: S3Settings, objects: ObjectClient, tmp_path: Path
) -> None:
    # Replica A runs two worker processes on its root (which share its inventory), B one.
    async with (
        replica(settings, tmp_path / "a", None) as a,
        replica(settings, tmp_path / "a", None) as a_worker,
        replica(settings, tmp_path / "b", None) as b,
    ):
        assert a.shared.replica == a_worker.shared.replica != b.shared.replica
        stored = [blob(f"read-{n}") for n in range(6)]
        await put(a, *stored)
        for round_ in range(5):
            for reader in (a, a_worker, b):
                for digest, _ in stored[round_ : round_ + 2]:
                    assert await reader.store.get(digest, SIZE) is not None
                await reader.lifecycle.settle()
        only_by_the_worker, data = blob("read by one worker")
        await put(b, (only_by_the_worker, data))
        await a.lifecycle.settle()  # A lists it
        before = time.time()
        assert await a_worker.store.get(only_by_the_worker, SIZE) == data
        await a_worker.lifecycle.settle()  # into A's inventory; A's other process exchanges for both
        await a.lifecycle.settle()
        assert await keys(objects, ACCESS) == sorted(
            settings.prefix + ACCESS + name for name in (a.shared.replica, b.shared.replica)
        )
        assert (await b.shared.read_accesses())[str(only_by_the_worker)] >= before


async def test_reads_leave_the_window_and_idle_objects_are_removed(
    settings: S3Settings, objects: ObjectClient, tmp_path: Path
) -> None:
    now = 1_000_000.0
    async with (
        BucketLifecycle.connect(settings, tmp_path / "gone", clock=lambda: now) as gone,
        BucketLifecycle.connect(settings, tmp_path / "reader", window=1.0) as reader,
    ):
        old, new = str(blob("old")[0]), str(blob("new")[0])
        await gone.publish_accesses({old: now - 3601, new: now - 5})
        assert await reader.read_accesses() == {new: now - 5}  # the old read had left the hour's window
        # Its replica stopped: once its object is older than the reader's window, the reader removes it.
        deadline = time.monotonic() + 20
        for _ in range(100):
            if not await keys(objects, ACCESS) or time.monotonic() > deadline:
                break
            await reader.read_accesses()
            await asyncio.sleep(0.2)
        assert await keys(objects, ACCESS) == []


async def test_pins_expire_and_a_renewal_never_revives_another_replicas_change(
    settings: S3Settings, objects: ObjectClient, tmp_path: Path
) -> None:
    async with (
        BucketLifecycle.connect(settings, tmp_path / "a") as a,
        BucketLifecycle.connect(settings, tmp_path / "b") as b,
    ):
        now = time.time()
        pin = PublishedPin("docker.io", "library/app", "1", frozenset({str(blob("x")[0])}), now, now + 3600)
        assert await a.put_pin(pin) and await a.put_pin(pin, renew=True)
        assert await b.read_pins() == [pin]
        assert await b.put_pin(pin)  # B won the prefetch election: the pin is B's now
        assert not await a.put_pin(pin, renew=True)
        await b.delete_pin(*pin.key)
        assert not await b.put_pin(pin, renew=True)  # removed: a renewal does not bring it back
        assert await a.read_pins() == []

        expired = PublishedPin("docker.io", "library/old", "1", frozenset(), now - 7200, now - 1)
        assert await a.put_pin(expired)
        assert await b.read_pins() == []
        assert await objects.head(pin_key(settings.prefix, *expired.key)) is None  # its reader removed it


async def test_one_replica_prefetches_until_it_lets_go(settings: S3Settings, tmp_path: Path) -> None:
    # No renewal within the test (see replica()): the release is never raced.
    async with (
        BucketLifecycle.connect(settings, tmp_path / "a", heartbeat=60.0) as a,
        BucketLifecycle.connect(settings, tmp_path / "b", heartbeat=60.0) as b,
    ):
        first, second = a.prefetch_election(), b.prefetch_election()
        assert await first.acquire() and first.held
        assert await first.acquire()  # still its own
        assert not await second.acquire() and not second.held
        await first.release()
        assert await second.acquire() and second.held
        await second.release()


async def test_a_prefetching_replica_keeps_its_lease_and_learns_when_it_lost_it(
    settings: S3Settings, objects: ObjectClient, tmp_path: Path
) -> None:
    async with (
        BucketLifecycle.connect(settings, tmp_path / "a", heartbeat=HEARTBEAT) as a,
        BucketLifecycle.connect(settings, tmp_path / "b", heartbeat=HEARTBEAT) as b,
    ):
        first, second = a.prefetch_election(), b.prefetch_election()
        assert await first.acquire()
        await asyncio.sleep(4 * HEARTBEAT + 2)  # past the staleness of a lease nobody renews
        assert not await second.acquire() and first.held  # renewed meanwhile
        # Another replica, finding the lease stale, took it over: the holder sees it at its next renewal.
        await objects.put(settings.prefix + PREFETCH_LEASE, b'{"holder": "another"}')
        deadline = time.monotonic() + 20
        for _ in range(200):
            if not first.held or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert not first.held
        await first.release()


def test_the_server_on_s3_publishes_its_reads_when_it_stops(
    seaweed: SeaweedS3, settings: S3Settings, tmp_path: Path
) -> None:
    fake = FakeRegistry()
    layer = fake.add_blob(b"layer-bytes" * 100)
    s3 = S3StorageSettings(
        seaweed.endpoint, settings.bucket, seaweed.region, settings.prefix, seaweed.access_key, seaweed.secret_key
    )
    upstream = UpstreamSettings(
        registry="docker.io", url=REGISTRY, redirect_hosts=FAKE_REDIRECT_HOSTS, token_realms=FAKE_TOKEN_REALMS
    )
    app_settings = Settings(storage=StorageSettings(root=tmp_path, backend="s3", s3=s3), upstreams=(upstream,))
    with TestClient(create_app(app_settings, transport=httpx.MockTransport(fake))) as client:
        for expected in ("MISS", "HIT"):
            response = client.get(f"/v2/library/alpine/blobs/{layer}")
            assert response.status_code == 200 and response.headers["x-cache"] == expected

    async def published() -> list[dict[str, float]]:
        found = []
        async with ObjectClient(settings) as objects:
            for key in await keys(objects, ACCESS):
                got = await objects.get(key)
                assert got is not None
                found.append(json.loads(got[0])["accesses"])
        return found

    assert [list(accesses) for accesses in asyncio.run(published())] == [[layer]]
