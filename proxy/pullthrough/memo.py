"""Recently served manifests and tag answers, kept in this process's memory so that a hit opens no file.

A cached manifest read from storage costs the tag's and the manifest's index files and the manifest's blob opened
and read through a thread pool (with the S3 backend, the blob is a GET from the bucket), and a hash of the bytes;
from here it costs a dictionary lookup. The memo is a least-recently-used table bounded by
bytes (the bodies, plus an estimate of what each entry costs Python), so each worker process holds at most a few
MiB whatever it serves.

Keys carry the (registry, repository) as the index does: a manifest is found here only under a repository that
is known to hold it (the upstream gave it, or the index links it, for that repository), never by digest alone.

Each worker process has a memo of its own over the shared cache directory. A tag that another process has
refreshed meanwhile is not seen here until this process's own answer expires (``tag_ttl`` after the upstream
last confirmed it): two processes then answer as if they had asked the upstream a little apart, which any
tag TTL allows.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from storage.digest import Digest
from storage.interfaces import TagRecord

if TYPE_CHECKING:
    from proxy.pullthrough.manifests import Manifest

__all__ = ["DEFAULT_MAX_BYTES", "ENTRY_OVERHEAD", "ManifestMemo"]

DEFAULT_MAX_BYTES = 4 * 1024 * 1024
# What an entry costs besides a manifest's body: the table's node, its key tuple, the Manifest or TagRecord (about
# 360 bytes measured with tracemalloc on CPython 3.11), and the name, tag and Digest strings it may be the last to
# hold (a few hundred more). Rounded up, so that the bound holds for many tags of tiny manifests too.
ENTRY_OVERHEAD = 1024

_Key = tuple[str, str, str, Digest | str]


class ManifestMemo:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._max_bytes = max_bytes
        # A manifest bigger than this share of the memo is left to the disk: one large index would otherwise push
        # out hundreds of the small manifests that make up most pulls.
        self._max_body = max_bytes // 16
        self._entries: OrderedDict[_Key, tuple[Manifest | TagRecord, int]] = OrderedDict()
        self.size = 0

    def manifest(self, registry: str, repository: str, digest: Digest) -> Manifest | None:
        found = self._get(("manifest", registry, repository, digest))
        return found if found is not None and not isinstance(found, TagRecord) else None

    def tag(self, registry: str, repository: str, tag: str) -> TagRecord | None:
        found = self._get(("tag", registry, repository, tag))
        return found if isinstance(found, TagRecord) else None

    def remember_manifest(self, registry: str, repository: str, manifest: Manifest) -> None:
        """``manifest`` (verified bytes) is held by the repository; kept only if small enough."""
        if len(manifest.body) <= self._max_body:
            self._put(("manifest", registry, repository, manifest.digest), manifest, len(manifest.body))

    def remember_tag(self, registry: str, repository: str, tag: str, record: TagRecord) -> None:
        self._put(("tag", registry, repository, tag), record, 0)

    def _get(self, key: _Key) -> Manifest | TagRecord | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def _put(self, key: _Key, value: Manifest | TagRecord, body: int) -> None:
        cost = body + ENTRY_OVERHEAD
        previous = self._entries.pop(key, None)
        if previous is not None:
            self.size -= previous[1]
        self._entries[key] = (value, cost)
        self.size += cost
        while self.size > self._max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.size -= evicted

    def __len__(self) -> int:
        return len(self._entries)
