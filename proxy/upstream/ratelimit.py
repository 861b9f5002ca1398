"""Docker Hub's rate-limit headers: ``ratelimit-limit: 100;w=21600`` and ``ratelimit-remaining: 76;w=21600``."""

from __future__ import annotations

import re

import httpx

from proxy.upstream.events import RateLimit

__all__ = ["rate_limit"]

# "<count>;w=<window seconds>" (draft-polli-ratelimit-headers, as Docker Hub sends it); other parameters are ignored.
_VALUE = re.compile(r"\s*([0-9]{1,12})\s*(?:;\s*w\s*=\s*([0-9]{1,12}))?\s*(?:;.*)?")


def rate_limit(headers: httpx.Headers) -> RateLimit | None:
    """The allowance the upstream announced, or None if it sent none (or nothing that parses)."""
    limit_value = headers.get("ratelimit-limit")
    remaining_value = headers.get("ratelimit-remaining")
    if limit_value is None or remaining_value is None:
        return None
    limit = _VALUE.fullmatch(limit_value)
    remaining = _VALUE.fullmatch(remaining_value)
    if limit is None or remaining is None:
        return None
    window = limit.group(2) or remaining.group(2) or "0"
    return RateLimit(int(limit.group(1)), int(remaining.group(1)), int(window))
