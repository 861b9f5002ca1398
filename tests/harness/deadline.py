"""Bounded polling: every wait in the harness has a deadline and a maximum number of rounds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.05,
    what: str,
) -> T:
    """Call ``probe`` until it returns something other than None, and return that.

    Raises TimeoutError naming ``what`` once ``timeout`` seconds have passed. The number of rounds is bounded too
    (timeout / interval, plus one), so a probe that itself blocks cannot make this loop spin forever.
    """
    deadline = time.monotonic() + timeout
    max_rounds = int(timeout / interval) + 1
    for _ in range(max_rounds):
        result = probe()
        if result is not None:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(interval, remaining))
    raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
