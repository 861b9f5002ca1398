"""What the pull-through services report as they work (fills, shared work), for metrics.

A Protocol, so that this layer names no metrics library; without an implementation nothing is reported.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NO_PULL_EVENTS", "PullEvents"]


class PullEvents(Protocol):
    def fill_started(self) -> None: ...

    def fill_finished(self) -> None: ...

    def joined(self, kind: str) -> None:
        """A request was answered by work another request started: a fill (``blob``) or a lookup (``manifest``)."""


class _NoPullEvents:
    def fill_started(self) -> None:
        pass

    def fill_finished(self) -> None:
        pass

    def joined(self, kind: str) -> None:
        pass


NO_PULL_EVENTS: PullEvents = _NoPullEvents()
