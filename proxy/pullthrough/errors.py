from __future__ import annotations

__all__ = ["FillFailed"]


class FillFailed(Exception):
    """A blob response broke after its headers were sent; the response must be cut short."""
