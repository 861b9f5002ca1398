from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from proxy.app import create_app
from proxy.config import ServerSettings, Settings, StorageSettings, UpstreamSettings
from tests.unit.fakes import FAKE_REDIRECT_HOSTS, FAKE_TOKEN_REALMS, OCI_INDEX, OCI_MANIFEST, REGISTRY, FakeRegistry

ClientFactory = Callable[..., TestClient]


@pytest.fixture
def fake() -> FakeRegistry:
    registry = FakeRegistry()
    layer = registry.add_blob(b"layer-bytes" * 1000)
    config = registry.add_blob(b'{"architecture":"amd64","os":"linux"}')
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 37},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 11000}],
        },
        indent=3,  # odd formatting on purpose: the proxy must serve these exact bytes
    ).encode()
    digest = registry.add_manifest("library/alpine", "3.20", OCI_MANIFEST, manifest)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{"digest": digest}]}).encode()
    registry.add_manifest("library/alpine", "multi", OCI_INDEX, index)
    return registry


@pytest.fixture
def make_client(tmp_path: Path, fake: FakeRegistry) -> Iterator[ClientFactory]:
    clients: list[TestClient] = []

    def factory(tag_ttl: float = 300.0, **upstream: object) -> TestClient:
        # The fake's CDN and token service are allowed, as Docker Hub's are by default, unless a test says otherwise.
        upstream = {"redirect_hosts": FAKE_REDIRECT_HOSTS, "token_realms": FAKE_TOKEN_REALMS, **upstream}
        settings = Settings(
            server=ServerSettings(),
            storage=StorageSettings(root=tmp_path / "cache"),
            upstreams=(UpstreamSettings(registry="docker.io", url=REGISTRY, tag_ttl=tag_ttl, **upstream),),  # type: ignore[arg-type]
        )
        client = TestClient(create_app(settings, transport=httpx.MockTransport(fake)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client()
