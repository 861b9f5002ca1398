"""Image references as Docker reads them: ``alpine`` is ``docker.io/library/alpine:latest``.

The rules of Docker's reference package (``ParseNormalizedNamed``): a first path component is a registry if it
has a ``.`` or a ``:``, is ``localhost``, or has upper-case letters; otherwise the registry is Docker Hub, where
one-component names are under ``library/``. With a digest the tag is informational (Docker pulls by digest).
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.digest import Digest, InvalidDigest
from storage.references import is_registry, is_repository, is_tag

__all__ = ["DOCKER_HUB", "ImageReference", "InvalidReference", "parse_reference"]

DOCKER_HUB = "docker.io"
# Other names Docker Hub is known by; the proxy's router accepts them too and keys them as docker.io.
_DOCKER_HUB_ALIASES = frozenset({"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})


class InvalidReference(ValueError):
    """Not an image reference; the message says what is wrong with it."""


@dataclass(frozen=True)
class ImageReference:
    registry: str
    repository: str  # as on the registry: "library/alpine" on Docker Hub
    tag: str | None
    digest: Digest | None

    @property
    def reference(self) -> str:
        """What to ask the manifests endpoint for: the digest when there is one, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        return self.tag or "latest"

    @property
    def proxy_name(self) -> str:
        """The repository name at the proxy. Always with the registry prefix (README "Several registries"), so
        that a Docker Hub image can never be sent to another upstream when docker.io is not configured."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{self.registry}/{self.repository}{tag}{digest}"


def parse_reference(text: str) -> ImageReference:
    text = text.strip()
    if not text:
        raise InvalidReference("empty image reference")
    if "://" in text:
        raise InvalidReference(f"{text[:100]!r}: an image reference has no scheme")
    name, at, digest_text = text.partition("@")
    digest = None
    if at:
        try:
            digest = Digest.parse(digest_text)
        except InvalidDigest as exc:
            raise InvalidReference(f"{text[:100]!r}: {exc}") from None
    tag = None
    colon, slash = name.rfind(":"), name.rfind("/")
    if colon > slash:  # a colon before the last slash is a registry's port
        name, tag = name[:colon], name[colon + 1 :]
        if not is_tag(tag):
            raise InvalidReference(f"{text[:100]!r}: invalid tag {tag[:130]!r}")
    registry, repository = _split_registry(name)
    if not is_registry(registry):
        raise InvalidReference(f"{text[:100]!r}: invalid registry name {registry[:100]!r}")
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not is_repository(repository):
        why = "must be lower-case" if repository.lower() != repository else "is not a valid repository name"
        raise InvalidReference(f"{text[:100]!r}: {repository[:100]!r} {why}")
    if tag is None and digest is None:
        tag = "latest"
    return ImageReference(registry, repository, tag, digest)


def _split_registry(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    if not slash or (not any(c in first for c in ".:") and first != "localhost" and first.lower() == first):
        return DOCKER_HUB, name
    registry = first.lower()
    return (DOCKER_HUB if registry in _DOCKER_HUB_ALIASES else registry), rest
