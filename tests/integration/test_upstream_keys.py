"""Issue 7, item 4 against the real Distribution: upstream work is shared only between requests that ask the upstream
the same thing (registry, repository, digest), so a request under a name that lacks a blob cannot fail one under a
name that has it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.deadline import poll_until
from tests.harness.faults import Delay, FaultyUpstream
from tests.harness.images import Images
from tests.harness.proxy_server import ProxyServer
from tests.harness.registry import DistributionRegistry

WRONG_NAME = "library/wrong-name"
"""No such repository upstream: Distribution answers 404 for any blob under it."""
HOLD_SECONDS = 2.0
"""How long the upstream's answers under WRONG_NAME are held back: the request under the right name starts meanwhile."""
TIMEOUT = 60.0


@pytest.fixture
def faulty(upstream_registry: DistributionRegistry) -> Iterator[FaultyUpstream]:
    with FaultyUpstream(upstream_registry.url) as upstream:
        yield upstream


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_request_under_a_wrong_name_does_not_fail_the_right_one(
    method: str, faulty: FaultyUpstream, images: Images, tmp_path: Path
) -> None:
    image = images["oci"]
    layer = image.layers[0]
    held = faulty.add(Delay(HOLD_SECONDS, path=f"^/v2/{WRONG_NAME}/blobs/"))
    with ProxyServer(tmp_path / "proxy", faulty.url) as proxy:
        answers: dict[str, httpx.Response] = {}
        errors: list[BaseException] = []

        def ask_under_the_wrong_name() -> None:
            try:
                answers["wrong"] = httpx.request(
                    method, f"{proxy.url}/v2/{WRONG_NAME}/blobs/{layer.digest}", timeout=TIMEOUT
                )
            except BaseException as exc:  # reported below; a thread must not die silently
                errors.append(exc)

        thread = threading.Thread(target=ask_under_the_wrong_name)
        thread.start()
        try:
            poll_until(lambda: True if held.hits else None, timeout=10, what="the wrong-name request at the upstream")
            right = httpx.request(method, f"{proxy.url}/v2/{image.repository}/blobs/{layer.digest}", timeout=TIMEOUT)
        finally:
            thread.join(timeout=TIMEOUT)
    assert not errors
    assert right.status_code == 200, right.text
    assert right.headers["docker-content-digest"] == layer.digest
    assert right.headers["content-length"] == str(layer.size)
    if method == "GET":
        assert right.content == images.store.read(layer.digest)
    assert answers["wrong"].status_code == 404
