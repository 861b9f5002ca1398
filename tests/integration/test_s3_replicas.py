"""Issue 13's must-shows: replicas on one SeaweedFS bucket fetch a blob from the upstream once between them, and a
replica killed mid-fill neither breaks the other replicas' clients nor leaves anything unverified in the bucket.

The upstream link is throttled so that a fill is still running when the other replicas' clients arrive (and when
the filling replica is killed).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import pytest

from storage.digest import Digest
from storage.s3 import S3Settings
from storage.s3.layout import blob_key, fills_prefix
from storage.s3.objects import ObjectClient
from tests.harness.deadline import poll_until
from tests.harness.images import Images
from tests.harness.proxy_server import ProxyServer
from tests.harness.pulls import Pulls
from tests.harness.registry import DistributionRegistry
from tests.harness.seaweed import SeaweedS3
from tests.harness.throttle import ThrottledRelay

PREFIX = "cache/"
FILL_SECONDS = 4.0
"""How long the throttled upstream takes to send the big layer."""

T = TypeVar("T")


@pytest.fixture
def slow_upstream(upstream_registry: DistributionRegistry, images: Images) -> Iterator[ThrottledRelay]:
    target = urlsplit(upstream_registry.url)
    assert target.hostname is not None and target.port is not None
    with ThrottledRelay(target.hostname, target.port, images["big"].layers[0].size / FILL_SECONDS) as relay:
        yield relay


def replica(workdir: Path, upstream_url: str, seaweed: SeaweedS3, bucket: str) -> ProxyServer:
    storage = f'backend = "s3"\nendpoint = "{seaweed.endpoint}"\nbucket = "{bucket}"\nprefix = "{PREFIX}"\n'
    return ProxyServer(workdir, upstream_url, extra_storage=storage, env=seaweed.environ())


class Bucket:
    """What is in the bucket, read with the backend's own client (in a thread of its own: the tests are sync)."""

    def __init__(self, seaweed: SeaweedS3, name: str) -> None:
        self.settings = S3Settings(seaweed.endpoint, name, seaweed.region, seaweed.access_key, seaweed.secret_key)

    def _run(self, read: Callable[[ObjectClient], Awaitable[T]]) -> T:
        async def session() -> T:
            async with ObjectClient(self.settings) as client:
                return await read(client)

        return asyncio.run(session())

    def blob(self, digest: str) -> bytes | None:
        async def read(client: ObjectClient) -> bytes | None:
            found = await client.get(blob_key(PREFIX, Digest.parse(digest)))
            return None if found is None else found[0]

        return self._run(read)

    def blob_size(self, digest: str) -> int | None:
        async def read(client: ObjectClient) -> int | None:
            info = await client.head(blob_key(PREFIX, Digest.parse(digest)))
            return None if info is None else info.size

        return self._run(read)

    def leases(self) -> list[str]:
        async def read(client: ObjectClient) -> list[str]:
            return [key async for key, _, _ in client.list_objects(fills_prefix(PREFIX))]

        return self._run(read)

    def uploads(self) -> int:
        async def read(client: ObjectClient) -> int:
            return len(await client.list_uploads(PREFIX))

        return self._run(read)


class Watcher:
    """Looks at the blob's key in the bucket every 50 ms while the test runs: whenever anything is there, it must be
    the whole blob (an incomplete or unverified one must never be visible)."""

    def __init__(self, bucket: Bucket, digest: str, size: int) -> None:
        self.bucket, self.digest, self.size = bucket, digest, size
        self.seen: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        deadline = time.monotonic() + 300
        while not self._stop.is_set() and time.monotonic() < deadline:
            size = self.bucket.blob_size(self.digest)
            if size is not None:
                self.seen.append(size)
            self._stop.wait(0.05)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def blob_gets(upstream: DistributionRegistry, mark: int, digest: str) -> int:
    upstream.wait_quiet()
    return sum(1 for r in upstream.requests_since(mark) if r.method == "GET" and r.path.endswith(digest))


def test_three_replicas_on_one_bucket_fetch_a_blob_once_for_eight_clients(
    upstream_registry: DistributionRegistry,
    images: Images,
    seaweed: SeaweedS3,
    slow_upstream: ThrottledRelay,
    tmp_path: Path,
) -> None:
    layer = images["big"].layers[0]
    bucket = Bucket(seaweed, "trio-" + secrets.token_hex(4))
    name = bucket.settings.bucket
    with (
        replica(tmp_path / "r1", slow_upstream.url, seaweed, name) as r1,
        replica(tmp_path / "r2", slow_upstream.url, seaweed, name) as r2,
        replica(tmp_path / "r3", slow_upstream.url, seaweed, name) as r3,
        Watcher(bucket, layer.digest, layer.size) as watcher,
    ):
        mark = upstream_registry.mark()
        pulls = Pulls(layer.digest)
        for i in range(8):
            pulls.start((r1, r2, r3)[i % 3], "library/big")
        assert pulls.join() == [(layer.digest, layer.size)] * 8  # every body hashed by its client
        assert blob_gets(upstream_registry, mark, layer.digest) == 1
    assert watcher.seen and set(watcher.seen) == {layer.size}
    stored = bucket.blob(layer.digest)
    assert stored is not None and f"sha256:{hashlib.sha256(stored).hexdigest()}" == layer.digest
    assert (bucket.leases(), bucket.uploads()) == ([], 0)


def test_killing_the_replica_that_fills_mid_fill_loses_no_client_and_shows_nothing_unverified(
    upstream_registry: DistributionRegistry,
    images: Images,
    seaweed: SeaweedS3,
    slow_upstream: ThrottledRelay,
    tmp_path: Path,
) -> None:
    layer = images["big"].layers[0]
    bucket = Bucket(seaweed, "kill-" + secrets.token_hex(4))
    name = bucket.settings.bucket
    with (
        replica(tmp_path / "doomed", slow_upstream.url, seaweed, name) as doomed,
        replica(tmp_path / "r2", slow_upstream.url, seaweed, name) as r2,
        replica(tmp_path / "r3", slow_upstream.url, seaweed, name) as r3,
        Watcher(bucket, layer.digest, layer.size) as watcher,
    ):
        mark = upstream_registry.mark()
        first = Pulls(layer.digest)
        first.start(doomed, "library/big")
        poll_until(lambda: bucket.leases() or None, timeout=30, what="the doomed replica's lease")
        others = Pulls(layer.digest)
        for i in range(4):
            others.start((r2, r3)[i % 2], "library/big")
        time.sleep(1.0)  # the fill is under way, the other replicas' clients wait for it
        assert doomed._process is not None
        os.kill(doomed._process.pid, signal.SIGKILL)
        doomed._process.wait(timeout=10)

        # Its lease goes stale; one of the others takes it over and fetches the blob again, for all four.
        assert others.join() == [(layer.digest, layer.size)] * 4
        assert all(isinstance(result, BaseException) for result in first.join())
        assert blob_gets(upstream_registry, mark, layer.digest) == 2  # the killed fill's, and the one taking over

        # A later pull works, from the bucket.
        mark = upstream_registry.mark()
        again = Pulls(layer.digest)
        again.start(r3, "library/big")
        assert again.join() == [(layer.digest, layer.size)]
        assert blob_gets(upstream_registry, mark, layer.digest) == 0
    assert watcher.seen and set(watcher.seen) == {layer.size}  # never anything but the whole, verified blob
    stored = bucket.blob(layer.digest)
    assert stored is not None and f"sha256:{hashlib.sha256(stored).hexdigest()}" == layer.digest
    # The dead replica's multipart upload is left for a sweep (at start-up, once older than the grace period); its
    # lease was taken over and deleted by the new holder.
    assert bucket.leases() == []
