"""Which upstream a request is for, and under which repository name there."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config import DOCKER_HUB
from proxy.errors import RegistryError
from proxy.upstream.client import UpstreamRegistry
from storage.references import is_repository

__all__ = ["Origin", "Router"]


@dataclass(frozen=True)
class Origin:
    """One configured upstream: its registry name (the cache key), its client and its policies."""

    registry: str
    remote: UpstreamRegistry
    tag_ttl: float


class Router:
    def __init__(self, origins: list[Origin]) -> None:
        self._origins = {origin.registry: origin for origin in origins}
        # Requests that name no registry go to Docker Hub if configured (what dockerd's registry-mirrors
        # sends), else to the first upstream.
        self._default = self._origins.get(DOCKER_HUB) or origins[0]

    @property
    def origins(self) -> list[Origin]:
        return list(self._origins.values())

    def resolve(self, name: str) -> tuple[Origin, str]:
        if not is_repository(name):
            raise RegistryError.name_invalid(name)
        origin = self._default
        if origin.registry == DOCKER_HUB and "/" not in name:
            # Docker Hub does not normalize names; every client silently adds "library/" for it.
            name = f"library/{name}"
            if not is_repository(name):  # the prefix can push a long name over the length limit
                raise RegistryError.name_invalid(name)
        return origin, name
