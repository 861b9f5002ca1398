"""Smoke tests of tests.harness.faults: every fault must really happen to a real registry request, and everything
else must pass through untouched, before a proxy test can blame the proxy for what it sees."""

from __future__ import annotations

import hashlib
import socket
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.harness.challenge import Challenge, fetch_token
from tests.harness.faults import (
    CutAfter,
    Delay,
    FaultyRequest,
    FaultyUpstream,
    FlipByte,
    Respond,
    StallAfter,
    registry_error,
)
from tests.harness.images import Images, PushedImage
from tests.harness.oci import Descriptor
from tests.harness.ports import LOOPBACK, free_port
from tests.harness.registry import DistributionRegistry

MIB = 1024 * 1024


@pytest.fixture
def faulty(upstream_registry: DistributionRegistry) -> Iterator[FaultyUpstream]:
    with FaultyUpstream(upstream_registry.url) as proxy:
        yield proxy
    assert proxy.errors == []


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(30.0)) as http:
        yield http


def pull_headers(client: httpx.Client, base_url: str, image: PushedImage) -> dict[str, str]:
    """A pull token got as clients get it: the challenge (through the faulty proxy, which must pass
    WWW-Authenticate on untouched), then the realm, which is the issuer's own URL."""
    response = client.get(f"{base_url}/v2/{image.repository}/manifests/{image.tag}")
    assert response.status_code == 401
    challenge = Challenge.parse(response.headers["WWW-Authenticate"])
    token = fetch_token(client, challenge, [challenge.params["scope"]])
    return {"Authorization": f"Bearer {token}", "Accept": image.media_type}


def blob_url(base_url: str, image: PushedImage, blob: Descriptor) -> str:
    return f"{base_url}/v2/{image.repository}/blobs/{blob.digest}"


def read_prefix(images: Images, blob: Descriptor, n: int, offset: int = 0) -> bytes:
    with images.store.path(blob.digest).open("rb") as f:
        f.seek(offset)
        return f.read(n)


def stream_until_error(client: httpx.Client, url: str, headers: dict[str, str], received: bytearray) -> None:
    with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        for piece in response.iter_raw():
            received += piece


def test_blob_passes_through_whole_with_its_headers(
    faulty: FaultyUpstream, client: httpx.Client, images: Images, upstream_registry: DistributionRegistry
):
    image = images["oci"]
    headers = pull_headers(client, faulty.url, image)
    blob = image.layers[0]

    response = client.get(blob_url(faulty.url, image, blob), headers=headers)
    direct = client.get(blob_url(upstream_registry.url, image, blob), headers=headers)

    assert response.status_code == 200
    assert response.content == images.store.read(blob.digest)
    for name in ("Content-Length", "Content-Type", "Docker-Content-Digest", "ETag"):
        assert response.headers[name] == direct.headers[name]
    # One connection for the challenge and the blob: keep-alive works.
    assert faulty.accepted == 1
    assert faulty.log[-1] == FaultyRequest("GET", f"/v2/{image.repository}/blobs/{blob.digest}", 200, blob.size, None)


def test_big_blob_streams_in_flat_memory(faulty: FaultyUpstream, client: httpx.Client, images: Images):
    image = images["big"]
    headers = pull_headers(client, faulty.url, image)
    blob = image.layers[0]
    digest = hashlib.sha256()

    # tracemalloc sees every thread's allocations, the proxy's event loop included.
    tracemalloc.start()
    try:
        with client.stream("GET", blob_url(faulty.url, image, blob), headers=headers) as response:
            assert response.status_code == 200
            for piece in response.iter_raw():
                digest.update(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert f"sha256:{digest.hexdigest()}" == blob.digest
    assert peak < 16 * MIB, f"{peak / MIB:.1f} MiB allocated at the peak for a {blob.size / MIB:.0f} MiB blob"


def test_range_request_passes_through(faulty: FaultyUpstream, client: httpx.Client, images: Images):
    image = images["big"]
    blob = image.layers[0]
    headers = {**pull_headers(client, faulty.url, image), "Range": "bytes=100-199"}

    response = client.get(blob_url(faulty.url, image, blob), headers=headers)

    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes 100-199/{blob.size}"
    assert response.content == read_prefix(images, blob, 100, offset=100)


def test_raw_request_target_is_forwarded_verbatim(faulty: FaultyUpstream, upstream_registry: DistributionRegistry):
    # httpx would remove the dot segment; a raw socket sends exactly these bytes.
    target = "/v2/library/./oci-image/manifests/1?n=%2F&x=a%20b&&"
    upstream_registry.wait_quiet()
    mark = upstream_registry.mark()

    with socket.create_connection((LOOPBACK, faulty.port or 0), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: example.invalid\r\nConnection: close\r\n\r\n".encode())
        received = bytearray()
        for _ in range(1000):
            piece = sock.recv(65536)
            if not piece:
                break
            received += piece
    upstream_registry.wait_quiet()

    assert received.startswith(b"HTTP/1.1 ")
    assert [r.uri for r in upstream_registry.requests_since(mark)] == [target]
    assert faulty.log[-1].target == target


def test_cut_after_ends_the_body_early(faulty: FaultyUpstream, client: httpx.Client, images: Images):
    image = images["big"]
    blob = image.layers[0]
    headers = pull_headers(client, faulty.url, image)
    faulty.add(CutAfter(100_000, method="GET", path=blob.digest))
    received = bytearray()

    with pytest.raises(httpx.RemoteProtocolError):
        stream_until_error(client, blob_url(faulty.url, image, blob), headers, received)

    assert bytes(received) == read_prefix(images, blob, 100_000)
    path = f"/v2/{image.repository}/blobs/{blob.digest}"
    assert faulty.log[-1] == FaultyRequest("GET", path, 200, 100_000, "CutAfter")


def test_cut_after_with_reset(faulty: FaultyUpstream, client: httpx.Client, images: Images):
    image = images["big"]
    blob = image.layers[0]
    headers = pull_headers(client, faulty.url, image)
    faulty.add(CutAfter(100_000, reset=True, method="GET", path=blob.digest))
    received = bytearray()

    with pytest.raises(httpx.ReadError, match="reset"):
        stream_until_error(client, blob_url(faulty.url, image, blob), headers, received)

    assert bytes(received) == read_prefix(images, blob, 100_000)


def test_flip_byte_changes_exactly_that_byte(faulty: FaultyUpstream, client: httpx.Client, images: Images):
    image = images["oci"]
    headers = pull_headers(client, faulty.url, image)
    faulty.add(FlipByte(10, path="/manifests/"))

    response = client.get(f"{faulty.url}/v2/{image.repository}/manifests/{image.tag}", headers=headers)

    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == image.digest
    assert len(response.content) == len(image.manifest)
    differences = [i for i, (a, b) in enumerate(zip(response.content, image.manifest, strict=True)) if a != b]
    assert differences == [10]
    assert response.content[10] == image.manifest[10] ^ 0xFF


def test_respond_never_reaches_the_upstream(
    faulty: FaultyUpstream, client: httpx.Client, images: Images, upstream_registry: DistributionRegistry
):
    image = images["oci"]
    headers = pull_headers(client, faulty.url, image)
    faulty.add(registry_error(429, "TOOMANYREQUESTS", "slow down", headers={"Retry-After": "7"}, path="/manifests/"))
    upstream_registry.wait_quiet()
    upstream_mark, mark = upstream_registry.mark(), faulty.mark()

    response = client.get(f"{faulty.url}/v2/{image.repository}/manifests/{image.tag}", headers=headers)
    faulty.wait_quiet(seconds=0.1)
    upstream_registry.wait_quiet()

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down", "detail": {}}]}
    assert upstream_registry.requests_since(upstream_mark) == []
    assert faulty.since(mark) == [
        FaultyRequest("GET", f"/v2/{image.repository}/manifests/{image.tag}", 429, len(response.content), "Respond")
    ]


def test_times_limits_a_fault_and_remove_ends_one(faulty: FaultyUpstream, client: httpx.Client, images: Images):
    image = images["oci"]
    headers = pull_headers(client, faulty.url, image)
    url = f"{faulty.url}/v2/{image.repository}/manifests/{image.tag}"
    once = faulty.add(Respond(503, path="/manifests/", times=1))

    assert [client.get(url, headers=headers).status_code for _ in range(2)] == [503, 200]
    assert (once.hits, once.active) == (1, False)

    always = faulty.add(Respond(502, method="HEAD"))
    assert [client.head(url, headers=headers).status_code for _ in range(3)] == [502, 502, 502]
    assert client.get(url, headers=headers).status_code == 200  # the method did not match
    always.remove()

    assert client.head(url, headers=headers).status_code == 200
    assert always.hits == 3


def test_delay_delays(faulty: FaultyUpstream, client: httpx.Client, images: Images):
    image = images["oci"]
    headers = pull_headers(client, faulty.url, image)
    faulty.add(Delay(0.4, path="/manifests/"))

    started = time.monotonic()
    response = client.get(f"{faulty.url}/v2/{image.repository}/manifests/{image.tag}", headers=headers)

    assert time.monotonic() - started >= 0.4
    assert response.status_code == 200
    assert response.content == image.manifest


def test_stall_after_triggers_a_read_timeout(faulty: FaultyUpstream, client: httpx.Client, images: Images):
    image = images["big"]
    blob = image.layers[0]
    headers = pull_headers(client, faulty.url, image)
    faulty.add(StallAfter(1000, seconds=1.0, method="GET", path=blob.digest))
    received = bytearray()
    impatient = httpx.Timeout(10.0, read=0.3)

    with httpx.Client(timeout=impatient) as other, pytest.raises(httpx.ReadTimeout):
        stream_until_error(other, blob_url(faulty.url, image, blob), headers, received)
    faulty.wait_quiet(seconds=0.1)

    assert bytes(received) == read_prefix(images, blob, 1000)
    path = f"/v2/{image.repository}/blobs/{blob.digest}"
    assert faulty.log[-1] == FaultyRequest("GET", path, 200, 1000, "StallAfter")


def test_pause_refuses_connections_and_resume_listens_again(
    faulty: FaultyUpstream, client: httpx.Client, images: Images
):
    image = images["big"]
    blob = image.layers[0]
    headers = pull_headers(client, faulty.url, image)
    url = faulty.url

    # An open response is dropped mid-body...
    with pytest.raises(httpx.TransportError), client.stream("GET", blob_url(url, image, blob), headers=headers) as r:
        pieces = r.iter_raw()
        next(pieces)
        faulty.pause()
        for _ in pieces:
            pass
    # ... and new connections are refused.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v2/")

    faulty.resume()

    assert faulty.url == url
    assert httpx.get(f"{url}/v2/").status_code == 401


def test_unreachable_target_is_a_502(client: httpx.Client):
    with FaultyUpstream(f"http://{LOOPBACK}:{free_port()}") as proxy:
        response = client.get(f"{proxy.url}/v2/")

    assert response.status_code == 502
    assert proxy.log == [FaultyRequest("GET", "/v2/", 502, len(response.content), None)]


def test_many_concurrent_clients(faulty: FaultyUpstream, client: httpx.Client, images: Images):
    image = images["oci"]
    headers = pull_headers(client, faulty.url, image)
    url = f"{faulty.url}/v2/{image.repository}/manifests/{image.tag}"

    def pull_five(_: int) -> list[bytes]:
        with httpx.Client(timeout=30.0) as own:
            return [own.get(url, headers=headers).content for _ in range(5)]

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(pull_five, range(16)))

    assert all(manifest == image.manifest for result in results for manifest in result)
    assert faulty.accepted == 1 + 16
