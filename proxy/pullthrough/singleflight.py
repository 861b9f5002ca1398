"""Coalescing of concurrent identical calls: the first caller runs it, the others wait for its result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self, on_join: Callable[[], None] | None = None) -> None:
        """``on_join``: told whenever a caller is answered by a call another caller started (metrics)."""
        self._calls: dict[Hashable, asyncio.Task[T]] = {}
        self._on_join = on_join

    async def do(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> T:
        """The result of ``call()``, shared with every concurrent ``do`` for the same key.

        The call runs in its own task: a caller that is cancelled (its client went away) does not cancel
        the work the other callers are waiting for.
        """
        task = self._calls.get(key)
        if task is None:
            task = asyncio.ensure_future(call())
            self._calls[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        elif self._on_join is not None:
            self._on_join()
        return await asyncio.shield(task)

    def _finished(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._calls.get(key) is task:
            del self._calls[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so an error nobody is left to await is not logged as lost
