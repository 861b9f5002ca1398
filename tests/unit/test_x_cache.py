from __future__ import annotations

from starlette.testclient import TestClient

from tests.unit.fakes import FakeRegistry


def test_blob_get_says_whether_it_came_from_the_cache(client: TestClient, fake: FakeRegistry) -> None:
    data = b"x-cache" * 5000
    digest = fake.add_blob(data)
    first = client.get(f"/v2/library/alpine/blobs/{digest}")
    assert (first.status_code, first.headers["x-cache"], first.content) == (200, "MISS", data)
    second = client.get(f"/v2/library/alpine/blobs/{digest}")
    assert (second.status_code, second.headers["x-cache"], second.content) == (200, "HIT", data)
    ranged = client.get(f"/v2/library/alpine/blobs/{digest}", headers={"Range": "bytes=0-9"})
    assert (ranged.status_code, ranged.headers["x-cache"]) == (206, "HIT")
