"""An upstream that accepts connections and never answers, from the proxy's start (issue 7, item 3).

The first request after start is the one that also asks ``/v2/`` how the upstream authenticates; that request
must carry the configured timeouts like every other, or it, and every request that joins it, waits forever.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.deadline import poll_until
from tests.harness.faults import Delay, FaultyUpstream
from tests.harness.proxy_server import ProxyServer
from tests.harness.registry import DistributionRegistry

MANIFEST = "/v2/library/silent/manifests/1"
ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}  # the same for both: they share one fetch
CLIENT_TIMEOUT = 10.0  # well past the proxy's 2 s: a proxy that hangs fails the test instead of hanging it


@pytest.fixture
def black_hole(upstream_registry: DistributionRegistry) -> Iterator[FaultyUpstream]:
    with FaultyUpstream(upstream_registry.url) as faulty:
        # Every request, the /v2/ ping included, is read and then left unanswered for longer than the test runs.
        faulty.add(Delay(60))
        yield faulty


def test_first_request_and_its_joiner_time_out_against_a_black_holed_upstream(
    black_hole: FaultyUpstream, tmp_path: Path
) -> None:
    with ProxyServer(tmp_path / "proxy", black_hole.url, read_timeout="2s") as proxy:
        url = proxy.url + MANIFEST
        responses: dict[str, httpx.Response] = {}
        errors: list[BaseException] = []

        def get(name: str) -> None:
            try:
                responses[name] = httpx.get(url, headers=ACCEPT, timeout=CLIENT_TIMEOUT)
            except BaseException as exc:  # reported below; a thread must not die silently
                errors.append(exc)

        first = threading.Thread(target=get, args=("first",))
        first.start()
        poll_until(lambda: True if black_hole.in_flight else None, timeout=5, what="the first request upstream")
        joiner = threading.Thread(target=get, args=("joiner",))
        joiner.start()
        for thread in (first, joiner):
            thread.join(timeout=CLIENT_TIMEOUT + 5)
        assert errors == []
        for name in ("first", "joiner"):
            response = responses[name]
            assert response.status_code == 504, name
            assert response.headers["content-type"] == "application/json"
            assert response.json()["errors"][0]["code"] == "UPSTREAM_TIMEOUT", name
        assert black_hole.accepted == 1  # the joiner shared the first request's attempt

        # Later requests time out too, and count: the breaker opens and the next one fails at once.
        for _ in range(2):
            assert httpx.get(url, headers=ACCEPT, timeout=CLIENT_TIMEOUT).status_code == 504
        response = httpx.get(url, headers=ACCEPT, timeout=CLIENT_TIMEOUT)
        assert response.status_code == 503
        assert response.json()["errors"][0]["code"] == "UPSTREAM_UNAVAILABLE"
