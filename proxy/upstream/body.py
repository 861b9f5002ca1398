"""Reading a large blob body past httpcore and h11, straight from the connection into memory of ours.

Through httpcore each byte of a body is copied four times in user space before the cache gets it (the loop's
bytes, h11's receive buffer, the piece h11 cuts from it, httpcore's ``bytes()`` of that), and a 200 MiB fill spent
~30% of the event loop's time in those copies. Here the connection's receiver puts the body into fresh segments
(64 KiB growing to 1 MiB) and hands them on as views (:meth:`proxy.upstream.network.BufferedStream.read_body`):
the kernel's copy is the only one before the cache writes and hashes them.

It applies only where it is sure to read the same bytes httpcore would have: an HTTP/1.1 response from our own
network backend, with a ``Content-Length`` and no ``Transfer-Encoding``, whose connection read its head and nothing
more (:attr:`~proxy.upstream.network.BufferedStream.at_body`: h11 holds none of the body). Any other response is read
through httpx's ``aiter_raw()`` as before. The digest check after the fill catches what nothing here could.

The cost: httpcore never sees the end of such a body, so it closes the connection instead of pooling it. That is
why only bodies of at least :data:`DIRECT_MIN` bytes are read this way: a new connection (a TLS handshake to a CDN)
costs less than the copies of a body that size.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from proxy.upstream.network import BufferedStream
from proxy.upstream.transport import mapped_errors

__all__ = ["DIRECT_MIN", "raw_body"]

DIRECT_MIN = 8 * 1024 * 1024


def raw_body(response: httpx.Response) -> AsyncIterator[bytes | memoryview]:
    """The response's body as it came (not decoded), read directly when it can be (see the module's docstring)."""
    stream = response.extensions.get("network_stream")
    length = _content_length(response)
    if (
        isinstance(stream, BufferedStream)
        and stream.at_body
        and length is not None
        and length >= DIRECT_MIN
        and response.http_version == "HTTP/1.1"
        and "transfer-encoding" not in response.headers
        and not response.is_stream_consumed
    ):
        timeout = response.request.extensions.get("timeout", {}).get("read")
        return _direct(stream, length, timeout)
    return response.aiter_raw()


async def _direct(stream: BufferedStream, length: int, timeout: float | None) -> AsyncIterator[bytes | memoryview]:
    remaining = length
    while remaining:
        with mapped_errors():
            piece = await stream.read_body(remaining, timeout)
        if not piece:
            # What httpx says of a body cut short, so that callers see one error for both ways of reading.
            raise httpx.RemoteProtocolError(
                f"peer closed connection without sending complete message body "
                f"(received {length - remaining} bytes, expected {length})"
            )
        remaining -= len(piece)
        yield piece


def _content_length(response: httpx.Response) -> int | None:
    values = response.headers.get_list("content-length")
    if len(values) != 1 or not (values[0].isascii() and values[0].isdigit()):
        return None  # absent, or ambiguous: httpx and h11 decide what such a response means
    return int(values[0])
