"""S3RepositoryIndex against a real S3 server (SeaweedFS on loopback): records, listings, links, names."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from storage.digest import Digest
from storage.index import FilesystemIndex
from storage.interfaces import ManifestRecord, RepositoryIndex, StorageError, TagRecord
from storage.paths import blob_link_path, manifest_link_path, referrers_path, tag_path
from storage.records import MAX_RECORD_SIZE
from storage.s3 import S3RepositoryIndex, S3Settings
from storage.s3.layout import index_key
from storage.s3.objects import ObjectClient
from tests.harness.seaweed import SeaweedS3

HUB = "docker.io"
REPO = "library/alpine"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _digest(seed: str) -> Digest:
    return Digest.of(seed.encode())


@pytest.fixture(scope="module")
def bucket() -> str:
    return "index-" + secrets.token_hex(6)


@pytest.fixture
def settings(seaweed: SeaweedS3, bucket: str) -> S3Settings:
    # Each test has a prefix of its own in the module's bucket.
    prefix = f"t-{secrets.token_hex(4)}/"
    return S3Settings(seaweed.endpoint, bucket, seaweed.region, seaweed.access_key, seaweed.secret_key, prefix)


@pytest.fixture
async def objects(settings: S3Settings) -> AsyncIterator[ObjectClient]:
    async with ObjectClient(settings) as client:
        await client.ensure_bucket()
        yield client


@pytest.fixture
def index(objects: ObjectClient) -> S3RepositoryIndex:
    return S3RepositoryIndex(objects)


async def test_every_record_kind_round_trips(index: S3RepositoryIndex) -> None:
    manifest = ManifestRecord(_digest("m"), OCI_MANIFEST, 1234)
    tag = TagRecord(_digest("t"), OCI_INDEX, 567, 1_700_000_000.25)
    referrers = TagRecord(_digest("r"), OCI_INDEX, 89, 1_700_000_100.5)
    subject = _digest("subject")
    assert await index.get_manifest(HUB, REPO, manifest.digest) is None
    assert await index.get_tag(HUB, REPO, "3.20") is None
    assert await index.get_referrers(HUB, REPO, subject) is None
    await index.put_manifest(HUB, REPO, manifest)
    await index.put_tag(HUB, REPO, "3.20", tag)
    await index.put_referrers(HUB, REPO, subject, referrers)
    assert await index.get_manifest(HUB, REPO, manifest.digest) == manifest
    assert await index.get_tag(HUB, REPO, "3.20") == tag
    assert await index.get_referrers(HUB, REPO, subject) == referrers
    # Per repository, per registry: nothing leaks to a neighbour.
    assert await index.get_manifest(HUB, "library/busybox", manifest.digest) is None
    assert await index.get_tag("ghcr.io", REPO, "3.20") is None
    assert await index.get_referrers(HUB, REPO, _digest("other")) is None
    # A tag's entry is the last answer written.
    moved = TagRecord(_digest("t2"), OCI_MANIFEST, 99, 1_700_000_500.0)
    await index.put_tag(HUB, REPO, "3.20", moved)
    assert await index.get_tag(HUB, REPO, "3.20") == moved


async def test_the_keys_and_entries_are_the_disks(
    index: S3RepositoryIndex, objects: ObjectClient, tmp_path: Path
) -> None:
    disk = FilesystemIndex(tmp_path)
    manifest = ManifestRecord(_digest("m"), OCI_MANIFEST, 1234)
    tag = TagRecord(_digest("t"), OCI_INDEX, 567, 1_700_000_000.25)
    subject = _digest("subject")
    layer = _digest("layer")
    for target in (index, disk):
        await target.put_manifest(HUB, REPO, manifest)
        await target.put_tag(HUB, REPO, "latest", tag)
        await target.put_referrers(HUB, REPO, subject, tag)
        await target.link_blobs(HUB, REPO, [layer])
    paths = [
        manifest_link_path(HUB, REPO, manifest.digest),
        tag_path(HUB, REPO, "latest"),
        referrers_path(HUB, REPO, subject),
        blob_link_path(HUB, REPO, layer),
    ]
    prefix = objects.settings.prefix
    for path in paths:
        found = await objects.get(prefix + path.as_posix())
        assert found is not None, path
        assert found[0] == (tmp_path / path).read_bytes()
    listed = sorted([key async for key, _size, _modified in objects.list_objects(prefix)])
    assert listed == sorted(prefix + path.as_posix() for path in paths)


async def test_list_tags_is_sorted_and_per_repository(index: S3RepositoryIndex) -> None:
    record = TagRecord(_digest("t"), OCI_MANIFEST, 1, time.time())
    assert await index.list_tags(HUB, REPO) == []
    tags = ["latest", "3.20", "3.9", "edge", "A_upper", "_leading", "v1.2.3-rc.1"]
    for tag in tags:
        await index.put_tag(HUB, REPO, tag, record)
    await index.put_tag(HUB, "library/busybox", "other", record)
    await index.put_tag(HUB, f"{REPO}/nested", "nested", record)  # a repository below this one
    await index.put_tag("ghcr.io", REPO, "elsewhere", record)
    await index.put_manifest(HUB, REPO, ManifestRecord(_digest("m"), OCI_MANIFEST, 1))
    assert await index.list_tags(HUB, REPO) == sorted(tags)
    assert await index.list_tags(HUB, "library/busybox") == ["other"]
    assert await index.list_tags(HUB, "library/none") == []


async def test_list_repositories_walks_every_registry_and_depth(index: S3RepositoryIndex) -> None:
    assert await index.list_repositories() == []
    record = TagRecord(_digest("t"), OCI_MANIFEST, 1, time.time())
    manifest = ManifestRecord(_digest("m"), OCI_MANIFEST, 1)
    await index.put_tag(HUB, REPO, "latest", record)
    await index.put_manifest(HUB, "library/busybox", manifest)  # a manifest alone makes a repository
    await index.put_manifest(HUB, "a/b", manifest)
    await index.put_tag(HUB, "a/b/c", "x", record)  # a repository nested in another
    await index.put_tag(HUB, "single", "x", record)
    await index.put_referrers("ghcr.io", "org/tool", _digest("s"), record)  # referrers alone: not listed (as on disk)
    await index.link_blobs("ghcr.io", "org/links", [_digest("l")])  # blob links alone: not listed (as on disk)
    await index.put_tag("localhost:5000", "deep/er/and/deeper/name", "v1", record)
    await index.put_manifest("ghcr.io", "org/tool", manifest)
    assert await index.list_repositories() == [
        ("docker.io", "a/b"),
        ("docker.io", "a/b/c"),
        ("docker.io", "library/alpine"),
        ("docker.io", "library/busybox"),
        ("docker.io", "single"),
        ("ghcr.io", "org/tool"),
        ("localhost:5000", "deep/er/and/deeper/name"),
    ]


async def test_list_manifests_for_the_inventory(index: S3RepositoryIndex) -> None:
    digests = sorted((_digest(str(n)) for n in range(5)), key=str)
    for digest in reversed(digests):
        await index.put_manifest(HUB, REPO, ManifestRecord(digest, OCI_MANIFEST, 1))
    await index.put_manifest(HUB, "library/busybox", ManifestRecord(_digest("x"), OCI_MANIFEST, 1))
    assert await index.list_manifests(HUB, REPO) == digests
    assert await index.list_manifests(HUB, "library/none") == []


async def test_blob_links(index: S3RepositoryIndex, objects: ObjectClient) -> None:
    layer, config = _digest("layer"), _digest("config")
    assert not await index.has_blob(HUB, REPO, layer)
    await index.link_blobs(HUB, REPO, [])  # nothing to do
    await index.link_blobs(HUB, REPO, [layer, config, layer])  # a layer listed twice is one link
    await index.link_blobs(HUB, REPO, [layer])  # linking again changes nothing
    assert await index.has_blob(HUB, REPO, layer) and await index.has_blob(HUB, REPO, config)
    assert not await index.has_blob(HUB, "library/busybox", layer)
    assert not await index.has_blob("ghcr.io", REPO, layer)
    # One empty object per (registry, repository, digest).
    prefix = objects.settings.prefix
    links = {key: size async for key, size, _modified in objects.list_objects(prefix)}
    assert links == {index_key(prefix, blob_link_path(HUB, REPO, digest)): 0 for digest in (layer, config)}
    # Many at once (a manifest with many layers): all of them, a few requests at a time.
    many = [_digest(f"many-{n}") for n in range(40)]
    await index.link_blobs(HUB, REPO, many)
    assert all([await index.has_blob(HUB, REPO, digest) for digest in many])


class _NoRequests:
    """An ObjectClient that fails the test on any request: names must be refused before a key exists."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings

    def __getattr__(self, name: str) -> Any:
        def request(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"a request ({name} {args}) was made for an invalid name")

        return request


BAD_REGISTRIES = ["", "Docker.IO", "../x", "docker.io/evil", "-bad.io", "a" * 300, "host:99999999"]
BAD_REPOSITORIES = ["", "../../etc", "Library/Alpine", "a//b", "/abs", "a/", "_manifests", "a/_tags", "a\\b", "a\0"]
BAD_TAGS = ["", ".hidden", "-x", "a/b", "..", "x" * 129, "a b"]
BAD_DIGESTS = [Digest("sha256", "../../" + "a" * 58), Digest("md5", "a" * 32), Digest("sha256", "A" * 64)]


async def test_invalid_names_are_refused_before_any_key_is_built(settings: S3Settings) -> None:
    index = S3RepositoryIndex(cast(ObjectClient, _NoRequests(settings)))
    good = _digest("good")
    record = TagRecord(good, OCI_MANIFEST, 1, 0.0)
    calls: list[tuple[str, str, Any]] = []
    for registry in BAD_REGISTRIES:
        calls.append((registry, REPO, None))
    for repository in BAD_REPOSITORIES:
        calls.append((HUB, repository, None))
    for registry, repository, _ in calls:
        for attempt in (
            index.get_manifest(registry, repository, good),
            index.put_manifest(registry, repository, ManifestRecord(good, OCI_MANIFEST, 1)),
            index.has_blob(registry, repository, good),
            index.link_blobs(registry, repository, [good]),
            index.get_tag(registry, repository, "latest"),
            index.put_tag(registry, repository, "latest", record),
            index.list_tags(registry, repository),
            index.get_referrers(registry, repository, good),
            index.put_referrers(registry, repository, good, record),
            index.list_manifests(registry, repository),
        ):
            with pytest.raises(ValueError):
                await attempt
    for tag in BAD_TAGS:
        with pytest.raises(ValueError):
            await index.get_tag(HUB, REPO, tag)
        with pytest.raises(ValueError):
            await index.put_tag(HUB, REPO, tag, record)
    for digest in BAD_DIGESTS:
        for attempt in (
            index.get_manifest(HUB, REPO, digest),
            index.put_manifest(HUB, REPO, ManifestRecord(digest, OCI_MANIFEST, 1)),
            index.has_blob(HUB, REPO, digest),
            index.link_blobs(HUB, REPO, [good, digest]),  # one bad digest: not even the good one is linked
            index.get_referrers(HUB, REPO, digest),
            index.put_referrers(HUB, REPO, digest, record),
        ):
            with pytest.raises(ValueError):
                await attempt


async def test_a_batch_with_one_bad_digest_links_nothing(index: S3RepositoryIndex) -> None:
    good = _digest("good")
    with pytest.raises(ValueError):
        await index.link_blobs(HUB, REPO, [good, BAD_DIGESTS[0]])
    assert not await index.has_blob(HUB, REPO, good)


async def test_entries_that_are_not_ours_read_as_absent(index: S3RepositoryIndex, objects: ObjectClient) -> None:
    prefix = objects.settings.prefix
    digest = _digest("m")
    cases = {
        index_key(prefix, tag_path(HUB, REPO, "torn")): b'{"digest": "sha256:',
        index_key(prefix, tag_path(HUB, REPO, "list")): b"[1, 2]",
        index_key(prefix, tag_path(HUB, REPO, "fields")): b'{"digest": "sha256:00", "size": "x"}',
        index_key(prefix, tag_path(HUB, REPO, "big")): b" " * MAX_RECORD_SIZE + b"{}",
        index_key(prefix, manifest_link_path(HUB, REPO, digest)): b'{"media_type": 3}',
    }
    for key, data in cases.items():
        await objects.put(key, data)
    for tag in ("torn", "list", "fields", "big"):
        assert await index.get_tag(HUB, REPO, tag) is None
    assert await index.get_manifest(HUB, REPO, digest) is None
    # Rewritten by the index, the entry is usable again.
    await index.put_manifest(HUB, REPO, ManifestRecord(digest, OCI_MANIFEST, 7))
    assert await index.get_manifest(HUB, REPO, digest) == ManifestRecord(digest, OCI_MANIFEST, 7)


async def test_the_prefix_keeps_caches_apart(settings: S3Settings, index: S3RepositoryIndex) -> None:
    other = S3Settings(settings.endpoint, settings.bucket, settings.region, settings.access_key, settings.secret_key)
    record = TagRecord(_digest("t"), OCI_MANIFEST, 1, 0.0)
    await index.put_tag(HUB, REPO, "latest", record)
    async with ObjectClient(other) as client:
        neighbour = S3RepositoryIndex(client)
        assert await neighbour.get_tag(HUB, REPO, "latest") is None
        assert (HUB, REPO) not in await neighbour.list_repositories()


class _Failing:
    """An ObjectClient whose every request fails as one to an unreachable bucket does (after botocore's retries)."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings

    def __getattr__(self, name: str) -> Any:
        async def request(*args: Any, **kwargs: Any) -> Any:
            raise StorageError(f"cannot {name}: connection refused")

        return request

    async def list_objects(self, prefix: str) -> AsyncIterator[tuple[str, int, float]]:
        raise StorageError(f"cannot list {prefix}: connection refused")
        yield  # an async generator, as the real one


async def test_a_failing_bucket_reads_as_empty_and_fails_writes(settings: S3Settings) -> None:
    # Reads say "not cached", as the disk's index does for an unreadable file (the upstream is asked); writes raise
    # StorageError, which their callers log.
    index = S3RepositoryIndex(cast(ObjectClient, _Failing(settings)))
    digest = _digest("x")
    assert await index.get_manifest(HUB, REPO, digest) is None
    assert await index.get_tag(HUB, REPO, "latest") is None
    assert await index.get_referrers(HUB, REPO, digest) is None
    assert await index.has_blob(HUB, REPO, digest) is False
    assert await index.list_tags(HUB, REPO) == []
    assert await index.list_manifests(HUB, REPO) == []
    assert await index.list_repositories() == []
    record = TagRecord(digest, OCI_MANIFEST, 1, 0.0)
    for attempt in (
        index.put_manifest(HUB, REPO, ManifestRecord(digest, OCI_MANIFEST, 1)),
        index.put_tag(HUB, REPO, "latest", record),
        index.put_referrers(HUB, REPO, digest, record),
        index.link_blobs(HUB, REPO, [digest, _digest("y")]),
    ):
        with pytest.raises(StorageError):
            await attempt


def _is_an_index(index: S3RepositoryIndex) -> RepositoryIndex:
    # mypy checks that the S3 index is what the proxy takes.
    return index
