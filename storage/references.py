"""Grammars for registry hosts, repository names and tags (OCI distribution spec, Docker reference).

They are checked before a name ever becomes part of a path, which is what keeps every file the cache
touches inside its root: none of these grammars admits ``..``, a leading ``/``, a NUL or a backslash.
"""

from __future__ import annotations

import re

__all__ = ["MAX_NAME_LENGTH", "is_registry", "is_repository", "is_tag"]

# Many clients cap "host/name" at 255 characters; anything longer cannot have come from a real client.
MAX_NAME_LENGTH = 255

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_DOMAIN_COMPONENT = r"(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])"
_REGISTRY = re.compile(rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]{{1,5}})?")


def is_repository(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and _REPOSITORY.fullmatch(name) is not None


def is_tag(tag: str) -> bool:
    return _TAG.fullmatch(tag) is not None


def is_registry(host: str) -> bool:
    """A lower-case ``host[:port]`` as used to key the cache by upstream (``docker.io``, ``localhost:5000``)."""
    return len(host) <= MAX_NAME_LENGTH and _REGISTRY.fullmatch(host) is not None
