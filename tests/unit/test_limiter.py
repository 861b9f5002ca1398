"""The fair cap on an upstream's concurrent requests (proxy.upstream.limiter): turns, cancellation, streams."""

from __future__ import annotations

import asyncio

import pytest

from proxy.upstream.limiter import Limiter, Slot

STEPS = 20  # event-loop turns given to waiters to run, at most


async def turns(n: int = STEPS) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_turns_are_first_come_first_served_and_never_taken_by_a_newcomer() -> None:
    limiter = Limiter(1)
    first = await limiter.acquire()
    order: list[int] = []

    async def wait(i: int) -> Slot:
        slot = await limiter.acquire()
        order.append(i)
        return slot

    waiters = [asyncio.create_task(wait(i)) for i in range(5)]
    await turns()
    assert limiter.waiting == 5
    first.release()
    # The freed slot went to waiter 0 already: a request arriving now queues behind the rest.
    newcomer = asyncio.create_task(wait(99))
    for i in range(5):
        slot = await asyncio.wait_for(waiters[i], 5)
        assert order == list(range(i + 1))
        slot.release()
    (await asyncio.wait_for(newcomer, 5)).release()
    assert order == [0, 1, 2, 3, 4, 99]
    assert (limiter.active, limiter.waiting) == (0, 0)


async def test_a_cancelled_waiter_takes_no_slot_and_loses_none() -> None:
    limiter = Limiter(2)
    held = [await limiter.acquire() for _ in range(2)]
    waiters = [asyncio.create_task(limiter.acquire()) for _ in range(3)]
    await turns()
    waiters[1].cancel()
    await turns()
    assert limiter.waiting == 2
    for slot in held:
        slot.release()
    granted = [await asyncio.wait_for(waiters[i], 5) for i in (0, 2)]
    assert limiter.active == 2
    for slot in granted:
        slot.release()
        slot.release()  # a second release is a no-op, not a slot more
    assert (limiter.active, limiter.waiting) == (0, 0)


async def test_a_waiter_cancelled_as_it_is_handed_a_slot_passes_it_on() -> None:
    limiter = Limiter(1)
    held = await limiter.acquire()
    unlucky = asyncio.create_task(limiter.acquire())
    next_in_line = asyncio.create_task(limiter.acquire())
    await turns()
    held.release()  # handed to `unlucky`, which has not run yet...
    unlucky.cancel()  # ...and is cancelled before it does
    with pytest.raises(asyncio.CancelledError):
        await unlucky
    slot = await asyncio.wait_for(next_in_line, 5)
    assert limiter.active == 1
    slot.release()
    assert limiter.active == 0


async def test_a_wait_that_times_out_leaves_no_trace() -> None:
    limiter = Limiter(1)
    held = await limiter.acquire()
    for _ in range(3):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await limiter.acquire()
    assert limiter.waiting == 0
    held.release()
    (await asyncio.wait_for(limiter.acquire(), 5)).release()
    assert limiter.active == 0


async def test_streams_leave_slots_for_short_requests() -> None:
    limiter = Limiter(4)
    assert limiter.stream_limit == 3
    streams = [await limiter.acquire(streaming=True) for _ in range(3)]
    waiting_stream = asyncio.create_task(limiter.acquire(streaming=True))
    await turns()
    assert not waiting_stream.done()
    # A short request goes ahead of the stream that waits for a stream slot: it could not use this one.
    short = await asyncio.wait_for(limiter.acquire(), 5)
    assert limiter.active == 4
    short.release()
    await turns()
    assert not waiting_stream.done()  # still three streams
    streams[0].release()
    (await asyncio.wait_for(waiting_stream, 5)).release()
    for slot in streams[1:]:
        slot.release()
    assert limiter.active == 0


async def test_a_short_request_does_not_pass_a_stream_that_could_have_the_slot() -> None:
    limiter = Limiter(2)  # stream_limit 2: nothing reserved
    held = [await limiter.acquire() for _ in range(2)]
    stream = asyncio.create_task(limiter.acquire(streaming=True))
    await turns()
    short = asyncio.create_task(limiter.acquire())
    await turns()
    held[0].release()
    first = await asyncio.wait_for(stream, 5)
    assert not short.done()
    held[1].release()
    (await asyncio.wait_for(short, 5)).release()
    first.release()
    assert limiter.active == 0


async def test_a_queue_of_cancelled_waiters_is_dropped_while_its_head_waits() -> None:
    limiter = Limiter(1)
    held = await limiter.acquire()
    waiters = [asyncio.create_task(limiter.acquire()) for _ in range(1000)]
    await turns()
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert limiter.waiting == 0
    # The memory goes too, not only the count, although no slot was released to walk the queue.
    assert len(limiter._short) < 100
    held.release()
    assert limiter.active == 0


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Limiter(0)
