"""Just enough HTTP/1.1 for the fault-injecting proxy in :mod:`tests.harness.faults`, spoken by hand over asyncio
streams (why by hand: see there).

Message heads are kept as the bytes that came: the start line in its three parts and the header fields in order, so
that a proxy can pass the raw request target on untouched. Bodies are read a piece at a time whatever their framing
(a length, chunked, or the end of the connection), with chunked framing undone. The hop-by-hop rules say which
fields a proxy must not pass on. Every step is bounded: IO_TIMEOUT per read or write, HEAD_LIMIT per head, CHUNK
per body piece, MAX_BODY_READS per body.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final, Literal

CHUNK: Final = 64 * 1024
"""The most body bytes read or written in one step; with the stream buffers, what one transfer holds in memory."""
HEAD_LIMIT: Final = 64 * 1024
"""The longest message head (start line and headers) accepted from either side; also each stream's buffer limit."""
IO_TIMEOUT: Final = 60.0
"""Any one read or write on either side; a 200 MiB blob moves in many of them."""
MAX_BODY_READS: Final = 10_000_000
MAX_HEAD_ROUNDS: Final = 10
"""Interim (1xx) responses skipped, and trailer lines read, at most."""

# RFC 9110 7.6.1, plus Proxy-Connection, which some clients still send. Expect is not among them: the faults
# proxy answers it itself (see faults._Connection._exchange).
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# A body is delimited by a length, by chunked framing, or by the end of the connection.
Framing = int | Literal["chunked", "close"]


# -- message heads -----------------------------------------------------------------------------------------------------


class ProtocolError(Exception):
    """A message that is not HTTP/1.1 as this module understands it."""


@dataclass(frozen=True)
class Head:
    """A message head: the start line in its three parts, and the header fields as they came, in order."""

    start: tuple[bytes, bytes, bytes]
    headers: list[tuple[bytes, bytes]]

    def get(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key.lower() == name), None)

    def tokens(self, name: bytes) -> set[bytes]:
        """The comma-separated values of every ``name`` field, lowercased: for Connection, Expect and the like."""
        return {
            token.strip().lower()
            for key, value in self.headers
            if key.lower() == name
            for token in value.split(b",")
            if token.strip()
        }


@dataclass(frozen=True)
class Response:
    head: Head
    reader: asyncio.StreamReader

    @property
    def status(self) -> int:
        return int(self.head.start[1])


async def read_head(reader: asyncio.StreamReader, timeout: float) -> Head | None:
    """The next message head; None at a clean end of stream before one."""
    try:
        async with asyncio.timeout(timeout):
            raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise ProtocolError("the stream ended inside a message head") from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise ProtocolError(f"a message head longer than {HEAD_LIMIT} bytes") from exc
    start_line, *lines = raw[:-4].split(b"\r\n")
    parts = start_line.split(b" ", 2)
    if len(parts) == 2 and parts[0].startswith(b"HTTP/"):
        parts.append(b"")  # a status line without a reason phrase
    if len(parts) != 3:
        raise ProtocolError(f"malformed start line {start_line!r}")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise ProtocolError(f"malformed header line {line!r}")
        headers.append((name, value.strip(b" \t")))
    return Head((parts[0], parts[1], parts[2]), headers)


async def read_response_head(reader: asyncio.StreamReader) -> Head:
    """The target's final response head, after any interim (1xx) ones."""
    for _ in range(MAX_HEAD_ROUNDS):
        head = await read_head(reader, IO_TIMEOUT)
        if head is None:
            raise ConnectionResetError("the target closed the connection without a response")
        if not head.start[0].startswith(b"HTTP/1.") or not head.start[1].isdigit() or len(head.start[1]) != 3:
            raise ProtocolError(f"malformed status line {b' '.join(head.start)!r}")
        if not 100 <= int(head.start[1]) < 200 or head.start[1] == b"101":
            return head
    raise ProtocolError(f"more than {MAX_HEAD_ROUNDS} interim responses")


def encode_head(start_line: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join([start_line, b"\r\n", *(name + b": " + value + b"\r\n" for name, value in headers), b"\r\n"])


def end_to_end(head: Head) -> list[tuple[bytes, bytes]]:
    """The header fields a proxy passes on: not hop-by-hop ones, nor those that Connection names."""
    dropped = HOP_BY_HOP | head.tokens(b"connection")
    return [(name, value) for name, value in head.headers if name.lower() not in dropped]


# -- bodies ------------------------------------------------------------------------------------------------------------


def content_length(head: Head) -> int | None:
    values = {value.strip() for key, value in head.headers if key.lower() == b"content-length"}
    if not values:
        return None
    if len(values) != 1 or not (value := values.pop()).isdigit():
        raise ProtocolError(f"bad Content-Length {sorted(values)!r}")
    return int(value)


def request_framing(head: Head) -> Framing:
    if b"chunked" in head.tokens(b"transfer-encoding"):
        return "chunked"
    return content_length(head) or 0


def response_framing(method: bytes, status: int, head: Head) -> Framing:
    if method == b"HEAD" or 100 <= status < 200 or status in (204, 304):
        return 0
    if b"chunked" in head.tokens(b"transfer-encoding"):
        return "chunked"
    length = content_length(head)
    return "close" if length is None else length


class BodyReader:
    """Reads one message body off a stream, a piece at a time, undoing chunked framing."""

    def __init__(self, reader: asyncio.StreamReader, framing: Framing) -> None:
        self.reader = reader
        self.framing: Framing = framing
        self.done = framing == 0
        self._left = framing if isinstance(framing, int) else 0
        """Bytes left in the body (length framing) or in the current chunk (chunked)."""

    async def read(self) -> bytes:
        """Up to CHUNK more bytes of the body; b"" once it is complete. Raises if the stream ends before that."""
        if self.done:
            return b""
        async with asyncio.timeout(IO_TIMEOUT):
            if self.framing == "close":
                data = await self.reader.read(CHUNK)
                self.done = not data
                return data
            if self.framing == "chunked" and self._left == 0:
                self._left = await self._chunk_size()
                if self._left == 0:
                    await self._skip_trailers()
                    self.done = True
                    return b""
            data = await self.reader.read(min(CHUNK, self._left))
            if not data:
                raise asyncio.IncompleteReadError(b"", self._left)
            self._left -= len(data)
            if self._left == 0:
                if self.framing == "chunked":
                    if await self.reader.readexactly(2) != b"\r\n":
                        raise ProtocolError("chunk data not followed by CRLF")
                else:
                    self.done = True
            return data

    async def _chunk_size(self) -> int:
        line = await self.reader.readuntil(b"\r\n")
        size = line[:-2].partition(b";")[0].strip()
        try:
            return int(size, 16)
        except ValueError as exc:
            raise ProtocolError(f"bad chunk size line {line!r}") from exc

    async def _skip_trailers(self) -> None:
        for _ in range(MAX_HEAD_ROUNDS):
            if await self.reader.readuntil(b"\r\n") == b"\r\n":
                return
        raise ProtocolError(f"more than {MAX_HEAD_ROUNDS} trailer lines")


async def discard(body: BodyReader) -> None:
    """Read a request body that is answered without being forwarded, so that the connection stays usable."""
    for _ in range(MAX_BODY_READS):
        if not await body.read():
            return
    raise ProtocolError(f"a request body longer than {MAX_BODY_READS} reads")


async def send(writer: asyncio.StreamWriter, *parts: bytes) -> None:
    writer.writelines(parts)
    async with asyncio.timeout(IO_TIMEOUT):
        await writer.drain()
