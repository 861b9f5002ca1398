"""Failed logins, per client address: past a few in a minute, that address is refused for the rest of it.

Guessing passwords through the proxy, or burning its CPU on bcrypt checks, then costs the attacker a minute per
handful of tries. The table is bounded: past ``max_addresses`` the least recently seen go first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["FailedLogins"]


class FailedLogins:
    def __init__(
        self,
        limit: int = 10,
        window: float = 60.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._window = window
        self._max = max_addresses
        self._clock = clock
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()  # address → (window start, failures)

    def blocked_for(self, address: str) -> float:
        """Seconds until ``address`` may try again; 0 if it may try now."""
        entry = self._seen.get(address)
        if entry is None:
            return 0.0
        started, failures = entry
        remaining = started + self._window - self._clock()
        if remaining <= 0:
            del self._seen[address]
            return 0.0
        return remaining if failures >= self._limit else 0.0

    def failed(self, address: str) -> None:
        now = self._clock()
        started, failures = self._seen.get(address, (now, 0))
        if started + self._window <= now:
            started, failures = now, 0
        self._seen[address] = (started, failures + 1)
        self._seen.move_to_end(address)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)
