"""Relaying a blob straight from the upstream to one client, for when the cache cannot take it.

Used when the cache is unwritable or full: the client still gets its blob, verified as a fill is. The whole blob
is hashed on the way (the bytes before the client's range too), and the last chunk is only sent once the digest
matched, so a body that looks complete is always the right one.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable

from proxy.pullthrough.errors import FillFailed
from proxy.pullthrough.segments import Chunk
from proxy.pullthrough.sources import BlobSource, ByteRange
from proxy.upstream.client import BlobDownload, DownloadInterrupted
from storage.digest import Digest, Hasher

__all__ = ["Download", "RelayedBlob", "relay"]

Download = Callable[[int], Awaitable[BlobDownload]]
"""Opens the blob upstream at a byte offset."""


class RelayedBlob:
    """A blob the cache could not take, streamed from the upstream to this one client."""

    def __init__(self, download: BlobDownload, digest: Digest) -> None:
        self._download = download  # from byte 0: every byte is hashed
        self._digest = digest

    @property
    def size(self) -> int | None:
        return self._download.size

    async def for_range(self, start: int, end: int) -> tuple[BlobSource, ByteRange | None]:
        if self.size is not None and end < self.size:
            # Nothing of it could be verified before it is sent: the whole blob instead (200).
            return self, None
        return self, (start, end)

    async def stream(
        self, start: int = 0, end: int | None = None, zero_copy: bool = False
    ) -> AsyncGenerator[Chunk, None]:
        if end is not None and self.size is not None and end < self.size:
            raise FillFailed(f"a relay of {self._digest} cannot verify a range that ends before the blob does")
        async for data in relay(self._download, self._digest, self._digest.hasher(), start):
            yield data


async def relay(download: BlobDownload, digest: Digest, hasher: Hasher, send_from: int) -> AsyncGenerator[bytes, None]:
    """The blob from byte ``send_from`` to its end, read from an open download, verified.

    ``hasher`` has already been fed the bytes before ``download.offset``; the downloaded bytes before ``send_from``
    are hashed but not sent. The last chunk is sent only once the whole blob matched its digest (and the size the
    upstream announced).
    """
    pos = download.offset
    total = download.size
    held: bytes | memoryview = b""
    try:
        async for chunk in download.chunks():
            if not chunk:
                continue
            first = pos
            pos += len(chunk)
            if total is not None and pos > total:
                raise FillFailed(f"upstream sent more of {digest} than the {total} bytes it announced")
            hasher.update(chunk)
            if pos <= send_from:
                continue
            if held:
                yield bytes(held)
            held = chunk[max(0, send_from - first) :]
        if (total is not None and pos != total) or hasher.digest() != digest:
            raise FillFailed(f"relayed {digest} did not match its digest or size")
        if held:
            yield bytes(held)  # a relay is the cache's fallback: the copy for the ASGI server, which wants bytes
    except DownloadInterrupted as exc:
        raise FillFailed(f"upstream connection broke while relaying {digest}: {exc}") from None
    finally:
        await download.aclose()
