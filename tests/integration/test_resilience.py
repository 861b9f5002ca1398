"""Issue 3 against real parts: concurrency, outages, broken and corrupt downloads, kill -9, a full disk."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.blobstore import BlobStore
from tests.harness.deadline import poll_until
from tests.harness.faults import CutAfter, FaultyUpstream, FlipByte, StallAfter, registry_error
from tests.harness.images import Images, PushedImage
from tests.harness.oci import Descriptor
from tests.harness.proxy_server import ProxyServer
from tests.harness.push import Pusher
from tests.harness.registry import DistributionRegistry
from tests.harness.skopeo import read_dir_layout, skopeo_copy
from tests.harness.throttle import ThrottledRelay
from tests.harness.tokens import TokenIssuer


def push_blob(registry: DistributionRegistry, tmp_path: Path, repository: str, data: bytes) -> Descriptor:
    store = BlobStore(tmp_path / "pushed")
    blob = store.add_bytes(data, "application/octet-stream")
    with Pusher(registry.url, store, (registry.username, registry.password)) as pusher:
        pusher.push_blob(repository, blob)
    return blob


def push_image(registry: DistributionRegistry, images: Images, image: PushedImage) -> None:
    with Pusher(registry.url, images.store, (registry.username, registry.password)) as pusher:
        for blob in image.blobs:
            pusher.push_blob(image.repository, blob)
        pusher.push_manifest(image.repository, str(image.tag), image.manifest, image.media_type)


def sha256_of_stream(url: str, timeout: float = 120) -> str:
    hasher = hashlib.sha256()
    with httpx.stream("GET", url, timeout=timeout) as response:
        response.raise_for_status()
        for chunk in response.iter_raw(1 << 20):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def partial_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.partial") if p.is_file()]


@pytest.fixture
def faulty(upstream_registry: DistributionRegistry) -> Iterator[FaultyUpstream]:
    with FaultyUpstream(upstream_registry.url) as upstream:
        yield upstream


def test_eight_clients_share_one_upstream_get(
    upstream_registry: DistributionRegistry, images: Images, tmp_path: Path
) -> None:
    layer = images["big"].layers[0]
    path = f"/v2/{images['big'].repository}/blobs/{layer.digest}"
    with ProxyServer(tmp_path / "proxy", upstream_registry.url) as proxy:
        upstream_registry.wait_quiet()
        mark = upstream_registry.mark()
        digests: list[str] = []
        errors: list[BaseException] = []

        def pull() -> None:
            try:
                digests.append(sha256_of_stream(proxy.url + path))
            except BaseException as exc:  # reported below; a thread must not die silently
                errors.append(exc)

        threads = [threading.Thread(target=pull) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not errors
        assert digests == [layer.digest] * 8
        upstream_registry.wait_quiet()
        gets = [r for r in upstream_registry.requests_since(mark) if r.method == "GET" and r.path == path]
        assert [r.status for r in gets] == [200]


def test_cached_image_survives_an_upstream_outage_and_a_proxy_restart(
    images: Images, skopeo: str, tmp_path: Path
) -> None:
    image = images["oci"]
    # An upstream of its own: this test stops it, and its token service, while other tests use theirs.
    with TokenIssuer(tmp_path / "issuer") as issuer, DistributionRegistry(tmp_path / "upstream", issuer) as upstream:
        push_image(upstream, images, image)
        proxy = ProxyServer(tmp_path / "proxy", upstream.url, tag_ttl="1s").start()
        try:
            skopeo_copy(proxy.ref(image.ref), tmp_path / "before")
            upstream.stop()
            issuer.stop()
            time.sleep(1.2)  # let the 1 s tag TTL run out: the tag must now be revalidated, and cannot be
            skopeo_copy(proxy.ref(image.ref), tmp_path / "during")
            assert read_dir_layout(tmp_path / "during").manifest_digest == image.digest
            response = httpx.get(f"{proxy.url}/v2/{image.repository}/manifests/{image.tag}", timeout=30)
            assert response.status_code == 200
            assert response.headers["warning"] == '110 - "Response is Stale"'

            proxy.stop()
            proxy.start()  # the proxy starts, and serves its cache, with the upstream down
            skopeo_copy(proxy.ref(image.ref), tmp_path / "restarted")
            assert read_dir_layout(tmp_path / "restarted").manifest_digest == image.digest

            started = time.monotonic()
            response = httpx.get(f"{proxy.url}/v2/{image.repository}/manifests/never-pulled", timeout=30)
            elapsed = time.monotonic() - started
            assert response.status_code in (502, 503, 504)
            assert response.json()["errors"][0]["code"].startswith("UPSTREAM_")
            assert elapsed < 10, f"an uncached manifest took {elapsed:.1f} s to fail"
        finally:
            proxy.stop()


def test_broken_download_is_resumed(
    faulty: FaultyUpstream, upstream_registry: DistributionRegistry, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 8192  # 2 MiB
    blob = push_blob(upstream_registry, tmp_path, "library/resumed", data)
    faulty.add(CutAfter(700_000, reset=True, path=blob.digest, method="GET", times=1))
    with ProxyServer(tmp_path / "proxy", faulty.url) as proxy:
        url = f"{proxy.url}/v2/library/resumed/blobs/{blob.digest}"
        assert sha256_of_stream(url) == blob.digest
        faulty.wait_quiet()
        blob_gets = [r for r in faulty.log if r.method == "GET" and blob.digest in r.path]
        assert [r.status for r in blob_gets] == [200, 206]
        assert blob_gets[0].fault is not None
        assert sha256_of_stream(url) == blob.digest  # committed: served from the cache now
        assert len([r for r in faulty.log if r.method == "GET" and blob.digest in r.path]) == 2


def test_flipped_byte_is_never_served_whole_nor_cached(
    faulty: FaultyUpstream, upstream_registry: DistributionRegistry, tmp_path: Path
) -> None:
    data = b"a blob that will be damaged in flight " * 30_000
    blob = push_blob(upstream_registry, tmp_path, "library/flipped", data)
    faulty.add(FlipByte(500_000, path=blob.digest, method="GET", times=1))
    with ProxyServer(tmp_path / "proxy", faulty.url) as proxy:
        url = f"{proxy.url}/v2/library/flipped/blobs/{blob.digest}"
        received = 0
        with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url, timeout=30) as response:
            for chunk in response.iter_raw():
                received += len(chunk)
        assert received < len(data)
        assert list((proxy.cache_dir / "blobs").rglob(blob.hex + "*")) == []  # no content, partial or whole
        assert sha256_of_stream(url) == blob.digest


def test_rate_limited_upstream_is_passed_on_with_retry_after(
    faulty: FaultyUpstream, images: Images, tmp_path: Path
) -> None:
    image = images["docker"]
    faulty.add(registry_error(429, "TOOMANYREQUESTS", "You have reached your pull rate limit.",
                              headers={"Retry-After": "7"}, path="/manifests/"))  # fmt: skip
    with ProxyServer(tmp_path / "proxy", faulty.url) as proxy:
        response = httpx.get(f"{proxy.url}/v2/{image.repository}/manifests/{image.tag}", timeout=30)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "7"
        assert response.json()["errors"][0]["code"] == "TOOMANYREQUESTS"


def test_refused_connections_fail_fast(faulty: FaultyUpstream, images: Images, tmp_path: Path) -> None:
    image = images["docker"]
    with ProxyServer(tmp_path / "proxy", faulty.url) as proxy:
        faulty.pause()
        for _ in range(5):  # past the breaker's threshold: the later ones do not even try
            response = httpx.get(f"{proxy.url}/v2/{image.repository}/manifests/{image.tag}", timeout=30)
            assert response.status_code == 503
            assert response.json()["errors"][0]["code"] == "UPSTREAM_UNAVAILABLE"


def test_kill_9_during_a_fill_leaves_nothing_that_could_be_served(
    faulty: FaultyUpstream, upstream_registry: DistributionRegistry, tmp_path: Path
) -> None:
    data = bytes(range(251)) * 20_000  # 5 MB: the fill stalls after 1 MB of it
    blob = push_blob(upstream_registry, tmp_path, "library/killed", data)
    stall = faulty.add(StallAfter(1_000_000, 60, path=blob.digest, method="GET", times=1))
    proxy = ProxyServer(tmp_path / "proxy", faulty.url).start()
    url = f"{proxy.url}/v2/library/killed/blobs/{blob.digest}"
    try:
        client = threading.Thread(target=lambda: _swallow(lambda: sha256_of_stream(url, timeout=90)), daemon=True)
        client.start()
        poll_until(
            lambda: True if any(p.stat().st_size > 0 for p in partial_files(proxy.cache_dir)) else None,
            timeout=30,
            what="a partial file with data in the cache",
        )
        proxy.stop(signal.SIGKILL)
        stall.remove()
        assert partial_files(proxy.cache_dir), "the kill left the partial file, as a crash would"
        proxy.start()
        assert partial_files(proxy.cache_dir) == []  # swept at start-up
        assert sha256_of_stream(url) == blob.digest
        verify = subprocess.run(
            [str(Path(sys.executable).with_name("registry-proxy")), "verify", "--config", str(proxy.config_path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        proxy.stop()


def _swallow(call: object) -> None:
    try:
        call()  # type: ignore[operator]
    except httpx.HTTPError:
        pass  # the proxy is killed under this client: its failure is expected


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def test_full_disk_still_serves_the_blob(
    tiny_disk: Path, upstream_registry: DistributionRegistry, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 40_000  # 10 MB on a 4 MiB disk
    blob = push_blob(upstream_registry, tmp_path, "library/toobig", data)
    proxy = ProxyServer(tmp_path / "proxy", upstream_registry.url)
    proxy.cache_dir = tiny_disk  # the cache root is the tiny disk
    proxy.config_path.write_text(
        proxy.config_path.read_text().replace(str(tmp_path / "proxy" / "cache"), str(tiny_disk))
    )
    with proxy:
        url = f"{proxy.url}/v2/library/toobig/blobs/{blob.digest}"
        assert sha256_of_stream(url) == blob.digest
        assert partial_files(tiny_disk) == []
        assert "No space left on device" in proxy.log_path.read_text()


def test_fill_finishes_after_its_client_leaves(upstream_registry: DistributionRegistry, tmp_path: Path) -> None:
    data = bytes(range(256)) * 40_000  # 10 MB
    blob = push_blob(upstream_registry, tmp_path, "library/abandoned", data)
    assert upstream_registry.port is not None
    # A slow link (~40 Mbit/s: about 2 s for this blob), so that the client surely leaves mid-fill.
    with (
        ThrottledRelay("127.0.0.1", upstream_registry.port, 5_000_000) as relay,
        ProxyServer(tmp_path / "proxy", relay.url) as proxy,
    ):
        url = f"{proxy.url}/v2/library/abandoned/blobs/{blob.digest}"
        upstream_registry.wait_quiet()
        mark = upstream_registry.mark()
        with httpx.stream("GET", url, timeout=30) as response:
            first = next(response.iter_raw(65536))
            assert first and len(first) < len(data)
        # The client is gone; the blob still lands in the cache, whole and verified.
        cached = proxy.cache_dir / "blobs" / "sha256" / blob.hex[:2] / blob.hex
        poll_until(lambda: True if cached.is_file() else None, timeout=30, what="the abandoned fill to commit")
        assert sha256_of_stream(url) == blob.digest
        upstream_registry.wait_quiet()
        gets = [r for r in upstream_registry.requests_since(mark) if r.method == "GET" and blob.digest in r.path]
        assert [r.status for r in gets] == [200]
