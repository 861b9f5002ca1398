"""An in-memory upstream with one multi-platform image, ``library/app:1``, and the real app serving it under
uvicorn (in a thread)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from proxy.app import create_app
from proxy.config import Settings, StorageSettings, UpstreamSettings
from tests.unit.fakes import FAKE_REDIRECT_HOSTS, FAKE_TOKEN_REALMS, OCI_INDEX, OCI_MANIFEST, REGISTRY, FakeRegistry
from tests.unit.uvicorn_thread import serving

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass
class Seeded:
    fake: FakeRegistry
    blobs: dict[str, list[str]]  # architecture -> the digests of its config and layers


def image(fake: FakeRegistry, architecture: str, layers: int) -> tuple[str, int, list[str]]:
    config = f'{{"architecture":"{architecture}","os":"linux"}}'.encode()
    contents = [config] + [f"{architecture} layer {i} ".encode() * 2000 for i in range(layers)]
    digests = [fake.add_blob(data) for data in contents]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digests[0], "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER, "digest": d, "size": len(data)}
                for d, data in zip(digests[1:], contents[1:], strict=True)
            ],
        }
    ).encode()
    return fake.add_manifest("library/app", None, OCI_MANIFEST, manifest), len(manifest), digests


def seed() -> Seeded:
    fake = FakeRegistry()
    entries, blobs = [], {}
    for architecture, variant in (("amd64", None), ("arm64", "v8")):
        digest, size, digests = image(fake, architecture, layers=2)
        platform = {"os": "linux", "architecture": architecture, **({"variant": variant} if variant else {})}
        entries.append({"mediaType": OCI_MANIFEST, "digest": digest, "size": size, "platform": platform})
        blobs[architecture] = digests
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    fake.add_manifest("library/app", "1", OCI_INDEX, index)
    return Seeded(fake, blobs)


def serve(fake: FakeRegistry, root: Path) -> Iterator[str]:
    upstream = UpstreamSettings(
        registry="docker.io", url=REGISTRY, redirect_hosts=FAKE_REDIRECT_HOSTS, token_realms=FAKE_TOKEN_REALMS
    )
    settings = Settings(storage=StorageSettings(root=root), upstreams=(upstream,))
    app = create_app(settings, transport=httpx.MockTransport(fake))
    with serving(app, lifespan="on") as port:
        yield f"http://127.0.0.1:{port}"
