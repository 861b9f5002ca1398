"""The lifecycle task on a real cache directory: budget, LRU order, pins, read leases, restarts."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from proxy.app import create_app
from proxy.config import Settings, StorageSettings, UpstreamSettings
from proxy.lifecycle.budget import Budget
from proxy.lifecycle.service import Lifecycle
from storage.accounting import AccountedBlobStore
from storage.blobs import FilesystemBlobStore
from storage.digest import Digest
from storage.index import FilesystemIndex
from storage.interfaces import TagRecord
from storage.inventory import Inventory
from storage.paths import INVENTORY, blob_path
from tests.unit.fakes import FAKE_REDIRECT_HOSTS, FAKE_TOKEN_REALMS, REGISTRY, FakeRegistry, sha256

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class Clock:
    """The time, but strictly increasing, so that the least recently used blob is never a tie."""

    def __init__(self) -> None:
        self._last = 0.0

    def __call__(self) -> float:
        self._last = max(time.time(), self._last + 0.001)
        return self._last


@asynccontextmanager
async def cache(root: Path, budget: Budget | None) -> AsyncIterator[tuple[Lifecycle, AccountedBlobStore]]:
    store = FilesystemBlobStore(root)
    lifecycle = Lifecycle(root, store, FilesystemIndex(root), budget, clock=Clock(), flush_interval=0.05)
    await lifecycle.start()
    try:
        await lifecycle.settle()
        yield lifecycle, AccountedBlobStore(store, lifecycle.ledger)
    finally:
        await lifecycle.stop()


def blob(name: str, size: int = 300) -> tuple[Digest, bytes]:
    data = name.encode().ljust(size, b".")
    return Digest.of(data), data


def on_disk(root: Path) -> int:
    """Bytes of every file under blobs/, partial files included: what the budget is about."""
    return sum(path.stat().st_size for path in (root / "blobs").rglob("*") if path.is_file())


def cached(root: Path, digest: Digest) -> bool:
    return (root / blob_path(digest)).exists()


async def test_the_cache_never_grows_past_its_budget(tmp_path: Path) -> None:
    async with cache(tmp_path, Budget(1000, 900)) as (_, store):
        for n in range(8):
            digest, data = blob(f"blob-{n}")
            writer = await store.create(digest)
            for offset in range(0, len(data), 100):
                # Room is made before each write lands, so the budget holds while a blob is being filled too.
                await writer.write(data[offset : offset + 100])
                assert on_disk(tmp_path) <= 1000
            await writer.commit(len(data))
            assert on_disk(tmp_path) <= 1000
        assert cached(tmp_path, blob("blob-7")[0]) and not cached(tmp_path, blob("blob-0")[0])


async def test_least_recently_used_goes_first(tmp_path: Path) -> None:
    async with cache(tmp_path, Budget(1000, 900)) as (lifecycle, store):
        (a, data_a), (b, data_b), (c, data_c) = blob("a"), blob("b"), blob("c")
        for digest, data in ((a, data_a), (b, data_b), (c, data_c)):
            await store.put(digest, data)
        assert await store.get(a, 1000) == data_a  # a is now the most recently used
        await lifecycle.settle()
        d, data_d = blob("d")
        await store.put(d, data_d)
        assert [cached(tmp_path, x) for x in (a, b, c, d)] == [True, False, True, True]


async def test_a_blob_being_read_is_kept_while_others_make_room(tmp_path: Path) -> None:
    async with cache(tmp_path, Budget(1000, 900)) as (_, store):
        (a, data_a), (b, data_b), (c, data_c), (d, data_d) = blob("a"), blob("b"), blob("c"), blob("d")
        for digest, data in ((a, data_a), (b, data_b), (c, data_c)):
            await store.put(digest, data)
        opened = await store.open(a)  # the least recently used one, held by a slow client
        assert opened is not None
        reader, size = opened
        await store.put(d, data_d)
        assert [cached(tmp_path, x) for x in (a, b, c, d)] == [True, False, True, True]
        assert await reader.read(0, size) == data_a
        await reader.close()


async def test_pinned_images_are_never_evicted(tmp_path: Path) -> None:
    async with cache(tmp_path, Budget(1000, 900)) as (lifecycle, store):
        (config, config_data), (layer, layer_data) = blob("config"), blob("layer")
        manifest = json.dumps(
            {
                "mediaType": OCI_MANIFEST,
                "config": {"digest": str(config), "size": 300},
                "layers": [{"digest": str(layer), "size": 300}],
            }
        ).encode()
        await store.put(config, config_data)
        await store.put(layer, layer_data)
        lifecycle.ledger.manifest_cached("docker.io", "library/app", Digest.of(manifest), OCI_MANIFEST, manifest)
        record = TagRecord(Digest.of(manifest), OCI_MANIFEST, len(manifest), 1.0)
        lifecycle.ledger.tag_cached("docker.io", "library/app", "1", record)
        await lifecycle.settle()
        await lifecycle.pin("docker.io", "library/app", "1")
        others = [blob(f"other-{n}") for n in range(5)]
        for digest, data in others:
            await store.put(digest, data)
        assert cached(tmp_path, config) and cached(tmp_path, layer)
        assert [pin.reference for pin in await lifecycle.pins()] == ["1"]
        assert await lifecycle.unpin("docker.io", "library/app", "1")
        with pytest.raises(ValueError):
            await lifecycle.pin("docker.io", "library/app", "../etc")


async def test_writes_go_on_when_nothing_can_be_evicted(tmp_path: Path) -> None:
    async with cache(tmp_path, Budget(500, 400)) as (_, store):
        a, data_a = blob("a")
        await store.put(a, data_a)
        opened = await store.open(a)
        assert opened is not None
        # Over budget beats a failed pull: with everything held by readers, the fill still lands.
        b, data_b = blob("b")
        await store.put(b, data_b)
        assert cached(tmp_path, a) and cached(tmp_path, b)
        await opened[0].close()


async def test_the_inventory_is_reconciled_with_the_disk_at_start_up(tmp_path: Path) -> None:
    (a, data_a), (b, data_b) = blob("a"), blob("b")
    async with cache(tmp_path, None) as (_, store):
        await store.put(a, data_a)
        await store.put(b, data_b)
    # While stopped: one blob removed by hand, one added by hand.
    (tmp_path / blob_path(a)).unlink()
    c, data_c = blob("c", 50)
    (tmp_path / blob_path(c)).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / blob_path(c)).write_bytes(data_c)
    async with cache(tmp_path, None):
        pass
    inventory = Inventory.open(tmp_path / INVENTORY)
    assert inventory.total() == (300 + 50, 2)
    assert inventory.blob(str(a)) is None and inventory.blob(str(c)) is not None
    inventory.close()


async def test_a_damaged_inventory_is_moved_aside_and_rebuilt(tmp_path: Path) -> None:
    a, data_a = blob("a")
    async with cache(tmp_path, None) as (_, store):
        await store.put(a, data_a)
    for name in os.listdir(tmp_path):
        if name.startswith(INVENTORY):
            (tmp_path / name).unlink()
    (tmp_path / INVENTORY).write_bytes(b"\0garbage" * 1000)
    async with cache(tmp_path, Budget(1000, 900)) as (_, store):
        assert await store.get(a, 1000) == data_a
    assert any(name.startswith(f"{INVENTORY}.damaged-") for name in os.listdir(tmp_path))
    inventory = Inventory.open(tmp_path / INVENTORY)
    assert inventory.total() == (300, 1)
    inventory.close()


def test_pulls_through_the_proxy_stay_within_the_budget(tmp_path: Path, fake: FakeRegistry) -> None:
    layers = [fake.add_blob(bytes([n]) * 100_000) for n in range(8)]
    upstream = UpstreamSettings(
        registry="docker.io", url=REGISTRY, redirect_hosts=FAKE_REDIRECT_HOSTS, token_realms=FAKE_TOKEN_REALMS
    )
    settings = Settings(storage=StorageSettings(root=tmp_path, max_size=350_000), upstreams=(upstream,))
    with TestClient(create_app(settings, transport=httpx.MockTransport(fake))) as client:
        for digest in layers:
            response = client.get(f"/v2/library/app/blobs/{digest}")
            assert response.status_code == 200 and sha256(response.content) == digest
            assert on_disk(tmp_path) <= 350_000
        # Evicted blobs are simply misses: the first one is fetched again, whole and right.
        assert sha256(client.get(f"/v2/library/app/blobs/{layers[0]}").content) == layers[0]
    assert fake.count("GET", f"cdn/blobs/{layers[0]}") == 2


async def test_partial_bytes_count_until_their_write_ends(tmp_path: Path) -> None:
    async with cache(tmp_path, Budget(1000, 900)) as (lifecycle, store):
        a, data_a = blob("a")
        writer = await store.create(a)
        await writer.write(data_a[:100])
        assert lifecycle.ledger.in_flight == 100
        await writer.cancel()
        await writer.cancel()  # twice: released once
        assert lifecycle.ledger.in_flight == 0
        writer = await store.create(a)
        await writer.write(data_a)
        await writer.commit(len(data_a))
        await lifecycle.settle()
        assert (lifecycle.ledger.in_flight, lifecycle.ledger.size()) == (0, 300)
