"""One proxy, two upstreams (Docker Hub and a ghcr.io stand-in), routed by ns= and by path prefix."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.images import Images
from tests.harness.proxy_server import ProxyServer
from tests.harness.registry import DistributionRegistry
from tests.harness.skopeo import read_dir_layout, skopeo_copy
from tests.harness.upstreams import ghcr_env, ghcr_upstream_config

ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


@pytest.fixture(scope="module")
def proxy(
    upstream_registry: DistributionRegistry,
    ghcr_registry: DistributionRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyServer]:
    workdir = tmp_path_factory.mktemp("routing-proxy")
    config = ghcr_upstream_config(ghcr_registry)
    with ProxyServer(workdir, upstream_registry.url, extra_config=config, env=ghcr_env()) as server:
        yield server


def test_prefix_reaches_the_second_upstream(
    proxy: ProxyServer, ghcr_registry: DistributionRegistry, images: Images, skopeo: str, tmp_path: Path
) -> None:
    mark = ghcr_registry.mark()
    skopeo_copy(proxy.ref("ghcr.io/org/app:1"), tmp_path / "pulled")
    assert read_dir_layout(tmp_path / "pulled").manifest_digest == images["oci"].digest
    ghcr_registry.wait_quiet()
    served = [r.path for r in ghcr_registry.requests_since(mark) if r.status == 200]
    assert "/v2/org/app/manifests/1" in served


def test_ns_reaches_the_second_upstream_and_is_echoed(
    ghcr_registry: DistributionRegistry, upstream_registry: DistributionRegistry, images: Images, tmp_path: Path
) -> None:
    image = images["oci"]
    blob = image.layers[0]
    config = ghcr_upstream_config(ghcr_registry)
    # A proxy of its own: with an empty cache, every answer below has to come from an upstream.
    with ProxyServer(tmp_path / "proxy", upstream_registry.url, extra_config=config, env=ghcr_env()) as proxy:
        mark, hub_mark = ghcr_registry.mark(), upstream_registry.mark()
        response = httpx.get(f"{proxy.url}/v2/org/app/manifests/1?ns=ghcr.io", headers=ACCEPT, timeout=30)
        assert response.status_code == 200
        assert response.content == image.manifest
        assert response.headers["oci-namespace"] == "ghcr.io"
        response = httpx.get(f"{proxy.url}/v2/org/app/blobs/{blob.digest}?ns=ghcr.io", timeout=30)
        assert response.status_code == 200 and len(response.content) == blob.size
        ghcr_registry.wait_quiet()
        upstream_registry.wait_quiet()
        served = {(r.method, r.path) for r in ghcr_registry.requests_since(mark) if r.status == 200}
        assert ("GET", "/v2/org/app/manifests/1") in served
        assert ("GET", f"/v2/org/app/blobs/{blob.digest}") in served
        assert upstream_registry.requests_since(hub_mark) == []


class Listener:
    """A loopback port that counts the connections made to it: nothing may ever connect here."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def test_unknown_registries_are_404_without_any_connection(proxy: ProxyServer) -> None:
    listener = Listener()
    try:
        here = f"127.0.0.1:{listener.port}"
        for path in (
            f"/v2/org/app/manifests/1?ns={here}",
            f"/v2/{here}/org/app/manifests/1",
            f"/v2/{here}/org/app/blobs/sha256:{'0' * 64}",
            "/v2/org/app/manifests/1?ns=quay.io",
            "/v2/quay.io/org/app/tags/list",
        ):
            response = httpx.get(proxy.url + path, timeout=30)
            assert response.status_code == 404, path
            assert response.json()["errors"][0]["code"] == "NAME_UNKNOWN"
    finally:
        listener.close()
    assert listener.accepted == 0


def test_tags_pagination_through_the_proxy(proxy: ProxyServer, images: Images) -> None:
    # Distribution pages tags itself; its Link must come back pointing at the proxy and the client's name.
    response = httpx.get(f"{proxy.url}/v2/ghcr.io/org/app/tags/list?n=1", timeout=30)
    assert response.status_code == 200
    assert json.loads(response.content) == {"name": "org/app", "tags": ["1"]}
    response = httpx.get(f"{proxy.url}/v2/ghcr.io/org/app/tags/list?n=0", timeout=30)
    assert json.loads(response.content)["tags"] == [] and "link" not in response.headers
    repository = images["index"].repository
    response = httpx.get(f"{proxy.url}/v2/{repository}/tags/list", timeout=30)
    assert json.loads(response.content)["tags"] == ["1"]


def test_referrers_of_an_upstream_without_the_api(proxy: ProxyServer, images: Images) -> None:
    # Distribution 2.8 predates the referrers API: clients get a 404 and fall back to the tag schema.
    image = images["oci"]
    response = httpx.get(f"{proxy.url}/v2/{image.repository}/referrers/{image.digest}", timeout=30)
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "NOT_FOUND"


def test_catalog_lists_what_was_pulled(proxy: ProxyServer, images: Images) -> None:
    image = images["docker"]
    assert httpx.get(f"{proxy.url}/v2/{image.repository}/manifests/{image.tag}", timeout=30).status_code == 200
    assert httpx.get(f"{proxy.url}/v2/ghcr.io/org/app/manifests/1", headers=ACCEPT, timeout=30).status_code == 200
    repositories = json.loads(httpx.get(f"{proxy.url}/v2/_catalog", timeout=30).content)["repositories"]
    assert image.repository in repositories
    assert "ghcr.io/org/app" in repositories
