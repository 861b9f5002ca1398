"""/metrics against a scripted run through the app, with the in-memory upstream behind it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from starlette.testclient import TestClient

from proxy.app import create_app
from proxy.config import Settings, StorageSettings, UpstreamSettings
from tests.unit.asgi import running
from tests.unit.conftest import ClientFactory
from tests.unit.fakes import FAKE_REDIRECT_HOSTS, FAKE_TOKEN_REALMS, REGISTRY, FakeRegistry, sha256
from tests.unit.promtext import total, value
from tests.unit.test_resilience import BLOB, Gate, SlowUpstream, make_app

HUB_HEADERS = {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600"}


def requests(text: str, endpoint: str, method: str, status: str, cache: str) -> float | None:
    return value(
        text,
        "registry_proxy_requests_total",
        endpoint=endpoint,
        method=method,
        status=status,
        cache=cache,
        upstream="docker.io",
    )


def scripted_run(client: TestClient, fake: FakeRegistry) -> str:
    """Hits, misses, a stale answer, an error and a 404, in this order; the layer's digest."""
    fake.manifest_headers = dict(HUB_HEADERS)
    layer = fake.add_blob(b"scripted layer" * 100)
    steps = [
        ("GET", "/v2/library/alpine/manifests/3.20", 200, "MISS"),
        ("GET", "/v2/library/alpine/manifests/3.20", 200, "HIT"),  # revalidated with a HEAD (tag_ttl 0)
        ("GET", f"/v2/library/alpine/blobs/{layer}", 200, "MISS"),
        ("GET", f"/v2/library/alpine/blobs/{layer}", 200, "HIT"),
        ("HEAD", f"/v2/library/alpine/blobs/{layer}", 200, "HIT"),
    ]
    for method, path, status, cache in steps:
        response = client.request(method, path)
        assert (response.status_code, response.headers.get("x-cache")) == (status, cache), path
    fake.fail = 503
    stale = client.get("/v2/library/alpine/manifests/3.20")
    assert (stale.status_code, stale.headers["x-cache"]) == (200, "STALE")
    failed = client.get("/v2/library/alpine/manifests/never-cached")
    assert failed.status_code == 503 and "x-cache" not in failed.headers
    fake.fail = None
    assert client.get("/v2/library/alpine/manifests/missing").status_code == 404
    return layer


def test_counters_match_a_scripted_run(make_client: ClientFactory, fake: FakeRegistry) -> None:
    client = make_client(tag_ttl=0)
    layer = scripted_run(client, fake)
    text = client.get("/metrics").text
    assert requests(text, "manifest", "GET", "200", "miss") == 1
    assert requests(text, "manifest", "GET", "200", "hit") == 1
    assert requests(text, "manifest", "GET", "200", "stale") == 1
    assert requests(text, "manifest", "GET", "503", "error") == 1
    assert requests(text, "manifest", "GET", "404", "none") == 1
    assert requests(text, "blob", "GET", "200", "miss") == 1
    assert requests(text, "blob", "GET", "200", "hit") == 1
    assert requests(text, "blob", "HEAD", "200", "hit") == 1
    assert total(text, "registry_proxy_requests_total", upstream="docker.io") == 8
    manifest = len(fake.manifests[("library/alpine", "3.20")][1])
    assert value(text, "registry_proxy_response_bytes_total", cache="hit") == manifest + len(fake.blobs[layer])
    assert value(text, "registry_proxy_response_bytes_total", cache="stale") == manifest
    assert value(text, "registry_proxy_image_pulls_total", upstream="docker.io", repository="library/alpine") == 3
    # What the upstream was asked: the manifest, its revalidating HEAD, the blob (a redirect, then the CDN), then the
    # failing HEAD, the failing GET and the 404.
    upstream = {"upstream": "docker.io"}
    assert value(text, "registry_proxy_upstream_requests_total", method="GET", status="200", **upstream) == 2
    assert value(text, "registry_proxy_upstream_requests_total", method="GET", status="307", **upstream) == 1
    assert value(text, "registry_proxy_upstream_requests_total", method="HEAD", status="200", **upstream) == 1
    assert value(text, "registry_proxy_upstream_requests_total", method="HEAD", status="503", **upstream) == 1
    assert value(text, "registry_proxy_upstream_requests_total", method="GET", status="503", **upstream) == 1
    assert value(text, "registry_proxy_upstream_requests_total", method="GET", status="404", **upstream) == 1
    assert value(text, "registry_proxy_upstream_request_duration_seconds_count", method="GET", **upstream) == 5
    assert value(text, "registry_proxy_upstream_bytes_total", **upstream) == manifest + len(fake.blobs[layer])
    assert value(text, "registry_proxy_token_fetches_total", result="ok", **upstream) == 1
    assert value(text, "registry_proxy_upstream_breaker_open", **upstream) == 0


def test_rate_limit_gauges_show_what_the_upstream_sent_last(make_client: ClientFactory, fake: FakeRegistry) -> None:
    client = make_client(tag_ttl=0)
    fake.manifest_headers = dict(HUB_HEADERS)
    assert client.get("/v2/library/alpine/manifests/3.20").status_code == 200
    text = client.get("/metrics").text
    assert value(text, "registry_proxy_upstream_ratelimit_limit", upstream="docker.io") == 100
    assert value(text, "registry_proxy_upstream_ratelimit_remaining", upstream="docker.io") == 76
    assert value(text, "registry_proxy_upstream_ratelimit_window_seconds", upstream="docker.io") == 21600
    # A revalidating HEAD carries them too (Docker Hub counts only GETs, but says where the count stands).
    fake.manifest_headers["ratelimit-remaining"] = "75;w=21600"
    assert client.get("/v2/library/alpine/manifests/3.20").headers["x-cache"] == "HIT"
    text = client.get("/metrics").text
    assert value(text, "registry_proxy_upstream_ratelimit_remaining", upstream="docker.io") == 75


def test_without_rate_limit_headers_there_are_no_rate_limit_gauges(client: TestClient) -> None:
    assert client.get("/v2/library/alpine/manifests/3.20").status_code == 200
    text = client.get("/metrics").text
    assert "registry_proxy_upstream_ratelimit_remaining{" not in text
    assert value(text, "registry_proxy_requests_total", endpoint="manifest", method="GET", status="200",
                 cache="miss", upstream="docker.io") == 1  # fmt: skip


def test_an_open_breaker_shows(make_client: ClientFactory, fake: FakeRegistry) -> None:
    client = make_client()
    fake.fail = 503
    for tag in ("a", "b", "c"):  # three failures in a row open it
        assert client.get(f"/v2/library/alpine/manifests/{tag}").status_code == 503
    text = client.get("/metrics").text
    assert value(text, "registry_proxy_upstream_breaker_open", upstream="docker.io") == 1
    refused = client.get("/v2/library/alpine/manifests/d")
    assert refused.status_code == 503
    # The breaker's refusal says why it opened.
    assert "answered 503" in refused.json()["errors"][0]["message"]


async def test_concurrent_pulls_of_one_blob_count_one_fill_and_the_joins(tmp_path: Path) -> None:
    fake = FakeRegistry()
    fake.add_blob(BLOB)
    gate = Gate()
    async with running(make_app(tmp_path, SlowUpstream(fake, gate))) as client:
        pulls = [asyncio.create_task(client.get(f"/v2/library/app/blobs/{sha256(BLOB)}")) for _ in range(5)]
        await asyncio.sleep(0.05)
        during = (await client.get("/metrics")).text
        gate.open.set()
        responses = await asyncio.wait_for(asyncio.gather(*pulls), timeout=30)
        after = (await client.get("/metrics")).text
    assert all(r.status_code == 200 and r.content == BLOB for r in responses)
    assert value(during, "registry_proxy_fills_in_flight") == 1
    assert value(after, "registry_proxy_fills_in_flight") == 0
    assert value(after, "registry_proxy_singleflight_joins_total", kind="blob") == 4
    assert value(after, "registry_proxy_requests_total", endpoint="blob", method="GET", status="200", cache="miss",
                 upstream="docker.io") == 5  # fmt: skip


def test_metrics_of_two_apps_are_their_own(make_client: ClientFactory) -> None:
    # No global registry: a second app in the same process starts from zero.
    first = make_client()
    assert first.get("/v2/library/alpine/manifests/3.20").status_code == 200
    second = make_client()
    text = second.get("/metrics").text
    assert total(text, "registry_proxy_requests_total", endpoint="manifest") == 0
    assert total(first.get("/metrics").text, "registry_proxy_requests_total", endpoint="manifest") == 1


def test_cache_size_against_the_budget_and_evictions(tmp_path: Path) -> None:
    fake = FakeRegistry()
    blobs = [fake.add_blob(bytes([n]) * 12_000) for n in range(3)]
    upstream = UpstreamSettings(
        registry="docker.io", url=REGISTRY, redirect_hosts=FAKE_REDIRECT_HOSTS, token_realms=FAKE_TOKEN_REALMS
    )
    storage = StorageSettings(root=tmp_path / "cache", max_size=30_000, low_watermark=20_000)
    with TestClient(
        create_app(Settings(storage=storage, upstreams=(upstream,)), transport=httpx.MockTransport(fake))
    ) as client:
        for digest in blobs:
            assert client.get(f"/v2/library/app/blobs/{digest}").status_code == 200
            time.sleep(0.05)  # distinct access times: the first pulled is the least recently used
        # 36,000 bytes against a budget of 30,000: the lifecycle evicts the two oldest, down to the low watermark.
        text = ""
        for _ in range(100):  # the inventory is written about once a second, and read as often
            text = client.get("/metrics").text
            if (
                value(text, "registry_proxy_evictions_total") == 2
                and value(text, "registry_proxy_cache_bytes") == 12_000
            ):
                break
            time.sleep(0.1)
    assert value(text, "registry_proxy_evictions_total") == 2
    assert value(text, "registry_proxy_evicted_bytes_total") == 24_000
    assert value(text, "registry_proxy_cache_bytes") == 12_000
    assert value(text, "registry_proxy_cache_objects") == 1
    assert value(text, "registry_proxy_cache_budget_bytes") == 30_000
