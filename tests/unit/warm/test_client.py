"""The warmer against the real app under uvicorn (in a thread), with the in-memory upstream behind it (conftest)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from proxy.warm.client import BlobOutcome, Warmer
from proxy.warm.platforms import Platform
from proxy.warm.references import parse_reference
from tests.unit.fakes import FakeRegistry
from tests.unit.warm.upstream import Seeded, serve


@pytest.fixture
async def warmer(proxy_url: str) -> AsyncIterator[Warmer]:
    async with httpx.AsyncClient(base_url=proxy_url, timeout=30) as client:
        yield Warmer(client, jobs=2)


def cdn_gets(fake: FakeRegistry) -> int:
    return fake.count("GET", "cdn/blobs/")


async def test_an_index_is_warmed_whole_then_found_cached(warmer: Warmer, seeded: Seeded) -> None:
    reference = parse_reference("app:1")
    first = await warmer.warm(reference)
    assert (first.outcome, first.errors) == (BlobOutcome.FETCHED, [])
    assert first.platforms == ["linux/amd64", "linux/arm64/v8"]
    assert first.blobs == {BlobOutcome.FETCHED: 6}
    assert cdn_gets(seeded.fake) == 6  # each blob once: the check that it stayed is answered from the cache

    second = await warmer.warm(reference)  # within the run: known to be warm already
    assert second.outcome is BlobOutcome.CACHED and second.blobs == {BlobOutcome.CACHED: 6}
    assert cdn_gets(seeded.fake) == 6


async def test_a_new_run_finds_the_blobs_cached_by_the_proxys_word(proxy_url: str, seeded: Seeded) -> None:
    async with httpx.AsyncClient(base_url=proxy_url, timeout=30) as client:
        assert (await Warmer(client).warm(parse_reference("app:1"))).outcome is BlobOutcome.FETCHED
    async with httpx.AsyncClient(base_url=proxy_url, timeout=30) as client:
        again = Warmer(client)
        result = await again.warm(parse_reference("app:1"))
    assert result.outcome is BlobOutcome.CACHED and result.blobs == {BlobOutcome.CACHED: 6}
    assert sum(size for size, _ in again.blobs.values()) == result.sizes[BlobOutcome.CACHED] > 0
    assert cdn_gets(seeded.fake) == 6


async def test_only_the_platforms_asked_for(warmer: Warmer, seeded: Seeded) -> None:
    result = await warmer.warm(parse_reference("app:1"), [Platform.parse("linux/arm64")])
    assert (result.outcome, result.platforms, result.blobs) == (
        BlobOutcome.FETCHED, ["linux/arm64/v8"], {BlobOutcome.FETCHED: 3}
    )  # fmt: skip
    assert {r.url.path.rsplit("/", 1)[1] for r in seeded.fake.requests if "cdn" in str(r.url)} == set(
        seeded.blobs["arm64"]
    )
    missing = await warmer.warm(parse_reference("app:1"), [Platform.parse("linux/s390x")])
    assert missing.outcome is BlobOutcome.FAILED
    assert missing.errors == ["the index has no manifest for linux/s390x"]


async def test_failures_name_the_registry_error(warmer: Warmer) -> None:
    unknown = await warmer.warm(parse_reference("app:nope"))
    assert (unknown.outcome, unknown.errors) == (BlobOutcome.FAILED, ["404 MANIFEST_UNKNOWN: manifest unknown"])
    unserved = await warmer.warm(parse_reference("ghcr.io/org/app:1"))
    assert unserved.outcome is BlobOutcome.FAILED
    assert unserved.errors == ["404 NAME_UNKNOWN: registry ghcr.io is not one this proxy serves"]


@pytest.fixture
def uncaching_proxy_url(seeded: Seeded, tmp_path: Path) -> Iterator[str]:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    yield from serve(seeded.fake, blocker / "cache")  # the proxy relays every pull uncached


async def test_a_blob_the_proxy_could_not_keep_is_a_failure(uncaching_proxy_url: str) -> None:
    async with httpx.AsyncClient(base_url=uncaching_proxy_url, timeout=30) as client:
        result = await Warmer(client).warm(parse_reference("app:1"), [Platform.parse("linux/amd64")])
    assert result.outcome is BlobOutcome.FAILED and result.blobs == {BlobOutcome.FAILED: 3}
    assert len(result.errors) == 3 and all("did not keep it" in error for error in result.errors)
