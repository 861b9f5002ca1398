"""/healthz and /readyz."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from starlette.testclient import TestClient

from tests.unit.conftest import ClientFactory
from tests.unit.fakes import FakeRegistry


def test_a_working_proxy_is_alive_and_ready(client: TestClient) -> None:
    alive = client.get("/healthz")
    assert (alive.status_code, alive.json()) == (200, {"status": "alive"})
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "cache": {"writable": True, "problem": None},
        "upstreams": [{"registry": "docker.io", "reachable": None, "breaker": "closed", "last_error": None}],
    }


def test_readiness_fails_when_the_cache_root_cannot_take_a_file(
    make_client: ClientFactory, tmp_path: Path, fake: FakeRegistry
) -> None:
    client = make_client()
    assert client.get("/readyz").status_code == 200
    # What a lost volume looks like to the proxy; chmod would not do (the tests may run as root).
    root = tmp_path / "cache"
    shutil.rmtree(root)
    root.write_text("not a directory any more")
    for _ in range(30):  # the disk is asked at most once a second
        response = client.get("/readyz")
        if response.status_code != 200:
            break
        time.sleep(0.1)
    assert response.status_code == 503
    error = response.json()["errors"][0]
    assert error["code"] == "UNAVAILABLE"
    assert error["message"].startswith("not ready: the cache is not writable")
    assert error["detail"]["cache"]["writable"] is False
    # Liveness is another matter: the process still answers.
    assert client.get("/healthz").status_code == 200
    root.unlink()
    root.mkdir()
    for _ in range(30):
        if client.get("/readyz").status_code == 200:
            break
        time.sleep(0.1)
    assert client.get("/readyz").status_code == 200


def test_upstream_trouble_is_reported_but_does_not_fail_readiness(
    make_client: ClientFactory, fake: FakeRegistry
) -> None:
    client = make_client()
    assert client.get("/v2/library/alpine/manifests/3.20").status_code == 200
    assert client.get("/readyz").json()["upstreams"][0]["reachable"] is True
    fake.fail = 503
    for tag in ("a", "b", "c"):
        assert client.get(f"/v2/library/alpine/manifests/{tag}").status_code == 503
    ready = client.get("/readyz")
    assert ready.status_code == 200
    (upstream,) = ready.json()["upstreams"]
    assert upstream == {
        "registry": "docker.io",
        "reachable": False,  # its last answers were failures
        "breaker": "open",
        "last_error": "upstream docker.io answered 503",
    }
