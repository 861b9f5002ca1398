"""Where the proxy goes on an upstream's word, and what it carries there (issue 7, items 3, 5 and 7).

Every upstream request carries the configured timeouts; upstream error text reaches clients sanitised.
"""

from __future__ import annotations

import json
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


# -- error text -----------------------------------------------------------------------------------------------------


def answering(status: int, code: object, message: object, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.dumps({"errors": [{"code": code, "message": message}]})
        return httpx.Response(status, headers=headers or {}, content=body.encode())

    return handler


def test_upstream_error_text_reaches_clients_sanitised(proxy_for: ProxyFactory) -> None:
    hostile = "\x1b[31mdenied\x1b[0m\r\nX-Injected: yes\u202e" + "A" * 5000
    response = proxy_for(answering(403, "DENIED", hostile)).get("/v2/library/alpine/manifests/3.20")
    assert response.status_code == 403
    code, message = error(response)
    assert code == "DENIED"
    assert message.startswith("upstream docker.io denied access: DENIED: [31mdenied [0m X-Injected: yes AAA")
    assert all(" " <= c <= "~" for c in message)
    assert len(message) <= len("upstream docker.io denied access: DENIED: ") + 200


def test_an_upstream_code_that_is_not_a_code_is_dropped(proxy_for: ProxyFactory) -> None:
    response = proxy_for(answering(418, "<script>", ["not", "text"])).get("/v2/library/alpine/manifests/3.20")
    assert response.status_code == 502
    assert error(response) == ("UPSTREAM_ERROR", "upstream docker.io answered 418")


def test_docker_hub_rate_limit_message_is_passed_on(proxy_for: ProxyFactory) -> None:
    hub = "You have reached your unauthenticated pull rate limit. https://www.docker.com/increase-rate-limit"
    handler = answering(429, "TOOMANYREQUESTS", hub, {"Retry-After": "60"})
    response = proxy_for(handler).get("/v2/library/alpine/manifests/3.20")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "60"
    assert error(response) == (
        "TOOMANYREQUESTS",
        f"upstream docker.io is rate limiting the proxy: TOOMANYREQUESTS: {hub}",
    )


@pytest.mark.parametrize(
    ("sent", "passed_on"),
    [("7", "7"), ("Sun, 06 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 GMT"), ("soon, maybe <b>", None)],
)
def test_retry_after_is_passed_on_only_if_it_is_one(proxy_for: ProxyFactory, sent: str, passed_on: str | None) -> None:
    handler = answering(429, "TOOMANYREQUESTS", "slow down", {"Retry-After": sent})
    response = proxy_for(handler).get("/v2/library/alpine/manifests/3.20")
    assert response.status_code == 429
    assert response.headers.get("retry-after") == passed_on
