"""What a manifest refers to: an image's config and layers, or an index's child manifests.

Only read, never re-serialized (the bytes stay the upstream's). Anything malformed simply refers to nothing: the
inventory then knows less about that manifest, which costs at worst an earlier eviction, never a wrong answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from storage.digest import Digest, InvalidDigest

__all__ = ["CONFIG", "LAYER", "MANIFEST", "Contents", "Reference", "contents_of", "platform_of_config"]

CONFIG = "config"
LAYER = "layer"
MANIFEST = "manifest"  # an index's child


@dataclass(frozen=True, slots=True)
class Reference:
    digest: Digest
    kind: str  # CONFIG, LAYER or MANIFEST
    size: int  # as the manifest declares it
    platform: str = ""  # for an index's child: "os/architecture[/variant]"


@dataclass(frozen=True, slots=True)
class Contents:
    references: tuple[Reference, ...] = ()
    platforms: tuple[str, ...] = ()  # an index's platforms in its order, attestations ("unknown/unknown") left out


def contents_of(body: bytes) -> Contents:
    """The references of an OCI/Docker image manifest, index or manifest list (and the legacy artifact and
    schema 1 forms), told apart by their fields rather than the media type, which upstreams get wrong."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Contents()
    if not isinstance(document, dict):
        return Contents()
    references: list[Reference] = []
    platforms: list[str] = []
    for entry in _list(document, "manifests"):
        platform = _platform(entry.get("platform"))
        if _append(references, entry, MANIFEST, platform) and platform and platform not in platforms:
            platforms.append(platform)
    config = document.get("config")
    if isinstance(config, dict):
        _append(references, config, CONFIG)
    for entry in _list(document, "layers") + _list(document, "blobs"):
        _append(references, entry, LAYER)
    for entry in _list(document, "fsLayers"):  # Docker schema 1: digests only
        _append(references, {"digest": entry.get("blobSum"), "size": 0}, LAYER)
    return Contents(tuple(references), tuple(platforms))


def platform_of_config(body: bytes) -> str:
    """``os/architecture[/variant]`` from an image config, or "" if it does not say."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ""
    if not isinstance(document, dict):
        return ""
    return _platform({"os": document.get("os"), "architecture": document.get("architecture"),
                      "variant": document.get("variant")})  # fmt: skip


def _list(document: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = document.get(key)
    return [entry for entry in value if isinstance(entry, dict)] if isinstance(value, list) else []


def _append(references: list[Reference], entry: dict[str, Any], kind: str, platform: str = "") -> bool:
    digest = entry.get("digest")
    if not isinstance(digest, str):
        return False
    try:
        parsed = Digest.parse(digest)
    except InvalidDigest:
        return False
    size = entry.get("size")
    declared = size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else 0
    references.append(Reference(parsed, kind, declared, platform))
    return True


def _platform(value: object) -> str:
    if not isinstance(value, dict):
        return ""
    os_name, architecture, variant = value.get("os"), value.get("architecture"), value.get("variant")
    if not isinstance(os_name, str) or not isinstance(architecture, str) or not os_name or not architecture:
        return ""
    if os_name == "unknown" or architecture == "unknown":
        return ""  # buildx attestation manifests: not a platform anyone pulls
    text = f"{os_name}/{architecture}"
    if isinstance(variant, str) and variant:
        text += f"/{variant}"
    # Shown in tables and written to the database: keep it short and printable.
    return text[:100] if text.isprintable() else ""
