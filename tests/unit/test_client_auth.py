"""Client authentication and access rules (proxy/auth), through the app with an in-memory upstream."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest
from starlette.testclient import TestClient

from proxy.app import create_app
from proxy.config import (
    AccessSettings,
    AuthSettings,
    Settings,
    StaticToken,
    StorageSettings,
    UpstreamSettings,
)
from tests.conftest import Secrets
from tests.unit.fakes import FAKE_REDIRECT_HOSTS, FAKE_TOKEN_REALMS, OCI_MANIFEST, REGISTRY, FakeRegistry

PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-22", "carol": "carol-secret-333"}
STATIC_TOKEN = "static-token-0123456789abcdef"
MANIFEST = b'{"schemaVersion":2,"mediaType":"' + OCI_MANIFEST.encode() + b'","layers":[]}'

AppFactory = Callable[..., TestClient]


@pytest.fixture(autouse=True)
def registered(used_secrets: Secrets) -> Secrets:
    """Every password and token these tests use is grepped for in every log at the end of the suite."""
    used_secrets.add(*PASSWORDS.values(), STATIC_TOKEN, "upstream-password")
    used_secrets.watch(ISSUED)
    return used_secrets


ISSUED: list[str] = []  # tokens the proxy issued in these tests (watched by the suite's log check)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def upstream() -> FakeRegistry:
    fake = FakeRegistry()
    for repository in ("library/alpine", "private/app", "team/tool"):
        fake.add_manifest(repository, "1", OCI_MANIFEST, MANIFEST)
    return fake


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    lines = [f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(4)).decode()}" for user, pw in PASSWORDS.items()]
    path.write_text("# users\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture
def make_app(tmp_path: Path, upstream: FakeRegistry, htpasswd: Path) -> Iterator[AppFactory]:
    clients: list[TestClient] = []

    def factory(access: tuple[AccessSettings, ...] = (), username: str | None = None, **auth: object) -> TestClient:
        upstream_settings = UpstreamSettings(
            registry="docker.io",
            url=REGISTRY,
            redirect_hosts=FAKE_REDIRECT_HOSTS,
            token_realms=FAKE_TOKEN_REALMS,
            username=username,
            password="upstream-password" if username else None,
        )
        auth_settings = AuthSettings(
            **{  # type: ignore[arg-type]
                "htpasswd": htpasswd,
                "tokens": (StaticToken("ci-runner", STATIC_TOKEN),),
                "groups": (("ci", ("carol",)),),
                **auth,
            }
        )
        settings = Settings(
            storage=StorageSettings(root=tmp_path / "cache"),
            upstreams=(upstream_settings,),
            auth=auth_settings,
            access=access,
        )
        if username:
            upstream.credentials = (username, "upstream-password")
        client = TestClient(create_app(settings, transport=httpx.MockTransport(upstream)))
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


RULES = (
    AccessSettings("docker.io", "library/*", "anonymous"),
    AccessSettings("docker.io", "private/*", "authenticated"),
    AccessSettings("docker.io", "team/*", ("alice", "group:ci")),
)


def token_for(client: TestClient, headers: dict[str, str] | None = None, scope: str | None = None) -> str:
    params = {"service": "registry-proxy", **({"scope": scope} if scope else {})}
    response = client.get("/auth/token", params=params, headers=headers or {})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token"] == body["access_token"] and body["expires_in"] == 300
    token: str = body["token"]
    ISSUED.append(token)
    return token


def test_v2_challenges_clients_to_the_proxy_s_own_token_service(make_app: AppFactory) -> None:
    client = make_app(RULES)
    response = client.get("/v2/")
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert (
        response.headers["www-authenticate"] == 'Bearer realm="http://testserver/auth/token",service="registry-proxy"'
    )
    # docker login: a token with Basic credentials, then /v2/ with it.
    assert client.get("/v2/", headers=bearer(token_for(client, basic("alice", PASSWORDS["alice"])))).status_code == 200
    # An anonymous token shows the client speaks the token protocol: /v2/ is 200 to it, as Distribution does.
    assert client.get("/v2/", headers=bearer(token_for(client))).status_code == 200
    # Plain Basic works too.
    assert client.get("/v2/", headers=basic("bob", PASSWORDS["bob"])).status_code == 200


def test_public_content_stays_pullable_without_login(make_app: AppFactory) -> None:
    client = make_app(RULES)
    assert client.get("/v2/library/alpine/manifests/1").status_code == 200
    assert client.get("/v2/alpine/manifests/1", headers=bearer(token_for(client))).status_code == 200


@pytest.mark.parametrize("reference", ["1", "sha256:" + "0" * 64])
def test_private_content_needs_a_login_and_sends_no_bytes(
    make_app: AppFactory, upstream: FakeRegistry, reference: str
) -> None:
    client = make_app(RULES)
    user_token = token_for(client, basic("bob", PASSWORDS["bob"]), "repository:private/app:pull")
    assert client.get("/v2/private/app/manifests/1", headers=bearer(user_token)).status_code == 200
    before = len(upstream.requests)
    for headers in ({}, bearer(token_for(client))):
        response = client.get(f"/v2/private/app/manifests/{reference}", headers=headers)
        assert response.status_code == 401
        assert MANIFEST not in response.content
        assert 'scope="repository:private/app:pull"' in response.headers["www-authenticate"]
    assert len(upstream.requests) == before  # refused before anything was asked upstream


def test_named_users_and_groups(make_app: AppFactory) -> None:
    client = make_app(RULES)
    path = "/v2/team/tool/manifests/1"
    assert client.get(path, headers=basic("alice", PASSWORDS["alice"])).status_code == 200
    assert client.get(path, headers=basic("carol", PASSWORDS["carol"])).status_code == 200  # group:ci
    denied = client.get(path, headers=basic("bob", PASSWORDS["bob"]))
    assert denied.status_code == 403 and denied.json()["errors"][0]["code"] == "DENIED"
    assert client.get(path).status_code == 401


def test_static_tokens_as_bearer_or_as_a_password(make_app: AppFactory) -> None:
    client = make_app(RULES)
    assert client.get("/v2/private/app/manifests/1", headers=bearer(STATIC_TOKEN)).status_code == 200
    assert client.get("/v2/private/app/manifests/1", headers=basic("ci-runner", STATIC_TOKEN)).status_code == 200
    assert client.get("/v2/private/app/manifests/1", headers=basic("someone-else", STATIC_TOKEN)).status_code == 401


def test_upstreams_with_credentials_need_a_login_by_default(make_app: AppFactory) -> None:
    client = make_app((), username="hub-user")
    assert client.get("/v2/library/alpine/manifests/1").status_code == 401
    assert client.get("/v2/library/alpine/manifests/1", headers=basic("bob", PASSWORDS["bob"])).status_code == 200


def test_bad_credentials_get_a_challenge_and_then_a_rate_limit(make_app: AppFactory) -> None:
    client = make_app(RULES)
    for _ in range(10):
        response = client.get("/v2/library/alpine/manifests/1", headers=basic("alice", "wrong"))
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith('Bearer realm="http://testserver/auth/token"')
        assert "wrong" not in response.text
    limited = client.get("/v2/library/alpine/manifests/1", headers=basic("alice", PASSWORDS["alice"]))
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    assert limited.json()["errors"][0]["code"] == "TOOMANYREQUESTS"


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer not-a-token",
        "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.",  # alg "none": never accepted
        "Basic !!!",
        "Digest username=alice",
        "Basic " + "A" * 10_000,
    ],
)
def test_malformed_or_forged_credentials_are_401(make_app: AppFactory, authorization: str) -> None:
    client = make_app(RULES)
    response = client.get("/v2/private/app/manifests/1", headers={"Authorization": authorization})
    assert response.status_code == 401 and response.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_a_token_signed_with_another_key_is_refused(make_app: AppFactory, tmp_path: Path) -> None:
    other = make_app(RULES, token_key_file=tmp_path / "other.key")
    foreign = token_for(other, basic("alice", PASSWORDS["alice"]))
    client = make_app(RULES)
    assert client.get("/v2/private/app/manifests/1", headers=bearer(foreign)).status_code == 401


def test_the_catalog_lists_only_what_the_client_may_pull(make_app: AppFactory) -> None:
    client = make_app(RULES)
    for repository in ("library/alpine", "private/app", "team/tool"):
        assert (
            client.get(f"/v2/{repository}/manifests/1", headers=basic("alice", PASSWORDS["alice"])).status_code == 200
        )
    assert client.get("/v2/_catalog").json()["repositories"] == ["library/alpine"]
    everything = client.get("/v2/_catalog", headers=basic("alice", PASSWORDS["alice"])).json()["repositories"]
    assert everything == ["library/alpine", "private/app", "team/tool"]
    bob = client.get("/v2/_catalog", headers=basic("bob", PASSWORDS["bob"])).json()["repositories"]
    assert bob == ["library/alpine", "private/app"]


def test_token_requests_are_bounded(make_app: AppFactory) -> None:
    client = make_app(RULES)
    response = client.get("/auth/token", params=[("scope", "repository:a:pull")] * 17)
    assert response.status_code == 400
    assert json.loads(response.content)["errors"][0]["code"] == "INVALID_SCOPE"


def test_without_auth_there_is_no_token_service(tmp_path: Path, upstream: FakeRegistry) -> None:
    settings = Settings(storage=StorageSettings(root=tmp_path / "cache"))
    with TestClient(create_app(settings, transport=httpx.MockTransport(upstream))) as client:
        assert client.get("/v2/").status_code == 200
        assert client.get("/auth/token").status_code == 404
