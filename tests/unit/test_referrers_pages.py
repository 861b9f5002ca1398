"""Issue 7, item 7: a referrers list the upstream pages is passed on page by page, through the proxy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
import pytest
from starlette.testclient import TestClient

from proxy.app import create_app
from proxy.config import Settings, StorageSettings, UpstreamSettings
from tests.unit.fakes import OCI_INDEX, OCI_MANIFEST, REGISTRY, FakeRegistry, sha256

GHCR = "https://ghcr.example.com"
SUBJECT = sha256(b"subject")


def referrer(name: str, artifact_type: str) -> dict[str, object]:
    return {"mediaType": OCI_MANIFEST, "digest": sha256(name.encode()), "size": 2, "artifactType": artifact_type}


PAGES = {
    # The upstream's own paging query, opaque to clients (and to the proxy): a token, not n/last.
    "": ([referrer("sig", "application/sig"), referrer("sbom-1", "application/sbom")], "n=2&next_token=t1"),
    "t1": ([referrer("sbom-2", "application/sbom")], None),
}


class PagedReferrers:
    """The upstream's referrers endpoint: two pages, the first with a Link to the second."""

    def __init__(self) -> None:
        self.pages = dict(PAGES)
        self.queries: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        query = dict(parse_qsl(request.url.query.decode()))
        self.queries.append(query)
        manifests, next_query = self.pages[query.get("next_token", "")]
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()
        headers = {"Content-Type": OCI_INDEX}
        if next_query:
            headers["Link"] = f'<{request.url.path}?{next_query}>; rel="next"'
        return httpx.Response(200, content=body, headers=headers)


@pytest.fixture
def ghcr() -> FakeRegistry:
    registry = FakeRegistry(require_auth=False)
    registry.referrers_handler = PagedReferrers()  # type: ignore[attr-defined]
    return registry


@pytest.fixture
def client(tmp_path: Path, ghcr: FakeRegistry) -> Iterator[TestClient]:
    hub = FakeRegistry()

    def route(request: httpx.Request) -> httpx.Response:
        return ghcr(request) if request.url.host == "ghcr.example.com" else hub(request)

    settings = Settings(
        storage=StorageSettings(root=tmp_path / "cache"),
        upstreams=(
            UpstreamSettings(registry="docker.io", url=REGISTRY),
            UpstreamSettings(registry="ghcr.io", url=GHCR),
        ),
    )
    with TestClient(create_app(settings, transport=httpx.MockTransport(route))) as test_client:
        yield test_client


def upstream(ghcr: FakeRegistry) -> PagedReferrers:
    handler = ghcr.referrers_handler  # type: ignore[attr-defined]
    assert isinstance(handler, PagedReferrers)
    return handler


def upstream_queries(ghcr: FakeRegistry) -> list[dict[str, str]]:
    return upstream(ghcr).queries


def digests(response: httpx.Response) -> list[str]:
    return [m["digest"] for m in response.json()["manifests"]]


def next_target(response: httpx.Response) -> str:
    link = response.headers["link"]
    assert link.startswith("<") and link.endswith('>; rel="next"'), link
    return link[1 : link.index(">")]


def test_pages_are_passed_on_under_the_clients_name_and_ns(client: TestClient, ghcr: FakeRegistry) -> None:
    first = client.get(f"/v2/org/app/referrers/{SUBJECT}?ns=ghcr.io")
    assert first.status_code == 200
    assert digests(first) == [sha256(b"sig"), sha256(b"sbom-1")]
    assert next_target(first) == f"/v2/org/app/referrers/{SUBJECT}?n=2&next_token=t1&ns=ghcr.io"
    second = client.get(next_target(first))
    assert second.status_code == 200
    assert digests(second) == [sha256(b"sbom-2")]
    assert "link" not in second.headers
    assert second.headers["oci-namespace"] == "ghcr.io"
    # The upstream got its own query back, without the proxy's ns.
    assert upstream_queries(ghcr) == [{}, {"n": "2", "next_token": "t1"}]


def test_filtered_pages_keep_the_filter_and_the_upstream_pages_unfiltered(
    client: TestClient, ghcr: FakeRegistry
) -> None:
    first = client.get(f"/v2/ghcr.io/org/app/referrers/{SUBJECT}?artifactType=application/sbom")
    assert digests(first) == [sha256(b"sbom-1")]
    assert first.headers["oci-filters-applied"] == "artifactType"
    target = next_target(first)
    assert target.startswith(f"/v2/ghcr.io/org/app/referrers/{SUBJECT}?")
    assert dict(parse_qsl(target.partition("?")[2])) == {
        "n": "2",
        "next_token": "t1",
        "artifactType": "application/sbom",
    }
    second = client.get(target)
    assert digests(second) == [sha256(b"sbom-2")]
    assert second.headers["oci-filters-applied"] == "artifactType"
    assert upstream_queries(ghcr) == [{}, {"n": "2", "next_token": "t1"}]


def test_only_a_list_that_fits_one_page_is_cached(client: TestClient, ghcr: FakeRegistry) -> None:
    path = f"/v2/ghcr.io/org/app/referrers/{SUBJECT}"
    for _ in range(2):
        assert "link" in client.get(path).headers  # a paged first page would lose its Link in the cache
    assert len(upstream_queries(ghcr)) == 2
    upstream(ghcr).pages[""] = (PAGES["t1"][0], None)  # the list shrank to one page
    for _ in range(2):
        assert "link" not in client.get(path).headers
    assert len(upstream_queries(ghcr)) == 3  # the complete list was cached


def test_unreasonable_page_queries_are_refused(client: TestClient, ghcr: FakeRegistry) -> None:
    many = "&".join(f"p{n}=x" for n in range(20))
    assert client.get(f"/v2/ghcr.io/org/app/referrers/{SUBJECT}?{many}").status_code == 400
    assert client.get(f"/v2/ghcr.io/org/app/referrers/{SUBJECT}?token={'x' * 2000}").status_code == 400
    assert upstream_queries(ghcr) == []
