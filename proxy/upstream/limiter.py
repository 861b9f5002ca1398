"""A fair cap on one upstream's concurrent requests: at most ``limit`` at once, the others wait their turn.

Turns are strictly first come, first served: a freed slot is handed straight to the longest waiter, never to a
request that arrives just then. A waiter that is cancelled (its client went away, its wait ran out) leaves the queue
without taking or losing a slot, even when a slot was being handed to it at that very moment.

A blob body keeps its slot until it is closed, because it keeps a pooled connection that long (see
:mod:`proxy.upstream.pool`). So that a wall of layer downloads cannot stall the manifest and HEAD requests every
pull starts with, streams may hold at most ``stream_limit`` slots; the rest are kept for short requests, which may
go ahead of a stream that is waiting for a stream slot (never of one waiting for a slot it could use).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass, field

__all__ = ["Limiter", "Slot"]


class Slot:
    """One admitted request's place; :meth:`release` gives it back (once, however often it is called)."""

    def __init__(self, limiter: Limiter, streaming: bool) -> None:
        self._limiter = limiter
        self.streaming = streaming
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter._release(self)


@dataclass(eq=False)
class _Waiter:
    turn: int
    streaming: bool
    future: asyncio.Future[Slot] = field(repr=False)
    gave_up: bool = False  # its acquire() was cancelled (set when that call saw it)
    dropped: bool = False  # taken off its queue


class Limiter:
    def __init__(self, limit: int, stream_limit: int | None = None) -> None:
        """``stream_limit``: slots streams may hold; by default three quarters, so a quarter stays for the rest."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self.stream_limit = max(1, min(limit, limit - limit // 4 if stream_limit is None else stream_limit))
        self._active = 0
        self._streams = 0
        self._short: deque[_Waiter] = deque()
        self._long: deque[_Waiter] = deque()
        self._given_up = 0  # waiters that gave up but are still queued: dropped when reached, or by _compact
        self._turns = itertools.count()

    @property
    def active(self) -> int:
        return self._active

    @property
    def waiting(self) -> int:
        return sum(not w.future.done() for queue in (self._short, self._long) for w in queue)

    async def acquire(self, streaming: bool = False) -> Slot:
        queue = self._long if streaming else self._short
        self._drop_given_up(queue)
        if not queue and self._has_room(streaming):
            return self._grant(streaming)
        waiter = _Waiter(next(self._turns), streaming, asyncio.get_running_loop().create_future())
        queue.append(waiter)
        try:
            return await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                # Handed a slot in the same moment as cancelled: pass it on, or it would be lost for good.
                waiter.future.result().release()
            else:
                waiter.gave_up = True
                if not waiter.dropped:
                    self._given_up += 1
                    self._compact()
            raise

    def _has_room(self, streaming: bool) -> bool:
        return self._active < self.limit and (not streaming or self._streams < self.stream_limit)

    def _grant(self, streaming: bool) -> Slot:
        self._active += 1
        self._streams += streaming
        return Slot(self, streaming)

    def _release(self, slot: Slot) -> None:
        self._active -= 1
        self._streams -= slot.streaming
        while (waiter := self._next()) is not None:
            waiter.future.set_result(self._grant(waiter.streaming))

    def _next(self) -> _Waiter | None:
        """The longest waiter that may have a slot now, taken off its queue; None if there is none."""
        if self._active >= self.limit:
            return None
        self._drop_given_up(self._short)
        self._drop_given_up(self._long)
        short = self._short[0] if self._short else None
        long = self._long[0] if self._long and self._streams < self.stream_limit else None
        if short is None or (long is not None and long.turn < short.turn):
            return self._long.popleft() if long is not None else None
        return self._short.popleft()

    def _drop_given_up(self, queue: deque[_Waiter]) -> None:
        # A cancelled waiter's future is done before its acquire() has run again to see it: either way it is gone.
        while queue and queue[0].future.done():
            self._drop(queue.popleft())

    def _drop(self, waiter: _Waiter) -> None:
        waiter.dropped = True
        if waiter.gave_up:
            self._given_up -= 1

    def _compact(self) -> None:
        # Given-up waiters are normally dropped when they reach the head of their queue; when most of a long queue
        # has given up behind a head that does not move, drop them now so the queue's memory stays bounded.
        if self._given_up > 64 and self._given_up * 2 > len(self._short) + len(self._long):
            self._short = self._still_waiting(self._short)
            self._long = self._still_waiting(self._long)

    def _still_waiting(self, queue: deque[_Waiter]) -> deque[_Waiter]:
        kept: deque[_Waiter] = deque()
        for waiter in queue:
            if waiter.future.done():
                self._drop(waiter)
            else:
                kept.append(waiter)
        return kept
