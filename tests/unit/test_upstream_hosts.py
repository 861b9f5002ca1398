"""Where the proxy goes on an upstream's word, and what it carries there (issue 7, items 3, 5 and 7).

Every upstream request carries the configured timeouts; blob redirects and token realms lead only to hosts the
configuration names; a redirect target gets no credentials and teaches the auth nothing; upstream error text reaches
clients sanitised.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from proxy.app import create_app
from proxy.config import ServerSettings, Settings, StorageSettings, UpstreamSettings
from proxy.upstream.client import MAX_REDIRECTS
from tests.unit.conftest import ClientFactory
from tests.unit.fakes import CDN, FAKE_REDIRECT_HOSTS, FAKE_TOKEN_REALMS, REGISTRY, FakeRegistry, sha256

LAYER = sha256(b"layer-bytes" * 1000)  # in the conftest's fake
# A request waits its turn before it is sent, and then has a pooled connection ready: the pool wait is a connect's.
TIMEOUTS = {"connect": 3.0, "read": 7.0, "write": 7.0, "pool": 3.0}

Handler = Callable[[httpx.Request], httpx.Response]
ProxyFactory = Callable[..., TestClient]


@pytest.fixture
def proxy_for(tmp_path: Path) -> Iterator[ProxyFactory]:
    """A proxy whose docker.io upstream is ``handler``, configured with ``upstream`` (the fake's hosts allowed)."""
    clients: list[TestClient] = []

    def factory(handler: Handler, **upstream: object) -> TestClient:
        upstream = {"redirect_hosts": FAKE_REDIRECT_HOSTS, "token_realms": FAKE_TOKEN_REALMS, **upstream}
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


# -- redirects ------------------------------------------------------------------------------------------------------


def test_redirect_to_a_host_not_configured_is_refused_without_connecting(
    make_client: ClientFactory, fake: FakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(redirect_hosts=())
    for _ in range(4):  # past the breaker's threshold: a refusal is not an outage, the message stays
        with caplog.at_level(logging.WARNING, "proxy.upstream"):
            response = client.get(f"/v2/library/alpine/blobs/{LAYER}")
        assert response.status_code == 502
        code, message = error(response)
        assert code == "UPSTREAM_ERROR"
        assert f"redirected to {CDN}, which is not in its redirect_hosts" in message
    assert [r for r in fake.requests if r.url.host == CDN] == []
    assert any(CDN in record.getMessage() and record.levelno == logging.WARNING for record in caplog.records)


@pytest.mark.parametrize("allowed", [("cdn.example.net",), ("*.example.net",)])
def test_redirect_to_a_configured_host_is_followed(
    make_client: ClientFactory, fake: FakeRegistry, allowed: tuple[str, ...]
) -> None:
    client = make_client(redirect_hosts=allowed)
    assert client.get(f"/v2/library/alpine/blobs/{LAYER}").content == b"layer-bytes" * 1000


@pytest.mark.parametrize("location", ["ftp://cdn.example.net/x", "https://user:pw@cdn.example.net/x", "http://[::1"])
def test_unusable_redirects_are_refused(proxy_for: ProxyFactory, fake: FakeRegistry, location: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "/blobs/" in request.url.path and request.url.host != CDN:
            return httpx.Response(307, headers={"Location": location})
        return fake(request)

    response = proxy_for(handler).get(f"/v2/library/alpine/blobs/{LAYER}")
    assert response.status_code == 502
    assert error(response)[0] == "UPSTREAM_ERROR"
    assert [r for r in fake.requests if r.url.host == CDN] == []


class Closing(httpx.ByteStream):
    def __init__(self, closed: list[str], name: str) -> None:
        super().__init__(b"moved")
        self.closed, self.name = closed, name

    async def aclose(self) -> None:
        self.closed.append(self.name)


def test_redirect_chains_are_bounded_and_each_hop_released(proxy_for: ProxyFactory, fake: FakeRegistry) -> None:
    closed: list[str] = []
    hops: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == CDN:
            hops.append(request)
            n = len(hops)
            stream = Closing(closed, f"hop {n}")
            return httpx.Response(302, headers={"Location": f"/again/{n}"}, stream=stream)
        return fake(request)

    response = proxy_for(handler).get(f"/v2/library/alpine/blobs/{LAYER}")
    assert response.status_code == 502
    assert error(response) == (
        "UPSTREAM_ERROR",
        f"upstream docker.io redirected {LAYER} more than {MAX_REDIRECTS} times",
    )
    assert len(hops) == MAX_REDIRECTS
    assert closed == [f"hop {n}" for n in range(1, MAX_REDIRECTS + 1)]


def test_a_redirect_target_gets_no_credentials_and_cannot_take_over_the_token_service(
    proxy_for: ProxyFactory, fake: FakeRegistry
) -> None:
    """A CDN that answers 401 with a Bearer challenge of its own: the issue's hostile redirect target."""
    fake.credentials = ("u", "p")
    elsewhere: list[httpx.Request] = []
    cdn: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "elsewhere.example":
            elsewhere.append(request)
            return httpx.Response(200, json={"token": "stolen"})
        if request.url.host == CDN:
            cdn.append(request)
            challenge = (
                'Bearer realm="http://elsewhere.example/token",service="x",scope="repository:library/alpine:pull"'
            )
            body = {"errors": [{"code": "UNAUTHORIZED", "message": "\x1b[2Jlog in at http://elsewhere.example"}]}
            return httpx.Response(401, headers={"WWW-Authenticate": challenge}, json=body)
        return fake(request)

    client = proxy_for(handler, username="u", password="p", redirect_hosts=(CDN, "elsewhere.example"))
    # The proxy knows the upstream's challenge, so the blob GET goes out with a token and meets the 401 on the CDN.
    assert client.get("/v2/library/alpine/manifests/3.20").status_code == 200
    response = client.get(f"/v2/library/alpine/blobs/{LAYER}")
    assert elsewhere == []
    assert cdn and all("authorization" not in r.headers for r in cdn)
    assert response.status_code == 502
    code, message = error(response)
    assert code == "UPSTREAM_ERROR"
    assert message == f"download of {LAYER} failed: redirect target {CDN} of upstream docker.io answered 401"
    # The upstream's challenge still stands: later requests authenticate with its realm, and only there.
    assert client.get("/v2/library/alpine/manifests/multi").status_code == 200
    assert elsewhere == []
    assert {r.url.host for r in fake.token_requests} == {"auth.example.com"}
    assert all(r.headers["authorization"].startswith("Basic ") for r in fake.token_requests)


# -- token realms ---------------------------------------------------------------------------------------------------


def challenging(realm: str, seen: list[httpx.Request]) -> Handler:
    """An upstream whose repositories want a token from ``realm``; records every request anywhere else."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host != "registry.example.com":
            seen.append(request)
            return httpx.Response(200, json={"token": "t"})
        if request.url.path == "/v2/" or request.headers.get("authorization") != "Bearer t":
            challenge = f'Bearer realm="{realm}",service="registry"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]})

    return handler


def test_a_realm_not_configured_is_refused_and_never_contacted(proxy_for: ProxyFactory) -> None:
    seen: list[httpx.Request] = []
    client = proxy_for(challenging("https://auth.elsewhere.com/token", seen), username="u", password="p")
    response = client.get("/v2/library/alpine/manifests/3.20")
    assert response.status_code == 502
    code, message = error(response)
    assert code == "UPSTREAM_ERROR"
    assert "named the token realm auth.elsewhere.com, which is not in its token_realms" in message
    assert seen == []


def test_a_configured_realm_gets_the_credentials(proxy_for: ProxyFactory) -> None:
    seen: list[httpx.Request] = []
    realm = "https://auth.elsewhere.com/token"
    client = proxy_for(challenging(realm, seen), username="u", password="p", token_realms=(realm,))
    assert client.get("/v2/library/alpine/manifests/3.20").status_code == 404  # authorized, then not found
    assert [r.url.host for r in seen] == ["auth.elsewhere.com"]
    assert seen[0].headers["authorization"] == httpx.BasicAuth("u", "p")._auth_header


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
