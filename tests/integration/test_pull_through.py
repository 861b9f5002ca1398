"""skopeo pulls seeded images through the proxy (a real uvicorn process) from a real token-auth Distribution."""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.blobstore import BlobStore
from tests.harness.images import Images, PushedImage
from tests.harness.proxy_server import ProxyServer
from tests.harness.push import Pusher
from tests.harness.registry import DistributionRegistry
from tests.harness.skopeo import SkopeoError, read_dir_layout, skopeo_copy

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


@pytest.fixture(scope="module")
def proxy(upstream_registry: DistributionRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    with ProxyServer(tmp_path_factory.mktemp("proxy"), upstream_registry.url) as server:
        yield server


def all_blob_digests(image: PushedImage) -> set[str]:
    return {blob.digest for blob in image.content_blobs}


def pull(proxy: ProxyServer, image: PushedImage, dest: Path) -> None:
    skopeo_copy(proxy.ref(image.ref), dest, all_images=image.is_index)
    layout = read_dir_layout(dest)
    assert layout.manifest_digest == image.digest
    layout.verify_blobs()  # every blob skopeo stored hashes to its digest
    if image.is_index:
        assert set(layout.instance_manifests) == {child.digest for child in image.children}
    assert {d for d in layout.blobs if d not in layout.instance_manifests} == all_blob_digests(image)


@pytest.mark.parametrize("key", ["oci", "index", "docker", "list", "big"])
def test_skopeo_pull_cold_then_warm(
    key: str, proxy: ProxyServer, upstream_registry: DistributionRegistry, images: Images, skopeo: str, tmp_path: Path
) -> None:
    image = images[key]
    mark = upstream_registry.mark()
    pull(proxy, image, tmp_path / "cold")
    upstream_registry.wait_quiet()
    cold = upstream_registry.requests_since(mark)
    blob_gets = Counter(r.path.rsplit("/", 1)[1] for r in cold if r.method == "GET" and "/blobs/" in r.path)
    # Every blob came from the upstream exactly once.
    assert blob_gets == Counter(all_blob_digests(image))

    mark = upstream_registry.mark()
    pull(proxy, image, tmp_path / "warm")
    upstream_registry.wait_quiet()
    # Within the tag TTL a warm pull does not reach the upstream at all: no blob, manifest or token request.
    assert upstream_registry.requests_since(mark) == []


def test_head_of_a_tag_has_digest_and_length(proxy: ProxyServer, images: Images) -> None:
    image = images["docker"]
    response = httpx.head(
        f"{proxy.url}/v2/{image.repository}/manifests/{image.tag}", headers={"Accept": MANIFEST_TYPES}
    )
    assert response.status_code == 200
    assert response.headers["docker-content-digest"] == image.digest
    assert response.headers["content-length"] == str(len(image.manifest))
    assert response.headers["content-type"] == image.media_type
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"


def test_manifest_bytes_are_the_upstreams(proxy: ProxyServer, images: Images) -> None:
    image = images["list"]
    response = httpx.get(f"{proxy.url}/v2/{image.repository}/manifests/{image.tag}", headers={"Accept": MANIFEST_TYPES})
    assert response.content == image.manifest


def test_expired_tag_is_revalidated_with_one_head(
    upstream_registry: DistributionRegistry, images: Images, skopeo: str, tmp_path: Path
) -> None:
    image = images["oci"]
    with ProxyServer(tmp_path / "proxy", upstream_registry.url, tag_ttl="0s") as proxy:
        pull(proxy, image, tmp_path / "first")
        mark = upstream_registry.mark()
        pull(proxy, image, tmp_path / "second")
        upstream_registry.wait_quiet()
        seen = [(r.method, r.path) for r in upstream_registry.requests_since(mark) if r.status != 401]
        assert seen == [("HEAD", f"/v2/{image.repository}/manifests/{image.tag}")]


def test_private_repository_needs_the_proxys_credentials(
    upstream_registry: DistributionRegistry, images: Images, skopeo: str, tmp_path: Path
) -> None:
    image = images["private"]
    with ProxyServer(tmp_path / "anonymous", upstream_registry.url) as proxy:
        with pytest.raises(SkopeoError):
            skopeo_copy(proxy.ref(image.ref), tmp_path / "denied")
        response = httpx.get(f"{proxy.url}/v2/{image.repository}/manifests/{image.tag}")
        assert response.status_code == 404
        assert response.json()["errors"][0]["code"] == "NAME_UNKNOWN"
    password = upstream_registry.password
    with ProxyServer(
        tmp_path / "authenticated",
        upstream_registry.url,
        extra_upstream=f'username = "{upstream_registry.username}"\npassword_env = "UPSTREAM_PASSWORD"',
        env={"UPSTREAM_PASSWORD": password},
    ) as proxy:
        pull(proxy, image, tmp_path / "allowed")
        assert password not in proxy.log_path.read_text()


def test_corrupt_upstream_blob_is_cut_short_and_never_cached(
    upstream_registry: DistributionRegistry, tmp_path: Path, proxy: ProxyServer
) -> None:
    store = BlobStore(tmp_path / "blobs")
    blob = store.add_bytes(b"will be damaged upstream " * 40_000, "application/octet-stream")
    with Pusher(upstream_registry.url, store, (upstream_registry.username, upstream_registry.password)) as pusher:
        pusher.push_blob("library/damaged", blob)
    stored = upstream_registry.storage_dir / f"docker/registry/v2/blobs/sha256/{blob.hex[:2]}/{blob.hex}/data"
    original = stored.read_bytes()
    stored.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # Distribution serves it without checking

    url = f"{proxy.url}/v2/library/damaged/blobs/{blob.digest}"
    received = bytearray()
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url, timeout=30) as response:
        assert response.headers["content-length"] == str(blob.size)
        for chunk in response.iter_raw():
            received += chunk
    assert len(received) < blob.size
    # No content under blobs/ (a repository's record that the upstream served it is not content).
    cached = list((proxy.cache_dir / "blobs").rglob(blob.hex + "*"))
    assert cached == []

    stored.write_bytes(original)
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200
    assert response.content == original


def test_range_requests_on_a_miss_and_a_hit(
    upstream_registry: DistributionRegistry, tmp_path: Path, proxy: ProxyServer
) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = bytes(range(256)) * 4096
    blob = store.add_bytes(data, "application/octet-stream")
    with Pusher(upstream_registry.url, store, (upstream_registry.username, upstream_registry.password)) as pusher:
        pusher.push_blob("library/ranges", blob)
    url = f"{proxy.url}/v2/library/ranges/blobs/{blob.digest}"
    miss = httpx.get(url, headers={"Range": "bytes=1000-"}, timeout=30)
    assert miss.status_code == 206
    assert miss.content == data[1000:]
    hit = httpx.get(url, headers={"Range": "bytes=10-19"}, timeout=30)
    assert hit.status_code == 206
    assert hit.headers["content-range"] == f"bytes 10-19/{len(data)}"
    assert hit.content == data[10:20]
    assert httpx.get(url, headers={"Range": f"bytes={len(data)}-"}, timeout=30).status_code == 416


def raw_request(proxy: ProxyServer, request_line: str) -> tuple[int, bytes]:
    """Send a request exactly as written (no client-side normalisation of ``..``) and read the reply."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(f"{request_line}\r\nHost: {proxy.host}\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize(
    "path",
    [
        "/v2/library/../../../etc/manifests/passwd",
        "/v2/..%2f..%2fetc/blobs/sha256:" + "0" * 64,
        "/v2/%2e%2e/%2e%2e/manifests/latest",
        "/v2/library/alpine%00/manifests/latest",
    ],
)
def test_path_traversal_is_rejected_with_a_registry_error(proxy: ProxyServer, path: str) -> None:
    status, body = raw_request(proxy, f"GET {path} HTTP/1.1")
    assert status == 400
    assert json.loads(body)["errors"][0]["code"] == "NAME_INVALID"


def test_writes_are_unsupported(proxy: ProxyServer) -> None:
    response = httpx.post(f"{proxy.url}/v2/library/alpine/blobs/uploads/")
    assert response.status_code == 405
    assert response.json()["errors"][0]["code"] == "UNSUPPORTED"


def test_basic_auth_upstream(images: Images, skopeo: str, tmp_path: Path) -> None:
    # Not every registry hands out tokens: some answer with a plain Basic challenge.
    with DistributionRegistry(tmp_path / "basic", auth="basic", username="ci", password="pw") as upstream:
        image = images["oci"]
        with Pusher(upstream.url, images.store, ("ci", "pw")) as pusher:
            for blob in image.blobs:
                pusher.push_blob(image.repository, blob)
            pusher.push_manifest(image.repository, str(image.tag), image.manifest, image.media_type)
        config = 'username = "ci"\npassword_env = "UPSTREAM_PASSWORD"'
        with ProxyServer(
            tmp_path / "proxy", upstream.url, extra_upstream=config, env={"UPSTREAM_PASSWORD": "pw"}
        ) as proxy:
            pull(proxy, image, tmp_path / "pulled")
