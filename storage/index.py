"""The per-repository index on a local filesystem: manifest links and tag answers, as small JSON files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiofiles

from storage.digest import Digest, InvalidDigest
from storage.files import write_atomic
from storage.interfaces import ManifestRecord, TagRecord
from storage.paths import manifest_link_path, tag_path

__all__ = ["FilesystemIndex"]

# Index entries are tiny; anything bigger is not ours and is treated as absent.
_MAX_ENTRY_SIZE = 64 * 1024


class FilesystemIndex:
    def __init__(self, root: Path) -> None:
        self._root = root

    async def get_manifest(self, registry: str, repository: str, digest: Digest) -> ManifestRecord | None:
        entry = await self._load(self._root / manifest_link_path(registry, repository, digest))
        if entry is None:
            return None
        try:
            return ManifestRecord(digest, str(entry["media_type"]), int(entry["size"]))
        except (KeyError, TypeError, ValueError):
            return None

    async def put_manifest(self, registry: str, repository: str, record: ManifestRecord) -> None:
        path = self._root / manifest_link_path(registry, repository, record.digest)
        await write_atomic(path, _dump({"media_type": record.media_type, "size": record.size}))

    async def get_tag(self, registry: str, repository: str, tag: str) -> TagRecord | None:
        entry = await self._load(self._root / tag_path(registry, repository, tag))
        if entry is None:
            return None
        try:
            return TagRecord(
                Digest.parse(str(entry["digest"])),
                str(entry["media_type"]),
                int(entry["size"]),
                float(entry["fetched_at"]),
            )
        except (KeyError, TypeError, ValueError, InvalidDigest):
            return None

    async def put_tag(self, registry: str, repository: str, tag: str, record: TagRecord) -> None:
        entry = {
            "digest": str(record.digest),
            "media_type": record.media_type,
            "size": record.size,
            "fetched_at": record.fetched_at,
        }
        await write_atomic(self._root / tag_path(registry, repository, tag), _dump(entry))

    async def _load(self, path: Path) -> dict[str, Any] | None:
        try:
            async with aiofiles.open(path, "rb") as f:
                data = await f.read(_MAX_ENTRY_SIZE + 1)
        except OSError:
            # Missing, or unreadable: either way the index has no usable answer and the upstream is asked.
            return None
        if len(data) > _MAX_ENTRY_SIZE:
            return None
        try:
            entry = json.loads(data)
        except ValueError:
            return None
        return entry if isinstance(entry, dict) else None


def _dump(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True).encode()
