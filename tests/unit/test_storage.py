from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from storage.blobs import FilesystemBlobStore
from storage.digest import Digest, InvalidDigest
from storage.index import FilesystemIndex
from storage.interfaces import DigestMismatch, ManifestRecord, SizeMismatch, TagRecord
from storage.paths import blob_path, manifest_link_path, tag_path


def digest_of(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize(
    "value",
    ["", "sha256:", "sha256:" + "A" * 64, "sha256:" + "0" * 63, "md5:" + "0" * 32, "sha256:../" + "0" * 61, "x" * 300],
)
def test_invalid_digests(value: str) -> None:
    with pytest.raises(InvalidDigest):
        Digest.parse(value)


def test_digest_round_trip() -> None:
    value = "sha256:" + "ab" * 32
    assert str(Digest.parse(value)) == value
    assert Digest.parse("sha512:" + "0" * 128).algorithm == "sha512"


def test_layout() -> None:
    digest = Digest.parse("sha256:" + "ab" * 32)
    assert str(blob_path(digest)) == f"blobs/sha256/ab/{'ab' * 32}"
    assert str(manifest_link_path("docker.io", "library/alpine", digest)).startswith(
        "repositories/docker.io/library/alpine/_manifests/sha256/"
    )
    assert str(tag_path("ghcr.io", "org/app", "v1.0")) == "repositories/ghcr.io/org/app/_tags/v1.0"


@pytest.mark.parametrize(
    ("registry", "repository", "tag"),
    [("docker.io", "../x", "t"), ("..", "x", "t"), ("docker.io", "x", ".."), ("docker.io", "/abs", "t"),
     ("a/b", "x", "t"), ("docker.io", "x", "a/b"), ("docker.io", "x\x00", "t")],
)  # fmt: skip
def test_layout_refuses_anything_that_could_leave_the_root(registry: str, repository: str, tag: str) -> None:
    with pytest.raises(ValueError):
        tag_path(registry, repository, tag)


async def test_write_verify_commit(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    data = os.urandom(300_000)
    digest = digest_of(data)
    writer = await store.create(digest)
    await writer.write(data[:1000])
    reader = writer.open_reader()
    assert await reader.read(0, 5000) == data[:1000]  # a tailing reader sees what is written so far
    await writer.write(data[1000:])
    assert await store.stat(digest) is None  # invisible until committed
    await writer.commit(len(data))
    assert await reader.read(299_000, 5000) == data[299_000:]  # still readable across the rename
    await reader.close()
    assert await store.stat(digest) == len(data)
    assert await store.get(digest, 10**6) == data
    assert await store.get(digest, 10) is None
    assert (tmp_path / blob_path(digest)).exists()


async def test_digest_mismatch_is_never_committed(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    writer = await store.create(digest_of(b"expected"))
    await writer.write(b"something else")
    with pytest.raises(DigestMismatch):
        await writer.commit()
    assert await store.stat(digest_of(b"expected")) is None
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


async def test_size_mismatch_is_never_committed(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    writer = await store.create(digest_of(b"data"))
    await writer.write(b"data")
    with pytest.raises(SizeMismatch):
        await writer.commit(5)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


async def test_sweep_removes_partials_only(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    await store.put(digest_of(b"kept"), b"kept")
    writer = await store.create(digest_of(b"crashed"))
    await writer.write(b"crash")  # never committed: as if the process died here
    assert await store.sweep() == 1
    assert await store.stat(digest_of(b"kept")) == 4
    assert [p.name for p in tmp_path.rglob("*.partial")] == []


async def test_index_round_trip_and_damaged_entries(tmp_path: Path) -> None:
    index = FilesystemIndex(tmp_path)
    digest = digest_of(b"m")
    await index.put_manifest("docker.io", "library/a", ManifestRecord(digest, "application/x", 1))
    assert await index.get_manifest("docker.io", "library/a", digest) == ManifestRecord(digest, "application/x", 1)
    assert await index.get_manifest("ghcr.io", "library/a", digest) is None  # keyed by upstream
    await index.put_tag("docker.io", "library/a", "latest", TagRecord(digest, "application/x", 1, 5.0))
    assert (await index.get_tag("docker.io", "library/a", "latest")) == TagRecord(digest, "application/x", 1, 5.0)
    (tmp_path / tag_path("docker.io", "library/a", "latest")).write_text("{not json")
    assert await index.get_tag("docker.io", "library/a", "latest") is None


async def test_blob_links_are_looked_up_without_a_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cache hit asks: a hop to a worker thread cost more than the look-up itself."""
    index = FilesystemIndex(tmp_path)
    digest = digest_of(b"layer")
    await index.link_blobs("docker.io", "library/a", [digest])

    def no_thread(*args: object, **kwargs: object) -> None:
        raise AssertionError("the link check went to a worker thread")

    monkeypatch.setattr(asyncio, "to_thread", no_thread)
    assert await index.has_blob("docker.io", "library/a", digest)
    assert not await index.has_blob("docker.io", "library/b", digest)
    assert not await index.has_blob("ghcr.io", "library/a", digest)


async def test_cancelled_write_leaves_no_empty_directory(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    await store.put(digest_of(b"kept"), b"kept")
    kept_dir = (tmp_path / blob_path(digest_of(b"kept"))).parent
    for data in (b"never came", b"kept too?"):
        writer = await store.create(digest_of(data))
        await writer.cancel()
    assert [p.name for p in (tmp_path / "blobs" / "sha256").iterdir()] == [kept_dir.name]


def test_a_shared_cache_sweep_spares_writes_in_progress(tmp_path: Path) -> None:
    import os
    import time as clock

    from storage.files import sweep_partials

    directory = tmp_path / "blobs" / "sha256" / "ab"
    directory.mkdir(parents=True)
    fresh, stale = directory / "a.1.partial", directory / "b.2.partial"
    fresh.write_bytes(b"being written by another worker")
    stale.write_bytes(b"left by a crash")
    old = clock.time() - 3600
    os.utime(stale, (old, old))
    assert sweep_partials(tmp_path, spare_younger_than=600) == 1
    assert fresh.exists() and not stale.exists()
    assert sweep_partials(tmp_path) == 1 and not fresh.exists()
