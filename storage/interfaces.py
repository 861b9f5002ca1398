"""What the proxy needs from a cache backend, as Protocols (the filesystem is the first backend).

Kept deliberately small so that an object-store backend, eviction and access tracking can be added
behind it without touching ``proxy/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, runtime_checkable

from storage.digest import Digest

__all__ = [
    "BlobDeleter",
    "BlobLister",
    "BlobReader",
    "BlobStore",
    "BlobWriter",
    "DigestMismatch",
    "FillProgress",
    "FillState",
    "FetchLocks",
    "ForeignFill",
    "ImageRecorder",
    "ManifestRecord",
    "RepositoryIndex",
    "SizeMismatch",
    "StorageError",
    "StoredBlob",
    "TagRecord",
    "VerificationError",
]


class StorageError(Exception):
    """The backend failed (disk full, unwritable root, ...)."""


class VerificationError(Exception):
    """Content did not match what it claimed to be; it was not committed.

    Not a StorageError: the cache works, the content was wrong (its source is to blame).
    """


class DigestMismatch(VerificationError):
    def __init__(self, expected: Digest, actual: Digest) -> None:
        super().__init__(f"digest mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class SizeMismatch(VerificationError):
    def __init__(self, digest: Digest, expected: int, actual: int) -> None:
        super().__init__(f"size mismatch for {digest}: expected {expected} bytes, got {actual}")
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    digest: Digest
    media_type: str
    size: int


@dataclass(frozen=True, slots=True)
class TagRecord:
    digest: Digest
    media_type: str
    size: int
    fetched_at: float  # seconds since the epoch, when the upstream last confirmed this answer


@dataclass(frozen=True, slots=True)
class StoredBlob:
    digest: Digest
    size: int
    modified: float  # seconds since the epoch, when it was committed (or last replaced)


class BlobReader(Protocol):
    """An open committed blob, or the bytes written so far of one being filled.

    An open reader holds a *read lease*: :meth:`BlobDeleter.delete_if_unused` leaves the blob alone until the
    reader is closed (for a fill, from the moment the reader opened the partial data through the commit).
    """

    async def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset``; fewer (or none) only at the current end of the data."""
        ...

    def fileno(self) -> int | None:
        """An OS file descriptor over the same bytes (for zero-copy sends), or None if the backend has none."""
        ...

    async def close(self) -> None: ...


class BlobWriter(Protocol):
    """A blob being written; invisible to :meth:`BlobStore.open` until :meth:`commit` verified it."""

    @property
    def digest(self) -> Digest: ...

    @property
    def written(self) -> int: ...

    async def started(self, size: int | None) -> None:
        """The upstream answered with this size (None: it did not say): followers in other processes may read."""
        ...

    async def write(self, data: bytes | memoryview) -> None:
        """Append ``data``. The memory under a view must not change afterwards: it may still be read (hashed) after
        this returned."""
        ...

    def open_reader(self) -> BlobReader:
        """A reader over the bytes written so far (for clients that tail a fill)."""
        ...

    async def commit(self, expected_size: int | None = None) -> None:
        """Verify digest (and size) and publish atomically; on failure the data is dropped and it raises."""
        ...

    async def cancel(self) -> None: ...


class FillState(Enum):
    RUNNING = "running"  # its holder is alive and writing
    COMMITTED = "committed"  # verified and published: open it like any cached blob
    FAILED = "failed"  # its holder dropped the data (wrong bytes, the upstream gave up): nothing to take over
    ABANDONED = "abandoned"  # its holder is gone (crashed, killed, lease expired): claim it again to take over


@dataclass(frozen=True, slots=True)
class FillProgress:
    state: FillState
    started: bool  # the holder has the upstream's answer (``size`` is then what it said, None if it did not)
    size: int | None
    written: int  # bytes readable so far through :meth:`ForeignFill.open_reader`


@runtime_checkable
class ForeignFill(Protocol):
    """A fill of a blob that another process (on this disk) or replica (on this bucket) runs, seen through storage.

    Returned by :meth:`BlobStore.claim` instead of a writer; polled, as other processes cannot wake us.
    """

    async def progress(self) -> FillProgress: ...

    def open_reader(self) -> BlobReader | None:
        """A reader over the bytes written so far (readable as :meth:`progress` reports them, and through the commit);
        None if this backend cannot show a fill in progress (followers then wait for the commit)."""
        ...

    async def close(self) -> None: ...


class FetchLocks(Protocol):
    """ "Someone is already asking the upstream this", across the processes and replicas sharing the storage, for
    what is not a blob fill (those claim their blob: :meth:`BlobStore.claim`): a manifest by tag or digest."""

    def hold(self, key: str) -> AbstractAsyncContextManager[bool]:
        """Hold ``key`` while asking the upstream. While another process holds it, waits (bounded: past the bound it
        goes ahead, as a second upstream request beats a stuck pull); yields whether it waited, in which case the
        answer the other process stored should be looked up before asking again."""
        ...


class BlobStore(Protocol):
    async def stat(self, digest: Digest) -> int | None:
        """The size of a committed blob, or None if it is not cached."""
        ...

    async def open(self, digest: Digest) -> tuple[BlobReader, int] | None:
        """A reader and the size of a committed blob, or None if it is not cached."""
        ...

    async def get(self, digest: Digest, max_size: int) -> bytes | None:
        """A whole small blob (a manifest), or None if not cached or larger than ``max_size``."""
        ...

    async def put(self, digest: Digest, data: bytes) -> None:
        """Store small content whole, verified like any other write."""
        ...

    async def create(self, digest: Digest) -> BlobWriter:
        """A writer for content this process has whole or fetches alone (small content; nothing to coordinate)."""
        ...

    async def claim(self, digest: Digest, key: str) -> BlobWriter | ForeignFill:
        """Become the one filler of ``digest`` for ``key`` (what the fill asks its upstream: registry, repository)
        across every process and replica sharing this storage, or learn who is.

        A writer: this caller fills. If an abandoned fill left bytes behind, the writer already holds (and has
        hashed) them: ``written`` says how many, and the download resumes there. It must call
        :meth:`BlobWriter.started` once the upstream answered. A :class:`ForeignFill`: someone else fills (or the
        blob was committed meanwhile: its progress says so); claim again once it reports ABANDONED.
        """
        ...

    async def sweep(self, spare_younger_than: float = 0.0) -> int:
        """Remove writes left behind by a crash; returns how many files were removed.

        ``spare_younger_than``: leave files written to in the last that many seconds (another process sharing the
        cache may still be writing them); 0 removes them all (no other writer can exist).
        """
        ...


class BlobDeleter(Protocol):
    async def delete_if_unused(self, digests: Sequence[Digest]) -> set[Digest]:
        """Delete each committed blob that no reader holds (in this process or any other); return those now gone.

        A blob already gone counts as deleted; one being read is left alone (and not returned).
        """
        ...


class BlobLister(Protocol):
    async def list_blobs(self) -> list[StoredBlob]:
        """Every committed blob (partial writes excluded), in no particular order."""
        ...


class ImageRecorder(Protocol):
    """Told what the manifest service caches and serves, for the inventory. Calls return at once, never fail,
    and never wait on storage: what they record is written in the background."""

    def manifest_cached(self, registry: str, repository: str, digest: Digest, media_type: str, body: bytes) -> None:
        """The repository's manifest ``digest`` (these exact bytes) was stored."""
        ...

    def tag_cached(self, registry: str, repository: str, tag: str, record: TagRecord) -> None:
        """The upstream said (or confirmed) what ``tag`` points to."""
        ...

    def tag_pulled(self, registry: str, repository: str, tag: str) -> None:
        """A client resolved ``tag`` (GET or HEAD of the manifest by tag)."""
        ...


class RepositoryIndex(Protocol):
    """Which manifests and tags each (upstream registry, repository) has."""

    async def get_manifest(self, registry: str, repository: str, digest: Digest) -> ManifestRecord | None: ...

    async def put_manifest(self, registry: str, repository: str, record: ManifestRecord) -> None: ...

    async def has_blob(self, registry: str, repository: str, digest: Digest) -> bool:
        """Whether this repository is known to hold the blob (see :meth:`link_blobs`)."""
        ...

    async def link_blobs(self, registry: str, repository: str, digests: list[Digest]) -> None:
        """Record that this repository holds these blobs: they may be served under its name."""
        ...

    async def get_tag(self, registry: str, repository: str, tag: str) -> TagRecord | None: ...

    async def put_tag(self, registry: str, repository: str, tag: str, record: TagRecord) -> None: ...

    async def list_tags(self, registry: str, repository: str) -> list[str]:
        """The tags this cache has an answer for, sorted."""
        ...

    async def get_referrers(self, registry: str, repository: str, subject: Digest) -> TagRecord | None:
        """The last referrers index fetched for ``subject`` (its bytes are a blob), and when."""
        ...

    async def put_referrers(self, registry: str, repository: str, subject: Digest, record: TagRecord) -> None: ...

    async def list_repositories(self) -> list[tuple[str, str]]:
        """Every (registry, repository) this cache has a manifest or tag of, sorted."""
        ...
