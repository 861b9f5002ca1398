"""Remembered "no" answers: what the upstream said does not exist, for a few seconds.

A CI job stuck in a loop on a digest or tag that does not exist would otherwise turn every one of its requests into an
upstream request (and, with a burst of them, into a queue that starves real pulls). Only answers are remembered
(404: unknown blob, manifest or repository, including the 401 a registry gives for a repository the proxy may not
see), never outages, which the breaker and stale serving handle. Keys are what was asked of the upstream:
(registry, repository, digest or tag), so one repository's "no" never answers for another.

The table is bounded: past ``max_entries`` the oldest entries go first, and expired ones are dropped as they are met.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from proxy.errors import RegistryError

__all__ = ["NegativeCache"]


class NegativeCache:
    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[Hashable, tuple[float, RegistryError]] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, key: Hashable) -> None:
        """Raise the remembered answer for ``key``, if there is a live one."""
        entry = self._entries.get(key)
        if entry is None:
            return
        expires, error = entry
        if expires <= self._clock():
            del self._entries[key]
            return
        # A fresh exception each time: one instance raised in many tasks would pile up their tracebacks.
        raise RegistryError(error.status, error.code, error.message, error.detail, dict(error.headers))

    def remember(self, key: Hashable, error: RegistryError, ttl: float) -> None:
        """Remember ``error`` for ``ttl`` seconds if it is an answer worth remembering (a 404)."""
        if error.status != 404 or ttl <= 0:
            return
        self._entries[key] = (self._clock() + ttl, error)
        self._entries.move_to_end(key)
        self._prune()

    def _prune(self) -> None:
        now = self._clock()
        # Oldest first: expired ones at the front go, and past the bound the oldest live ones too.
        while self._entries:
            key, (expires, _) = next(iter(self._entries.items()))
            if expires > now and len(self._entries) <= self._max_entries:
                break
            del self._entries[key]
