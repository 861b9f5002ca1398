"""Tag lists, always asked of the upstream (a list is only as good as its freshness)."""

from __future__ import annotations

from proxy.routing import Origin
from proxy.upstream.client import TagPage

__all__ = ["TagService"]


class TagService:
    async def list(self, origin: Origin, repository: str, n: int | None, last: str | None) -> TagPage:
        return await origin.remote.get_tags(repository, n, last)
