"""Session-wide stand-ins for Docker Hub: a token issuer, a Distribution registry behind it, and seeded images.

Everything under tests/integration is marked ``integration``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Secrets
from tests.harness.images import Images, seed
from tests.harness.push import push_image
from tests.harness.registry import BINARY as REGISTRY_BINARY, DistributionRegistry
from tests.harness.skopeo import skopeo_path
from tests.harness.tokens import TokenIssuer
from tests.harness.upstreams import GHCR_CREDENTIALS

HERE = Path(__file__).parent
BIG_LAYER_ENV = "TEST_BIG_LAYER_MIB"
DEFAULT_BIG_LAYER_MIB = 200


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A conftest hook sees the items of the whole session, so mark only those collected from this directory.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


def big_layer_mib() -> int:
    raw = os.environ.get(BIG_LAYER_ENV, str(DEFAULT_BIG_LAYER_MIB))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise pytest.UsageError(f"{BIG_LAYER_ENV} must be a whole number of MiB, at least 1; got {raw!r}")
    return value


@pytest.fixture(scope="session")
def token_issuer(tmp_path_factory: pytest.TempPathFactory, used_secrets: Secrets) -> Iterator[TokenIssuer]:
    """auth.docker.io: anonymous pull on everything but ``private/*``; ``pusher``/``s3cret`` may do anything."""
    with TokenIssuer(tmp_path_factory.mktemp("token-issuer")) as issuer:
        # The upstream credentials the proxies are configured with, and every token the stand-in hands them.
        used_secrets.add(issuer.password, GHCR_CREDENTIALS[1])
        used_secrets.watch(issuer.issued_tokens)
        yield issuer


@pytest.fixture(scope="session")
def distribution_binary() -> str:
    """The ``docker-registry`` binary; tests that start a DistributionRegistry of their own ask for this fixture so
    that they skip where it is missing."""
    found = shutil.which(REGISTRY_BINARY)
    if found is None:
        pytest.skip(f"{REGISTRY_BINARY} (CNCF Distribution; Debian package docker-registry) is not on PATH")
    return found


@pytest.fixture(scope="session")
def upstream_registry(
    distribution_binary: str, token_issuer: TokenIssuer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DistributionRegistry]:
    """registry-1.docker.io: Distribution with token auth from ``token_issuer``."""
    registry = DistributionRegistry(tmp_path_factory.mktemp("upstream"), token_issuer, auth="token")
    with registry:
        yield registry
    # The logs and config stay for post-mortems; the blobs (hundreds of MiB) need not outlive the session.
    shutil.rmtree(registry.storage_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def images(upstream_registry: DistributionRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    """The seeded images by key: oci, index, docker, list, big, private (see tests.harness.images)."""
    seeded = seed(upstream_registry, tmp_path_factory.mktemp("images"), big_layer_mib=big_layer_mib())
    yield seeded
    shutil.rmtree(seeded.store.root, ignore_errors=True)


@pytest.fixture(scope="session")
def skopeo() -> str:
    """The skopeo binary; tests that run skopeo ask for this fixture so that they skip where it is missing."""
    try:
        return skopeo_path()
    except FileNotFoundError:
        pytest.skip("skopeo (Debian package skopeo) is not on PATH")


@pytest.fixture(scope="session")
def ghcr_registry(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributionRegistry]:
    """A second upstream standing for ghcr.io: Distribution with plain Basic auth (``GHCR_CREDENTIALS``).

    It holds ``org/app:1``, the same image as ``images["oci"]`` under another name, so a test can tell by the
    upstream logs which registry served a pull.
    """
    if shutil.which(REGISTRY_BINARY) is None:
        pytest.skip(f"{REGISTRY_BINARY} (CNCF Distribution; Debian package docker-registry) is not on PATH")
    username, password = GHCR_CREDENTIALS
    registry = DistributionRegistry(tmp_path_factory.mktemp("ghcr"), auth="basic", username=username, password=password)
    with registry:
        image = images["oci"]
        push_image(registry.url, GHCR_CREDENTIALS, images.store, list(image.blobs), "org/app", "1",
                   image.manifest, image.media_type)  # fmt: skip
        yield registry
    shutil.rmtree(registry.storage_dir, ignore_errors=True)
