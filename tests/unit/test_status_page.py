"""The status page's HTML after a scripted run (the browser test is tests/integration/test_status_page.py)."""

from __future__ import annotations

import re

from tests.unit.conftest import ClientFactory
from tests.unit.fakes import FakeRegistry
from tests.unit.test_metrics import scripted_run


def text_of(html: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</', html, re.S)
    assert match is not None, element_id
    return " ".join(match.group(1).split())


def test_the_page_shows_the_run(make_client: ClientFactory, fake: FakeRegistry) -> None:
    client = make_client(tag_ttl=0)
    scripted_run(client, fake)
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    # Served from the cache: 3 hits and 1 stale answer, of 6 answered (2 misses); the error does not count.
    assert text_of(html, "hit-ratio") == "66.7 %"
    assert text_of(html, "answers") == "3 hits, 1 stale, 2 misses, 0 relayed, 1 errors"
    assert text_of(html, "hub-pulls-saved") == "2"  # the manifest GETs answered from the cache
    assert "library/alpine" in html
    assert "76 of 100 per 6.0 h" in " ".join(html.split())
    assert "upstream docker.io answered 503" in html  # the recent errors
