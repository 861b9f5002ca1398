"""S3FetchLocks against a real S3 server (SeaweedFS on loopback): replicas on one bucket ask the upstream one at a
time per key.

Two S3FetchLocks, each with its own client (its own connections), stand for two replicas.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from storage.interfaces import FetchLocks, StorageError
from storage.s3 import S3FetchLocks, S3Settings
from storage.s3.layout import lock_key, locks_prefix
from storage.s3.leases import read_lease, take
from storage.s3.objects import ObjectClient
from tests.harness.seaweed import SeaweedS3

KEY = "manifest docker.io/library/alpine:3.20"
# Short beats, so that a holder that stopped is stale after 3 * 0.5 + 1 seconds (on the server's one-second clock).
BEAT = 0.5


@pytest.fixture(scope="module")
def bucket() -> str:
    return "locks-" + secrets.token_hex(6)


@pytest.fixture
def settings(seaweed: SeaweedS3, bucket: str) -> S3Settings:
    prefix = f"t-{secrets.token_hex(4)}/"
    return S3Settings(seaweed.endpoint, bucket, seaweed.region, seaweed.access_key, seaweed.secret_key, prefix)


async def _client(settings: S3Settings) -> AsyncIterator[ObjectClient]:
    async with ObjectClient(settings) as client:
        await client.ensure_bucket()
        yield client


@pytest.fixture
async def one(settings: S3Settings) -> AsyncIterator[ObjectClient]:
    async for client in _client(settings):
        yield client


@pytest.fixture
async def two(settings: S3Settings) -> AsyncIterator[ObjectClient]:
    async for client in _client(settings):
        yield client


async def _locks_in_bucket(client: ObjectClient) -> list[str]:
    return [key async for key, _size, _modified in client.list_objects(locks_prefix(client.settings.prefix))]


async def test_a_second_replica_waits_for_the_first_then_is_told_it_waited(
    one: ObjectClient, two: ObjectClient
) -> None:
    first, second = S3FetchLocks(one, heartbeat=BEAT), S3FetchLocks(two, heartbeat=BEAT)
    events: list[str] = []
    holding = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with first.hold(KEY) as waited:
            events.append(f"first holds (waited={waited})")
            holding.set()
            await release.wait()
            events.append("first done")

    async def waiter() -> None:
        async with second.hold(KEY) as waited:
            events.append(f"second holds (waited={waited})")

    task = asyncio.create_task(holder())
    await asyncio.wait_for(holding.wait(), timeout=5)
    assert await _locks_in_bucket(one) == [lock_key(one.settings.prefix, KEY)]
    other = asyncio.create_task(waiter())
    # Longer than 3 beats: the holder renews its lock, so the waiter does not take it over.
    await asyncio.sleep(3 * BEAT + 2)
    assert events == ["first holds (waited=False)"]
    release.set()
    await asyncio.wait_for(asyncio.gather(task, other), timeout=5)
    assert events == ["first holds (waited=False)", "first done", "second holds (waited=True)"]
    assert await _locks_in_bucket(one) == []


async def test_other_keys_do_not_wait(one: ObjectClient, two: ObjectClient) -> None:
    first, second = S3FetchLocks(one), S3FetchLocks(two, max_wait=5)
    loop = asyncio.get_running_loop()
    async with first.hold(KEY):
        started = loop.time()
        async with second.hold(KEY + "-other") as waited:
            assert waited is False
            assert loop.time() - started < 2


async def test_replicas_hold_a_key_one_at_a_time(settings: S3Settings, one: ObjectClient) -> None:
    inside: list[int] = []
    told: list[bool] = []
    ready: list[int] = []
    go = asyncio.Event()

    async def replica() -> None:
        async for client in _client(settings):
            locks = S3FetchLocks(client, max_wait=20)
            ready.append(1)
            if len(ready) == 4:
                go.set()
            await go.wait()  # every replica connected: they all ask at once
            async with locks.hold(KEY) as waited:
                inside.append(1)
                assert len(inside) == 1  # nobody else holds it now
                told.append(waited)
                await asyncio.sleep(0.3)
                inside.pop()

    await asyncio.wait_for(asyncio.gather(*(replica() for _ in range(4))), timeout=30)
    assert sorted(told) == [False, True, True, True]
    assert await _locks_in_bucket(one) == []


async def test_a_holder_that_stopped_beating_is_taken_over_once_stale(one: ObjectClient, two: ObjectClient) -> None:
    # A replica took the lock, then died: it neither renews nor deletes it.
    dead = await take(one, lock_key(one.settings.prefix, KEY), BEAT, what="fetch lock")
    assert dead is not None and dead._task is not None
    dead._task.cancel()
    locks = S3FetchLocks(two, heartbeat=BEAT, max_wait=20)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with locks.hold(KEY) as waited:
        elapsed = loop.time() - started
        assert waited is True
        # Stale after 3 beats and a second of clock rounding, on the server's clock (whole seconds).
        assert 3 * BEAT < elapsed < 3 * BEAT + 1 + 3
        view = await read_lease(two, lock_key(two.settings.prefix, KEY))
        assert view is not None and not view.is_stale(BEAT)
        # The dead replica was only slow after all: it learns the lock is no longer its own and leaves it be.
        await dead._write()
        assert dead.lost
        await dead.release()
        assert await read_lease(two, lock_key(two.settings.prefix, KEY)) is not None
    assert await _locks_in_bucket(one) == []


async def test_a_waiter_goes_ahead_after_max_wait(one: ObjectClient, two: ObjectClient) -> None:
    first, second = S3FetchLocks(one, heartbeat=BEAT), S3FetchLocks(two, heartbeat=BEAT, max_wait=0.6)
    loop = asyncio.get_running_loop()
    async with first.hold(KEY):
        started = loop.time()
        async with second.hold(KEY) as waited:
            elapsed = loop.time() - started
            assert waited is True
            assert 0.6 <= elapsed < 0.6 + 1.5
        # Going ahead without the lock, it left the holder's lock alone.
        assert await _locks_in_bucket(one) == [lock_key(one.settings.prefix, KEY)]
    assert await _locks_in_bucket(one) == []


async def test_sweep_removes_stale_locks_only(one: ObjectClient, two: ObjectClient) -> None:
    prefix = one.settings.prefix
    dead = await take(one, lock_key(prefix, "dead"), BEAT, what="fetch lock")
    assert dead is not None and dead._task is not None
    dead._task.cancel()
    locks = S3FetchLocks(two, heartbeat=BEAT)
    async with S3FetchLocks(one, heartbeat=BEAT).hold("alive"):
        assert await locks.sweep() == 0  # neither is stale yet
        await asyncio.sleep(3 * BEAT + 2.2)
        assert await locks.sweep() == 1
        assert await _locks_in_bucket(one) == [lock_key(prefix, "alive")]
    assert await _locks_in_bucket(one) == []


class _Failing:
    """An ObjectClient whose every request fails, as one to an unreachable bucket does."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings

    def __getattr__(self, name: str) -> Any:
        async def request(*args: Any, **kwargs: Any) -> Any:
            raise StorageError(f"cannot {name}: connection refused")

        return request


async def test_a_failing_bucket_makes_nobody_wait(settings: S3Settings) -> None:
    locks = S3FetchLocks(cast(ObjectClient, _Failing(settings)), max_wait=20)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with locks.hold(KEY) as waited:
        assert waited is False
    assert loop.time() - started < 1


def _is_fetch_locks(locks: S3FetchLocks) -> FetchLocks:
    # mypy checks that the S3 locks are what the proxy takes.
    return locks


async def test_a_release_during_a_renewal_leaves_no_lease_behind(one: ObjectClient) -> None:
    # Renewing every few milliseconds, a release lands in the middle of a renewal's write now and then: cancelled
    # there, the write may still be applied, and a delete conditional on the previous version then misses it.
    for round_ in range(40):
        key = lock_key(one.settings.prefix, f"{KEY} {round_}")
        lease = await take(one, key, 0.005, what="test lease")
        assert lease is not None
        await asyncio.sleep(0.002 * (round_ % 7))
        await lease.release()
        assert await read_lease(one, key) is None, f"round {round_}: the lease outlived its release"
