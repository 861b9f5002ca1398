"""Several upstreams: ns= and path-prefix routing, tags pagination and fallback, referrers, catalog."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from proxy.app import create_app
from proxy.config import Settings, StorageSettings, UpstreamSettings
from tests.unit.fakes import (
    FAKE_REDIRECT_HOSTS,
    FAKE_TOKEN_REALMS,
    OCI_INDEX,
    OCI_MANIFEST,
    REGISTRY,
    FakeRegistry,
    sha256,
)

GHCR = "https://ghcr.example.com"
MANIFEST = b'{"schemaVersion":2,"mediaType":"' + OCI_MANIFEST.encode() + b'","layers":[]}'


class Upstreams:
    """Dispatches by host to one FakeRegistry per upstream; counts requests to hosts nobody configured."""

    def __init__(self) -> None:
        self.hub = FakeRegistry()
        self.ghcr = FakeRegistry(require_auth=False)  # its own auth is tested elsewhere
        self.strangers: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "ghcr.example.com":
            return self.ghcr(request)
        if request.url.host in ("registry.example.com", "auth.example.com", "cdn.example.net"):
            return self.hub(request)
        self.strangers.append(request)
        return httpx.Response(599)


@pytest.fixture
def upstreams() -> Upstreams:
    fakes = Upstreams()
    fakes.hub.add_manifest("library/app", "1", OCI_MANIFEST, MANIFEST)
    fakes.ghcr.add_manifest("org/app", "1", OCI_MANIFEST, MANIFEST)
    for tag in ("a", "b", "c", "d"):
        fakes.ghcr.add_manifest("org/app", tag, OCI_MANIFEST, MANIFEST)
    return fakes


@pytest.fixture
def client(tmp_path: Path, upstreams: Upstreams) -> Iterator[TestClient]:
    settings = Settings(
        storage=StorageSettings(root=tmp_path / "cache"),
        upstreams=(
            UpstreamSettings(
                registry="docker.io", url=REGISTRY, redirect_hosts=FAKE_REDIRECT_HOSTS, token_realms=FAKE_TOKEN_REALMS
            ),
            UpstreamSettings(registry="ghcr.io", url=GHCR, tag_ttl=0),
        ),
    )
    with TestClient(create_app(settings, transport=httpx.MockTransport(upstreams))) as test_client:
        yield test_client


def test_path_prefix_routes_to_that_upstream(client: TestClient, upstreams: Upstreams) -> None:
    response = client.get("/v2/ghcr.io/org/app/manifests/1")
    assert response.status_code == 200
    assert upstreams.ghcr.count("GET", "/v2/org/app/manifests/1") == 1
    assert upstreams.hub.count("GET") == 0
    assert "oci-namespace" not in response.headers


def test_ns_routes_and_is_echoed(client: TestClient, upstreams: Upstreams) -> None:
    response = client.get("/v2/org/app/manifests/1?ns=ghcr.io")
    assert response.status_code == 200
    assert response.headers["oci-namespace"] == "ghcr.io"
    assert upstreams.ghcr.count("GET", "/v2/org/app/manifests/1") == 1
    response = client.get("/v2/library/app/manifests/1?ns=docker.io")
    assert response.status_code == 200
    assert response.headers["oci-namespace"] == "docker.io"
    assert upstreams.hub.count("GET", "/v2/library/app/manifests/1") == 1


def test_no_registry_named_means_docker_hub(client: TestClient, upstreams: Upstreams) -> None:
    assert client.get("/v2/app/manifests/1").status_code == 200
    assert upstreams.hub.count("GET", "/v2/library/app/manifests/1") == 1


@pytest.mark.parametrize(
    "path",
    [
        "/v2/org/app/manifests/1?ns=quay.io",
        "/v2/org/app/manifests/1?ns=127.0.0.1:9",
        "/v2/quay.io/org/app/manifests/1",
        "/v2/localhost:5000/org/app/manifests/1",
        "/v2/localhost/org/app/blobs/sha256:" + "0" * 64,
        "/v2/evil.example.com/org/app/tags/list",
    ],
)
def test_unconfigured_registries_are_unknown_and_never_contacted(
    client: TestClient, upstreams: Upstreams, path: str
) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "NAME_UNKNOWN"
    assert upstreams.strangers == []
    assert upstreams.hub.requests == [] and upstreams.ghcr.requests == []


def test_caches_are_keyed_by_registry(client: TestClient, tmp_path: Path) -> None:
    client.get("/v2/app/manifests/1")
    client.get("/v2/ghcr.io/org/app/manifests/1")
    repositories = tmp_path / "cache" / "repositories"
    assert (repositories / "docker.io" / "library" / "app" / "_tags" / "1").is_file()
    assert (repositories / "ghcr.io" / "org" / "app" / "_tags" / "1").is_file()
    # The manifest bytes themselves are one blob, shared by digest.
    assert len(list((tmp_path / "cache" / "blobs").rglob(sha256(MANIFEST).split(":")[1]))) == 1


def test_tags_pagination_link_points_back_at_the_proxy(client: TestClient, upstreams: Upstreams) -> None:
    def upstream_page(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={"name": "org/app", "tags": ["1", "a"]},
            headers={"Link": '</v2/org/app/tags/list?last=a&n=2>; rel="next"'},
        )

    upstreams.ghcr.tags_handler = upstream_page  # type: ignore[attr-defined]
    response = client.get("/v2/ghcr.io/org/app/tags/list?n=2")
    assert response.status_code == 200
    assert response.headers["link"] == '</v2/ghcr.io/org/app/tags/list?last=a&n=2>; rel="next"'
    response = client.get("/v2/org/app/tags/list?n=2&ns=ghcr.io")
    assert response.headers["link"] == '</v2/org/app/tags/list?last=a&n=2&ns=ghcr.io>; rel="next"'


def test_tags_n_zero_is_empty_without_link(client: TestClient, upstreams: Upstreams) -> None:
    response = client.get("/v2/ghcr.io/org/app/tags/list?n=0")
    assert response.status_code == 200
    assert json.loads(response.content)["tags"] == []
    assert "link" not in response.headers
    assert upstreams.ghcr.requests == []


def test_tags_fall_back_to_the_cache_when_the_upstream_is_down(client: TestClient, upstreams: Upstreams) -> None:
    for tag in ("1", "a", "b", "c"):
        assert client.get(f"/v2/ghcr.io/org/app/manifests/{tag}").status_code == 200
    upstreams.ghcr.fail = 503
    response = client.get("/v2/ghcr.io/org/app/tags/list?n=2&last=1")
    assert response.status_code == 200
    assert json.loads(response.content) == {"name": "org/app", "tags": ["a", "b"]}
    assert response.headers["link"] == '</v2/ghcr.io/org/app/tags/list?n=2&last=b>; rel="next"'
    assert response.headers["warning"] == '110 - "Response is Stale"'
    last_page = client.get("/v2/ghcr.io/org/app/tags/list?n=2&last=b")
    assert json.loads(last_page.content)["tags"] == ["c"]
    assert "link" not in last_page.headers


def test_catalog_lists_cached_repositories(client: TestClient) -> None:
    client.get("/v2/app/manifests/1")
    client.get("/v2/ghcr.io/org/app/manifests/1")
    response = client.get("/v2/_catalog")
    assert json.loads(response.content) == {"repositories": ["ghcr.io/org/app", "library/app"]}
    page = client.get("/v2/_catalog?n=1")
    assert json.loads(page.content) == {"repositories": ["ghcr.io/org/app"]}
    assert page.headers["link"] == '</v2/_catalog?n=1&last=ghcr.io%2Forg%2Fapp>; rel="next"'


def test_referrers_are_passed_through_filtered_and_cached(client: TestClient, upstreams: Upstreams) -> None:
    subject = sha256(MANIFEST)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": sha256(b"sig"), "size": 3, "artifactType": "application/sig"},
            {"mediaType": OCI_MANIFEST, "digest": sha256(b"sbom"), "size": 4, "artifactType": "application/sbom"},
        ],
    }
    served = json.dumps(index).encode()

    def referrers(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=served, headers={"Content-Type": OCI_INDEX})

    upstreams.ghcr.referrers_handler = referrers  # type: ignore[attr-defined]
    response = client.get(f"/v2/ghcr.io/org/app/referrers/{subject}")
    assert response.status_code == 200
    assert response.content == served
    assert response.headers["content-type"] == OCI_INDEX
    filtered = client.get(f"/v2/ghcr.io/org/app/referrers/{subject}?artifactType=application/sbom")
    assert filtered.headers["oci-filters-applied"] == "artifactType"
    assert [m["artifactType"] for m in filtered.json()["manifests"]] == ["application/sbom"]
    upstreams.ghcr.fail = 503  # ghcr's tag_ttl is 0: the cache is stale at once, and stands in
    stale = client.get(f"/v2/ghcr.io/org/app/referrers/{subject}")
    assert stale.status_code == 200 and stale.content == served
    assert stale.headers["warning"] == '110 - "Response is Stale"'
    assert client.get("/v2/ghcr.io/org/app/referrers/sha256:nope").status_code == 400


def test_referrers_unsupported_upstream_is_404(client: TestClient) -> None:
    response = client.get(f"/v2/app/referrers/{sha256(MANIFEST)}")
    assert response.status_code == 404
    assert "referrers" in response.json()["errors"][0]["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/v2/library/app/manifests/1?ns=doc%E2%84%AAer.io",  # the Kelvin sign lower-cases to "k"
        "/v2/library/app/blobs/sha256:" + "a" * 64 + "?ns=ghcr.%C4%B1o",
        "/v2/library/app/tags/list?ns=docker.io%C2%A0",
        "/v2/doc%E2%84%AAer.io/library/app/manifests/1",
        "/v2/library/%E2%84%AApp/manifests/1",
    ],
)
def test_non_ascii_names_and_namespaces_are_400_before_routing(
    client: TestClient, upstreams: Upstreams, path: str
) -> None:
    for method in ("GET", "HEAD"):
        response = client.request(method, path)
        assert response.status_code == 400
        if method == "GET":
            assert response.json()["errors"][0]["code"] == "NAME_INVALID"
    assert upstreams.hub.requests == [] and upstreams.ghcr.requests == [] and upstreams.strangers == []
