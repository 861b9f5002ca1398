from __future__ import annotations

import hashlib
import json

import httpx
import pytest
from starlette.testclient import TestClient

from tests.unit.conftest import ClientFactory
from tests.unit.fakes import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, FakeRegistry, sha256

ALL_TYPES = f"{OCI_INDEX}, {OCI_MANIFEST}, {DOCKER_MANIFEST}"


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body["errors"][0]) == {"code", "message", "detail"}
    return str(body["errors"][0]["code"])


def test_base_endpoint_announces_api_version(client: TestClient) -> None:
    response = client.get("/v2/")
    assert response.status_code == 200
    assert response.json() == {}
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"


def test_manifest_by_tag_serves_exact_upstream_bytes(client: TestClient, fake: FakeRegistry) -> None:
    media_type, body = fake.manifests[("library/alpine", "3.20")]
    response = client.get("/v2/library/alpine/manifests/3.20", headers={"Accept": ALL_TYPES})
    assert response.status_code == 200
    assert response.content == body
    assert response.headers["content-type"] == media_type
    assert response.headers["docker-content-digest"] == sha256(body)
    assert response.headers["etag"] == f'"{sha256(body)}"'
    assert response.headers["content-length"] == str(len(body))


def test_one_segment_name_means_library(client: TestClient, fake: FakeRegistry) -> None:
    response = client.get("/v2/alpine/manifests/3.20")
    assert response.status_code == 200
    assert fake.count("GET", "/v2/library/alpine/manifests/3.20") == 1


def test_client_without_accept_gets_all_manifest_types_forwarded(client: TestClient, fake: FakeRegistry) -> None:
    client.get("/v2/library/alpine/manifests/multi", headers={"Accept": "*/*"})
    accept = fake.requests[-1].headers["accept"]
    for media_type in (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST):
        assert media_type in accept


def test_head_manifest_has_digest_and_length_but_no_body(client: TestClient, fake: FakeRegistry) -> None:
    _, body = fake.manifests[("library/alpine", "3.20")]
    response = client.head("/v2/library/alpine/manifests/3.20")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(body))
    assert response.headers["docker-content-digest"] == sha256(body)


def test_manifest_by_digest_is_served_from_cache_without_upstream(client: TestClient, fake: FakeRegistry) -> None:
    _, body = fake.manifests[("library/alpine", "3.20")]
    digest = sha256(body)
    assert client.get(f"/v2/library/alpine/manifests/{digest}").content == body
    before = sum(fake.hits.values())
    for _ in range(3):
        assert client.get(f"/v2/library/alpine/manifests/{digest}").content == body
    assert sum(fake.hits.values()) == before


def test_tag_within_ttl_makes_no_upstream_request(client: TestClient, fake: FakeRegistry) -> None:
    client.get("/v2/library/alpine/manifests/3.20")
    before = sum(fake.hits.values())
    assert client.get("/v2/library/alpine/manifests/3.20").status_code == 200
    assert client.head("/v2/library/alpine/manifests/3.20").status_code == 200
    assert sum(fake.hits.values()) == before


def test_expired_tag_is_revalidated_with_head_only(make_client: ClientFactory, fake: FakeRegistry) -> None:
    client = make_client(tag_ttl=0)
    client.get("/v2/library/alpine/manifests/3.20")
    assert client.get("/v2/library/alpine/manifests/3.20").status_code == 200
    assert fake.count("GET", "/manifests/3.20") == 1
    assert fake.count("HEAD", "/manifests/3.20") == 1


def test_moved_tag_is_fetched_again(make_client: ClientFactory, fake: FakeRegistry) -> None:
    client = make_client(tag_ttl=0)
    client.get("/v2/library/alpine/manifests/3.20")
    new_body = b'{"schemaVersion":2,"mediaType":"' + OCI_MANIFEST.encode() + b'","layers":[]}'
    fake.add_manifest("library/alpine", "3.20", OCI_MANIFEST, new_body)
    response = client.get("/v2/library/alpine/manifests/3.20")
    assert response.content == new_body
    assert response.headers["docker-content-digest"] == sha256(new_body)


def test_cached_manifest_not_in_accept_is_unknown(client: TestClient, fake: FakeRegistry) -> None:
    _, body = fake.manifests[("library/alpine", "3.20")]
    client.get("/v2/library/alpine/manifests/3.20")
    response = client.get(f"/v2/library/alpine/manifests/{sha256(body)}", headers={"Accept": DOCKER_MANIFEST})
    assert response.status_code == 404
    assert error_code(response) == "MANIFEST_UNKNOWN"


def test_unknown_tag_and_invalid_tag_are_manifest_unknown(client: TestClient) -> None:
    for path in ("/v2/library/alpine/manifests/nope", "/v2/library/alpine/manifests/-bad-tag"):
        response = client.get(path)
        assert response.status_code == 404
        assert error_code(response) == "MANIFEST_UNKNOWN"


@pytest.mark.parametrize(
    "path",
    [
        "/v2/Library/Alpine/manifests/latest",
        "/v2/library/%2e%2e/manifests/latest",
        "/v2/" + "a" * 300 + "/manifests/latest",
        "/v2/library//alpine/blobs/sha256:" + "0" * 64,
    ],
)
def test_invalid_names_are_rejected(client: TestClient, fake: FakeRegistry, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 400
    assert error_code(response) == "NAME_INVALID"
    assert not fake.requests


@pytest.mark.parametrize(
    "digest", ["sha256:" + "A" * 64, "sha256:abc", "md5:" + "0" * 32, "sha256:" + "0" * 63 + "g", "nocolon"]
)
def test_invalid_blob_digests_are_rejected(client: TestClient, fake: FakeRegistry, digest: str) -> None:
    response = client.get(f"/v2/library/alpine/blobs/{digest}")
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"
    assert not fake.requests


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH", "DELETE"])
def test_write_methods_are_unsupported(client: TestClient, method: str) -> None:
    for path in ("/v2/library/alpine/manifests/x", "/v2/library/alpine/blobs/uploads/", "/v2/"):
        response = client.request(method, path)
        assert response.status_code == 405, path
        assert error_code(response) == "UNSUPPORTED"


def test_unknown_endpoint_is_json_404(client: TestClient) -> None:
    response = client.get("/v2/library/alpine/nothing")
    assert response.status_code == 404
    assert error_code(response)


def test_blob_miss_then_hit(client: TestClient, fake: FakeRegistry) -> None:
    data = b"layer-bytes" * 1000
    digest = sha256(data)
    response = client.get(f"/v2/library/alpine/blobs/{digest}")
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["docker-content-digest"] == digest
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["accept-ranges"] == "bytes"
    assert client.get(f"/v2/library/alpine/blobs/{digest}").content == data
    assert fake.count("GET", "cdn/blobs") == 1


def test_blob_redirect_to_cdn_does_not_carry_credentials(client: TestClient, fake: FakeRegistry) -> None:
    digest = sha256(b"layer-bytes" * 1000)
    client.get(f"/v2/library/alpine/blobs/{digest}")
    cdn = [r for r in fake.requests if r.url.host == "cdn.example.net"]
    registry = [r for r in fake.requests if r.url.host != "cdn.example.net" and "/blobs/" in r.url.path]
    assert cdn and registry
    assert registry[-1].headers["authorization"].startswith("Bearer ")
    assert "authorization" not in cdn[0].headers


def test_blob_range_requests(client: TestClient) -> None:
    data = b"layer-bytes" * 1000
    digest = sha256(data)
    client.get(f"/v2/library/alpine/blobs/{digest}")  # warm the cache
    response = client.get(f"/v2/library/alpine/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert response.status_code == 206
    assert response.content == data[10:20]
    assert response.headers["content-range"] == f"bytes 10-19/{len(data)}"
    response = client.get(f"/v2/library/alpine/blobs/{digest}", headers={"Range": "bytes=-5"})
    assert response.content == data[-5:]
    response = client.get(f"/v2/library/alpine/blobs/{digest}", headers={"Range": "bytes=10000-"})
    assert response.content == data[10000:]
    for bad in ("bytes=99999-", "bytes=5-1", "bytes=0-1,5-6", "items=0-1", "bytes=-0"):
        response = client.get(f"/v2/library/alpine/blobs/{digest}", headers={"Range": bad})
        assert response.status_code == 416, bad
        assert response.headers["content-range"] == f"bytes */{len(data)}"


def test_blob_range_on_a_miss_is_served_from_the_fill(client: TestClient) -> None:
    data = b"layer-bytes" * 1000
    response = client.get(f"/v2/library/alpine/blobs/{sha256(data)}", headers={"Range": "bytes=100-"})
    assert response.status_code == 206
    assert response.content == data[100:]


def test_blob_head_on_a_miss_does_not_download(client: TestClient, fake: FakeRegistry) -> None:
    data = b"layer-bytes" * 1000
    response = client.head(f"/v2/library/alpine/blobs/{sha256(data)}")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(data))
    assert fake.count("GET", "cdn/") == 0


def test_unknown_blob(client: TestClient) -> None:
    response = client.get(f"/v2/library/alpine/blobs/{sha256(b'nothing')}")
    assert response.status_code == 404
    assert error_code(response) == "BLOB_UNKNOWN"


def test_corrupt_upstream_blob_is_never_cached(client: TestClient, fake: FakeRegistry, tmp_path) -> None:
    data = b"layer-bytes" * 1000
    fake.corrupt_blobs = True
    response = client.get(f"/v2/library/alpine/blobs/{sha256(data)}")
    # The final byte is held back until the digest is checked, so the body can never be whole.
    assert len(response.content) < len(data)
    fake.corrupt_blobs = False
    assert client.get(f"/v2/library/alpine/blobs/{sha256(data)}").content == data
    assert fake.count("GET", "cdn/") == 2
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.name.endswith(".partial")]
    assert leftovers == []


def test_token_is_reused_across_requests(client: TestClient, fake: FakeRegistry) -> None:
    for tag in ("3.20", "multi", "3.20"):
        client.get(f"/v2/library/alpine/manifests/{tag}", headers={"Accept": ALL_TYPES})
    client.get(f"/v2/library/alpine/blobs/{sha256(b'layer-bytes' * 1000)}")
    assert len(fake.token_requests) == 1
    # Only the very first request paid for the 401 round trip.
    assert fake.challenges == 1


def test_rejected_token_is_renewed_once(client: TestClient, fake: FakeRegistry) -> None:
    client.get("/v2/library/alpine/manifests/3.20")
    fake.issued.clear()  # the upstream forgets (revokes) every token it issued
    assert client.get("/v2/library/alpine/manifests/multi").status_code == 200
    assert len(fake.token_requests) == 2


def test_credentials_go_to_the_token_service(make_client: ClientFactory, fake: FakeRegistry) -> None:
    fake.credentials = ("ci-bot", "hunter2")
    client = make_client(username="ci-bot", password="hunter2")
    assert client.get("/v2/library/alpine/manifests/3.20").status_code == 200
    assert fake.token_requests[0].headers["authorization"] == httpx.BasicAuth("ci-bot", "hunter2")._auth_header
    assert "account=ci-bot" in str(fake.token_requests[0].url)


def test_rejected_credentials_are_a_clear_error(make_client: ClientFactory, fake: FakeRegistry) -> None:
    fake.credentials = ("ci-bot", "hunter2")
    client = make_client(username="ci-bot", password="wrong")
    response = client.get("/v2/library/alpine/manifests/3.20")
    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"
    assert "wrong" not in response.text and "hunter2" not in response.text


@pytest.mark.parametrize(
    ("status", "headers", "expected_status", "expected_code"),
    [
        (429, {"Retry-After": "42"}, 429, "TOOMANYREQUESTS"),
        (503, {}, 503, "UPSTREAM_UNAVAILABLE"),
        (500, {}, 502, "UPSTREAM_ERROR"),
        (403, {}, 403, "DENIED"),
        (401, {}, 404, "NAME_UNKNOWN"),
    ],
)
def test_upstream_errors_are_mapped(
    client: TestClient,
    fake: FakeRegistry,
    status: int,
    headers: dict[str, str],
    expected_status: int,
    expected_code: str,
) -> None:
    fake.fail, fake.fail_headers = status, headers
    response = client.get("/v2/library/alpine/manifests/3.20")
    assert response.status_code == expected_status
    assert error_code(response) == expected_code
    if "Retry-After" in headers:
        assert response.headers["retry-after"] == "42"


def test_unreachable_and_slow_upstreams(tmp_path) -> None:
    from proxy.app import create_app
    from proxy.config import Settings, StorageSettings, UpstreamSettings

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def stall(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    for handler, status in ((refuse, 503), (stall, 504)):
        settings = Settings(storage=StorageSettings(root=tmp_path), upstreams=(UpstreamSettings(),))
        with TestClient(create_app(settings, transport=httpx.MockTransport(handler))) as client:
            response = client.get("/v2/library/alpine/manifests/latest")
            assert response.status_code == status
            assert error_code(response).startswith("UPSTREAM_")


def test_tags_list_is_passed_through(client: TestClient) -> None:
    response = client.get("/v2/alpine/tags/list")
    assert response.status_code == 200
    assert json.loads(response.content) == {"name": "library/alpine", "tags": ["3.20", "multi"]}
    assert client.get("/v2/alpine/tags/list?n=abc").status_code == 400


def test_manifest_digest_mismatch_from_upstream_is_rejected(client: TestClient, fake: FakeRegistry) -> None:
    _, body = fake.manifests[("library/alpine", "3.20")]
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    fake.manifests[("library/alpine", wrong)] = (OCI_MANIFEST, body)
    response = client.get(f"/v2/library/alpine/manifests/{wrong}")
    assert response.status_code == 502
    assert error_code(response) == "UPSTREAM_ERROR"


def test_giant_headers_and_paths_are_refused(client: TestClient, fake: FakeRegistry) -> None:
    response = client.get("/v2/library/alpine/manifests/3.20", headers={"X-Big": "a" * 100_000})
    assert response.status_code == 431
    assert error_code(response) == "HEADERS_TOO_LARGE"
    response = client.get("/v2/" + "a/" * 3000 + "manifests/latest")
    assert response.status_code == 414
    assert error_code(response) == "URI_TOO_LONG"
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"
    assert not fake.requests


def test_junk_accept_header_is_ignored_not_forwarded(client: TestClient, fake: FakeRegistry) -> None:
    response = client.get("/v2/library/alpine/manifests/3.20", headers={"Accept": b"\x80, a b/c, */*"})
    assert response.status_code == 200
    assert OCI_MANIFEST in fake.requests[-1].headers["accept"]


# -- one answer per tag, whatever the Accept (issue 7, item 2) ---------------------------------------------------------

EVERY_TYPE = f"{OCI_INDEX}, {OCI_MANIFEST}, {DOCKER_LIST}, {DOCKER_MANIFEST}"


def add_docker_list(
    fake: FakeRegistry, architectures: tuple[str, ...] = ("amd64", "arm64")
) -> tuple[str, dict[str, str]]:
    """``library/multi:1``, a Docker manifest list of one schema2 image per architecture: its digest, and theirs."""
    images: dict[str, str] = {}
    entries = []
    for architecture in architectures:
        config = {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": sha256(architecture.encode()),
        }
        body = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": {**config, "size": 5}}).encode()
        images[architecture] = fake.add_manifest("library/multi", None, DOCKER_MANIFEST, body)
        platform = {"os": "linux", "architecture": architecture}
        entries.append(
            {"mediaType": DOCKER_MANIFEST, "digest": images[architecture], "size": len(body), "platform": platform}
        )
    manifest_list = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": entries}).encode()
    return fake.add_manifest("library/multi", "1", DOCKER_LIST, manifest_list), images


def test_schema2_only_client_does_not_decide_what_later_clients_get(
    make_client: ClientFactory, fake: FakeRegistry
) -> None:
    list_digest, images = add_docker_list(fake)
    client = make_client()
    old = client.get("/v2/library/multi/manifests/1", headers={"Accept": DOCKER_MANIFEST})
    assert old.status_code == 200
    assert old.headers["content-type"] == DOCKER_MANIFEST
    assert old.headers["docker-content-digest"] == images["amd64"]
    assert sha256(old.content) == images["amd64"]
    # The tag was asked of the upstream with every type, whatever this client takes.
    tag_requests = [r for r in fake.requests if r.url.path == "/v2/library/multi/manifests/1"]
    assert tag_requests and all(DOCKER_LIST in r.headers["accept"] for r in tag_requests)
    for proxy in (client, make_client()):  # the second one is a restart on the same cache
        response = proxy.get("/v2/library/multi/manifests/1", headers={"Accept": EVERY_TYPE})
        assert response.status_code == 200
        assert response.headers["docker-content-digest"] == list_digest
        assert response.headers["content-type"] == DOCKER_LIST
        head = proxy.head("/v2/library/multi/manifests/1", headers={"Accept": EVERY_TYPE})
        assert head.headers["docker-content-digest"] == list_digest
        arm64 = proxy.get(f"/v2/library/multi/manifests/{images['arm64']}", headers={"Accept": EVERY_TYPE})
        assert arm64.status_code == 200 and sha256(arm64.content) == images["arm64"]
        again = proxy.get("/v2/library/multi/manifests/1", headers={"Accept": DOCKER_MANIFEST})
        assert again.headers["docker-content-digest"] == images["amd64"]
    assert fake.count("GET", "/v2/library/multi/manifests/1") == 1


def test_list_without_an_amd64_image_is_unknown_to_a_client_without_list_support(
    client: TestClient, fake: FakeRegistry
) -> None:
    list_digest, _ = add_docker_list(fake, ("arm64",))
    response = client.get("/v2/library/multi/manifests/1", headers={"Accept": DOCKER_MANIFEST})
    assert response.status_code == 404
    assert error_code(response) == "MANIFEST_UNKNOWN"
    full = client.get("/v2/library/multi/manifests/1", headers={"Accept": EVERY_TYPE})
    assert full.headers["docker-content-digest"] == list_digest


def test_amd64_image_of_a_type_the_client_does_not_take_is_unknown(client: TestClient, fake: FakeRegistry) -> None:
    add_docker_list(fake)
    response = client.get("/v2/library/multi/manifests/1", headers={"Accept": OCI_MANIFEST})
    assert response.status_code == 404
    assert error_code(response) == "MANIFEST_UNKNOWN"
    assert response.json()["errors"][0]["detail"] == {"reference": "1"}


def test_oci_index_is_never_rewritten(client: TestClient, fake: FakeRegistry) -> None:
    # As Distribution: only a Docker manifest list has a stand-in for old clients; an OCI index is simply not found.
    _, index = fake.manifests[("library/alpine", "multi")]
    response = client.get(
        "/v2/library/alpine/manifests/multi", headers={"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"}
    )
    assert response.status_code == 404
    assert "OCI index" in response.json()["errors"][0]["message"]
    full = client.get("/v2/library/alpine/manifests/multi", headers={"Accept": EVERY_TYPE})
    assert full.headers["docker-content-digest"] == sha256(index)


def test_revalidation_asks_for_every_type(make_client: ClientFactory, fake: FakeRegistry) -> None:
    list_digest, images = add_docker_list(fake)
    client = make_client(tag_ttl=0)
    for _ in range(2):
        response = client.get("/v2/library/multi/manifests/1", headers={"Accept": DOCKER_MANIFEST})
        assert response.headers["docker-content-digest"] == images["amd64"]
    heads = [r for r in fake.requests if r.method == "HEAD" and r.url.path == "/v2/library/multi/manifests/1"]
    assert len(heads) == 1 and DOCKER_LIST in heads[0].headers["accept"]
    assert fake.count("GET", "/v2/library/multi/manifests/1") == 1
    full = client.get("/v2/library/multi/manifests/1", headers={"Accept": EVERY_TYPE})
    assert full.headers["docker-content-digest"] == list_digest


def test_stale_list_stands_in_for_a_client_without_list_support(make_client: ClientFactory, fake: FakeRegistry) -> None:
    _, images = add_docker_list(fake)
    client = make_client(tag_ttl=0)
    assert client.get("/v2/library/multi/manifests/1", headers={"Accept": DOCKER_MANIFEST}).status_code == 200
    fake.fail = 503
    response = client.get("/v2/library/multi/manifests/1", headers={"Accept": DOCKER_MANIFEST})
    assert response.status_code == 200
    assert response.headers["docker-content-digest"] == images["amd64"]
    assert response.headers["warning"] == '110 - "Response is Stale"'


def test_relay_of_an_open_ended_range_is_verified(make_client: ClientFactory, fake: FakeRegistry, tmp_path) -> None:
    (tmp_path / "cache").write_text("a file where the cache root should be: every blob is relayed")
    client = make_client()
    data = b"layer-bytes" * 1000
    response = client.get(f"/v2/library/alpine/blobs/{sha256(data)}", headers={"Range": "bytes=1000-"})
    assert response.status_code == 206
    assert response.content == data[1000:]
    fake.corrupt_blobs = True  # byte 0, which this client does not ask for, is wrong: so is the blob
    response = client.get(f"/v2/library/alpine/blobs/{sha256(data)}", headers={"Range": "bytes=1000-"})
    assert response.status_code == 206
    assert len(response.content) < len(data) - 1000  # cut before its end: never a complete-looking body
