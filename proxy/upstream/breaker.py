"""A circuit breaker per upstream: after repeated failures, fail fast for a cool-off period.

Without it, every request for a cached-but-stale tag would first wait for the upstream's timeout
before falling back to the cache; with it, an outage costs the timeout a few times, not on every pull.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["CircuitBreaker"]

log = logging.getLogger(__name__)


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        threshold: int = 3,
        cooloff: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        """``on_change``: told True when the breaker opens, False when the upstream answers again (metrics)."""
        self.name = name
        self._on_change = on_change or (lambda open: None)
        self._threshold = threshold
        self._cooloff = cooloff
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0

    @property
    def is_open(self) -> bool:
        """Open, or half open: failed ``threshold`` times in a row and not answered since."""
        return self._failures >= self._threshold

    def open_for(self) -> float:
        """Seconds until requests may be tried again; 0 when they may be tried now."""
        if self._failures < self._threshold:
            return 0.0
        # Once the cool-off is over, requests go through again ("half open"); one more failure re-opens.
        return max(0.0, self._open_until - self._clock())

    def success(self) -> None:
        if self._failures >= self._threshold:
            log.info("upstream %s is answering again", self.name)
            self._on_change(False)
        self._failures = 0

    def failure(self) -> None:
        self._failures += 1
        if self._failures >= self._threshold:
            if self._open_until <= self._clock():
                log.warning(
                    "upstream %s failed %d times in a row; not asking it for %.0f s",
                    self.name,
                    self._failures,
                    self._cooloff,
                )
                self._on_change(True)
            self._open_until = self._clock() + self._cooloff
