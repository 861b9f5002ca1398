"""The repository index's records as bytes: one format for every backend (a disk's files, a bucket's objects).

JSON objects with sorted keys; a record that does not parse, or is larger than MAX_RECORD_SIZE, reads as absent
(the index then has no usable answer, and the upstream is asked).
"""

from __future__ import annotations

import json
from typing import Any

from storage.digest import Digest, InvalidDigest
from storage.interfaces import ManifestRecord, TagRecord

__all__ = ["MAX_RECORD_SIZE", "dump_manifest", "dump_tag", "load_manifest", "load_tag", "parse"]

# Far above any record written (about 200 bytes): a larger file or object is not one of ours.
MAX_RECORD_SIZE = 64 * 1024


def parse(data: bytes) -> dict[str, Any] | None:
    if len(data) > MAX_RECORD_SIZE:
        return None
    try:
        entry = json.loads(data)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def load_manifest(digest: Digest, entry: dict[str, Any] | None) -> ManifestRecord | None:
    if entry is None:
        return None
    try:
        return ManifestRecord(digest, str(entry["media_type"]), int(entry["size"]))
    except (KeyError, TypeError, ValueError):
        return None


def dump_manifest(record: ManifestRecord) -> bytes:
    return _dump({"media_type": record.media_type, "size": record.size})


def load_tag(entry: dict[str, Any] | None) -> TagRecord | None:
    """A tag's record, or a referrers index's (the same fields)."""
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


def dump_tag(record: TagRecord) -> bytes:
    return _dump(
        {
            "digest": str(record.digest),
            "media_type": record.media_type,
            "size": record.size,
            "fetched_at": record.fetched_at,
        }
    )


def _dump(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True).encode()
