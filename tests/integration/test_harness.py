"""Smoke tests of the harness itself: the stand-in for Docker Hub must behave like the real thing before any proxy
test can mean anything."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from tests.harness.challenge import Challenge, fetch_token
from tests.harness.images import Images, PushedImage
from tests.harness.jwt import decode_unverified
from tests.harness.oci import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from tests.harness.registry import DistributionRegistry
from tests.harness.skopeo import SkopeoError, read_dir_layout, skopeo_copy, skopeo_inspect_raw
from tests.harness.tokens import TokenIssuer

CREDS = "pusher:s3cret"


def test_anonymous_base_gets_a_bearer_challenge(upstream_registry: DistributionRegistry, token_issuer: TokenIssuer):
    response = httpx.get(f"{upstream_registry.url}/v2/")

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer realm="{token_issuer.url}/token",service="registry.docker.io"'
    )


def test_repository_challenge_names_the_scope(upstream_registry: DistributionRegistry, images: Images):
    response = httpx.get(f"{upstream_registry.url}/v2/library/oci-image/manifests/1")

    assert response.status_code == 401
    challenge = Challenge.parse(response.headers["WWW-Authenticate"])
    assert challenge.scheme == "Bearer"
    assert challenge.params["scope"] == "repository:library/oci-image:pull"


def test_issuer_grants_like_docker_hub(token_issuer: TokenIssuer):
    scopes = ["repository:library/oci-image:pull,push", "repository:private/secret:pull"]
    with httpx.Client() as client:
        anonymous = client.get(f"{token_issuer.url}/token", params={"service": "registry.docker.io", "scope": scopes})
        authenticated = client.get(
            f"{token_issuer.url}/token",
            params={"service": "registry.docker.io", "scope": scopes},
            auth=("pusher", "s3cret"),
        )
        refused = client.get(f"{token_issuer.url}/token", params={"scope": scopes}, auth=("pusher", "wrong"))

    assert anonymous.status_code == 200
    body = anonymous.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    assert body["issued_at"].endswith("Z")
    header, claims = decode_unverified(body["token"])
    assert header == {"typ": "JWT", "alg": "RS256", "kid": token_issuer.key.key_id}
    assert claims["iss"] == "test-issuer"
    assert claims["aud"] == "registry.docker.io"
    assert claims["exp"] - claims["iat"] == 300
    # Anonymous: pull only, and nothing at all on the private repository (left out, not an error).
    assert claims["access"] == [{"type": "repository", "name": "library/oci-image", "actions": ["pull"]}]

    _, claims = decode_unverified(authenticated.json()["token"])
    assert claims["sub"] == "pusher"
    assert claims["access"] == [
        {"type": "repository", "name": "library/oci-image", "actions": ["pull", "push"]},
        {"type": "repository", "name": "private/secret", "actions": ["pull"]},
    ]
    assert refused.status_code == 401


def test_key_id_has_the_libtrust_shape(token_issuer: TokenIssuer):
    # 240 bits of SHA-256, base32: 48 characters in 12 groups of 4.
    assert re.fullmatch(r"[A-Z2-7]{4}(:[A-Z2-7]{4}){11}", token_issuer.key.key_id)


def test_registry_checks_expiry_with_a_minute_of_leeway(
    upstream_registry: DistributionRegistry, token_issuer: TokenIssuer, images: Images
):
    """Distribution 2.8 accepts a token up to 60 s after its ``exp`` (and 60 s before its ``nbf``). A proxy test
    that wants the upstream to refuse a stale token must make it stale by more than that."""
    url = f"{upstream_registry.url}/v2/library/oci-image/manifests/1"
    scopes = ["repository:library/oci-image:pull"]
    headers = {"Accept": images["oci"].media_type}

    def get_with(token: str) -> httpx.Response:
        return httpx.get(url, headers={**headers, "Authorization": f"Bearer {token}"})

    assert get_with(token_issuer.issue(scopes)).status_code == 200
    assert get_with(token_issuer.issue(scopes, expires_in=300, now=time.time() - 330)).status_code == 200
    stale = get_with(token_issuer.issue(scopes, expires_in=300, now=time.time() - 400))
    assert stale.status_code == 401
    assert 'error="invalid_token"' in stale.headers["WWW-Authenticate"]


def test_token_without_access_is_insufficient_scope(upstream_registry: DistributionRegistry, token_issuer: TokenIssuer):
    anonymous_token = token_issuer.issue(["repository:private/secret:pull"])
    response = httpx.get(
        f"{upstream_registry.url}/v2/private/secret/manifests/1", headers={"Authorization": f"Bearer {anonymous_token}"}
    )

    assert response.status_code == 401
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"


@pytest.mark.parametrize(
    ("key", "accept", "expected"),
    [
        ("oci", OCI_MANIFEST, "pushed"),
        ("oci", "*/*", 404),
        ("oci", None, 404),
        ("index", OCI_INDEX, "pushed"),
        ("index", OCI_MANIFEST, 404),
        ("docker", DOCKER_MANIFEST, "pushed"),
        ("docker", None, SCHEMA1),
        ("list", f"{DOCKER_LIST}, {DOCKER_MANIFEST}", "pushed"),
        ("list", DOCKER_MANIFEST, "amd64"),
        ("list", None, SCHEMA1),
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_upstream_negotiates_manifests_by_accept(
    upstream_registry: DistributionRegistry,
    token_issuer: TokenIssuer,
    images: Images,
    key: str,
    accept: str | None,
    expected: str | int,
    method: str,
):
    """What Distribution 2.8 serves for a tag depends on Accept: an OCI manifest or index is "unknown" (404) to a
    client that does not list its exact type (``*/*`` is not enough); a Docker manifest list becomes its linux/amd64
    image for a client that accepts schema2 but not lists; and a Docker manifest or list is rewritten to signed
    schema1, with another digest, for a client that accepts neither. HEAD answers the same. So a proxy must pass
    Accept upstream, and what it caches for a tag depends on what was accepted."""
    image = images[key]
    headers = {"Authorization": f"Bearer {token_issuer.issue([f'repository:{image.repository}:pull'])}"}
    if accept is not None:
        headers["Accept"] = accept

    url = f"{upstream_registry.url}/v2/{image.repository}/manifests/{image.tag}"

    response = httpx.request(method, url, headers=headers)

    if isinstance(expected, int):
        assert response.status_code == expected
    elif expected == SCHEMA1:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == SCHEMA1
        assert response.headers["Docker-Content-Digest"] != image.digest
    else:
        served = image if expected == "pushed" else image.child(expected)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == served.media_type
        assert response.headers["Docker-Content-Digest"] == served.digest


@pytest.mark.usefixtures("skopeo")
def test_skopeo_copies_the_oci_image_unchanged(upstream_registry: DistributionRegistry, images: Images, tmp_path: Path):
    image = images["oci"]

    skopeo_copy(upstream_registry.ref(image.ref), tmp_path)

    layout = read_dir_layout(tmp_path)
    assert layout.manifest_digest == image.digest
    assert layout.manifest == image.manifest
    assert set(layout.blobs) == {blob.digest for blob in image.blobs}
    layout.verify_blobs()


@pytest.mark.usefixtures("skopeo")
def test_request_log_counts_the_blob_gets_of_a_copy(
    upstream_registry: DistributionRegistry, token_issuer: TokenIssuer, images: Images, tmp_path: Path
):
    image = images["oci"]
    upstream_registry.wait_quiet()
    registry_mark, issuer_mark = upstream_registry.mark(), token_issuer.mark()

    skopeo_copy(upstream_registry.ref(image.ref), tmp_path)
    upstream_registry.wait_quiet()

    requests = upstream_registry.requests_since(registry_mark)
    blob_gets = [r for r in requests if r.kind == "blob" and r.method == "GET"]
    assert sorted(r.reference or "" for r in blob_gets) == sorted(blob.digest for blob in image.blobs)
    assert all(r.status == 200 and r.repository == image.repository for r in blob_gets)
    assert {r.reference: r.size for r in blob_gets} == {blob.digest: blob.size for blob in image.blobs}
    manifest_gets = [r for r in requests if r.kind == "manifest"]
    assert [(r.method, r.reference, r.status) for r in manifest_gets] == [("GET", "1", 200)]
    # One anonymous token for the whole copy.
    assert token_issuer.requests_since(issuer_mark) == [([f"repository:{image.repository}:pull"], None)]


@pytest.mark.usefixtures("skopeo")
def test_private_image_needs_credentials(upstream_registry: DistributionRegistry, images: Images, tmp_path: Path):
    image = images["private"]

    with pytest.raises(SkopeoError, match="denied|unauthorized"):
        skopeo_copy(upstream_registry.ref(image.ref), tmp_path / "anonymous")
    skopeo_copy(upstream_registry.ref(image.ref), tmp_path / "authenticated", creds=CREDS)

    assert read_dir_layout(tmp_path / "authenticated").manifest_digest == image.digest


@pytest.mark.usefixtures("skopeo")
@pytest.mark.parametrize("key", ["oci", "index", "docker", "list", "big"])
def test_every_seeded_image_copies_whole(
    upstream_registry: DistributionRegistry, images: Images, tmp_path: Path, key: str
):
    image = images[key]

    skopeo_copy(upstream_registry.ref(image.ref), tmp_path, all_images=True)

    layout = read_dir_layout(tmp_path)
    assert layout.manifest_digest == image.digest
    assert set(layout.instance_manifests) == {child.digest for child in image.children}
    assert set(layout.blobs) == {blob.digest for blob in image.content_blobs}
    layout.verify_blobs()


@pytest.mark.usefixtures("skopeo")
@pytest.mark.parametrize(("key", "child"), [("index", "amd64"), ("list", "amd64"), ("index", "arm64")])
def test_inspect_raw_returns_the_pushed_bytes(
    upstream_registry: DistributionRegistry, images: Images, key: str, child: str
):
    index: PushedImage = images[key]
    image = index.child(child)

    assert skopeo_inspect_raw(upstream_registry.ref(index.ref)) == index.manifest
    assert skopeo_inspect_raw(upstream_registry.ref(image.digest_ref)) == image.manifest


def test_seeded_blobs_are_on_disk(images: Images):
    big_layer = images["big"].layers[0]

    assert images.store.path(big_layer.digest).stat().st_size == big_layer.size
    assert set(images) == {"oci", "index", "docker", "list", "big", "private", "busybox", "busybox-oci"}
    all_blobs = [blob.digest for image in images.values() for blob in image.content_blobs]
    assert len(all_blobs) == len(set(all_blobs)), "no two seeded images share a blob"


@pytest.mark.usefixtures("distribution_binary")
def test_registry_comes_back_on_the_same_port(token_issuer: TokenIssuer, tmp_path: Path):
    with DistributionRegistry(tmp_path, token_issuer) as registry:
        url = registry.url
        registry.stop()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/v2/")
        registry.start()

        assert registry.url == url
        assert httpx.get(f"{url}/v2/").status_code == 401
        assert [(r.method, r.path, r.status) for r in registry.requests()] == [("GET", "/v2/", 401)]


@pytest.mark.usefixtures("distribution_binary")
def test_basic_auth_registry(tmp_path: Path):
    with DistributionRegistry(tmp_path, auth="basic") as registry:
        anonymous = httpx.get(f"{registry.url}/v2/")
        authenticated = httpx.get(f"{registry.url}/v2/", auth=("pusher", "s3cret"))

    assert anonymous.status_code == 401
    assert Challenge.parse(anonymous.headers["WWW-Authenticate"]).scheme == "Basic"
    assert authenticated.status_code == 200


def test_fetch_token_follows_the_challenge(upstream_registry: DistributionRegistry, token_issuer: TokenIssuer):
    with httpx.Client() as client:
        challenge = Challenge.parse(client.get(f"{upstream_registry.url}/v2/").headers["WWW-Authenticate"])
        token = fetch_token(client, challenge, ["repository:library/big:pull"], ("pusher", "s3cret"))

    assert decode_unverified(token)[1]["access"] == [{"type": "repository", "name": "library/big", "actions": ["pull"]}]
