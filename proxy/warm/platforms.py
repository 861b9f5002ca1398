"""Platforms (``linux/amd64``, ``linux/arm64/v8``) and which entries of an image index they select."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Platform", "selects"]

# The variant an architecture implies when none is written, as containerd's platform matcher normalizes them.
_DEFAULT_VARIANTS = {"arm64": "v8", "aarch64": "v8"}
_ARCHITECTURE_ALIASES = {"aarch64": "arm64", "x86_64": "amd64", "x86-64": "amd64"}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.strip().lower().split("/")
        if not 2 <= len(parts) <= 3 or not all(parts):
            raise ValueError(f"expected os/architecture[/variant] such as linux/amd64, got {text!r}")
        return cls(parts[0], _ARCHITECTURE_ALIASES.get(parts[1], parts[1]), parts[2] if len(parts) == 3 else None)

    @classmethod
    def of_descriptor(cls, platform: Mapping[str, Any]) -> Platform | None:
        os, architecture, variant = platform.get("os"), platform.get("architecture"), platform.get("variant")
        if not isinstance(os, str) or not isinstance(architecture, str):
            return None
        return cls(os.lower(), architecture.lower(), variant.lower() if isinstance(variant, str) else None)

    def matches(self, other: Platform) -> bool:
        """Whether ``other`` (an index entry) is this platform; a wanted platform without a variant takes any."""
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        if self.variant is None:
            return True
        default = _DEFAULT_VARIANTS.get(self.architecture)
        return (other.variant or default) == self.variant

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)


def selects(wanted: Sequence[Platform], entry: Mapping[str, Any]) -> bool:
    """Whether an index entry is to be warmed: all of them when no platform is wanted."""
    if not wanted:
        return True
    raw = entry.get("platform")
    platform = Platform.of_descriptor(raw) if isinstance(raw, Mapping) else None
    if platform is None:
        # An entry that does not say its platform (a nested index) cannot be told apart: warm it rather than miss it.
        return True
    return any(w.matches(platform) for w in wanted)
