"""Parsing ``WWW-Authenticate`` challenges (RFC 9110 section 11.6.1) as registries send them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Challenge", "parse_challenges"]

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_SCHEME = re.compile(rf"\s*({_TOKEN})")
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN}))\s*')


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower-cased: "bearer", "basic"
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(headers: list[str]) -> list[Challenge]:
    """All challenges in the given header values; malformed trailing parts are ignored, never raised."""
    challenges: list[Challenge] = []
    for header in headers:
        pos = 0
        while pos < len(header):
            scheme = _SCHEME.match(header, pos)
            if scheme is None:
                break
            pos = scheme.end()
            params: dict[str, str] = {}
            while True:
                param = _PARAM.match(header, pos)
                if param is None:
                    break
                quoted, bare = param.group(2), param.group(3)
                value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
                params[param.group(1).lower()] = value
                pos = param.end()
                if pos < len(header) and header[pos] == ",":
                    pos += 1
                else:
                    break
            challenges.append(Challenge(scheme.group(1).lower(), params))
            # Skip to the next challenge (separated by a comma after the last parameter).
            while pos < len(header) and header[pos] in ", ":
                pos += 1
    return challenges
