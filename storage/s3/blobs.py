"""Content-addressed blobs in an S3 bucket (see :mod:`storage.s3.layout` for the keys).

A fill writes each chunk to a local scratch file (which the clients of this process read while it grows) and
hashes it; every full part is uploaded as it comes, one part in flight while the next is written. The last part
is sent and the upload completed only after the digest and size were verified, so nothing unverified is ever
visible under a blob's key; a blob smaller than one part is a single PutObject, also after verification. On
failure the upload is aborted and the lease released.

Read leases are kept in this process only: eviction spares a blob that a reader here holds open, but cannot
see readers in other replicas (a reader whose blob is deleted under it fails, and its client retries).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from storage.digest import Digest, Hasher
from storage.files import FileReader, sweep_partials
from storage.interfaces import (
    BlobReader,
    DigestMismatch,
    FillProgress,
    FillState,
    SizeMismatch,
    StorageError,
    StoredBlob,
)
from storage.paths import PARTIAL_SUFFIX
from storage.s3.layout import BLOBS, SCRATCH, blob_digest, blob_key, fills_prefix, lease_key
from storage.s3.leases import Lease, read_lease
from storage.s3.objects import ObjectClient, ObjectStream, PreconditionFailed, S3Settings, UploadedPart

__all__ = ["S3BlobReader", "S3BlobStore", "S3BlobWriter", "S3ForeignFill"]

log = logging.getLogger(__name__)

# Multipart part size: S3 wants at least 5 MiB for every part but the last; 8 MiB is what aws-cli uses.
PART_SIZE = 8 * 1024 * 1024
# How often a fill's holder renews its lease; followers call it abandoned after 3 missed beats.
HEARTBEAT = 2.0
# Claiming races another replica that releases or takes over the lease meanwhile: this many rounds at most.
_CLAIM_ROUNDS = 3


class S3BlobStore:
    def __init__(
        self, client: ObjectClient, root: Path, *, heartbeat: float = HEARTBEAT, part_size: int = PART_SIZE
    ) -> None:
        self._client = client
        self._prefix = client.settings.prefix
        self._scratch = root / SCRATCH
        self._heartbeat = heartbeat
        self._part_size = part_size
        self._reading: Counter[Digest] = Counter()

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, settings: S3Settings, root: Path, *, heartbeat: float = HEARTBEAT, part_size: int = PART_SIZE
    ) -> AsyncIterator[S3BlobStore]:
        """The store on ``settings``' bucket (created if missing), local scratch files under ``root``."""
        async with ObjectClient(settings) as client:
            await client.ensure_bucket()
            yield cls(client, root, heartbeat=heartbeat, part_size=part_size)

    def _key(self, digest: Digest) -> str:
        return blob_key(self._prefix, digest)

    async def stat(self, digest: Digest) -> int | None:
        info = await self._client.head(self._key(digest))
        return None if info is None else info.size

    async def open(self, digest: Digest) -> tuple[BlobReader, int] | None:
        # One GET, no HEAD first: its answer says the size, and its body is what the first reads take.
        stream = await self._client.open(self._key(digest))
        if stream is None:
            return None
        self._reading[digest] += 1
        reader = S3BlobReader(self._client, self._key(digest), stream.size, lambda: self._closed(digest), stream)
        return reader, stream.size

    def _closed(self, digest: Digest) -> None:
        self._reading[digest] -= 1
        if self._reading[digest] <= 0:
            del self._reading[digest]

    async def get(self, digest: Digest, max_size: int) -> bytes | None:
        stream = await self._client.open(self._key(digest))
        if stream is None:
            return None
        try:
            if stream.size > max_size:
                return None
            return await stream.read(stream.size)
        finally:
            await stream.close()

    async def put(self, digest: Digest, data: bytes) -> None:
        # Small content (manifests): verified in memory, then one conditional PutObject.
        if len(data) > 65536:
            actual = await asyncio.to_thread(Digest.of, data, digest.algorithm)  # off the event loop
        else:
            actual = Digest.of(data, digest.algorithm)
        if actual != digest:
            raise DigestMismatch(digest, actual)
        try:
            await self._client.put(self._key(digest), data, if_none_match=True)
        except PreconditionFailed:
            pass  # content-addressed: already there with these bytes

    async def create(self, digest: Digest) -> S3BlobWriter:
        return await self._writer(digest, None)

    async def claim(self, digest: Digest, key: str) -> S3BlobWriter | S3ForeignFill:
        lease_name = lease_key(self._prefix, digest, key)
        for _ in range(_CLAIM_ROUNDS):
            if await self._client.head(self._key(digest)) is not None:
                break  # committed meanwhile: the foreign fill says so
            lease = Lease(self._client, lease_name, self._heartbeat)
            if await lease.create():
                return await self._writer(digest, lease)
            view = await read_lease(self._client, lease_name)
            if view is None:
                continue  # released between our create and our read: try again
            if not view.is_stale(self._heartbeat):
                break
            if await lease.take_over(view.etag):
                log.info("took over the abandoned fill of %s (lease %s, %.0f s old)", digest, lease_name, view.age)
                return await self._writer(digest, lease)
            break  # someone else took it over first, or its holder beat meanwhile
        return S3ForeignFill(self._client, self._key(digest), lease_name, self._heartbeat)

    async def _writer(self, digest: Digest, lease: Lease | None) -> S3BlobWriter:
        scratch = self._scratch / f"{digest.algorithm}-{digest.hex}.{secrets.token_hex(8)}{PARTIAL_SUFFIX}"
        try:
            await asyncio.to_thread(self._scratch.mkdir, parents=True, exist_ok=True)
            fd = os.open(scratch, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if lease is not None:
                await lease.release()
            raise StorageError(f"cannot create a scratch file for {digest}: {exc.strerror}") from exc
        return S3BlobWriter(self._client, self._key(digest), digest, scratch, fd, lease, self._part_size)

    async def sweep(self, spare_younger_than: float = 0.0) -> int:
        """Scratch files, multipart uploads and leases left by a crash (of this or any replica on the bucket)."""
        removed = await asyncio.to_thread(sweep_partials, self._scratch, spare_younger_than)
        cutoff = time.time() - spare_younger_than
        for upload in await self._client.list_uploads(self._prefix + BLOBS):
            if upload.initiated.timestamp() < cutoff:
                await self._client.abort_upload(upload.key, upload.upload_id)
                removed += 1
        # A lease is rewritten every heartbeat while its fill runs: one untouched for 3 beats has no holder left.
        lease_cutoff = min(cutoff, time.time() - 3 * self._heartbeat - 1)
        async for key, _size, modified in self._client.list_objects(fills_prefix(self._prefix)):
            if modified.timestamp() < lease_cutoff:
                await self._client.delete(key)
                removed += 1
        return removed

    async def delete_if_unused(self, digests: Sequence[Digest]) -> set[Digest]:
        gone: set[Digest] = set()
        for digest in digests:
            if digest in self._reading:
                continue  # a reader in this process holds it
            try:
                await self._client.delete(self._key(digest))
            except StorageError:
                continue  # it stays, and stays counted
            gone.add(digest)
        return gone

    async def list_blobs(self) -> list[StoredBlob]:
        found: list[StoredBlob] = []
        async for key, size, modified in self._client.list_objects(self._prefix + BLOBS):
            digest = blob_digest(self._prefix, key)
            if digest is not None:
                found.append(StoredBlob(digest, size, modified.timestamp()))
        return found


class S3BlobReader:
    """A committed blob, read through one streaming GET while reads are sequential (a new ranged GET otherwise)."""

    def __init__(
        self,
        client: ObjectClient,
        key: str,
        size: int,
        on_close: Callable[[], None],
        stream: ObjectStream | None = None,
    ) -> None:
        self._client = client
        self._key = key
        self._size = size
        self._on_close: Callable[[], None] | None = on_close
        self._stream = stream  # positioned at 0
        self._position = 0

    def fileno(self) -> int | None:
        return None

    async def read(self, offset: int, length: int) -> bytes:
        if self._on_close is None:
            raise ValueError("read from a closed reader")
        if offset >= self._size or length <= 0:
            return b""
        for attempt in range(2):
            fresh = self._stream is None or self._position != offset
            if fresh:
                await self._drop_stream()
                self._stream = await self._client.open(self._key, offset)
                if self._stream is None:
                    raise StorageError(f"{self._key} was removed from the bucket while being read")
                self._position = offset
            assert self._stream is not None
            expected = min(length, self._size - offset)
            try:
                data = await self._stream.read(expected)
                if len(data) < expected:
                    raise StorageError(f"{self._key}: the bucket's answer ended {expected - len(data)} bytes early")
            except StorageError:
                # A stream kept open while its client stalled may have been closed by the server: once more, anew.
                await self._drop_stream()
                if fresh or attempt:
                    raise
                continue
            self._position += len(data)
            return data
        raise AssertionError("unreachable")

    async def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close()

    async def close(self) -> None:
        await self._drop_stream()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


class S3BlobWriter:
    """Writes a scratch file and a multipart upload of it; completes the upload only once verified."""

    def __init__(
        self,
        client: ObjectClient,
        key: str,
        digest: Digest,
        scratch: Path,
        fd: int,
        lease: Lease | None,
        part_size: int,
    ) -> None:
        self._client = client
        self._key = key
        self._digest = digest
        self._scratch = scratch
        self._fd = fd
        self._lease = lease
        self._part_size = part_size
        self._hasher = Hasher(digest.algorithm)
        self._written = 0
        self._uploaded = 0  # bytes handed to part uploads so far (whole parts)
        self._upload_id: str | None = None
        self._parts: list[UploadedPart] = []
        self._sending: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def digest(self) -> Digest:
        return self._digest

    @property
    def written(self) -> int:
        return self._written

    async def started(self, size: int | None) -> None:
        if self._lease is not None:
            await self._lease.started(size)

    async def write(self, data: bytes | memoryview) -> None:
        if self._closed:
            raise StorageError("write to a closed blob writer")
        job = asyncio.get_running_loop().run_in_executor(None, self._write_and_hash, data, self._written)
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            # A thread cannot be stopped: let it finish before a cancel() closes the file under it.
            await asyncio.wait([job])
            if not job.cancelled():
                job.exception()
            raise
        except OSError as exc:
            raise StorageError(f"cannot write {self._digest} to scratch space: {exc.strerror}") from exc
        self._written += len(data)
        while self._written - self._uploaded >= self._part_size:
            await self._send_part(self._part_size)

    def _write_and_hash(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n
        self._hasher.update(data)

    async def _send_part(self, length: int) -> None:
        """Start uploading the next ``length`` bytes as a part, once the part before it is done."""
        await self._wait_sent()
        if self._upload_id is None:
            self._upload_id = await self._client.start_upload(self._key)
        data = await asyncio.to_thread(os.pread, self._fd, length, self._uploaded)
        number = len(self._parts) + 1  # the part before this one is in self._parts by now
        self._uploaded += length
        upload_id = self._upload_id

        async def send() -> None:
            self._parts.append(await self._client.upload_part(self._key, upload_id, number, data))

        self._sending = asyncio.create_task(send(), name=f"upload part {number} of {self._digest}")

    async def _wait_sent(self) -> None:
        sending, self._sending = self._sending, None
        if sending is not None:
            await sending

    def open_reader(self) -> BlobReader:
        if self._closed:
            raise StorageError("the blob writer is closed")
        return FileReader.open(self._scratch)

    async def commit(self, expected_size: int | None = None) -> None:
        if self._closed:
            raise StorageError("commit of a closed blob writer")
        try:
            await self._wait_sent()
        except BaseException:
            await self.cancel()
            raise
        if expected_size is not None and self._written != expected_size:
            await self.cancel()
            raise SizeMismatch(self._digest, expected_size, self._written)
        actual = self._hasher.digest()
        if actual != self._digest:
            await self.cancel()
            raise DigestMismatch(self._digest, actual)
        # Verified: only now does anything become visible under the blob's key.
        try:
            if self._upload_id is None:
                data = await asyncio.to_thread(os.pread, self._fd, self._written, 0)
                try:
                    await self._client.put(self._key, data, if_none_match=True)
                except PreconditionFailed:
                    pass  # content-addressed: another fill committed the same bytes first
            else:
                if self._written > self._uploaded:
                    await self._send_part(self._written - self._uploaded)
                    await self._wait_sent()
                self._parts.sort(key=lambda part: part.number)
                try:
                    await self._client.complete_upload(self._key, self._upload_id, self._parts, if_none_match=True)
                except PreconditionFailed:
                    await self._client.abort_upload(self._key, self._upload_id)
                self._upload_id = None
        except BaseException:
            await self.cancel()
            raise
        await self._finish()

    async def cancel(self) -> None:
        sending, self._sending = self._sending, None
        if sending is not None:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            try:
                await self._client.abort_upload(self._key, upload_id)
            except StorageError as exc:
                log.warning("cannot abort the upload of %s (sweep will): %s", self._digest, exc)
        await self._finish()

    async def _finish(self) -> None:
        if self._lease is not None:
            lease, self._lease = self._lease, None
            await lease.release()
        if not self._closed:
            self._closed = True
            os.close(self._fd)
            try:
                # Readers of this process keep their open descriptor: an unlinked file stays readable.
                os.unlink(self._scratch)
            except FileNotFoundError:
                pass


class S3ForeignFill:
    """A fill another replica (or another process on this bucket) holds the lease of, seen through the bucket.

    Followers cannot read it while it grows (the parts are invisible until completed): they wait for COMMITTED
    and open the blob then, or claim again once the lease is ABANDONED (stale, or gone with no blob).
    """

    def __init__(self, client: ObjectClient, key: str, lease: str, heartbeat: float) -> None:
        self._client = client
        self._key = key
        self._lease = lease
        self._heartbeat = heartbeat

    async def progress(self) -> FillProgress:
        committed = await self._client.head(self._key)
        if committed is not None:
            return FillProgress(FillState.COMMITTED, True, committed.size, committed.size)
        view = await read_lease(self._client, self._lease)
        if view is None:
            # Released: its holder deletes the lease after completing the upload, so look again.
            committed = await self._client.head(self._key)
            if committed is not None:
                return FillProgress(FillState.COMMITTED, True, committed.size, committed.size)
            return FillProgress(FillState.ABANDONED, False, None, 0)
        if view.is_stale(self._heartbeat):
            return FillProgress(FillState.ABANDONED, view.started, view.size, 0)
        return FillProgress(FillState.RUNNING, view.started, view.size, 0)

    def open_reader(self) -> BlobReader | None:
        return None

    async def close(self) -> None:
        pass
