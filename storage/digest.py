"""Content digests (``<algorithm>:<hex>``), validated before anything builds a path from them."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = ["SUPPORTED_ALGORITHMS", "Digest", "InvalidDigest", "Hasher"]

# The OCI image spec fixes the encoded part of the registered algorithms: lower-case hex of the
# full hash length. Upper-case hex is explicitly forbidden ("[A-F] MUST NOT be used").
SUPPORTED_ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}

# The general grammar from image-spec descriptor.md, used to tell "malformed" from "unsupported".
_GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")


class InvalidDigest(ValueError):
    """The string is not a digest this cache can verify."""


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, value: str) -> Digest:
        if len(value) > 256 or not _GRAMMAR.fullmatch(value):
            raise InvalidDigest(f"invalid digest {value[:80]!r}")
        algorithm, _, encoded = value.partition(":")
        length = SUPPORTED_ALGORITHMS.get(algorithm)
        if length is None:
            raise InvalidDigest(f"unsupported digest algorithm {algorithm!r}")
        if len(encoded) != length or not all(c in "0123456789abcdef" for c in encoded):
            raise InvalidDigest(f"{algorithm} digest must be {length} lower-case hex characters")
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> Hasher:
        return Hasher(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


class Hasher:
    """Incremental hash that yields a :class:`Digest`."""

    __slots__ = ("_algorithm", "_hash")

    def __init__(self, algorithm: str = "sha256") -> None:
        self._algorithm = algorithm
        self._hash = hashlib.new(algorithm)

    def update(self, data: bytes | memoryview) -> None:
        self._hash.update(data)

    def digest(self) -> Digest:
        return Digest(self._algorithm, self._hash.hexdigest())
