"""The single byte range a blob request may ask for (RFC 9110 section 14)."""

from __future__ import annotations

import re

from proxy.errors import RegistryError

__all__ = ["parse_range"]

_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` with ``end`` exclusive, or None to send the whole blob.

    Only one range is served; several, a malformed one or one past the end get 416, since a client
    asking for bytes we would not send must not mistake a full body for what it asked.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        raise RegistryError.range_invalid(size)
    first, last = match.group(1), match.group(2)
    if first:
        start = int(first)
        end = int(last) + 1 if last else size
        if start >= size or end <= start:
            raise RegistryError.range_invalid(size)
        return start, min(end, size)
    if last and int(last) > 0 and size > 0:
        # "bytes=-N": the last N bytes.
        return max(0, size - int(last)), size
    raise RegistryError.range_invalid(size)
