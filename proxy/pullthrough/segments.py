"""What blob sources yield: bytes, or a range of an open file that the server may send without copying."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.pullthrough.errors import FillFailed
from storage.interfaces import BlobReader

__all__ = ["CHUNK_SIZE", "SEGMENT_SIZE", "Chunk", "FileSegment", "chunk_size", "next_chunk"]

# Bytes read into memory at a time.
CHUNK_SIZE = 1024 * 1024
# Bytes handed to the kernel in one zero-copy send: big enough to be cheap, small enough that a response
# notices a gone client or a cut soon.
SEGMENT_SIZE = 8 * 1024 * 1024


@dataclass(frozen=True)
class FileSegment:
    """``count`` bytes at ``offset`` of an open file descriptor, valid until the source's next step."""

    fd: int
    offset: int
    count: int

    def fileno(self) -> int:
        return self.fd


Chunk = bytes | FileSegment


def chunk_size(chunk: Chunk) -> int:
    return chunk.count if isinstance(chunk, FileSegment) else len(chunk)


async def next_chunk(reader: BlobReader, pos: int, available: int, zero_copy: bool, what: str) -> Chunk:
    """The next piece of ``available`` bytes at ``pos``: a file segment when allowed and possible, else bytes."""
    fd = reader.fileno() if zero_copy else None
    if fd is not None:
        return FileSegment(fd, pos, min(SEGMENT_SIZE, available))
    data = await reader.read(pos, min(CHUNK_SIZE, available))
    if not data:
        # The file is shorter than it should be: never pad, cut the response instead.
        raise FillFailed(f"cached data of {what} ended early")
    return data
