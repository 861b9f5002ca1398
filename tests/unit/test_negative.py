"""The upstream's 404s are remembered briefly, per (registry, repository, reference), and never its outages."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient

from proxy.errors import RegistryError
from proxy.pullthrough.negative import NegativeCache
from tests.unit.conftest import ClientFactory
from tests.unit.fakes import OCI_MANIFEST, FakeRegistry

UNKNOWN = "sha256:" + "0" * 64
LOOP = 50  # a looping CI job's requests


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_only_answers_are_remembered_and_only_until_they_expire() -> None:
    clock = Clock()
    cache = NegativeCache(clock=clock)
    cache.remember("unknown", RegistryError.blob_unknown(UNKNOWN), ttl=5)
    cache.remember("outage", RegistryError.unavailable("down"), ttl=5)
    cache.remember("rate limited", RegistryError.too_many_requests("slow down", "10"), ttl=5)
    with pytest.raises(RegistryError) as raised:
        cache.check("unknown")
    assert raised.value.code == "BLOB_UNKNOWN" and raised.value.status == 404
    cache.check("outage")  # not remembered: the upstream may answer the next time
    cache.check("rate limited")
    clock.now += 5
    cache.check("unknown")  # expired
    assert len(cache) == 0


def test_each_raise_is_a_fresh_exception() -> None:
    cache = NegativeCache()
    cache.remember("k", RegistryError.blob_unknown(UNKNOWN), ttl=5)
    raised = []
    for _ in range(2):
        with pytest.raises(RegistryError) as info:
            cache.check("k")
        raised.append(info.value)
    assert raised[0] is not raised[1] and raised[0].body() == raised[1].body()


def test_the_table_is_bounded() -> None:
    clock = Clock()
    cache = NegativeCache(max_entries=100, clock=clock)
    for n in range(10_000):
        cache.remember(("blob", "docker.io", f"repo{n}", UNKNOWN), RegistryError.blob_unknown(UNKNOWN), ttl=60)
        clock.now += 0.001
    assert len(cache) == 100
    with pytest.raises(RegistryError):
        cache.check(("blob", "docker.io", "repo9999", UNKNOWN))  # the newest stay


def blob_gets(fake: FakeRegistry, digest: str) -> int:
    return fake.count("GET", f"/blobs/{digest}") + fake.count("HEAD", f"/blobs/{digest}")


def test_a_looping_job_on_an_unknown_blob_asks_the_upstream_once(
    make_client: ClientFactory, fake: FakeRegistry
) -> None:
    client = make_client(negative_ttl=60)
    for _ in range(LOOP):
        response = client.get(f"/v2/library/alpine/blobs/{UNKNOWN}")
        assert response.status_code == 404 and response.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
        assert client.head(f"/v2/library/alpine/blobs/{UNKNOWN}").status_code == 404
    assert blob_gets(fake, UNKNOWN) <= 2  # one GET, and at most one HEAD before the GET's answer was known


def test_a_looping_job_on_an_unknown_tag_asks_the_upstream_once(make_client: ClientFactory, fake: FakeRegistry) -> None:
    client = make_client(negative_ttl=60)
    for _ in range(LOOP):
        assert client.get("/v2/library/alpine/manifests/no-such-tag").status_code == 404
        assert client.get(f"/v2/library/alpine/manifests/{UNKNOWN}").status_code == 404
    assert fake.count("GET", "/manifests/no-such-tag") == 1
    assert fake.count("GET", f"/manifests/{UNKNOWN}") == 1


def test_a_remembered_404_expires(make_client: ClientFactory, fake: FakeRegistry) -> None:
    client = make_client(negative_ttl=0.2)
    assert client.get(f"/v2/library/alpine/blobs/{UNKNOWN}").status_code == 404
    assert client.get(f"/v2/library/alpine/blobs/{UNKNOWN}").status_code == 404
    assert fake.count("GET", f"/blobs/{UNKNOWN}") == 1
    time.sleep(0.3)
    assert client.get(f"/v2/library/alpine/blobs/{UNKNOWN}").status_code == 404
    assert fake.count("GET", f"/blobs/{UNKNOWN}") == 2


def test_the_ttl_never_outlives_a_tag_answer(make_client: ClientFactory, fake: FakeRegistry) -> None:
    client = make_client(tag_ttl=0, negative_ttl=60)
    for _ in range(3):
        assert client.get("/v2/library/alpine/manifests/no-such-tag").status_code == 404
    assert fake.count("GET", "/manifests/no-such-tag") == 3


def test_one_repository_s_404_never_answers_for_another(make_client: ClientFactory, fake: FakeRegistry) -> None:
    layer = fake.add_blob(b"only in library/app")
    fake.blob_repositories[layer] = {"library/app"}
    client = make_client(negative_ttl=60)
    assert client.get(f"/v2/library/other/blobs/{layer}").status_code == 404
    response = client.get(f"/v2/library/app/blobs/{layer}")
    assert response.status_code == 200 and response.content == b"only in library/app"
    assert client.get(f"/v2/library/other/manifests/{UNKNOWN}").status_code == 404
    digest = fake.add_manifest("library/app", "1", OCI_MANIFEST, b'{"schemaVersion":2,"layers":[]}')
    assert client.get("/v2/library/other/manifests/1").status_code == 404
    assert client.get("/v2/library/app/manifests/1").status_code == 200
    assert client.get(f"/v2/library/app/manifests/{digest}").status_code == 200


def test_outages_are_not_remembered(make_client: ClientFactory, fake: FakeRegistry) -> None:
    client: TestClient = make_client(negative_ttl=60)
    fake.fail = 503
    assert client.get(f"/v2/library/alpine/blobs/{UNKNOWN}").status_code == 503
    fake.fail = None
    assert client.get("/v2/library/alpine/manifests/3.20").status_code == 200
