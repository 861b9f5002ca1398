"""A fill: one download of a blob into the cache, read by any number of clients while it grows.

The download runs in its own task, so it finishes (and the next pull is a hit) even when every client
that asked for it has gone. Readers tail the partial file; the last byte of the blob is held back until
the digest has been verified and the blob committed, so a client never receives a complete-looking body
that does not match its digest. A range that ends before the blob does has no last byte to hold back: it
is answered only once the blob is committed, from the committed bytes.

If the upstream connection breaks, the fill resumes from where it was with a Range request. If the
cache fails (disk full), the clients reading the fill continue straight from the upstream (see
:mod:`proxy.pullthrough.relay`).

One fill per blob and upstream key across every process (and replica) sharing the storage: a fill first claims
the blob (:meth:`storage.interfaces.BlobStore.claim`). If another process holds the claim, this fill follows it
through storage instead of downloading: its readers tail the other process's partial data the same way, woken by
polling (other processes cannot wake us). If that process dies, the next claim takes its bytes over and resumes.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import AsyncGenerator, Callable

from proxy.errors import RegistryError
from proxy.pullthrough.errors import FillFailed
from proxy.pullthrough.relay import Download, RelayedBlob, relay
from proxy.pullthrough.segments import CHUNK_SIZE, Chunk, chunk_size, next_chunk
from proxy.pullthrough.sources import BlobSource, ByteRange
from proxy.upstream.client import BlobDownload, DownloadInterrupted
from storage.digest import Digest
from storage.interfaces import BlobReader, BlobStore, BlobWriter, FillState, ForeignFill, StorageError

__all__ = ["BlobFill", "Download", "FillFailed"]

log = logging.getLogger(__name__)

# Bytes received from the upstream but not yet written, at most (plus one chunk).
_MAX_PENDING = 8 * 1024 * 1024
# A write takes the chunks queued, up to this many bytes (or one chunk, if bigger).
_WRITE_SIZE = 2 * 1024 * 1024
# Resuming a broken download: attempts, and the pause before the first one (doubled each time).
_RESUME_ATTEMPTS = 3
_RESUME_BACKOFF = 0.25
# A reader tailing a fill sends what is new once it is this big, or once it waited _BATCH_WAIT seconds for more.
_BATCH = 1024 * 1024
_BATCH_WAIT = 0.05
# Following a fill in another process: polled this often at first and after each sign of progress, backing off
# (doubling) to _POLL_MAX while nothing changes (an object store is asked over the network each time).
_POLL_MIN = 0.01
_POLL_MAX = 0.5
# Claims per fill: each one after the first follows a filler that died (a crash loop must not spin forever).
_CLAIMS = 4


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
        download: Download,
        on_finish: Callable[[BlobFill], None],
        key: str = "",
    ) -> None:
        """``key``: what the download asks the upstream (registry and repository), the claim's scope."""
        self.digest = digest
        self._key = key
        self._size: int | None = None
        self._store = store
        self._download = download
        self._on_finish = on_finish
        self._state = _State.STARTING
        self._error: BaseException | None = None
        self._written = 0
        self._writer: BlobWriter | None = None
        # Opens a reader over the bytes written so far: the writer's, or the other process's whose fill we follow.
        self._tail: Callable[[], BlobReader | None] | None = None
        # Readers waiting for the fill: each until the readable bytes reach its threshold, or the fill changes state.
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._started = asyncio.Event()
        self._finished = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"fill {self.digest}")

    async def ready(self) -> int | None:
        """Wait until the upstream answered; the blob's size if it said.

        Raises the upstream's error, or StorageError when the cache cannot take the blob at all.
        """
        await self._started.wait()
        if self._state is _State.FAILED and self._tail is None:
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
        try:
            for _ in range(_CLAIMS):
                claimed = await self._store.claim(self.digest, self._key)
                if not isinstance(claimed, ForeignFill):
                    await self._fill(claimed)
                    break
                try:
                    if await self._follow(claimed):
                        break
                finally:
                    await claimed.close()
            else:
                raise FillFailed(f"every process filling {self.digest} died")
            self._state = _State.DONE
        except BaseException as exc:
            self._error = exc
            self._state = _State.FAILED
            if self._writer is not None:
                await self._writer.cancel()
                log.warning("fill of %s failed after %d bytes: %s", self.digest, self._written, _describe(exc))
            elif isinstance(exc, StorageError):
                log.error("cannot cache %s, relaying it uncached: %s", self.digest, exc)
            elif self._tail is not None:
                log.warning("fill of %s in another process failed: %s", self.digest, _describe(exc))
            if not isinstance(exc, Exception):
                raise
        finally:
            self._started.set()
            self._finished.set()
            self._notify()
            self._on_finish(self)

    async def _fill(self, writer: BlobWriter) -> None:
        """Download into ``writer`` (from where it is: a fill taken over from a process that died) and commit."""
        if writer.written:
            log.warning("taking over the fill of %s at %d bytes (its process stopped)", self.digest, writer.written)
        try:
            download = await self._download(writer.written)
            await writer.started(download.size)
        except BaseException:
            await writer.cancel()
            raise
        self._writer = writer
        self._tail = writer.open_reader
        self._size = download.size
        self._written = writer.written
        self._state = _State.DOWNLOADING
        self._started.set()
        await self._copy(download, writer)
        self._state = _State.COMMITTING
        await writer.commit(self._size)
        log.info("cached blob %s (%d bytes)", self.digest, self._written)

    async def _follow(self, fill: ForeignFill) -> bool:
        """Follow a fill that another process runs until it ends: True once committed, False once its filler is gone
        (claim again). Raises FillFailed if it failed (its bytes were wrong, or its upstream gave up)."""
        interval = _POLL_MIN
        while True:
            progress = await fill.progress()
            if progress.started and not self._started.is_set():
                self._size = progress.size
                self._tail = fill.open_reader
                self._state = _State.DOWNLOADING
                self._started.set()
            if progress.written > self._written:
                self._wrote(progress.written - self._written)
                interval = _POLL_MIN
            if progress.state is FillState.COMMITTED:
                if self._size is None:
                    self._size = progress.size
                return True
            if progress.state is FillState.FAILED:
                raise FillFailed(f"the fill of {self.digest} in another process failed")
            if progress.state is FillState.ABANDONED:
                return False
            await asyncio.sleep(interval)
            interval = min(interval * 2, _POLL_MAX)

    async def _copy(self, download: BlobDownload, writer: BlobWriter) -> None:
        """Download into the writer, reading the next chunks while the previous ones are being written.

        Writing (and hashing) runs in a worker thread, fed by a task of its own (:class:`_Spool`) so that reading
        never waits for a write unless _MAX_PENDING bytes are queued. A write takes what is queued up to 2 MiB
        (:func:`_next_write`; the network backend hands over pieces of up to 1 MiB): joining all that was pending
        gave the writer 8 MiB at a time, too much for the CPU's caches, and readers got the blob in 8 MiB steps. A
        broken upstream connection is resumed from the bytes received so far.
        """
        spool = _Spool(writer, self._wrote)
        received = writer.written
        resumes = 0
        try:
            while True:
                try:
                    async for chunk in download.chunks():
                        received += len(chunk)
                        await spool.put(chunk)
                    break
                except DownloadInterrupted as exc:
                    await download.aclose()
                    if resumes >= _RESUME_ATTEMPTS or (self._size is not None and received >= self._size):
                        raise
                    resumes += 1
                    log.warning("upstream broke off %s at %d bytes (%s); resuming", self.digest, received, exc)
                    await asyncio.sleep(_RESUME_BACKOFF * 2 ** (resumes - 1))
                    download = await self._download(received)
                    if download.size != self._size:
                        await download.aclose()
                        raise FillFailed(f"upstream size of {self.digest} changed on resume") from None
            await spool.finish()
            self._notify()  # all written: the readers' last batch is as big as it gets, no need to wait for more
        finally:
            await download.aclose()
            await spool.abandon()

    def _wrote(self, n: int) -> None:
        self._written += n
        if self._waiters:
            # By size: a write wakes only the readers it gave enough to send.
            readable = self._readable()
            waiting = []
            for threshold, waiter in self._waiters:
                if threshold <= readable:
                    _wake(waiter)
                else:
                    waiting.append((threshold, waiter))
            self._waiters = waiting

    def _notify(self) -> None:
        """Wake every reader: the fill changed state."""
        waiters, self._waiters = self._waiters, []
        for _, waiter in waiters:
            _wake(waiter)

    async def _wait_readable(self, threshold: int, deadline: float | None) -> None:
        """Wait until bytes up to ``threshold`` are readable, the fill changes state, or ``deadline`` (loop time)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        entry = (threshold, waiter)
        self._waiters.append(entry)
        timer = loop.call_at(deadline, _wake, waiter) if deadline is not None else None
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if entry in self._waiters:
                self._waiters.remove(entry)

    async def for_range(self, start: int, end: int) -> tuple[BlobSource, ByteRange | None]:
        if self._size is None or end >= self._size:
            # Through the last byte: streamed as it arrives, the last byte held back until the blob is verified.
            return self, (start, end)
        if await self.wait():
            return self, (start, end)  # streamed from the committed, verified file
        if isinstance(self._error, StorageError):
            # The cache failed; a relay verifies only what it sends to the end, so this client gets the whole blob.
            return RelayedBlob(await self._download(0), self.digest), None
        if isinstance(self._error, RegistryError):
            raise self._error
        raise RegistryError.bad_gateway(f"download of {self.digest} failed: {_describe(self._error)}")

    async def stream(
        self, start: int = 0, end: int | None = None, zero_copy: bool = False
    ) -> AsyncGenerator[Chunk, None]:
        """Bytes ``start`` to ``end`` (exclusive; None = to the end), as they arrive.

        A range that ends before the blob does waits for the commit (see :meth:`for_range`, which callers use to
        answer such ranges with a proper error instead of a cut response when the fill fails).
        """
        if end is not None and self._size is not None and end < self._size and not await self.wait():
            raise FillFailed(f"fill of {self.digest} failed: {_describe(self._error)}")
        reader = await self._open_reader()
        if reader is None:
            # The cache failed before this client read anything: it gets the blob from the upstream.
            async for data in self._relay(None, start):
                yield data
            return
        pos = start
        loop = asyncio.get_running_loop()
        batch_deadline: float | None = None
        try:
            while end is None or pos < end:
                limit = self._readable()
                if end is not None:
                    limit = min(limit, end)
                batch = pos + _BATCH if end is None else min(pos + _BATCH, end)
                if pos < limit < batch and self._state is _State.DOWNLOADING and self._written != self._size:
                    # Only a little is new: wait for a batch, so that N readers tailing one fill do not each make
                    # a send for every chunk the fill writes; but no longer than _BATCH_WAIT (a slow upstream).
                    if batch_deadline is None:
                        batch_deadline = loop.time() + _BATCH_WAIT
                    if loop.time() < batch_deadline:
                        await self._wait_readable(batch, batch_deadline)
                        continue
                if pos < limit:
                    batch_deadline = None
                    chunk = await next_chunk(reader, pos, limit - pos, zero_copy, str(self.digest))
                    pos += chunk_size(chunk)
                    yield chunk
                elif self._state is _State.DONE:
                    return
                elif self._state is _State.FAILED:
                    if not isinstance(self._error, StorageError):
                        raise FillFailed(f"fill of {self.digest} failed: {_describe(self._error)}")
                    # The cache failed, not the upstream: this client goes on straight from the upstream.
                    async for data in self._relay(reader, pos):
                        yield data
                    return
                else:
                    batch_deadline = None
                    await self._wait_readable(pos + 1, None)
        finally:
            await reader.close()

    async def _relay(self, reader: BlobReader | None, pos: int) -> AsyncGenerator[bytes, None]:
        """The rest of the blob from ``pos``, straight from the upstream, verified as the fill would have been.

        What the partial file holds of bytes ``0..pos`` (still readable through the open reader) is hashed from
        it, the rest is downloaded and hashed too, and the last chunk is sent only once the blob matched.
        """
        hasher = self.digest.hasher()
        have = 0
        while reader is not None and have < pos:
            data = await reader.read(have, min(CHUNK_SIZE, pos - have))
            if not data:
                break  # the client asked from beyond what the fill had written: the upstream sends the rest
            hasher.update(data)
            have += len(data)
        try:
            download = await self._download(have)
        except RegistryError as exc:
            raise FillFailed(f"cannot relay {self.digest}: {exc.message}") from None
        async for data in relay(download, self.digest, hasher, pos):
            yield data

    def _readable(self) -> int:
        if self._state is _State.DONE or self._size is None:
            return self._written
        # Hold back the final byte until the digest is verified: a client must never see a whole body
        # that turns out to be wrong.
        return min(self._written, self._size - 1)

    async def _open_reader(self) -> BlobReader | None:
        """A reader on the partial or the committed file; None if the cache failed and the client must relay."""
        await self.ready()
        if self._state in (_State.DOWNLOADING, _State.FAILED) and self._tail is not None:
            # The partial file exists until the commit renames it (or a failure removes it), and neither
            # can happen during this call in this process, which does not await; an open file stays readable after
            # both. Another process's fill may have just ended: then it is gone, or the backend cannot show it.
            try:
                reader = self._tail()
            except (OSError, StorageError):
                reader = None
            if reader is not None:
                return reader
        if not await self.wait():
            if isinstance(self._error, StorageError):
                return None
            raise FillFailed(f"fill of {self.digest} failed: {_describe(self._error)}")
        opened = await self._store.open(self.digest)
        if opened is None:
            raise FillFailed(f"{self.digest} vanished from the cache right after it was filled")
        return opened[0]


class _Spool:
    """Chunks on their way to the writer: queued by the download, written in order by a task of its own."""

    def __init__(self, writer: BlobWriter, wrote: Callable[[int], None]) -> None:
        self._writer = writer
        self._wrote = wrote
        self._chunks: deque[bytes | memoryview] = deque()
        self._queued = 0
        self._ending = False
        self._changed = asyncio.Event()  # a chunk was queued or written, or the end was announced
        self._task: asyncio.Task[None] | None = None

    async def put(self, chunk: bytes | memoryview) -> None:
        """Queue ``chunk``; waits while _MAX_PENDING bytes are queued, raises what made writing fail."""
        self._chunks.append(chunk)
        self._queued += len(chunk)
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        self._changed.set()
        while self._queued >= _MAX_PENDING and not self._task.done():
            self._changed.clear()
            await self._changed.wait()
        if self._task.done():
            self._task.result()  # the writer failed: raise that

    async def finish(self) -> None:
        """Wait until every queued chunk is written."""
        self._ending = True
        self._changed.set()
        if self._task is not None:
            await self._task

    async def abandon(self) -> None:
        """Stop writing (after a failure); waits for a write already in its thread, so that the writer is never
        cancelled under it."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _drain(self) -> None:
        try:
            while self._chunks or not self._ending:
                if not self._chunks:
                    self._changed.clear()
                    await self._changed.wait()
                    continue
                data = _next_write(self._chunks)
                await self._writer.write(data)
                self._queued -= len(data)
                self._wrote(len(data))
                self._changed.set()
        finally:
            self._changed.set()  # a download waiting for room learns that writing ended


def _next_write(chunks: deque[bytes | memoryview]) -> bytes | memoryview:
    """The next write: the chunks queued, up to _WRITE_SIZE bytes (at least one chunk).

    Each write is a hop to a worker thread, and waking it cost more here (~0.3 ms) than copying a 1 MiB chunk; but
    batches past the CPU's L2 cache (2 MiB) made both the write and the hash read them from memory again.
    """
    first = chunks.popleft()
    if not chunks or len(first) + len(chunks[0]) > _WRITE_SIZE:
        return first
    parts = [first]
    size = len(first)
    while chunks and size + len(chunks[0]) <= _WRITE_SIZE:
        chunk = chunks.popleft()
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, RegistryError):
        return exc.message
    return str(exc) or type(exc).__name__
