"""Bringing one image into the cache in-process, through the same services a pull goes through.

The manifest (and, for an index, the chosen platforms' manifests) through the manifest service; every config and
layer through the blob service, which serves a cached blob without reading it and otherwise starts (or joins) the
fill a pull would: single flight, digest verification and the size budget hold exactly as for a client. Nothing
passes through memory: a fill writes to its file in its own task, and the walker only waits for it to commit.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from proxy.media_types import Accept
from proxy.pullthrough.blobs import BlobService, CachedBlob
from proxy.pullthrough.fill import BlobFill
from proxy.pullthrough.manifests import Manifest, ManifestService
from proxy.routing import Origin
from proxy.warm.platforms import Platform, selects
from storage.digest import Digest, InvalidDigest

__all__ = ["ImageWalker", "WalkFailed", "Walked"]

# An index of indexes is legal but rare; deeper than this is a loop or a hostile registry.
_MAX_DEPTH = 3


class WalkFailed(Exception):
    """Part of an image could not be cached; the message says which and why, in one line."""


@dataclass
class Walked:
    blobs: int = 0  # configs and layers of the chosen platforms
    fetched: int = 0  # of those, how many were not cached yet
    fetched_bytes: int = 0
    platforms: list[str] = field(default_factory=list)  # an index's platforms that were walked
    digests: set[Digest] = field(default_factory=set)  # every manifest, config and layer walked: what a pin keeps


class ImageWalker:
    def __init__(self, manifests: ManifestService, blobs: BlobService, *, jobs: int = 4) -> None:
        self._manifests = manifests
        self._blobs = blobs
        self._jobs = jobs

    async def walk(self, origin: Origin, repository: str, manifest: Manifest, platforms: Sequence[Platform]) -> Walked:
        walked = Walked()
        blobs: dict[Digest, int] = {}
        await self._manifest(origin, repository, manifest, platforms, blobs, walked, 0)
        walked.blobs = len(blobs)
        walked.digests.update(blobs)
        slots = asyncio.Semaphore(self._jobs)

        async def one(digest: Digest) -> bool:
            async with slots:
                return await self._blob(origin, repository, digest)

        outcomes = await asyncio.gather(*(one(digest) for digest in blobs), return_exceptions=True)
        errors = []
        for (digest, size), outcome in zip(blobs.items(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome  # a cancellation
                errors.append(f"{digest}: {outcome}")
            elif outcome:
                walked.fetched += 1
                walked.fetched_bytes += size
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise WalkFailed(f"{len(errors)} of {len(blobs)} blobs not cached: {errors[0]}{more}")
        return walked

    async def _manifest(
        self,
        origin: Origin,
        repository: str,
        manifest: Manifest,
        platforms: Sequence[Platform],
        blobs: dict[Digest, int],
        walked: Walked,
        depth: int,
    ) -> None:
        walked.digests.add(manifest.digest)
        document = _document(manifest.body)
        entries = document.get("manifests")
        if isinstance(entries, list):
            if depth >= _MAX_DEPTH:
                raise WalkFailed("an index nested too deep")
            chosen = [entry for entry in entries if isinstance(entry, dict) and selects(platforms, entry)]
            if not chosen:
                raise WalkFailed(f"the index has no manifest for {', '.join(str(p) for p in platforms)}")
            for entry in chosen:
                if isinstance(raw := entry.get("platform"), dict) and (platform := Platform.of_descriptor(raw)):
                    walked.platforms.append(str(platform))
                digest, _ = _descriptor(entry)
                child = await self._manifests.by_digest(origin, repository, digest, Accept.every_type())
                await self._manifest(origin, repository, child, platforms, blobs, walked, depth + 1)
            return
        layers = document.get("layers")
        if "config" not in document or not isinstance(layers, list):
            raise WalkFailed(f"unsupported manifest type {manifest.media_type}")
        for raw in [document["config"], *layers]:
            # Foreign (Windows base) layers are not served by registries; clients fetch them from their URLs.
            if isinstance(raw, dict) and "foreign" in str(raw.get("mediaType", "")):
                continue
            digest, size = _descriptor(raw)
            blobs.setdefault(digest, size)

    async def _blob(self, origin: Origin, repository: str, digest: Digest) -> bool:
        """Whether the blob had to be fetched; raises WalkFailed (or the upstream's RegistryError) if it is not
        cached afterwards."""
        source = await self._blobs.open(origin, repository, digest)
        if isinstance(source, CachedBlob):
            return False  # never read: a hit costs a stat, and does not count as a use for the LRU order
        if isinstance(source, BlobFill):
            if await source.wait():
                return True
            raise WalkFailed("the download failed (the proxy's log says why)")
        # A relay: the cache cannot take the blob. Starting the stream and closing it closes its upstream download
        # now, rather than when the garbage collector finds it.
        async with aclosing(source.stream()) as chunks:
            async for _ in chunks:
                break
        raise WalkFailed("the cache could not take it (full or unwritable: the proxy's log says why)")


def _document(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise WalkFailed("the manifest is not JSON") from None
    if not isinstance(document, dict):
        raise WalkFailed("the manifest is not a JSON object")
    return document


def _descriptor(raw: object) -> tuple[Digest, int]:
    if not isinstance(raw, dict) or not isinstance(raw.get("digest"), str):
        raise WalkFailed("the manifest has a descriptor without a digest")
    size = raw.get("size")
    try:
        digest = Digest.parse(raw["digest"])
    except InvalidDigest as exc:
        raise WalkFailed(str(exc)) from None
    return digest, size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else 0
