"""The repository index in an S3 bucket: manifest links, tag answers and blob links as small objects.

The keys are the disk's paths under the bucket's prefix (:mod:`storage.s3.layout`) and the entries the disk's JSON
(:mod:`storage.index`), so the two read alike. Every call is one request, but for blob links (one per blob) and
the listings. Reads treat a bucket that fails like a missing entry, as the disk index treats an unreadable file:
the upstream is asked instead. Writes raise :class:`StorageError`, which their callers log and carry on past.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from pathlib import PurePosixPath
from typing import Any, TypeVar

from storage.digest import Digest, InvalidDigest
from storage.interfaces import ManifestRecord, StorageError, TagRecord
from storage.paths import (
    MANIFESTS_DIR,
    TAGS_DIR,
    blob_link_path,
    manifest_link_path,
    manifests_dir,
    referrers_path,
    tag_path,
    tags_dir,
)
from storage.records import MAX_RECORD_SIZE, dump_manifest, dump_tag, load_manifest, load_tag, parse
from storage.references import is_registry, is_repository, is_tag
from storage.s3.layout import index_key, repositories_prefix
from storage.s3.objects import ObjectClient

__all__ = ["S3RepositoryIndex"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Requests one call keeps in flight at once (linking a manifest's layers, walking the repositories).
_CONCURRENCY = 16


class S3RepositoryIndex:
    def __init__(self, client: ObjectClient) -> None:
        self._client = client
        self._prefix = client.settings.prefix

    def _key(self, path: PurePosixPath) -> str:
        return index_key(self._prefix, path)

    async def get_manifest(self, registry: str, repository: str, digest: Digest) -> ManifestRecord | None:
        return load_manifest(digest, await self._load(self._key(manifest_link_path(registry, repository, digest))))

    async def put_manifest(self, registry: str, repository: str, record: ManifestRecord) -> None:
        key = self._key(manifest_link_path(registry, repository, record.digest))
        await self._client.put(key, dump_manifest(record))

    async def has_blob(self, registry: str, repository: str, digest: Digest) -> bool:
        key = self._key(blob_link_path(registry, repository, digest))
        try:
            return await self._client.head(key) is not None
        except StorageError as exc:
            log.warning("cannot look up %s: %s", key, exc)
            return False

    async def link_blobs(self, registry: str, repository: str, digests: list[Digest]) -> None:
        # Every key is built (so every name checked) before the first request.
        keys = sorted({self._key(blob_link_path(registry, repository, digest)) for digest in digests})
        # An empty object says it all; writing it again changes nothing.
        await _bounded(self._client.put(key, b"") for key in keys)

    async def list_manifests(self, registry: str, repository: str) -> list[Digest]:
        """Every manifest this repository is known to have (for the inventory's start-up reconciliation)."""
        directory = self._key(manifests_dir(registry, repository)) + "/"
        found: list[Digest] = []
        try:
            async for key, _size, _modified in self._client.list_objects(directory):
                algorithm, _, hex_ = key[len(directory) :].partition("/")
                try:
                    found.append(Digest.parse(f"{algorithm}:{hex_}"))
                except InvalidDigest:
                    continue  # not ours
        except StorageError as exc:
            log.warning("cannot list the manifests of %s/%s: %s", registry, repository, exc)
            return []
        return sorted(found, key=str)

    async def get_tag(self, registry: str, repository: str, tag: str) -> TagRecord | None:
        return load_tag(await self._load(self._key(tag_path(registry, repository, tag))))

    async def put_tag(self, registry: str, repository: str, tag: str, record: TagRecord) -> None:
        await self._client.put(self._key(tag_path(registry, repository, tag)), dump_tag(record))

    async def list_tags(self, registry: str, repository: str) -> list[str]:
        directory = self._key(tags_dir(registry, repository)) + "/"
        try:
            names = [key[len(directory) :] async for key, _size, _modified in self._client.list_objects(directory)]
        except StorageError as exc:
            log.warning("cannot list the tags of %s/%s: %s", registry, repository, exc)
            return []
        return sorted(name for name in names if is_tag(name))

    async def get_referrers(self, registry: str, repository: str, subject: Digest) -> TagRecord | None:
        return load_tag(await self._load(self._key(referrers_path(registry, repository, subject))))

    async def put_referrers(self, registry: str, repository: str, subject: Digest, record: TagRecord) -> None:
        await self._client.put(self._key(referrers_path(registry, repository, subject)), dump_tag(record))

    async def list_repositories(self) -> list[tuple[str, str]]:
        try:
            return await self._walk_repositories()
        except StorageError as exc:
            log.warning("cannot list the repositories: %s", exc)
            return []

    async def _walk_repositories(self) -> list[tuple[str, str]]:
        base = repositories_prefix(self._prefix)
        found: list[tuple[str, str]] = []
        # One level of names at a time, every directory of a level listed at once: (registry, path below it).
        level = [(registry, "") for registry in await self._client.list_directories(base) if is_registry(registry)]
        # Repository names are at most 255 characters, so at most 128 components deep; listings cannot loop.
        for _depth in range(128):
            if not level:
                break
            listings = await _bounded(self._client.list_directories(f"{base}{reg}/{path}") for reg, path in level)
            deeper: list[tuple[str, str]] = []
            for (registry, path), names in zip(level, listings, strict=True):
                # A repository is a directory holding _manifests or _tags; components never start with "_".
                repository = path.rstrip("/")
                if (MANIFESTS_DIR in names or TAGS_DIR in names) and is_repository(repository):
                    found.append((registry, repository))
                deeper += [(registry, f"{path}{name}/") for name in names if name and not name.startswith("_")]
            level = deeper
        return sorted(found)

    async def _load(self, key: str) -> dict[str, Any] | None:
        try:
            stream = await self._client.open(key)
            if stream is None:
                return None
            try:
                if stream.size > MAX_RECORD_SIZE:
                    return None
                data = await stream.read(stream.size)
            finally:
                await stream.close()
        except StorageError as exc:
            # Unreadable is as good as missing: the index has no usable answer, and the upstream is asked.
            log.warning("cannot read %s: %s", key, exc)
            return None
        return parse(data)


async def _bounded(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Await ``calls``, at most a few at once; their results in order. Raises the first StorageError, after every
    call has ended (none is left running behind the caller)."""
    limit = asyncio.Semaphore(_CONCURRENCY)

    async def one(call: Awaitable[T]) -> T:
        async with limit:
            return await call

    results = await asyncio.gather(*(one(call) for call in calls), return_exceptions=True)
    done: list[T] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        done.append(result)
    return done
