"""Where the proxy goes on an upstream's word, and what it carries there (issue 7, items 3, 5 and 7).

Every upstream request carries the configured timeouts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from proxy.app import create_app
from proxy.config import ServerSettings, Settings, StorageSettings, UpstreamSettings
from tests.unit.conftest import ClientFactory
from tests.unit.fakes import CDN, REGISTRY, FakeRegistry, sha256

LAYER = sha256(b"layer-bytes" * 1000)  # in the conftest's fake
TIMEOUTS = {"connect": 3.0, "read": 7.0, "write": 7.0, "pool": 7.0}

Handler = Callable[[httpx.Request], httpx.Response]
ProxyFactory = Callable[..., TestClient]


@pytest.fixture
def proxy_for(tmp_path: Path) -> Iterator[ProxyFactory]:
    """A proxy whose docker.io upstream is ``handler``, configured with ``upstream``."""
    clients: list[TestClient] = []

    def factory(handler: Handler, **upstream: object) -> TestClient:
        settings = Settings(
            server=ServerSettings(),
            storage=StorageSettings(root=tmp_path / f"cache{len(clients)}"),
            upstreams=(UpstreamSettings(registry="docker.io", url=REGISTRY, **upstream),),  # type: ignore[arg-type]
        )
        client = TestClient(create_app(settings, transport=httpx.MockTransport(handler)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


def error(response: httpx.Response) -> tuple[str, str]:
    [entry] = response.json()["errors"]
    return entry["code"], entry["message"]


# -- timeouts -------------------------------------------------------------------------------------------------------


def test_every_upstream_request_carries_the_configured_timeouts(make_client: ClientFactory, fake: FakeRegistry) -> None:
    fake.credentials = ("u", "p")
    client = make_client(connect_timeout=3.0, read_timeout=7.0, username="u", password="p")
    assert client.get("/v2/library/alpine/manifests/3.20").status_code == 200
    assert client.get(f"/v2/library/alpine/blobs/{LAYER}").status_code == 200
    sent = fake.requests + fake.token_requests
    # The auth ping, the token fetch, the manifest, the blob and the redirect hop to the CDN: all of them.
    assert {r.url.path for r in sent if r.url.host == "registry.example.com"} >= {
        "/v2/",
        f"/v2/library/alpine/blobs/{LAYER}",
    }
    assert {r.url.host for r in sent} == {"registry.example.com", "auth.example.com", CDN}
    assert [r.extensions.get("timeout") for r in sent] == [TIMEOUTS] * len(sent)


def test_all_connections_busy_is_not_an_upstream_outage(proxy_for: ProxyFactory) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.PoolTimeout("no connection free", request=request)

    client = proxy_for(handler)
    # More than the breaker's threshold: waiting for our own pool must not make the upstream look down.
    for _ in range(5):
        response = client.get("/v2/library/alpine/manifests/3.20")
        assert response.status_code == 503
        assert error(response) == ("UPSTREAM_UNAVAILABLE", "too many requests to upstream docker.io in flight")
