"""``[[prefetch]]`` in the real proxy (a uvicorn process) against the token-auth Distribution upstream: images
are cached after start-up without any client pull, and a pinned one survives eviction under a small budget.

The budget scales with TEST_BIG_LAYER_MIB as in test_lifecycle: 1.5 times the big layer, with two more images of
0.4 times it, so that pulling all three goes past it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.harness import budget as budget_harness
from tests.harness.budget import push_sized_image
from tests.harness.deadline import poll_until
from tests.harness.images import Images, PushedImage, native_platform
from tests.harness.proxy_server import ProxyServer
from tests.harness.registry import DistributionRegistry
from tests.harness.skopeo import read_dir_layout, skopeo_copy
from tests.integration.conftest import big_layer_mib

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def native() -> str:
    platform = native_platform()
    if platform is None:
        pytest.skip("no image platform for this machine's architecture")
    return f"{platform.os}/{platform.architecture}"


@pytest.fixture(scope="module")
def extras(upstream_registry: DistributionRegistry, images: Images) -> list[PushedImage]:
    size = max(1, big_layer_mib() * 2 // 5) * MIB
    return [push_sized_image(upstream_registry, images.store, f"prefetch/{key}", size) for key in ("a", "b")]


def blob_file(proxy: ProxyServer, digest: str) -> Path:
    algorithm, hexdigest = digest.split(":")
    return proxy.cache_dir / "blobs" / algorithm / hexdigest[:2] / hexdigest


def all_cached(proxy: ProxyServer, digests: Iterable[str]) -> bool:
    return all(blob_file(proxy, digest).exists() for digest in digests)


def native_child(image: PushedImage, native: str) -> PushedImage:
    return image.child(native.split("/")[1])


def other_children(image: PushedImage, native: str) -> list[PushedImage]:
    return [child for child in image.children if child is not native_child(image, native)]


def everything_of(image: PushedImage) -> list[str]:
    """Its manifest, configs and layers."""
    return [image.digest, *(blob.digest for blob in image.blobs)]


def wait_cached(proxy: ProxyServer, digests: list[str], what: str) -> None:
    poll_until(lambda: all_cached(proxy, digests) or None, timeout=120, interval=0.2, what=what)


def pull(proxy: ProxyServer, ref: str, expected: PushedImage, dest: Path) -> None:
    """skopeo pulls this machine's platform (of an index: the one child)."""
    skopeo_copy(proxy.ref(ref), dest)
    layout = read_dir_layout(dest)
    assert layout.manifest_digest == expected.digest
    layout.verify_blobs()


def test_a_prefetched_image_is_cached_without_a_pull_and_a_pull_then_asks_nothing_upstream(
    upstream_registry: DistributionRegistry, images: Images, native: str, skopeo: str, tmp_path: Path
) -> None:
    index = images["index"]
    child = native_child(index, native)
    prefetch = f'[[prefetch]]\nimage = "oci-index:1"\nplatforms = ["{native}"]\n'
    with ProxyServer(tmp_path / "proxy", upstream_registry.url, extra_config=prefetch) as proxy:
        wait_cached(proxy, [index.digest, *everything_of(child)], "the prefetch of oci-index:1")
        # Only the configured platform.
        for other in other_children(index, native):
            assert not any(blob_file(proxy, digest).exists() for digest in everything_of(other))
        upstream_registry.wait_quiet()
        mark = upstream_registry.mark()
        pull(proxy, index.ref, child, tmp_path / "pulled")
        upstream_registry.wait_quiet()
        assert upstream_registry.requests_since(mark) == []  # no token, manifest or blob request


def test_pinned_content_survives_eviction_while_pulls_go_past_the_budget(
    upstream_registry: DistributionRegistry,
    images: Images,
    extras: list[PushedImage],
    native: str,
    skopeo: str,
    tmp_path: Path,
) -> None:
    budget = big_layer_mib() * 3 // 2 * MIB
    index, unpinned = images["index"], images["oci"]
    child = native_child(index, native)
    prefetch = (
        f'[[prefetch]]\nimage = "oci-index:1"\nplatforms = ["{native}"]\npin = true\n\n'
        '[[prefetch]]\nimage = "oci-image:1"\n'  # not pinned: the eviction's first candidate, as a control
    )
    with ProxyServer(
        tmp_path / "proxy", upstream_registry.url, extra_storage=f"max_size = {budget}", extra_config=prefetch
    ) as proxy:
        pinned = [index.digest, *everything_of(child)]
        wait_cached(proxy, pinned + everything_of(unpinned), "the prefetch of oci-index:1 and oci-image:1")
        for n, image in enumerate([images["big"], *extras]):
            pull(proxy, image.ref, image, tmp_path / f"pull-{n}")
            assert budget_harness.blobs_on_disk(proxy.cache_dir) <= budget, f"after pulling {image.ref}"
        assert not blob_file(proxy, images["big"].blobs[-1].digest).exists()  # eviction did happen
        assert not all_cached(proxy, everything_of(unpinned))  # and took the older, unpinned prefetch
        assert all_cached(proxy, pinned)
        upstream_registry.wait_quiet()
        mark = upstream_registry.mark()
        pull(proxy, index.ref, child, tmp_path / "pinned")
        upstream_registry.wait_quiet()
        assert upstream_registry.requests_since(mark) == []
