"""What one upstream connection received and nobody read yet: the protocol under :mod:`proxy.upstream.network`.

A :class:`asyncio.BufferedProtocol`, so that the event loop (uvloop or asyncio, plain or through TLS) receives into
memory of ours. It has two modes:

- **messages** (the default): each receive lands in a scratch buffer and is kept as ``bytes``, as the loop itself would
  hand them to a plain protocol; httpcore reads those (:meth:`Receiver.take`).
- **body** (:meth:`Receiver.start_body`, one way): the rest of a large response body is received straight into
  *segments*, fresh buffers that are never reused, and handed out as read-only views of them
  (:meth:`Receiver.take_body`). No byte is copied between the kernel and the cache writer, and a view stays valid for
  as long as whoever holds it needs it.

Memory stays bounded in both: reading stops while :data:`HIGH_WATER` bytes wait unread.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

__all__ = ["HIGH_WATER", "LOW_WATER", "READ_CHUNK", "SEGMENT", "Receiver"]

# The most one read in message mode returns. 256 KiB to 1 MiB read a 200 MiB body alike (~0.12 s here); 2 and 4 MiB
# were slower (~0.3 s: every piece is copied several times in h11, and larger pieces fall out of the CPU's caches).
READ_CHUNK = 1024 * 1024
# Unread bytes at which a connection stops reading from its socket, and below which it starts again.
HIGH_WATER = 2 * READ_CHUNK
LOW_WATER = READ_CHUNK
# One receive in message mode, at most: the loop's own buffer is this size too (uvloop's and asyncio's).
_SCRATCH = 256 * 1024
# A body segment: what one view handed out holds at most. The first is _FIRST_SEGMENT; each one filled doubles the
# next, up to SEGMENT: a fast body is soon received in 1 MiB pieces, and an upstream that trickles holds a few KiB of
# memory, not a megabyte per connection.
SEGMENT = 1024 * 1024
_FIRST_SEGMENT = 64 * 1024


class Receiver(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        # Received and unread: bytes in message mode; in body mode also views of full segments not yet taken.
        self._chunks: deque[bytes | memoryview] = deque()
        self.size = 0  # unread bytes, in _chunks and in the current segment
        self.eof = False
        self.error: BaseException | None = None
        self.lost = False
        self.closed = False
        self._scratch = memoryview(bytearray(_SCRATCH))
        self._body = False
        self._segment = memoryview(b"")  # the segment being received into (body mode)
        self._segment_size = _FIRST_SEGMENT  # of the next one
        self._filled = 0  # its bytes received
        self._taken = 0  # its bytes handed out
        self._paused = False
        self._want = 1  # unread bytes that wake a waiting reader
        self._waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._drained: asyncio.Future[None] | None = None

    # The transport's side.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        if not self._body:
            return self._scratch
        if self._filled == len(self._segment):
            if self._taken < self._filled:
                self._chunks.append(self._segment[self._taken : self._filled].toreadonly())
            self._segment = memoryview(bytearray(self._segment_size))
            self._segment_size = min(2 * self._segment_size, SEGMENT)
            self._filled = self._taken = 0
        return self._segment[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        if self.closed:
            return
        if self._body:
            self._filled += nbytes
        else:
            self._chunks.append(bytes(self._scratch[:nbytes]))
        self.size += nbytes
        if self.size >= HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        if self.size >= self._want:
            self._wake()

    def eof_received(self) -> bool | None:
        self.eof = True
        self._wake()
        return None  # close the transport: an HTTP/1.1 client has nothing to send once the server is done

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # The reader's side.

    @property
    def ended(self) -> bool:
        """Nothing more will be received."""
        return self.eof or self.lost

    def take(self, limit: int) -> bytes:
        """Up to ``limit`` bytes of what was received (message mode), at least one if anything was."""
        parts = []
        taken = 0
        while self._chunks and taken + len(self._chunks[0]) <= limit:
            chunk = self._chunks.popleft()
            parts.append(chunk)
            taken += len(chunk)
        if not parts and self._chunks:
            chunk = self._chunks.popleft()
            parts.append(chunk[:limit])
            self._chunks.appendleft(chunk[limit:])
            taken = limit
        self._taken_out(taken)
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)

    def unread(self, data: bytes) -> None:
        """Put back ``data``, taken last: the next take starts with it."""
        if data:
            self._chunks.appendleft(data)
            self.size += len(data)

    def start_body(self) -> None:
        """From now on, receive into segments (see the module's docstring); what is unread stays first in line."""
        self._body = True

    def take_body(self, limit: int) -> bytes | memoryview:
        """Up to ``limit`` bytes of what was received (body mode), at least one if anything was: a view of one
        segment, or bytes received before body mode began. Never a copy."""
        if self._chunks:
            chunk = self._chunks.popleft()
            if len(chunk) > limit:
                self._chunks.appendleft(chunk[limit:])
                chunk = chunk[:limit]
        else:
            end = min(self._filled, self._taken + limit)
            chunk = self._segment[self._taken : end].toreadonly()
            self._taken = end
        self._taken_out(len(chunk))
        return chunk

    def _taken_out(self, n: int) -> None:
        self.size -= n
        if self._paused and self.size <= LOW_WATER and self.transport is not None and not self.transport.is_closing():
            self._paused = False
            self.transport.resume_reading()

    async def received(self, want: int = 1) -> None:
        """Wait until ``want`` bytes are unread (or at most as many as reading is paused at), or the connection
        ended."""
        self._want = max(1, min(want, HIGH_WATER))
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
            self._want = 1

    async def drained(self) -> None:
        """Wait until the transport takes writes again (or the connection ended)."""
        if not self._writing_paused or self.lost:
            return
        self._drained = asyncio.get_running_loop().create_future()
        try:
            await self._drained
        finally:
            self._drained = None
