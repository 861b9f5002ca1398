"""The cache's size and blob count against its budget, read from the lifecycle's inventory for the metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from proxy.observability.metrics import Metrics

__all__ = ["REPORT_INTERVAL", "report_cache_usage"]

log = logging.getLogger(__name__)

# One row of the inventory read this often: the gauges are never more than this far behind (and the inventory is
# written about once a second anyway).
REPORT_INTERVAL = 1.0


async def report_cache_usage(
    totals: Callable[[], Awaitable[tuple[int, int] | None]],
    budget: int | None,
    metrics: Metrics,
    interval: float = REPORT_INTERVAL,
) -> None:
    """Until cancelled: the inventory's totals into ``metrics`` (nothing without a usable inventory)."""
    while True:
        try:
            found = await totals()
        except Exception as exc:  # the inventory's trouble is the lifecycle's to report; the gauges just wait
            log.debug("cache totals unavailable: %s", exc)
            found = None
        if found is not None:
            metrics.cache_usage(found[0], found[1], budget)
        await asyncio.sleep(interval)
