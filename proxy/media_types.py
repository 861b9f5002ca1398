"""Manifest media types and ``Accept`` negotiation."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "MANIFEST_MEDIA_TYPES",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Accept",
    "base_media_type",
]

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

# What the proxy asks an upstream for: every type it serves. Without an explicit list, registries fall back to
# schema1 or refuse OCI content (httpx's default is "*/*", which Distribution ignores); with a client's narrower
# list, the answer for a multi-arch tag would be one platform's image instead of the index.
MANIFEST_MEDIA_TYPES: tuple[str, ...] = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)


# RFC 6838 type/subtype names; anything else in an Accept header is junk, and must never be forwarded upstream.
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


def base_media_type(content_type: str) -> str:
    """``application/json; charset=utf-8`` → ``application/json``."""
    return content_type.split(";", 1)[0].strip().lower()


@dataclass(frozen=True)
class Accept:
    """The manifest types a client named (q-values ignored, as Distribution does) and whether it added a wildcard."""

    types: tuple[str, ...] = ()
    wildcard: bool = False

    @classmethod
    def parse(cls, values: list[str]) -> Accept:
        types: list[str] = []
        wildcard = False
        for value in values:
            for part in value.split(","):
                media_type = base_media_type(part)
                if "*" in media_type:
                    wildcard = True
                elif _MEDIA_TYPE.fullmatch(media_type) and media_type not in types:
                    types.append(media_type)
        return cls(tuple(types), wildcard)

    def allows(self, media_type: str) -> bool:
        # "*/*", or no Accept at all, allows everything, as HTTP reads it. Distribution instead ignores "*/*" and
        # treats a client that names no type as schema1-only, a format this proxy does not serve; the clients
        # that send no Accept (curl, scripts) want whatever the registry holds.
        return self.wildcard or not self.types or media_type in self.types

    @classmethod
    def every_type(cls) -> Accept:
        """What the proxy asks upstreams for, whoever is asking it: every manifest type it serves."""
        return cls(MANIFEST_MEDIA_TYPES)

    def upstream(self) -> tuple[str, ...]:
        """The types to name in an upstream request: those of this Accept, or every type we serve if it names none."""
        return self.types or MANIFEST_MEDIA_TYPES
