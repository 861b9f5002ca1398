"""Which upstream a request is for, and under which repository name there.

In this order (README "Several registries"):
1. containerd's ``?ns=<registry>`` names the upstream; the path holds the repository as is.
2. A first path segment that is a registry host (has a ``.`` or a ``:``, or is ``localhost``, as in
   Docker's reference grammar) names the upstream: ``/v2/ghcr.io/org/app/...`` is ``org/app`` on ghcr.io.
3. Otherwise Docker Hub, as dockerd's ``registry-mirrors`` sends it, with ``library/`` for one-segment names.

A registry that is not configured is a 404 NAME_UNKNOWN: the proxy never connects anywhere that is not in
its configuration, whatever a request names.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config import DOCKER_HUB
from proxy.errors import RegistryError
from proxy.upstream.client import UpstreamRegistry
from storage.references import is_registry, is_repository

__all__ = ["Origin", "Router", "Target"]

# Names clients use for Docker Hub besides docker.io itself.
_DOCKER_HUB_ALIASES = frozenset({"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})


@dataclass(frozen=True)
class Origin:
    """One configured upstream: its registry name (the cache key), its client and its policies."""

    registry: str
    remote: UpstreamRegistry
    tag_ttl: float
    # How long the upstream's "no such blob, manifest or repository" is believed; never longer than a tag answer.
    negative_ttl: float = 5.0

    @property
    def not_found_ttl(self) -> float:
        return min(self.negative_ttl, self.tag_ttl)


@dataclass(frozen=True)
class Target:
    origin: Origin
    repository: str  # the name on the upstream
    name: str  # the name as the client wrote it (for links back to the proxy)
    namespace: str | None = None  # the ns= the request was routed by, echoed as OCI-Namespace


class Router:
    def __init__(self, origins: list[Origin]) -> None:
        self._origins = {origin.registry: origin for origin in origins}
        # Requests that name no registry go to Docker Hub if configured, else to the first upstream.
        self._default = self._origins.get(DOCKER_HUB) or origins[0]

    @property
    def origins(self) -> list[Origin]:
        return list(self._origins.values())

    @property
    def default_registry(self) -> str:
        return self._default.registry

    def resolve(self, name: str, ns: str | None = None) -> Target:
        # Registry and repository names are ASCII. Anything else is refused before any lower-casing: Unicode
        # case folding maps some letters onto ASCII ones (the Kelvin sign onto "k"), so "doc\u212aer.io" would
        # otherwise route to docker.io under a name that cannot even be written back into a header.
        if not name.isascii():
            raise RegistryError.name_invalid(name.encode("ascii", "backslashreplace").decode())
        if ns is not None and not ns.isascii():
            raise RegistryError(400, "NAME_INVALID", "invalid ns parameter: registry names are ASCII host names")
        if ns is not None:
            origin = self._origin(ns)
            return Target(origin, self._repository(origin, name), name, ns)
        first, _, rest = name.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost") and is_registry(first.lower()):
            origin = self._origin(first)
            return Target(origin, self._repository(origin, rest, name), name)
        return Target(self._default, self._repository(self._default, name), name)

    def _origin(self, registry: str) -> Origin:
        key = registry.lower()
        if key in _DOCKER_HUB_ALIASES:
            key = DOCKER_HUB
        origin = self._origins.get(key)
        if origin is None:
            shown = registry[:100] if is_registry(key) else "(invalid)"
            raise RegistryError.name_unknown(registry, f"registry {shown} is not one this proxy serves")
        return origin

    @staticmethod
    def _repository(origin: Origin, name: str, shown: str | None = None) -> str:
        if not is_repository(name):
            raise RegistryError.name_invalid(shown or name)
        if origin.registry == DOCKER_HUB and "/" not in name:
            # Docker Hub does not normalize names; every client silently adds "library/" for it.
            name = f"library/{name}"
            if not is_repository(name):  # the prefix can push a long name over the length limit
                raise RegistryError.name_invalid(shown or name)
        return name
