"""What an upstream client reports as it works (requests, bytes, tokens, breaker, rate limit), for metrics.

A Protocol, so that this layer names no metrics library: the app hands in the object that counts
(:class:`proxy.observability.metrics.Metrics`); without one nothing is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["NO_EVENTS", "RateLimit", "UpstreamEvents"]


@dataclass(frozen=True)
class RateLimit:
    """Docker Hub's pull allowance, as its ``ratelimit-limit`` / ``ratelimit-remaining`` headers say it."""

    limit: int
    remaining: int
    window: int  # seconds


class UpstreamEvents(Protocol):
    def upstream_request(self, registry: str, method: str, status: str, seconds: float) -> None:
        """One request answered (``status`` its code) or failed (``status`` the kind: dns, refused, timeout, tls,
        network)."""

    def upstream_bytes(self, registry: str, count: int) -> None: ...

    def upstream_failure(self, registry: str, message: str) -> None:
        """The upstream failed, in the words the client is told."""

    def rate_limit(self, registry: str, limit: RateLimit) -> None: ...

    def token_fetch(self, registry: str, ok: bool) -> None: ...

    def breaker(self, registry: str, open: bool) -> None: ...


class _NoEvents:
    def upstream_request(self, registry: str, method: str, status: str, seconds: float) -> None:
        pass

    def upstream_bytes(self, registry: str, count: int) -> None:
        pass

    def upstream_failure(self, registry: str, message: str) -> None:
        pass

    def rate_limit(self, registry: str, limit: RateLimit) -> None:
        pass

    def token_fetch(self, registry: str, ok: bool) -> None:
        pass

    def breaker(self, registry: str, open: bool) -> None:
        pass


NO_EVENTS: UpstreamEvents = _NoEvents()
