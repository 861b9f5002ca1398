"""A fill: one download of a blob into the cache, read by any number of clients while it grows.

The download runs in its own task, so it finishes (and the next pull is a hit) even when every client
that asked for it has gone. Readers tail the partial file; the last byte of the blob is held back until
the digest has been verified and the blob committed, so a client never receives a complete-looking body
that does not match its digest.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable

from proxy.errors import RegistryError
from proxy.upstream.client import BlobDownload
from storage.digest import Digest
from storage.interfaces import BlobReader, BlobStore, BlobWriter

__all__ = ["CHUNK_SIZE", "BlobFill", "FillFailed"]

log = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
# Bytes received from the upstream but not yet handed to the writer, at most.
_MAX_PENDING = 8 * 1024 * 1024


class FillFailed(Exception):
    """The fill broke after clients were sent headers; their responses must be cut short."""


class _State(enum.Enum):
    STARTING = "starting"
    DOWNLOADING = "downloading"
    COMMITTING = "committing"
    DONE = "done"
    FAILED = "failed"


class BlobFill:
    def __init__(
        self,
        digest: Digest,
        store: BlobStore,
        download: Callable[[], Awaitable[BlobDownload]],
        on_finish: Callable[[BlobFill], None],
    ) -> None:
        self.digest = digest
        self._size: int | None = None
        self._store = store
        self._download = download
        self._on_finish = on_finish
        self._state = _State.STARTING
        self._error: BaseException | None = None
        self._written = 0
        self._writer: BlobWriter | None = None
        self._changed = asyncio.Event()
        self._started = asyncio.Event()
        self._finished = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"fill {self.digest}")

    async def ready(self) -> int | None:
        """Wait until the upstream answered; the blob's size if it said. Raises the upstream's error."""
        await self._started.wait()
        if self._state is _State.FAILED and self._writer is None:
            assert self._error is not None
            raise self._error
        return self._size

    @property
    def size(self) -> int | None:
        """The blob's size, once :meth:`ready` returned (None if the upstream did not say)."""
        return self._size

    async def wait(self) -> bool:
        """Wait for the fill to end; whether the blob was committed."""
        await self._finished.wait()
        return self._state is _State.DONE

    async def _run(self) -> None:
        download: BlobDownload | None = None
        try:
            download = await self._download()
            self._size = download.size
            self._writer = await self._store.create(self.digest)
            self._state = _State.DOWNLOADING
            self._started.set()
            await self._copy(download, self._writer)
            self._state = _State.COMMITTING
            await self._writer.commit(self._size)
            self._state = _State.DONE
            log.info("cached blob %s (%d bytes)", self.digest, self._written)
        except BaseException as exc:
            self._error = exc
            self._state = _State.FAILED
            if self._writer is not None:
                await self._writer.cancel()
                log.warning("fill of %s failed after %d bytes: %s", self.digest, self._written, _describe(exc))
            if not isinstance(exc, Exception):
                raise
        finally:
            if download is not None:
                await download.aclose()
            self._started.set()
            self._finished.set()
            self._notify()
            self._on_finish(self)

    async def _copy(self, download: BlobDownload, writer: BlobWriter) -> None:
        """Download into the writer, reading the next chunks while the previous ones are being written.

        Writing (and hashing) runs in a worker thread; waiting for each chunk's round trip before reading
        the next would cap a fill at one network chunk per thread hop. Chunks that arrive during a write
        are written together by the next one, bounded by _MAX_PENDING so memory stays flat.
        """
        pending: list[bytes] = []
        pending_size = 0
        writing: asyncio.Task[int] | None = None
        try:
            async for chunk in download.chunks():
                pending.append(chunk)
                pending_size += len(chunk)
                if writing is not None and (writing.done() or pending_size >= _MAX_PENDING):
                    self._wrote(await writing)
                    writing = None
                if writing is None:
                    writing = asyncio.create_task(_write(writer, b"".join(pending)))
                    pending, pending_size = [], 0
            if writing is not None:
                self._wrote(await writing)
                writing = None
            if pending:
                self._wrote(await _write(writer, b"".join(pending)))
        finally:
            if writing is not None:
                writing.cancel()
                # The write in its thread finishes regardless; wait so the writer is not cancelled under it.
                await asyncio.gather(writing, return_exceptions=True)

    def _wrote(self, n: int) -> None:
        self._written += n
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def stream(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        """Bytes ``start`` to ``end`` (exclusive; None = to the end), as they arrive."""
        reader = await self._open_reader()
        pos = start
        try:
            while end is None or pos < end:
                limit = self._readable()
                if end is not None:
                    limit = min(limit, end)
                if pos < limit:
                    data = await reader.read(pos, min(CHUNK_SIZE, limit - pos))
                    if not data:
                        raise FillFailed(f"cached data of {self.digest} ended early")
                    pos += len(data)
                    yield data
                elif self._state is _State.DONE:
                    return
                elif self._state is _State.FAILED:
                    raise FillFailed(f"fill of {self.digest} failed: {_describe(self._error)}")
                else:
                    await self._changed.wait()
        finally:
            await reader.close()

    def _readable(self) -> int:
        if self._state is _State.DONE or self._size is None:
            return self._written
        # Hold back the final byte until the digest is verified: a client must never see a whole body
        # that turns out to be wrong.
        return min(self._written, self._size - 1)

    async def _open_reader(self) -> BlobReader:
        await self.ready()
        if self._state is _State.DOWNLOADING and self._writer is not None:
            # The partial file exists until the commit renames it, and the commit only starts after the
            # state changes; opening it here involves no await, so there is no window for the rename.
            return self._writer.open_reader()
        if not await self.wait():
            raise FillFailed(f"fill of {self.digest} failed: {_describe(self._error)}")
        opened = await self._store.open(self.digest)
        if opened is None:
            raise FillFailed(f"{self.digest} vanished from the cache right after it was filled")
        return opened[0]


async def _write(writer: BlobWriter, data: bytes) -> int:
    await writer.write(data)
    return len(data)


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, RegistryError):
        return exc.message
    return str(exc) or type(exc).__name__
