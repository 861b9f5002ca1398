"""The cache's size budget: evict past ``max_size``, down to ``low_watermark``."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config import StorageSettings

__all__ = ["DEFAULT_LOW_WATERMARK", "Budget"]

# Evicting a little more than needed makes room for the next fills too, so that eviction runs once per tenth of
# the budget written rather than once per blob.
DEFAULT_LOW_WATERMARK = 0.9


@dataclass(frozen=True)
class Budget:
    max_size: int
    low_watermark: int

    @classmethod
    def of(cls, storage: StorageSettings) -> Budget | None:
        if storage.max_size is None:
            return None
        low = storage.low_watermark
        if low is None:
            low = int(storage.max_size * DEFAULT_LOW_WATERMARK)
        return cls(storage.max_size, min(low, storage.max_size))
