"""The per-repository index on a local filesystem: manifest links and tag answers, as small JSON files."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiofiles

from storage.digest import Digest, InvalidDigest
from storage.files import write_atomic
from storage.interfaces import ManifestRecord, StorageError, TagRecord
from storage.paths import (
    MANIFESTS_DIR,
    REPOSITORIES,
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

__all__ = ["FilesystemIndex"]


class FilesystemIndex:
    def __init__(self, root: Path) -> None:
        self._root = root

    async def get_manifest(self, registry: str, repository: str, digest: Digest) -> ManifestRecord | None:
        return load_manifest(digest, await self._load(self._root / manifest_link_path(registry, repository, digest)))

    async def put_manifest(self, registry: str, repository: str, record: ManifestRecord) -> None:
        path = self._root / manifest_link_path(registry, repository, record.digest)
        await write_atomic(path, dump_manifest(record))

    async def has_blob(self, registry: str, repository: str, digest: Digest) -> bool:
        # On the event loop: one look-up of a small file's directory entry, as opening a cached blob does for every
        # hit. A hop to a worker thread and back cost more: small cached blobs under wrk, 1 connection, went from
        # ~2,000 to ~2,300 req/s without it.
        return os.path.exists(self._root / blob_link_path(registry, repository, digest))

    async def link_blobs(self, registry: str, repository: str, digests: list[Digest]) -> None:
        paths = [self._root / blob_link_path(registry, repository, digest) for digest in digests]
        try:
            await asyncio.to_thread(_touch_all, paths)
        except OSError as exc:
            raise StorageError(f"cannot link blobs to {registry}/{repository}: {exc.strerror}") from exc

    async def list_manifests(self, registry: str, repository: str) -> list[Digest]:
        """Every manifest this repository is known to have (for the inventory's start-up reconciliation)."""
        return await asyncio.to_thread(self._list_manifests, self._root / manifests_dir(registry, repository))

    @staticmethod
    def _list_manifests(directory: Path) -> list[Digest]:
        found: list[Digest] = []
        try:
            algorithms = os.listdir(directory)
        except OSError:
            return found
        for algorithm in sorted(algorithms):
            try:
                names = os.listdir(directory / algorithm)
            except OSError:
                continue
            for name in sorted(names):
                try:
                    found.append(Digest.parse(f"{algorithm}:{name}"))
                except InvalidDigest:
                    continue  # an unfinished write (*.partial), or not ours
        return found

    async def get_tag(self, registry: str, repository: str, tag: str) -> TagRecord | None:
        return load_tag(await self._load(self._root / tag_path(registry, repository, tag)))

    async def put_tag(self, registry: str, repository: str, tag: str, record: TagRecord) -> None:
        await write_atomic(self._root / tag_path(registry, repository, tag), dump_tag(record))

    async def list_tags(self, registry: str, repository: str) -> list[str]:
        return await asyncio.to_thread(self._list_tags, self._root / tags_dir(registry, repository))

    @staticmethod
    def _list_tags(directory: Path) -> list[str]:
        try:
            names = os.listdir(directory)
        except OSError:
            return []
        return sorted(name for name in names if is_tag(name))

    async def get_referrers(self, registry: str, repository: str, subject: Digest) -> TagRecord | None:
        return load_tag(await self._load(self._root / referrers_path(registry, repository, subject)))

    async def put_referrers(self, registry: str, repository: str, subject: Digest, record: TagRecord) -> None:
        await write_atomic(self._root / referrers_path(registry, repository, subject), dump_tag(record))

    async def list_repositories(self) -> list[tuple[str, str]]:
        return await asyncio.to_thread(self._list_repositories)

    def _list_repositories(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        base = self._root / REPOSITORIES
        try:
            registries = sorted(os.listdir(base))
        except OSError:
            return found
        for registry in registries:
            if not is_registry(registry):
                continue
            # A repository is a directory holding _manifests or _tags; walk only the name components.
            for directory, dirs, _files in os.walk(base / registry):
                if MANIFESTS_DIR in dirs or TAGS_DIR in dirs:
                    repository = Path(directory).relative_to(base / registry).as_posix()
                    if is_repository(repository):
                        found.append((registry, repository))
                dirs[:] = [d for d in dirs if not d.startswith("_")]
        return sorted(found)

    async def _load(self, path: Path) -> dict[str, Any] | None:
        try:
            async with aiofiles.open(path, "rb") as f:
                data = await f.read(MAX_RECORD_SIZE + 1)
        except OSError:
            # Missing, or unreadable: either way the index has no usable answer and the upstream is asked.
            return None
        return parse(data)


def _touch_all(paths: list[Path]) -> None:
    # An empty file says it all; creating one is atomic, and an existing one is left as it is.
    for path in paths:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
