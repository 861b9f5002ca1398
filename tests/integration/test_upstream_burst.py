"""Bursts of misses against the real proxy and a real Distribution (issue 8, item 1).

Hundreds of concurrent GETs of digests the upstream does not have, through a proxy whose upstream takes only a few
requests at once: every one waits its turn and is answered 404, waiting never opens the circuit breaker, and clients
that give up mid-burst leave nothing wedged. Afterwards the proxy still serves a real blob and manifest.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.harness.images import Images
from tests.harness.proxy_server import ProxyServer
from tests.harness.registry import DistributionRegistry

CAP = 8  # the upstream's max_concurrent_requests here: far fewer than the burst, so nearly all of it queues
BURST = 400
IMPATIENT_BURST = 300
IMPATIENT_TIMEOUT = 0.5  # long enough to be sent, too short to wait for its turn: these clients hang up mid-queue
BURST_TIMEOUT = 120.0  # a whole burst, at most; a wedged proxy fails the test rather than hanging it
CLIENT_TIMEOUT = 60.0


@pytest.fixture
def proxy(upstream_registry: DistributionRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    extra = f"max_concurrent_requests = {CAP}"
    with ProxyServer(tmp_path_factory.mktemp("burst"), upstream_registry.url, extra_upstream=extra) as server:
        yield server


def unknown_digests(n: int) -> list[str]:
    return ["sha256:" + hashlib.sha256(os.urandom(16)).hexdigest() for _ in range(n)]


async def burst(proxy: ProxyServer, repository: str, digests: list[str], timeout: float) -> Counter[str]:
    """GET every digest at once; the outcome of each: its status code, or the client-side error's name."""
    limits = httpx.Limits(max_connections=len(digests), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=proxy.url, limits=limits, timeout=timeout) as client:

        async def get(digest: str) -> str:
            try:
                response = await client.get(f"/v2/{repository}/blobs/{digest}")
            except httpx.TimeoutException as exc:
                return type(exc).__name__
            if response.status_code == 404:
                assert response.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
            return str(response.status_code)

        async with asyncio.timeout(BURST_TIMEOUT):
            return Counter(await asyncio.gather(*(get(d) for d in digests)))


async def test_bursts_of_unknown_digests_queue_for_the_upstream_and_leave_it_usable(
    proxy: ProxyServer, images: Images
) -> None:
    image = images["oci"]
    repository = image.repository

    outcomes = await burst(proxy, repository, unknown_digests(BURST), CLIENT_TIMEOUT)
    assert outcomes == Counter({"404": BURST}), proxy.log_tail()

    # Clients that give up: the proxy still answers them upstream in turn, and nothing is left holding a turn.
    outcomes = await burst(proxy, repository, unknown_digests(IMPATIENT_BURST), IMPATIENT_TIMEOUT)
    assert set(outcomes) <= {"404", "ReadTimeout", "ConnectTimeout", "PoolTimeout", "WriteTimeout"}, outcomes

    # A second full burst after the impatient one: every turn came back, and the breaker never opened.
    outcomes = await burst(proxy, repository, unknown_digests(BURST), CLIENT_TIMEOUT)
    assert outcomes == Counter({"404": BURST}), proxy.log_tail()

    async with httpx.AsyncClient(base_url=proxy.url, timeout=CLIENT_TIMEOUT) as client:
        layer = image.layers[0]
        response = await client.get(f"/v2/{repository}/blobs/{layer.digest}")
        assert response.status_code == 200, proxy.log_tail()
        assert "sha256:" + hashlib.sha256(response.content).hexdigest() == layer.digest
        manifest_path = f"/v2/{repository}/manifests/{image.tag}"
        response = await client.get(manifest_path, headers={"Accept": image.media_type})
        assert response.status_code == 200, proxy.log_tail()
        assert response.content == image.manifest
