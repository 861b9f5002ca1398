"""Parsing the digest or tag in a request path into values the services accept."""

from __future__ import annotations

from proxy.errors import RegistryError
from storage.digest import Digest, InvalidDigest
from storage.references import is_tag

__all__ = ["parse_digest", "parse_reference"]


def parse_digest(value: str) -> Digest:
    try:
        return Digest.parse(value)
    except InvalidDigest as exc:
        raise RegistryError.digest_invalid(str(exc)) from None


def parse_reference(value: str) -> Digest | str:
    """A manifest reference: a digest if it contains ``:``, else a tag (an invalid tag is simply unknown)."""
    if ":" in value:
        return parse_digest(value)
    if not is_tag(value):
        raise RegistryError.manifest_unknown(value, "invalid tag")
    return value
