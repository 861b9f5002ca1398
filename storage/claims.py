"""Fill claims on a filesystem: one filler per (blob, upstream key) across every process sharing the cache directory.

A fill writes to a partial file whose name is fixed by the blob and the key (``<hex>.<keyhash>.partial``, see
:mod:`storage.paths`), and holds an exclusive ``flock`` on a lock file beside it (``<hex>.<keyhash>.claim``) for
as long as it runs. The lock file also carries what followers need before the first byte: the size the upstream
announced. A separate file because the partial file's own ``flock`` is the read lease of whoever tails it
(:mod:`storage.leases`), and an exclusive lock there would refuse them.

Another process that misses the same blob finds the lock taken and follows the fill through the file system:
the partial file's size is how far it got; the committed blob is the same inode under the final name (a commit
is a rename); a partial file with no name left was dropped (wrong bytes); a lock that can be taken while neither
happened means the filler died, and whoever claims next takes its bytes over (hashing them again) and resumes. A
filler that holds its lock but makes no progress for STALL_LIMIT seconds is reported as failed.

The filler releases the lock only after renaming or removing the partial file, and unlinks the lock file first,
so a follower that finds the lock free has the final answer on disk; one that took the lock of a file already
unlinked sees that its inode is no longer at the path and tries again.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import time
from pathlib import Path

from storage.files import FileReader
from storage.interfaces import BlobReader, FillProgress, FillState, StorageError
from storage.leases import lock_if_free, release_lock_file, same_file, take_read_lease

__all__ = ["STALL_LIMIT", "ClaimLock", "FilesystemForeignFill", "key_hash"]

# A holder that keeps its lock but shows no progress for this long is stuck (a stopped process, a hung disk): the
# fill is reported FAILED, so that its followers' clients get an error instead of waiting forever. A live holder's
# upstream gives up long before (its read timeout); a dead one's lock is free at once.
STALL_LIMIT = 120.0
# The lock file holds the announced size as decimal, or this when the upstream did not say; empty before that.
_UNKNOWN_SIZE = b"-"


def key_hash(key: str) -> str:
    """A short, path-safe name for an upstream key (the registry and repository a fill asks)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class ClaimLock:
    """The held lock of a claim: written by the filler, released (and its file removed) when the fill ends."""

    def __init__(self, path: Path, fd: int) -> None:
        self._path = path
        self._fd = fd

    def announced_size(self) -> tuple[bool, int | None]:
        """What an earlier holder announced: (started, size)."""
        return _parse(os.pread(self._fd, 32, 0))

    def announce(self, size: int | None) -> None:
        # One small pwrite; followers read it whole (a write this short is not seen half done on a local disk).
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, _UNKNOWN_SIZE if size is None else str(size).encode(), 0)

    def forget(self) -> None:
        """Nothing of an earlier holder's is kept: followers must wait for a new announcement."""
        os.ftruncate(self._fd, 0)

    def release(self) -> None:
        """Unlink, then unlock: a process that opened the file before the unlink finds its inode gone and retries."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            release_lock_file(self._path, fd)


def _parse(content: bytes) -> tuple[bool, int | None]:
    content = content.strip()
    if not content:
        return False, None
    if content == _UNKNOWN_SIZE or not content.isdigit():
        return True, None
    return True, int(content)


class FilesystemForeignFill:
    """A fill that another process on this cache directory runs, seen through its lock, partial and final files."""

    def __init__(self, final: Path, partial: Path, lock_fd: int | None) -> None:
        self._final = final
        self._partial = partial
        self._lock_fd = lock_fd  # None: the blob was already committed when we looked
        self._partial_fd: int | None = None  # open (under a read lease) once the filler announced the size
        self._started = False
        self._size: int | None = None
        self._seen: tuple[bool, int] = (False, 0)  # what the holder had shown, and since when (monotonic)
        self._seen_at = time.monotonic()

    async def progress(self) -> FillProgress:
        # A few system calls, but on a network file system any of them can block: off the event loop.
        try:
            return await asyncio.to_thread(self._progress)
        except OSError as exc:
            raise StorageError(f"cannot follow the fill of {self._final.name}: {exc.strerror}") from exc

    def _progress(self) -> FillProgress:
        if self._lock_fd is None:
            return self._report(FillState.COMMITTED)
        if not self._started:
            self._started, self._size = _parse(os.pread(self._lock_fd, 32, 0))
        if self._started and self._partial_fd is None:
            try:
                self._partial_fd = os.open(self._partial, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                pass  # renamed or removed already: the state below says which
            else:
                # Carried over to the committed file by the rename: eviction leaves it alone while we read.
                take_read_lease(self._partial_fd)
        # The lock first, the files second: the filler renames or removes before it unlocks, so once the lock is
        # free what is on disk is final.
        if not lock_if_free(self._lock_fd):
            report = self._report(FillState.RUNNING)
            now = time.monotonic()
            if (report.started, report.written) != self._seen:
                self._seen, self._seen_at = (report.started, report.written), now
            elif now - self._seen_at > STALL_LIMIT:
                return FillProgress(FillState.FAILED, report.started, report.size, report.written)
            return report
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)  # not ours to keep: whoever claims next decides
        if self._committed():
            return self._report(FillState.COMMITTED)
        if self._partial_fd is not None and os.fstat(self._partial_fd).st_nlink == 0:
            return self._report(FillState.FAILED)  # removed without a commit: its bytes were wrong, or it gave up
        return self._report(FillState.ABANDONED)

    def _committed(self) -> bool:
        if self._partial_fd is not None:
            return same_file(self._partial_fd, self._final)
        return self._final.exists()

    def _report(self, state: FillState) -> FillProgress:
        written = 0
        if self._partial_fd is not None:
            written = os.fstat(self._partial_fd).st_size
        elif state is FillState.COMMITTED:
            try:
                written = self._final.stat().st_size
            except FileNotFoundError:
                pass  # evicted at once; the caller's open() will say so
        if state is FillState.COMMITTED:
            return FillProgress(state, True, written, written)
        return FillProgress(state, self._started, self._size, written)

    def open_reader(self) -> BlobReader | None:
        if self._partial_fd is None:
            return None
        # The same open file (and read lease), on a descriptor the reader closes itself.
        return FileReader(os.dup(self._partial_fd))

    async def close(self) -> None:
        for fd in (self._lock_fd, self._partial_fd):
            if fd is not None:
                os.close(fd)
        self._lock_fd = self._partial_fd = None
