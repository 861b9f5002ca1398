from __future__ import annotations

import asyncio
import base64

import httpx
import pytest

from proxy.errors import RegistryError
from proxy.upstream.auth import MAX_CACHED_TOKENS, RegistryAuth, scope_for_path
from proxy.upstream.challenge import Challenge, parse_challenges
from proxy.upstream.hosts import AllowedHosts
from proxy.upstream.pool import Congested
from tests.unit.fakes import REALM, REGISTRY, FakeRegistry

# The fake registry's token service is on another host, as Docker Hub's is: configured, as Docker Hub's is.
ALLOWED = AllowedHosts.for_url("docker.io", REGISTRY, token_realms=(REALM,))


def test_parse_docker_hub_challenge() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/redis:pull"'
    )
    [challenge] = parse_challenges([header])
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/redis:pull",
    }


def test_parse_several_challenges_and_escapes() -> None:
    challenges = parse_challenges(['Basic realm="a \\"quoted\\" realm", Bearer realm="https://x/token",error=invalid'])
    assert [c.scheme for c in challenges] == ["basic", "bearer"]
    assert challenges[0].params["realm"] == 'a "quoted" realm'
    assert challenges[1].params == {"realm": "https://x/token", "error": "invalid"}


@pytest.mark.parametrize("header", ["", ",,,", "Bearer", 'Bearer realm="unterminated', "=== garbage"])
def test_parse_malformed_challenges_never_raises(header: str) -> None:
    parse_challenges([header])


def test_scope_for_path() -> None:
    assert scope_for_path("/v2/library/alpine/manifests/3.20") == "repository:library/alpine:pull"
    assert scope_for_path("/v2/a/b/c/blobs/sha256:00") == "repository:a/b/c:pull"
    assert scope_for_path("/v2/") is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_token_is_cached_until_it_expires() -> None:
    fake = FakeRegistry()
    fake.add_manifest("library/a", "1", "application/vnd.oci.image.manifest.v1+json", b"{}")
    clock = Clock()
    transport = httpx.MockTransport(fake)
    async with httpx.AsyncClient(transport=transport) as token_client:
        auth = RegistryAuth(REGISTRY, token_client, clock=clock, allowed=ALLOWED)
        async with httpx.AsyncClient(base_url=REGISTRY, auth=auth, transport=transport) as client:
            headers = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
            for _ in range(3):
                assert (await client.get("/v2/library/a/manifests/1", headers=headers)).status_code == 200
            assert auth.token_fetches == 1
            clock.now += 300  # the fake's tokens live 300 s; the proxy renews a little early
            assert (await client.get("/v2/library/a/manifests/1", headers=headers)).status_code == 200
            assert auth.token_fetches == 2


async def test_concurrent_requests_share_one_token_fetch() -> None:
    fake = FakeRegistry()
    fake.add_manifest("library/a", "1", "application/vnd.oci.image.manifest.v1+json", b"{}")
    transport = httpx.MockTransport(fake)
    async with httpx.AsyncClient(transport=transport) as token_client:
        auth = RegistryAuth(REGISTRY, token_client, allowed=ALLOWED)
        async with httpx.AsyncClient(base_url=REGISTRY, auth=auth, transport=transport) as client:
            await client.get("/v2/")  # learn nothing yet: /v2/ needs no token
            headers = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
            first = await client.get("/v2/library/a/manifests/1", headers=headers)  # learns the challenge
            assert first.status_code == 200
            fetches = auth.token_fetches
            results = await asyncio.gather(*(client.get(f"/v2/library/b{i % 2}/manifests/1") for i in range(10)))
            assert all(r.status_code == 404 for r in results)
            # Two new scopes (b0, b1), one fetch each, however many requests wanted them.
            assert auth.token_fetches == fetches + 2


async def test_basic_only_upstream() -> None:
    expected = "Basic " + base64.b64encode(b"u:p").decode()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != expected:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="registry"'})
        return httpx.Response(200, json={"ok": True})

    transport = httpx.MockTransport(handler)
    async with httpx.AsyncClient(transport=transport) as token_client:
        auth = RegistryAuth("https://r.example.com", token_client, "u", "p")
        async with httpx.AsyncClient(base_url="https://r.example.com", auth=auth, transport=transport) as client:
            assert (await client.get("/v2/x/manifests/1")).status_code == 200
            assert (await client.get("/v2/x/manifests/2")).status_code == 200
            assert auth.token_fetches == 0


async def test_token_service_down_is_a_registry_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example.com":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.example.com/t"'})

    transport = httpx.MockTransport(handler)
    allowed = AllowedHosts.for_url("docker.io", REGISTRY, token_realms=("auth.example.com",))
    async with httpx.AsyncClient(transport=transport) as token_client:
        auth = RegistryAuth(REGISTRY, token_client, allowed=allowed)
        async with httpx.AsyncClient(base_url=REGISTRY, auth=auth, transport=transport) as client:
            with pytest.raises(RegistryError) as info:
                await client.get("/v2/x/manifests/1")
            assert info.value.status == 503


async def test_auth_ping_carries_the_user_agent() -> None:
    fake = FakeRegistry()
    transport = httpx.MockTransport(fake)
    async with httpx.AsyncClient(transport=transport) as token_client:
        auth = RegistryAuth(REGISTRY, token_client, allowed=ALLOWED)
        headers = {"User-Agent": "registry-proxy/test"}
        async with httpx.AsyncClient(base_url=REGISTRY, auth=auth, transport=transport, headers=headers) as client:
            await client.get("/v2/library/a/manifests/1")
    pings = [r for r in fake.requests if r.url.path == "/v2/"]
    assert pings and all(r.headers["user-agent"] == "registry-proxy/test" for r in pings)


async def test_auth_ping_carries_the_request_timeout() -> None:
    # Without it the first request after start waits forever on an upstream that accepts and never answers.
    fake = FakeRegistry()
    transport = httpx.MockTransport(fake)
    timeout = httpx.Timeout(7.0, connect=3.0)
    async with httpx.AsyncClient(transport=transport, timeout=timeout) as token_client:
        auth = RegistryAuth(REGISTRY, token_client, allowed=ALLOWED)
        async with httpx.AsyncClient(base_url=REGISTRY, auth=auth, transport=transport, timeout=timeout) as client:
            await client.get("/v2/library/a/manifests/1")
    assert [r.url.path for r in fake.requests][:1] == ["/v2/"]
    assert all(r.extensions["timeout"] == timeout.as_dict() for r in fake.requests + fake.token_requests)


def challenged_by(realm: str, token_requests: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token") or request.url.path == "/t":
            token_requests.append(request)
            return httpx.Response(200, json={"token": "t"})
        if request.headers.get("authorization") == "Bearer t":
            return httpx.Response(200, json={})
        return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="s"'})

    return httpx.MockTransport(handler)


async def pull_with_realm(
    upstream: str, realm: str, allowed: AllowedHosts | None = None, token_requests: list[httpx.Request] | None = None
) -> list[httpx.Request]:
    """Token requests made while pulling from ``upstream`` (credentials u:p) whose challenge names ``realm``."""
    token_requests = [] if token_requests is None else token_requests
    transport = challenged_by(realm, token_requests)
    async with httpx.AsyncClient(transport=transport) as token_client:
        auth = RegistryAuth(upstream, token_client, "u", "p", allowed=allowed)
        async with httpx.AsyncClient(base_url=upstream, auth=auth, transport=transport) as client:
            response = await client.get("/v2/x/manifests/1")
            assert response.status_code == 200
    return token_requests


@pytest.mark.parametrize(
    ("upstream", "realm"),
    [
        # Same last two labels, different owners: a public suffix is not a site.
        ("https://registry.example.co.uk", "https://evil.co.uk/token"),
        ("https://registry.example.co.uk", "https://auth.other.co.uk/token"),
        ("https://app.herokuapp.com", "https://evil.herokuapp.com/token"),
        ("https://registry-1.docker.io", "https://auth.docker.io.evil.example/token"),
        ("https://127.0.0.1:5000", "https://127.0.0.2/token"),
    ],
)
async def test_a_realm_not_configured_gets_no_request_and_no_credentials(upstream: str, realm: str) -> None:
    token_requests: list[httpx.Request] = []
    with pytest.raises(RegistryError) as info:
        await pull_with_realm(upstream, realm, token_requests=token_requests)
    assert info.value.status == 502
    assert "not in its token_realms" in info.value.message
    assert token_requests == []


@pytest.mark.parametrize(
    ("upstream", "realm", "configured"),
    [
        ("https://registry.example.co.uk", "https://registry.example.co.uk:8443/token", ()),  # its own host
        ("http://127.0.0.1:5000", "http://127.0.0.1:5001/token", ()),  # its own host, another port
        ("https://registry-1.docker.io", "https://auth.docker.io/token", ("https://auth.docker.io/token",)),
        ("https://registry-1.docker.io", "https://AUTH.docker.io:443/token", ("https://auth.docker.io/token",)),
        ("https://registry.example.co.uk", "https://auth.example.co.uk/t", ("auth.example.co.uk",)),
    ],
)
async def test_the_own_host_and_configured_realms_get_the_credentials(
    upstream: str, realm: str, configured: tuple[str, ...]
) -> None:
    allowed = AllowedHosts.for_url("r", upstream, token_realms=configured)
    [token_request] = await pull_with_realm(upstream, realm, allowed)
    assert token_request.headers["authorization"] == "Basic " + base64.b64encode(b"u:p").decode()


@pytest.mark.parametrize(
    "realm",
    [
        "http://auth.docker.io/token",  # another scheme
        "https://auth.docker.io:8443/token",  # another port
        "https://auth.docker.io/other",  # another path
    ],
)
async def test_a_realm_url_matches_exactly(realm: str) -> None:
    allowed = AllowedHosts.for_url(
        "docker.io", "https://registry-1.docker.io", token_realms=("https://auth.docker.io/token",)
    )
    token_requests: list[httpx.Request] = []
    with pytest.raises(RegistryError) as info:
        await pull_with_realm("https://registry-1.docker.io", realm, allowed, token_requests)
    assert info.value.status == 502
    assert token_requests == []


# -- bounded state (issue 8, item 5) --------------------------------------------------------------------------------

TOKEN_ANSWER = httpx.Response(200, json={"token": "t" * 1000, "expires_in": 300})


class InstantTokens(httpx.AsyncClient):
    """A token service that answers at once, without a transport: 100,000 fetches in seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.fetches = 0

    async def get(self, url, *args, **kwargs):
        self.fetches += 1
        return TOKEN_ANSWER


BEARER = Challenge("bearer", {"realm": REALM, "service": "registry.example.com"})


async def test_tokens_and_fetches_stay_bounded_across_100000_repositories() -> None:
    async with InstantTokens() as token_client:
        auth = RegistryAuth(REGISTRY, token_client, allowed=ALLOWED)
        for batch in range(100):  # 100 x 1000 distinct repositories, 1000 at a time
            scopes = [f"repository:team{batch}/app{i}:pull" for i in range(1000)]
            tokens = await asyncio.gather(*(auth._token(BEARER, scope) for scope in scopes))
            assert {t.value for t in tokens} == {"t" * 1000}
            assert len(auth._tokens) <= MAX_CACHED_TOKENS
            assert auth._fetches == {}  # only fetches in progress are kept
        assert token_client.fetches == 100_000
        assert len(auth._tokens) == MAX_CACHED_TOKENS


async def test_the_least_recently_used_token_goes_first_and_expired_ones_before_it() -> None:
    clock = Clock()
    async with InstantTokens() as token_client:
        auth = RegistryAuth(REGISTRY, token_client, clock=clock, allowed=ALLOWED)
        for i in range(MAX_CACHED_TOKENS):
            await auth._token(BEARER, f"repository:r{i}:pull")
        await auth._token(BEARER, "repository:r0:pull")  # used again: now the most recent
        await auth._token(BEARER, "repository:new:pull")  # one too many: r1 goes, not r0
        assert token_client.fetches == MAX_CACHED_TOKENS + 1
        await auth._token(BEARER, "repository:r0:pull")
        assert token_client.fetches == MAX_CACHED_TOKENS + 1
        await auth._token(BEARER, "repository:r1:pull")
        assert token_client.fetches == MAX_CACHED_TOKENS + 2

        clock.now += 300  # every token has expired: the next fetch drops them all
        await auth._token(BEARER, "repository:later:pull")
        assert len(auth._tokens) == 1


async def test_concurrent_waiters_share_one_failed_fetch() -> None:
    token_requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        token_requests.append(request)
        return httpx.Response(500)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as token_client:
        auth = RegistryAuth(REGISTRY, token_client, allowed=ALLOWED)
        results = await asyncio.gather(
            *(auth._token(BEARER, "repository:a:pull") for _ in range(20)), return_exceptions=True
        )
    assert all(isinstance(r, RegistryError) and r.status == 502 for r in results)
    assert len(token_requests) == 1  # a token service in trouble is asked once, not once per waiter
    assert auth._fetches == {}


async def test_waiting_for_a_pooled_token_connection_is_congestion_not_an_outage() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.PoolTimeout("no connection free", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as token_client:
        auth = RegistryAuth(REGISTRY, token_client, allowed=ALLOWED)
        with pytest.raises(Congested) as info:
            await auth._token(BEARER, "repository:a:pull")
    assert (info.value.status, info.value.code) == (503, "UPSTREAM_UNAVAILABLE")


# -- no credentials in clear text ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("realm", "configured"),
    [
        ("http://registry.example.co.uk/token", ()),  # the upstream's own host, on plain http
        ("http://registry.example.co.uk:8080/token", ()),
        ("http://auth.example.co.uk/token", ("auth.example.co.uk",)),  # a configured host: trusted, but not in clear
        ("http://auth.example.co.uk/token", ("http://auth.example.co.uk/token",)),  # even when configured as http
    ],
)
async def test_credentials_of_an_https_upstream_never_go_to_a_plain_http_realm(
    realm: str, configured: tuple[str, ...]
) -> None:
    upstream = "https://registry.example.co.uk"
    allowed = AllowedHosts.for_url("r", upstream, token_realms=configured)
    token_requests: list[httpx.Request] = []
    with pytest.raises(RegistryError) as info:
        await pull_with_realm(upstream, realm, allowed, token_requests)
    assert (info.value.status, info.value.code) == (502, "UPSTREAM_ERROR")
    assert "plain http" in info.value.message
    assert token_requests == []  # not even a connection


async def test_an_anonymous_pull_may_use_a_plain_http_realm() -> None:
    # Nothing secret to send: the token comes back over http, and goes to the upstream over https.
    token_requests: list[httpx.Request] = []
    transport = challenged_by("http://registry.example.co.uk/token", token_requests)
    async with httpx.AsyncClient(transport=transport) as token_client:
        auth = RegistryAuth("https://registry.example.co.uk", token_client)
        async with httpx.AsyncClient(base_url="https://registry.example.co.uk", auth=auth, transport=transport) as c:
            assert (await c.get("/v2/x/manifests/1")).status_code == 200
    [token_request] = token_requests
    assert "authorization" not in token_request.headers
