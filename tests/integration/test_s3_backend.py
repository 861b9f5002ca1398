"""The proxy with ``[storage] backend = "s3"`` on a real SeaweedFS: skopeo pulls through it, and the blobs land
verified in the bucket, where a second proxy (a replica with an empty root) serves them without the upstream."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from storage.digest import Digest
from storage.s3 import S3Settings
from storage.s3.layout import blob_key, fills_prefix
from storage.s3.objects import ObjectClient
from tests.harness.containers import Skopeo
from tests.harness.images import Images
from tests.harness.proxy_server import ProxyServer
from tests.harness.registry import DistributionRegistry
from tests.harness.seaweed import SeaweedS3

pytestmark = pytest.mark.integration

PREFIX = "proxy/"


@pytest.fixture(scope="module")
def bucket() -> str:
    return "proxy-" + secrets.token_hex(4)


def _s3_proxy(workdir: Path, upstream: DistributionRegistry, seaweed: SeaweedS3, bucket: str) -> ProxyServer:
    storage = f'backend = "s3"\nendpoint = "{seaweed.endpoint}"\nbucket = "{bucket}"\nprefix = "{PREFIX}"\n'
    return ProxyServer(workdir, upstream.url, extra_storage=storage, env=seaweed.environ())


@pytest.fixture(scope="module")
def proxy(
    upstream_registry: DistributionRegistry, seaweed: SeaweedS3, bucket: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyServer]:
    with _s3_proxy(tmp_path_factory.mktemp("s3-proxy"), upstream_registry, seaweed, bucket) as server:
        yield server


def _bucket_state(seaweed: SeaweedS3, bucket: str) -> tuple[dict[str, int], int, int]:
    """Sizes of the objects under the blobs' prefix, multipart uploads in progress, leases."""

    async def read() -> tuple[dict[str, int], int, int]:
        settings = S3Settings(seaweed.endpoint, bucket, seaweed.region, seaweed.access_key, seaweed.secret_key)
        async with ObjectClient(settings) as client:
            objects = {key: size async for key, size, _ in client.list_objects(PREFIX + "blobs/")}
            uploads = await client.list_uploads(PREFIX)
            leases = [key async for key, _, _ in client.list_objects(fills_prefix(PREFIX))]
        return objects, len(uploads), len(leases)

    return asyncio.run(read())


def test_skopeo_pulls_through_the_s3_backend(
    images: Images,
    proxy: ProxyServer,
    upstream_registry: DistributionRegistry,
    seaweed: SeaweedS3,
    bucket: str,
    skopeo: str,
    tmp_path: Path,
) -> None:
    client = Skopeo(tmp_path / "skopeo")
    pulled = {}
    for key in ("oci", "big"):  # "big": a layer of TEST_BIG_LAYER_MIB (200 MiB), filled with a multipart upload
        image = images[key]
        layout = client.copy(proxy.ref(image.ref), tmp_path / key, tls_verify=False)
        assert layout.manifest_digest == image.digest
        layout.verify_blobs()
        pulled[key] = image
    objects, uploads, leases = _bucket_state(seaweed, bucket)
    for image in pulled.values():
        for blob in image.blobs:
            assert objects[blob_key(PREFIX, Digest.parse(blob.digest))] == blob.size
    assert (uploads, leases) == (0, 0)

    # A replica with an empty root on the same bucket: the blobs come from the bucket, not the upstream.
    upstream_registry.wait_quiet()
    mark = upstream_registry.mark()
    with _s3_proxy(tmp_path / "replica", upstream_registry, seaweed, bucket) as replica:
        image = images["big"]
        layout = client.copy(replica.ref(image.ref), tmp_path / "again", tls_verify=False)
        assert layout.manifest_digest == image.digest
        layout.verify_blobs()
    upstream_registry.wait_quiet()
    blob_gets = [r for r in upstream_registry.requests_since(mark) if r.method == "GET" and "/blobs/" in r.path]
    assert blob_gets == []


def test_two_replicas_missing_one_blob_fetch_it_once(
    images: Images,
    upstream_registry: DistributionRegistry,
    seaweed: SeaweedS3,
    skopeo: str,
    tmp_path: Path,
) -> None:
    # A bucket of their own: nothing cached yet. Both replicas are asked for the big image at once; the one whose
    # claim wins fetches the 200 MiB layer, the other waits for it in the bucket.
    fresh = "pair-" + secrets.token_hex(4)
    image = images["big"]
    layer = max(image.blobs, key=lambda blob: blob.size)
    upstream_registry.wait_quiet()
    mark = upstream_registry.mark()
    with (
        _s3_proxy(tmp_path / "one", upstream_registry, seaweed, fresh) as one,
        _s3_proxy(tmp_path / "two", upstream_registry, seaweed, fresh) as two,
        ThreadPoolExecutor(2) as pool,
    ):
        clients = [Skopeo(tmp_path / f"skopeo-{i}") for i in range(2)]
        pulls = [
            pool.submit(client.copy, proxy.ref(image.ref), tmp_path / f"pull-{i}", tls_verify=False)
            for i, (client, proxy) in enumerate(zip(clients, (one, two), strict=True))
        ]
        for pull in pulls:
            layout = pull.result(timeout=300)
            assert layout.manifest_digest == image.digest
            layout.verify_blobs()
    upstream_registry.wait_quiet()
    layer_gets = [
        r for r in upstream_registry.requests_since(mark) if r.method == "GET" and r.path.endswith(layer.digest)
    ]
    assert len(layer_gets) == 1, layer_gets
    objects, uploads, leases = _bucket_state(seaweed, fresh)
    assert objects[blob_key(PREFIX, Digest.parse(layer.digest))] == layer.size
    assert (uploads, leases) == (0, 0)
