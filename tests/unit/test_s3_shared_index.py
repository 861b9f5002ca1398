"""Two proxies (replicas: each its own root) on one SeaweedFS bucket share the repository index: what one cached,
the other serves without asking the upstream."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from proxy.app import create_app
from proxy.config import S3StorageSettings, ServerSettings, Settings, StorageSettings, UpstreamSettings
from storage.digest import Digest
from storage.paths import tag_path
from storage.s3 import S3Settings
from storage.s3.layout import index_key
from storage.s3.objects import ObjectClient
from tests.harness.seaweed import SeaweedS3
from tests.unit.fakes import FAKE_REDIRECT_HOSTS, FAKE_TOKEN_REALMS, REGISTRY, FakeRegistry, sha256

ALL_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
LAYER = b"layer-bytes" * 1000


@pytest.fixture
def s3(seaweed: SeaweedS3) -> S3StorageSettings:
    bucket, prefix = "replicas-" + secrets.token_hex(4), "cache/"
    return S3StorageSettings(seaweed.endpoint, bucket, seaweed.region, prefix, seaweed.access_key, seaweed.secret_key)


@pytest.fixture
def replicas(tmp_path: Path, fake: FakeRegistry, s3: S3StorageSettings) -> Iterator[tuple[TestClient, TestClient]]:
    clients = []
    for name in ("a", "b"):
        settings = Settings(
            server=ServerSettings(),
            storage=StorageSettings(root=tmp_path / name, backend="s3", s3=s3),
            upstreams=(
                UpstreamSettings(
                    registry="docker.io",
                    url=REGISTRY,
                    tag_ttl=300.0,
                    redirect_hosts=FAKE_REDIRECT_HOSTS,
                    token_realms=FAKE_TOKEN_REALMS,
                ),
            ),
        )
        client = TestClient(create_app(settings, transport=httpx.MockTransport(fake)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
    try:
        yield clients[0], clients[1]
    finally:
        for client in clients:
            client.__exit__(None, None, None)


async def _tag_entry(s3: S3StorageSettings, tag: str) -> bytes | None:
    settings = S3Settings(s3.endpoint, s3.bucket, s3.region, s3.access_key, s3.secret_key, s3.prefix)
    async with ObjectClient(settings) as client:
        found = await client.get(index_key(s3.prefix, tag_path("docker.io", "library/alpine", tag)))
    return None if found is None else found[0]


def test_what_one_replica_cached_the_other_serves(
    replicas: tuple[TestClient, TestClient], fake: FakeRegistry, s3: S3StorageSettings
) -> None:
    a, b = replicas
    first = a.get("/v2/library/alpine/manifests/3.20", headers={"Accept": ALL_TYPES})
    assert first.status_code == 200
    assert a.get(f"/v2/library/alpine/blobs/{sha256(LAYER)}").content == LAYER
    assert fake.count("GET", "/manifests/") == 1 and fake.count("GET", "cdn/blobs") == 1
    upstream = sum(fake.hits.values())

    # The tag's answer, the manifest's record and the layer's link are in the bucket: b asks the upstream nothing.
    again = b.get("/v2/library/alpine/manifests/3.20", headers={"Accept": ALL_TYPES})
    assert again.status_code == 200
    assert again.content == first.content
    assert again.headers["docker-content-digest"] == first.headers["docker-content-digest"]
    assert b.get(f"/v2/library/alpine/blobs/{sha256(LAYER)}").content == LAYER
    assert b.get("/v2/_catalog").json()["repositories"] == ["library/alpine"]
    assert sum(fake.hits.values()) == upstream

    # With the upstream down, b lists the tags it knows from the bucket.
    fake.fail = 503
    listed = b.get("/v2/library/alpine/tags/list")
    assert listed.status_code == 200 and listed.json()["tags"] == ["3.20"]
    # The tag's entry in the bucket is the disk's JSON.
    entry = asyncio.run(_tag_entry(s3, "3.20"))
    assert entry is not None
    assert Digest.parse(json.loads(entry)["digest"]) == Digest.parse(first.headers["docker-content-digest"])
