"""A cached blob is served under a repository only once that repository is known to hold it (issue 12, item 3)."""

from __future__ import annotations

import json

from tests.unit.conftest import ClientFactory
from tests.unit.fakes import OCI_MANIFEST, FakeRegistry

SECRET_LAYER = b"a layer of a private image" * 100
CONFIG = b'{"architecture":"amd64","os":"linux"}'


def private_image(fake: FakeRegistry) -> tuple[str, str, str]:
    """private/app:1, whose layer and config only private/app holds upstream; returns (manifest, layer, config)."""
    layer, config = fake.add_blob(SECRET_LAYER), fake.add_blob(CONFIG)
    fake.blob_repositories[layer] = {"private/app", "library/other"}  # library/other really has it too
    fake.blob_repositories[config] = {"private/app"}
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": len(CONFIG)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 2600}],
        }
    ).encode()
    return fake.add_manifest("private/app", "1", OCI_MANIFEST, manifest), layer, config


def test_a_cached_layer_is_not_served_under_a_repository_that_does_not_hold_it(
    make_client: ClientFactory, fake: FakeRegistry
) -> None:
    client = make_client()
    _, layer, config = private_image(fake)
    assert client.get("/v2/private/app/manifests/1").status_code == 200
    assert client.get(f"/v2/private/app/blobs/{layer}").content == SECRET_LAYER  # cached now
    for path in (f"/v2/library/alpine/blobs/{layer}", f"/v2/library/alpine/blobs/{config}"):
        for method in ("GET", "HEAD"):
            response = client.request(method, path)
            assert response.status_code == 404, (method, path)
            assert SECRET_LAYER not in response.content
            assert "docker-content-digest" not in response.headers
    # Asked with HEAD under that repository's own scope, never downloaded again.
    assert fake.count("HEAD", f"library/alpine/blobs/{layer}") == 1
    assert fake.count("GET", f"library/alpine/blobs/{layer}") == 0


def test_a_repository_that_holds_it_upstream_gets_it_from_the_cache_after_one_head(
    make_client: ClientFactory, fake: FakeRegistry
) -> None:
    client = make_client()
    _, layer, _ = private_image(fake)
    client.get("/v2/private/app/manifests/1")
    client.get(f"/v2/private/app/blobs/{layer}")
    for _ in range(3):
        response = client.get(f"/v2/library/other/blobs/{layer}")
        assert response.status_code == 200 and response.content == SECRET_LAYER
    assert fake.count("HEAD", f"library/other/blobs/{layer}") == 1  # then linked: no more questions
    assert fake.count("GET", f"library/other/blobs/{layer}") == 0
    assert fake.count("GET", f"private/app/blobs/{layer}") == 1


def test_a_manifest_s_own_blobs_need_no_question(make_client: ClientFactory, fake: FakeRegistry) -> None:
    client = make_client()
    _, layer, config = private_image(fake)
    client.get("/v2/private/app/manifests/1")
    client.get(f"/v2/private/app/blobs/{layer}")
    client.get(f"/v2/private/app/blobs/{config}")
    before = len(fake.requests)
    for digest in (layer, config):
        assert client.head(f"/v2/private/app/blobs/{digest}").status_code == 200
        assert client.get(f"/v2/private/app/blobs/{digest}").status_code == 200
    assert len(fake.requests) == before


def test_a_cached_manifest_by_digest_needs_its_repository_too(make_client: ClientFactory, fake: FakeRegistry) -> None:
    client = make_client()
    digest, _, _ = private_image(fake)
    body = client.get("/v2/private/app/manifests/1").content
    response = client.get(f"/v2/library/alpine/manifests/{digest}")
    assert response.status_code == 404 and body not in response.content
    # A repository that has it upstream too: one HEAD (not a pull), then the cached bytes.
    fake.add_manifest("library/mirror", None, OCI_MANIFEST, body)
    for _ in range(2):
        assert client.get(f"/v2/library/mirror/manifests/{digest}").content == body
    assert fake.count("HEAD", f"library/mirror/manifests/{digest}") == 1
    assert fake.count("GET", f"library/mirror/manifests/{digest}") == 0


def test_an_outage_never_serves_a_blob_on_trust(make_client: ClientFactory, fake: FakeRegistry) -> None:
    client = make_client()
    _, layer, _ = private_image(fake)
    client.get("/v2/private/app/manifests/1")
    client.get(f"/v2/private/app/blobs/{layer}")
    fake.fail = 503
    response = client.get(f"/v2/library/other/blobs/{layer}")
    assert response.status_code == 503 and SECRET_LAYER not in response.content
    assert client.get(f"/v2/private/app/blobs/{layer}").content == SECRET_LAYER  # linked: served in the outage
