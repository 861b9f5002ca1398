"""``/v2/_catalog``: the repositories this cache holds, by the names clients pull them with."""

from __future__ import annotations

from proxy.config import DOCKER_HUB
from storage.interfaces import RepositoryIndex

__all__ = ["CatalogService"]


class CatalogService:
    def __init__(self, index: RepositoryIndex, default_registry: str = DOCKER_HUB) -> None:
        self._index = index
        self._default = default_registry

    async def names(self) -> list[str]:
        # Names from the default upstream as they are; others with their registry prefix, which is how they
        # are pulled through the proxy.
        return sorted(
            repository if registry == self._default else f"{registry}/{repository}"
            for registry, repository in await self._index.list_repositories()
        )
