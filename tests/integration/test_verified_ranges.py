"""Issue 7, item 7 against the real Distribution: a range that ends before the blob does is answered, on a miss, only
from verified bytes, so a corrupt download gives the client an error instead of a complete-looking wrong body."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.faults import FaultyUpstream, FlipByte
from tests.harness.images import Images
from tests.harness.proxy_server import ProxyServer
from tests.harness.registry import DistributionRegistry

TIMEOUT = 60.0


@pytest.fixture
def faulty(upstream_registry: DistributionRegistry) -> Iterator[FaultyUpstream]:
    with FaultyUpstream(upstream_registry.url) as upstream:
        yield upstream


def test_short_range_of_a_corrupt_download_is_an_error(faulty: FaultyUpstream, images: Images, tmp_path: Path) -> None:
    image = images["oci"]
    layer = image.layers[0]
    data = images.store.read(layer.digest)
    flipped = faulty.add(FlipByte(0, path=layer.digest, method="GET", times=1))
    with ProxyServer(tmp_path / "proxy", faulty.url) as proxy:
        url = f"{proxy.url}/v2/{image.repository}/blobs/{layer.digest}"
        response = httpx.get(url, headers={"Range": "bytes=0-9"}, timeout=TIMEOUT)
        assert flipped.hits == 1
        assert response.status_code == 502
        assert response.json()["errors"][0]["code"] == "UPSTREAM_ERROR"
        again = httpx.get(url, headers={"Range": "bytes=0-9"}, timeout=TIMEOUT)
    assert again.status_code == 206
    assert again.content == data[:10]
    assert again.headers["content-range"] == f"bytes 0-9/{len(data)}"
