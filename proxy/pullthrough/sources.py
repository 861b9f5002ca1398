"""What a blob response reads from: the cache, a fill in progress, or a relay from the upstream."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from proxy.pullthrough.segments import Chunk

__all__ = ["BlobSource", "ByteRange"]

ByteRange = tuple[int, int]
"""``(start, end)`` with ``end`` exclusive."""


class BlobSource(Protocol):
    @property
    def size(self) -> int | None: ...

    async def for_range(self, start: int, end: int) -> tuple[BlobSource, ByteRange | None]:
        """The source and range that answer a request for bytes ``start`` to ``end``; None for the whole blob.

        A client must never receive bytes that were not verified in a body that looks complete. A range that ends
        before the blob's end has no final byte to hold back, so a source that is not verified yet waits until it
        is, or answers with the whole blob (which the spec allows); errors it meets are raised as RegistryError,
        before anything is sent.
        """
        ...

    def stream(self, start: int = 0, end: int | None = None, zero_copy: bool = False) -> AsyncGenerator[Chunk, None]:
        """Bytes ``start`` to ``end`` (exclusive); with ``zero_copy``, file segments where the source has a file."""
        ...
