"""Hostile requests against a real ``registry-proxy serve``: no 5xx, no hang, registry error envelopes, a cache left
intact and no file written outside it.

The requests are raw bytes (tests.harness.hostile), so ``..``, ``%2f`` and NUL reach uvicorn exactly as written.
They are sent once, in order, by a module fixture; each request then has its own test so that a failure names it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from storage.paths import EVICT_LOCK, INVENTORY, LOCKS
from tests.harness.hostile import (
    PASSWD_MARKER,
    HostileRequest,
    RawReply,
    Target,
    hostile_requests,
    problems,
    send_raw,
)
from tests.harness.images import Images
from tests.harness.ports import LOOPBACK
from tests.harness.proxy_server import ProxyServer
from tests.harness.registry import DistributionRegistry

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
REQUEST_TIMEOUT = 5.0
# All requests together normally take well under a second; past this, the rest are reported as not sent rather
# than letting a proxy that hangs on everything hold the suite for requests × REQUEST_TIMEOUT.
SEND_BUDGET = 60.0

KNOWN_BUGS: dict[str, str] = {}  # label → reason, for a bug found but not yet fixed (strict xfail)

# Labels do not depend on the host or the digests, so the list can be built at collection time to name the tests.
_PLACEHOLDER = Target("library/x", "1", "sha256:" + "1" * 64, "sha256:" + "2" * 64)
LABELS = [request.label for request in hostile_requests("127.0.0.1:1", _PLACEHOLDER)]


@dataclass(frozen=True)
class Warm:
    target: Target
    manifest: bytes
    blobs: dict[str, bytes]  # digest → bytes, as served before any hostile request


@dataclass(frozen=True)
class Sent:
    requests: dict[str, HostileRequest]
    replies: dict[str, RawReply | None]  # None: not sent, the time budget ran out
    sentinel: bytes
    elapsed: float


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """The proxy's workdir, and a sentinel file's content: the file sits next to the workdir, where a traversal from
    the cache would find it, so no reply may ever contain that content."""
    base = tmp_path_factory.mktemp("hostile")
    sentinel = b"sentinel-" + secrets.token_hex(16).encode()
    (base / "sentinel.txt").write_bytes(sentinel)
    return base / "proxy", sentinel


@pytest.fixture(scope="module")
def proxy(upstream_registry: DistributionRegistry, workspace: tuple[Path, bytes]) -> Iterator[ProxyServer]:
    with ProxyServer(workspace[0], upstream_registry.url) as server:
        yield server


@pytest.fixture(scope="module")
def warm(proxy: ProxyServer, images: Images) -> Warm:
    """Pull images["oci"] through the proxy (manifest by tag, then every blob), so that hostile requests meet a
    populated cache."""
    image = images["oci"]
    assert image.tag is not None
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        manifest = client.get(f"/v2/{image.repository}/manifests/{image.tag}", headers={"Accept": MANIFEST_TYPES})
        assert manifest.status_code == 200
        assert manifest.content == image.manifest
        blobs = {}
        for blob in image.blobs:
            response = client.get(f"/v2/{image.repository}/blobs/{blob.digest}")
            assert response.status_code == 200
            assert _sha256(response.content) == blob.digest
            blobs[blob.digest] = response.content
    target = Target(image.repository, image.tag, image.digest, image.layers[0].digest)
    return Warm(target, manifest.content, blobs)


@pytest.fixture(scope="module")
def sent(proxy: ProxyServer, warm: Warm, workspace: tuple[Path, bytes]) -> Sent:
    """Every hostile request, sent once, in order, each on its own connection."""
    requests = {request.label: request for request in hostile_requests(proxy.host, warm.target)}
    assert list(requests) == LABELS
    replies: dict[str, RawReply | None] = {}
    started = time.monotonic()
    for label, request in requests.items():
        if time.monotonic() - started > SEND_BUDGET:
            replies[label] = None
            continue
        replies[label] = send_raw(LOOPBACK, proxy.port, request.raw, REQUEST_TIMEOUT)
    return Sent(requests, replies, workspace[1], time.monotonic() - started)


def _params() -> list[object]:
    return [
        pytest.param(label, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[label]))
        if label in KNOWN_BUGS
        else label
        for label in LABELS
    ]


@pytest.mark.parametrize("label", _params())
def test_hostile_request(label: str, sent: Sent) -> None:
    request, reply = sent.requests[label], sent.replies[label]
    assert reply is not None, f"not sent: the {SEND_BUDGET:.0f}s budget for all requests ran out"
    found = problems(request, reply, forbidden=(PASSWD_MARKER, sent.sentinel))
    assert not found, f"{request.raw[:300]!r} → {reply.status} {reply.headers}: {found}"


def test_all_requests_answered_quickly(sent: Sent) -> None:
    slow = {label: round(r.elapsed, 2) for label, r in sent.replies.items() if r is not None and r.elapsed > 2.0}
    assert not slow
    assert sent.elapsed < SEND_BUDGET


def test_cache_still_serves_the_same_bytes(proxy: ProxyServer, warm: Warm, sent: Sent) -> None:
    target = warm.target
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        assert client.get("/v2/").status_code == 200
        manifest = client.get(f"/v2/{target.repository}/manifests/{target.tag}", headers={"Accept": MANIFEST_TYPES})
        assert manifest.status_code == 200
        assert _sha256(manifest.content) == target.manifest_digest
        assert manifest.content == warm.manifest
        by_digest = client.get(f"/v2/{target.repository}/manifests/{target.manifest_digest}")
        assert by_digest.content == warm.manifest
        for digest, data in warm.blobs.items():
            response = client.get(f"/v2/{target.repository}/blobs/{digest}")
            assert response.status_code == 200
            assert _sha256(response.content) == digest
            assert response.content == data
        ranged = client.get(f"/v2/{target.repository}/blobs/{target.blob_digest}", headers={"Range": "bytes=1-4"})
        assert ranged.status_code == 206
        assert ranged.content == warm.blobs[target.blob_digest][1:5]


def test_no_traceback_but_for_the_500s(proxy: ProxyServer, sent: Sent) -> None:
    """Every unhandled exception must at least have become a 500 (the known bugs); one that did not, e.g. raised
    after the headers went out or in a background task, shows up only in the log."""
    log = proxy.log_path.read_text(errors="replace")
    server_errors = sum(1 for reply in sent.replies.values() if reply is not None and reply.status == 500)
    assert log.count("Exception in ASGI application") == server_errors
    assert log.count("Traceback (most recent call last)") == server_errors
    assert "exception was never retrieved" not in log


def test_no_file_outside_the_cache(proxy: ProxyServer, sent: Sent) -> None:
    outside = sorted(str(p.relative_to(proxy.workdir)) for p in proxy.workdir.iterdir() if p != proxy.cache_dir)
    assert outside == ["config.toml", "proxy.log"]
    assert (proxy.workdir.parent / "sentinel.txt").read_bytes() == sent.sentinel
    assert sorted(p.name for p in proxy.workdir.parent.iterdir()) == ["proxy", "sentinel.txt"]


def test_nothing_in_the_cache_but_blobs_and_repositories(proxy: ProxyServer, sent: Sent) -> None:
    # Besides the inventory's database and the fetch locks' directory (names fixed by storage.paths, never by a
    # request: a lock file is named by a hash).
    inventory = {INVENTORY, f"{INVENTORY}-wal", f"{INVENTORY}-shm", EVICT_LOCK}
    assert {p.name for p in proxy.cache_dir.iterdir()} <= {"blobs", "repositories", LOCKS, *inventory}
    root = os.path.realpath(proxy.cache_dir)
    for directory, dirs, files in os.walk(proxy.cache_dir):
        for name in dirs + files:
            path = Path(directory, name)
            assert not path.is_symlink(), path
            assert os.path.realpath(path).startswith(root + os.sep), path
            assert ".." not in path.relative_to(proxy.cache_dir).parts


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
