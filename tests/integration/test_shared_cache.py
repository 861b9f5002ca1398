"""Several processes on one cache directory (worker processes, or separate instances): one upstream download per
blob between them, and a fill whose process dies is taken over by another.

Two proxies on two ports share one cache directory, so the test decides which process each client reaches (worker
processes on one port are spread by the kernel, which a test cannot steer). The upstream link is throttled so that
a fill is still running when the other process's clients arrive.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.harness.deadline import poll_until
from tests.harness.images import Images
from tests.harness.proxy_server import ProxyServer
from tests.harness.pulls import Pulls
from tests.harness.registry import DistributionRegistry
from tests.harness.throttle import ThrottledRelay

FILL_SECONDS = 4.0
"""How long the throttled upstream takes to send the big layer: long enough to start the other clients meanwhile."""


@pytest.fixture
def slow_upstream(upstream_registry: DistributionRegistry, images: Images) -> Iterator[ThrottledRelay]:
    target = urlsplit(upstream_registry.url)
    assert target.hostname is not None and target.port is not None
    rate = images["big"].layers[0].size / FILL_SECONDS
    with ThrottledRelay(target.hostname, target.port, rate) as relay:
        yield relay


def blob_gets(upstream: DistributionRegistry, mark: int, digest: str) -> list[int]:
    upstream.wait_quiet()
    return [r.status for r in upstream.requests_since(mark) if r.method == "GET" and r.path.endswith(digest)]


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "blobs").rglob("*") if p.name.endswith((".partial", ".claim")))


def test_clients_of_two_processes_on_one_cache_share_one_upstream_download(
    upstream_registry: DistributionRegistry, images: Images, slow_upstream: ThrottledRelay, tmp_path: Path
) -> None:
    layer = images["big"].layers[0]
    cache = tmp_path / "cache"
    with (
        ProxyServer(tmp_path / "a", slow_upstream.url, cache_dir=cache) as a,
        ProxyServer(tmp_path / "b", slow_upstream.url, cache_dir=cache) as b,
    ):
        mark = upstream_registry.mark()
        pulls = Pulls(layer.digest)
        for i in range(8):
            pulls.start(a if i % 2 else b, "library/big")
        results = pulls.join()
        assert results == [(layer.digest, layer.size)] * 8
        assert blob_gets(upstream_registry, mark, layer.digest) == [200]
        # Committed once, for both: a later pull through either is a hit.
        mark = upstream_registry.mark()
        again = Pulls(layer.digest)
        again.start(a, "library/big")
        again.start(b, "library/big")
        assert again.join() == [(layer.digest, layer.size)] * 2
        assert blob_gets(upstream_registry, mark, layer.digest) == []
    assert leftovers(cache) == []


def test_a_fill_whose_process_is_killed_is_taken_over_by_another(
    upstream_registry: DistributionRegistry, images: Images, slow_upstream: ThrottledRelay, tmp_path: Path
) -> None:
    layer = images["big"].layers[0]
    cache = tmp_path / "cache"
    shard = cache / "blobs" / "sha256" / layer.digest.removeprefix("sha256:")[:2]
    with (
        ProxyServer(tmp_path / "a", slow_upstream.url, cache_dir=cache) as a,
        ProxyServer(tmp_path / "b", slow_upstream.url, cache_dir=cache) as b,
    ):
        mark = upstream_registry.mark()
        doomed = Pulls(layer.digest)
        doomed.start(a, "library/big")

        def filling() -> int | None:
            partials = list(shard.glob("*.partial")) if shard.exists() else []
            size = partials[0].stat().st_size if partials else 0
            return size if size > layer.size // 8 else None

        poll_until(filling, timeout=30, what="process a's fill to be under way")
        followers = Pulls(layer.digest)
        for _ in range(3):
            followers.start(b, "library/big")
        time.sleep(0.5)  # b's clients are following a's fill now
        assert a._process is not None
        os.kill(a._process.pid, signal.SIGKILL)
        a._process.wait(timeout=10)

        assert followers.join() == [(layer.digest, layer.size)] * 3
        assert all(isinstance(result, BaseException) for result in doomed.join())  # its process died under it
        # The fill was resumed where the dead process left it: one full GET, one ranged GET for the rest.
        assert blob_gets(upstream_registry, mark, layer.digest) == [200, 206]
        assert "taking over" in b.log_tail(200)
        mark = upstream_registry.mark()
        again = Pulls(layer.digest)
        again.start(b, "library/big")
        assert again.join() == [(layer.digest, layer.size)]
        assert blob_gets(upstream_registry, mark, layer.digest) == []
    assert leftovers(cache) == []
