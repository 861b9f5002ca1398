"""Storing small content (a manifest, a referrers index) whole, through any backend's blob writer."""

from __future__ import annotations

from storage.interfaces import BlobWriter

__all__ = ["write_whole"]


async def write_whole(writer: BlobWriter, data: bytes) -> None:
    """Write ``data`` as the whole blob and commit it (verified like any other write); nothing is left on failure."""
    try:
        await writer.write(data)
    except BaseException:
        await writer.cancel()
        raise
    await writer.commit(len(data))
