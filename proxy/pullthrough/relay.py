"""Relaying a blob straight from the upstream to one client, for when the cache cannot take it.

Used when the cache is unwritable or full: the client still gets its blob. When the relay covers the
whole blob it is hashed on the way, and the last chunk is only sent once the digest matched, the same
promise a fill makes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from proxy.pullthrough.errors import FillFailed
from proxy.upstream.client import BlobDownload, DownloadInterrupted
from storage.digest import Digest, Hasher

__all__ = ["relay"]


async def relay(
    download: BlobDownload,
    digest: Digest,
    pos: int,
    end: int | None,
    hasher: Hasher | None,
) -> AsyncGenerator[bytes, None]:
    """Bytes ``pos``..``end`` of the blob from an open download that starts at ``pos``.

    ``hasher``, if given, has already been fed bytes ``0..pos``; the blob is then verified at its end.
    """
    held = b""
    try:
        async for chunk in download.chunks():
            if end is not None:
                chunk = chunk[: end - pos]
            if not chunk:
                break
            pos += len(chunk)
            if hasher is None:
                yield chunk
            else:
                hasher.update(chunk)
                if held:
                    yield held
                held = chunk
        if hasher is not None:
            total = download.size
            if (total is not None and pos != total) or hasher.digest() != digest:
                raise FillFailed(f"relayed {digest} did not match its digest or size")
            if held:
                yield held
    except DownloadInterrupted as exc:
        raise FillFailed(f"upstream connection broke while relaying {digest}: {exc}") from None
    finally:
        await download.aclose()
