"""``/v2/_catalog``: the repositories this cache holds, by the names clients pull them with."""

from __future__ import annotations

from collections.abc import Callable

from proxy.config import DOCKER_HUB
from storage.interfaces import RepositoryIndex

__all__ = ["CatalogService"]


class CatalogService:
    def __init__(self, index: RepositoryIndex, default_registry: str = DOCKER_HUB) -> None:
        self._index = index
        self._default = default_registry

    async def names(self, visible: Callable[[str, str], bool] | None = None) -> list[str]:
        """``visible(registry, repository)``: whether the asking client may see it (client authentication)."""
        # Names from the default upstream as they are; others with their registry prefix, which is how they
        # are pulled through the proxy.
        return sorted(
            repository if registry == self._default else f"{registry}/{repository}"
            for registry, repository in await self._index.list_repositories()
            if visible is None or visible(registry, repository)
        )
