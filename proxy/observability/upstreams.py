"""How each upstream has been doing lately, as this process saw it: for /readyz and the status page."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RecentError", "UpstreamState", "UpstreamStatus"]

# The status page shows this many; an outage under load repeats one message, so more would say nothing new.
MAX_RECENT_ERRORS = 20


@dataclass(frozen=True)
class RecentError:
    at: float  # wall clock
    registry: str
    message: str


@dataclass
class UpstreamState:
    registry: str
    breaker_open: bool = False
    answered_at: float | None = None  # the last answer of any status below 500
    failed_at: float | None = None
    failure: str | None = None

    @property
    def reachable(self) -> bool | None:
        """Whether the last exchange went well (an answer below 500); None before the first one."""
        if self.answered_at is None and self.failed_at is None:
            return None
        return (self.answered_at or 0.0) >= (self.failed_at or 0.0)


class UpstreamStatus:
    def __init__(self, registries: list[str], clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.states = {registry: UpstreamState(registry) for registry in registries}
        self.recent: deque[RecentError] = deque(maxlen=MAX_RECENT_ERRORS)

    def answered(self, registry: str) -> None:
        state = self.states.get(registry)
        if state is not None:
            state.answered_at = self._clock()

    def failed(self, registry: str, message: str) -> None:
        now = self._clock()
        state = self.states.get(registry)
        if state is not None:
            state.failed_at, state.failure = now, message
        self.recent.appendleft(RecentError(now, registry, message))

    def breaker(self, registry: str, open: bool) -> None:
        state = self.states.get(registry)
        if state is not None:
            state.breaker_open = open
