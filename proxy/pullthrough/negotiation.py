"""Answering a client whose Accept header does not take a tag's manifest, the way Distribution does.

The cache keeps one answer per tag, the upstream's answer to every manifest type (for a multi-arch tag, its index),
so what one client accepts never decides what the next one gets. Each client is then answered on its own
(Distribution ``registry/handlers/manifests.go``):

- a Docker manifest list it does not accept: the list's linux/amd64 image instead, by digest, if it accepts that
  image's type (the rewrite Distribution keeps for clients older than manifest lists);
- any other manifest it does not accept, an OCI index included: 404 MANIFEST_UNKNOWN.
"""

from __future__ import annotations

import json

from proxy.errors import RegistryError
from proxy.media_types import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST
from storage.digest import Digest

__all__ = ["DEFAULT_PLATFORM", "default_image", "not_accepted"]

# The platform Distribution picks from a manifest list for a client that cannot read lists.
DEFAULT_PLATFORM = ("linux", "amd64")

_NAMES = {
    OCI_MANIFEST: "OCI manifest",
    OCI_INDEX: "OCI index",
    DOCKER_MANIFEST: "Docker schema2 manifest",
    DOCKER_MANIFEST_LIST: "Docker manifest list",
}


def default_image(manifest_list: bytes) -> Digest | None:
    """The digest of the first linux/amd64 entry of a manifest list, or None if it has none (or is unreadable)."""
    try:
        entries = json.loads(manifest_list)["manifests"]
        for entry in entries:
            platform = entry.get("platform") or {}
            if (platform.get("os"), platform.get("architecture")) == DEFAULT_PLATFORM:
                return Digest.parse(entry["digest"])
    except (ValueError, KeyError, TypeError, AttributeError):  # InvalidDigest is a ValueError
        return None
    return None


def not_accepted(reference: str, media_type: str) -> RegistryError:
    name = _NAMES.get(media_type, f"manifest of type {media_type[:100]}")
    return RegistryError.manifest_unknown(reference, f"{name} found, but the request's Accept header does not allow it")
