"""S3BlobStore against a real S3 server (SeaweedFS on loopback): what becomes visible when, leases, sweeps."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.digest import Digest
from storage.interfaces import (
    BlobDeleter,
    BlobLister,
    BlobStore,
    DigestMismatch,
    FillState,
    ForeignFill,
    SizeMismatch,
)
from storage.s3 import S3BlobReader, S3BlobStore, S3BlobWriter, S3ForeignFill, S3Settings
from storage.s3.layout import SCRATCH, lease_key
from storage.s3.leases import Lease, read_lease
from storage.s3.objects import ObjectClient
from tests.harness.seaweed import SeaweedS3

MIB = 1024 * 1024
PART = 5 * MIB  # the smallest part S3 allows: a few parts without much data
KEY = "docker.io/library/alpine"


def _settings(seaweed: SeaweedS3, bucket: str, prefix: str = "cache/") -> S3Settings:
    return S3Settings(seaweed.endpoint, bucket, seaweed.region, seaweed.access_key, seaweed.secret_key, prefix)


@pytest.fixture(scope="module")
def bucket() -> str:
    # Created by the first store (the bucket is "created if missing"); each test has a prefix of its own in it.
    return "unit-" + secrets.token_hex(6)


@pytest.fixture
def settings(seaweed: SeaweedS3, bucket: str) -> S3Settings:
    return _settings(seaweed, bucket, f"t-{secrets.token_hex(4)}/")


@pytest.fixture
async def store(settings: S3Settings, tmp_path: Path) -> AsyncIterator[S3BlobStore]:
    async with S3BlobStore.connect(settings, tmp_path, heartbeat=0.5, part_size=PART) as connected:
        yield connected


@pytest.fixture
async def objects(settings: S3Settings, store: S3BlobStore) -> AsyncIterator[ObjectClient]:
    async with ObjectClient(settings) as client:
        yield client


def _blob(size: int) -> tuple[bytes, Digest]:
    data = os.urandom(size)
    return data, Digest.of(data)


async def _write_in_chunks(writer: S3BlobWriter, data: bytes, chunk: int = MIB) -> None:
    for offset in range(0, len(data), chunk):
        await writer.write(data[offset : offset + chunk])


async def _uploads(objects: ObjectClient) -> int:
    return len(await objects.list_uploads(objects.settings.prefix))


async def test_put_then_stat_open_get(store: S3BlobStore) -> None:
    data, digest = _blob(300_000)
    assert await store.stat(digest) is None
    assert await store.open(digest) is None
    await store.put(digest, data)
    await store.put(digest, data)  # again: content-addressed, nothing changes
    assert await store.stat(digest) == len(data)
    assert await store.get(digest, len(data)) == data
    assert await store.get(digest, len(data) - 1) is None
    opened = await store.open(digest)
    assert opened is not None
    reader, size = opened
    try:
        assert size == len(data) and reader.fileno() is None
        # Sequential reads share one GET; a jump back opens another; past the end there is nothing.
        assert await reader.read(0, 100_000) == data[:100_000]
        assert await reader.read(100_000, 200_000) == data[100_000:]
        assert await reader.read(5, 10) == data[5:15]
        assert await reader.read(len(data), 10) == b""
    finally:
        await reader.close()


async def test_a_reader_whose_stream_broke_reads_on(store: S3BlobStore) -> None:
    data, digest = _blob(3 * MIB)
    await store.put(digest, data)
    opened = await store.open(digest)
    assert opened is not None
    reader = opened[0]
    assert isinstance(reader, S3BlobReader)
    try:
        assert await reader.read(0, MIB) == data[:MIB]
        stream = reader._stream
        assert stream is not None
        await stream.close()  # as if the server closed a connection that waited on a stalled client
        assert await reader.read(MIB, 2 * MIB) == data[MIB:]
    finally:
        await reader.close()


async def test_a_wrong_digest_is_never_visible(store: S3BlobStore, objects: ObjectClient, tmp_path: Path) -> None:
    data, digest = _blob(1000)
    with pytest.raises(DigestMismatch):
        await store.put(digest, data + b"x")
    assert await store.stat(digest) is None
    # A fill of several parts whose bytes are wrong: the parts were uploaded, the blob never appears.
    big, big_digest = _blob(12 * MIB)
    writer = await store.create(big_digest)
    tampered = big[:-1] + bytes([big[-1] ^ 1])
    await _write_in_chunks(writer, tampered)
    assert await _uploads(objects) == 1
    with pytest.raises(DigestMismatch):
        await writer.commit(len(big))
    assert await store.stat(big_digest) is None
    assert await _uploads(objects) == 0
    assert list((tmp_path / SCRATCH).iterdir()) == []
    # A short one: the size check.
    writer = await store.create(big_digest)
    await _write_in_chunks(writer, big[: 6 * MIB])
    with pytest.raises(SizeMismatch):
        await writer.commit(len(big))
    assert await store.stat(big_digest) is None
    assert await _uploads(objects) == 0


async def test_a_fill_uploads_as_it_goes_and_is_visible_once_verified(
    store: S3BlobStore, objects: ObjectClient
) -> None:
    data, digest = _blob(13 * MIB)
    writer = await store.claim(digest, KEY)
    assert isinstance(writer, S3BlobWriter)
    await writer.started(len(data))
    await _write_in_chunks(writer, data[: 11 * MIB])
    # Two parts uploaded (or on their way), nothing under the blob's key.
    assert await _uploads(objects) == 1
    assert await store.stat(digest) is None
    reader = writer.open_reader()  # clients of this process tail the scratch file
    try:
        assert await reader.read(0, MIB) == data[:MIB]
        await _write_in_chunks(writer, data[11 * MIB :])
        await writer.commit(len(data))
        assert await reader.read(12 * MIB, MIB) == data[12 * MIB :]  # still readable after the commit
    finally:
        await reader.close()
    assert await store.stat(digest) == len(data)
    assert await store.get(digest, len(data)) == data
    assert await _uploads(objects) == 0
    assert await read_lease(objects, lease_key(objects.settings.prefix, digest, KEY)) is None  # released


async def test_a_second_claim_follows_the_first(store: S3BlobStore) -> None:
    data, digest = _blob(2 * MIB)
    writer = await store.claim(digest, KEY)
    assert isinstance(writer, S3BlobWriter)
    follower = await store.claim(digest, KEY)
    assert isinstance(follower, ForeignFill) and follower.open_reader() is None
    progress = await follower.progress()
    assert (progress.state, progress.started) == (FillState.RUNNING, False)
    await writer.started(len(data))
    progress = await follower.progress()
    assert (progress.state, progress.started, progress.size) == (FillState.RUNNING, True, len(data))
    await asyncio.sleep(1.2)  # a few heartbeats: still running
    assert (await follower.progress()).state is FillState.RUNNING
    await _write_in_chunks(writer, data)
    await writer.commit(len(data))
    progress = await follower.progress()
    assert (progress.state, progress.size) == (FillState.COMMITTED, len(data))
    # Claiming a committed blob says so rather than filling it again.
    again = await store.claim(digest, KEY)
    assert isinstance(again, S3ForeignFill)
    assert (await again.progress()).state is FillState.COMMITTED
    await follower.close()


async def test_an_abandoned_lease_is_taken_over(store: S3BlobStore, objects: ObjectClient) -> None:
    data, digest = _blob(MIB)
    holder = await store.claim(digest, KEY)
    assert isinstance(holder, S3BlobWriter)
    await holder.started(len(data))
    lease = holder._lease
    assert lease is not None and lease._task is not None
    lease._task.cancel()  # the holder "dies": no more heartbeats, and nobody deletes its lease
    follower = await store.claim(digest, KEY)
    assert isinstance(follower, S3ForeignFill)
    deadline = time.monotonic() + 10
    for _ in range(100):
        progress = await follower.progress()
        if progress.state is not FillState.RUNNING or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert (progress.state, progress.started, progress.size) == (FillState.ABANDONED, True, len(data))
    taker = await store.claim(digest, KEY)
    assert isinstance(taker, S3BlobWriter)
    # The old holder was only slow after all: its next renewal finds the lease taken, and it never deletes it.
    await lease._write()
    assert lease.lost
    await holder.cancel()
    assert isinstance(await store.claim(digest, KEY), S3ForeignFill)  # still the taker's
    await _write_in_chunks(taker, data)
    await taker.commit(len(data))
    assert await store.get(digest, len(data)) == data


async def test_one_of_several_takes_over_a_stale_lease(objects: ObjectClient) -> None:
    key = objects.settings.prefix + "fills/sha256/x/" + secrets.token_hex(4)
    stale = Lease(objects, key, heartbeat=60)
    assert await stale.create()
    assert stale._task is not None
    stale._task.cancel()
    view = await read_lease(objects, key)
    assert view is not None
    contenders = [Lease(objects, key, heartbeat=60) for _ in range(4)]
    won = await asyncio.gather(*(contender.take_over(view.etag) for contender in contenders))
    assert sorted(won) == [False, False, False, True]
    for contender in contenders:
        await contender.release()
    assert await read_lease(objects, key) is None


async def test_sweep_aborts_what_a_crash_left(store: S3BlobStore, objects: ObjectClient, tmp_path: Path) -> None:
    data, digest = _blob(7 * MIB)
    writer = await store.claim(digest, KEY)
    assert isinstance(writer, S3BlobWriter)
    await _write_in_chunks(writer, data)
    lease = writer._lease
    assert lease is not None and lease._task is not None
    lease._task.cancel()  # crashed mid-fill: an upload in progress, a scratch file, a lease
    await asyncio.sleep(0.2)
    assert await _uploads(objects) == 1
    assert await store.sweep(spare_younger_than=3600) == 0  # another replica may be writing those
    assert await _uploads(objects) == 1
    removed = await store.sweep(0.0)
    assert removed == 2  # the upload and the scratch file; the lease is younger than 3 beats
    assert await _uploads(objects) == 0
    assert list((tmp_path / SCRATCH).iterdir()) == []
    await asyncio.sleep(3 * 0.5 + 2.1)
    assert await store.sweep(0.0) == 1  # now the lease is stale too
    assert await store.stat(digest) is None


async def test_list_and_delete_spare_blobs_being_read(store: S3BlobStore) -> None:
    (one, one_digest), (two, two_digest) = _blob(100), _blob(200)
    await store.put(one_digest, one)
    await store.put(two_digest, two)
    listed = {blob.digest: blob.size for blob in await store.list_blobs()}
    assert listed == {one_digest: 100, two_digest: 200}
    opened = await store.open(one_digest)
    assert opened is not None
    assert await store.delete_if_unused([one_digest, two_digest]) == {two_digest}
    await opened[0].close()
    assert await store.delete_if_unused([one_digest]) == {one_digest}
    assert await store.list_blobs() == []


async def test_the_prefix_keeps_caches_apart(seaweed: SeaweedS3, settings: S3Settings, tmp_path: Path) -> None:
    data, digest = _blob(100)
    other = S3Settings(settings.endpoint, settings.bucket, settings.region, settings.access_key, settings.secret_key)
    async with S3BlobStore.connect(settings, tmp_path) as first, S3BlobStore.connect(other, tmp_path) as second:
        await first.put(digest, data)
        assert await second.stat(digest) is None
        assert await second.list_blobs() == []


def _is_a_blob_store(store: S3BlobStore) -> tuple[BlobStore, BlobDeleter, BlobLister]:
    # mypy checks that the S3 store is what the proxy and the lifecycle take.
    return store, store, store
