"""Warming one image through a proxy's HTTP API, as a pull does: the manifest (every manifest type accepted), for
an index the manifests of the chosen platforms, then every blob they name.

Going through the API rather than the cache's files means single flight, digest verification and the upstream's
budget hold for warming exactly as for any other client. A blob the proxy says it had (``X-Cache: HIT``) is not
read: closing the response costs nothing. Any other blob is read to its end and discarded as it arrives, never
held in memory; the proxy commits a fill before it sends the last byte, and one more request then checks that the
blob is a hit now (a proxy whose cache is failing relays blobs without keeping them, which is not warming).
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from proxy.media_types import DOCKER_MANIFEST_LIST, MANIFEST_MEDIA_TYPES, OCI_INDEX, base_media_type
from proxy.upstream.client import MAX_MANIFEST_SIZE
from proxy.warm.platforms import Platform, selects
from proxy.warm.references import ImageReference
from storage.digest import Digest, InvalidDigest

__all__ = ["BlobOutcome", "ImageResult", "Observer", "WarmError", "Warmer"]

_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)
_INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
# An index of indexes is legal but rare; deeper than this is a loop or a hostile registry.
_MAX_DEPTH = 3
_MAX_ERROR_BODY = 64 * 1024


class BlobOutcome(enum.Enum):
    CACHED = "cached already"
    FETCHED = "fetched"
    FAILED = "failed"


class WarmError(Exception):
    """One image (or one of its blobs) could not be warmed; the message says why, in one line."""


class Observer(Protocol):
    """What the progress display is told. All calls come from the event loop the warmer runs on."""

    def image_started(self, reference: str) -> None: ...

    def blobs_found(self, count: int, size: int) -> None: ...

    def blob_started(self, digest: str, size: int) -> None: ...

    def blob_advanced(self, digest: str, received: int) -> None: ...

    def blob_finished(self, digest: str, size: int, outcome: BlobOutcome) -> None: ...


class _Silent:
    def image_started(self, reference: str) -> None:
        pass

    def blobs_found(self, count: int, size: int) -> None:
        pass

    def blob_started(self, digest: str, size: int) -> None:
        pass

    def blob_advanced(self, digest: str, received: int) -> None:
        pass

    def blob_finished(self, digest: str, size: int, outcome: BlobOutcome) -> None:
        pass


@dataclass
class ImageResult:
    reference: str
    platforms: list[str] = field(default_factory=list)  # an index's platforms that were warmed
    errors: list[str] = field(default_factory=list)
    blobs: Counter[BlobOutcome] = field(default_factory=Counter)
    sizes: Counter[BlobOutcome] = field(default_factory=Counter)  # bytes, by outcome

    @property
    def outcome(self) -> BlobOutcome:
        if self.errors or self.blobs[BlobOutcome.FAILED]:
            return BlobOutcome.FAILED
        return BlobOutcome.FETCHED if self.blobs[BlobOutcome.FETCHED] else BlobOutcome.CACHED


@dataclass(frozen=True)
class _Blob:
    digest: Digest
    size: int


class Warmer:
    """Warms images one after another, up to ``jobs`` blobs at a time; a blob is fetched once per run."""

    def __init__(self, client: httpx.AsyncClient, observer: Observer | None = None, *, jobs: int = 4) -> None:
        self._client = client
        self._observer = observer or _Silent()
        self._slots = asyncio.Semaphore(jobs)
        # Every distinct blob this run met, and what became of it: the run's totals count each blob once.
        self.blobs: dict[Digest, tuple[int, BlobOutcome]] = {}

    async def warm(self, reference: ImageReference, platforms: Sequence[Platform] = ()) -> ImageResult:
        result = ImageResult(str(reference))
        self._observer.image_started(str(reference))
        name = reference.proxy_name
        blobs: dict[Digest, _Blob] = {}
        try:
            await self._walk(name, reference.reference, platforms, blobs, result, 0)
        except WarmError as exc:
            result.errors.append(str(exc))
            return result
        except httpx.HTTPError as exc:
            result.errors.append(_transport_error(exc))
            return result
        self._observer.blobs_found(len(blobs), sum(b.size for b in blobs.values()))
        outcomes = await asyncio.gather(*(self._blob(name, blob) for blob in blobs.values()))
        for blob, (outcome, error) in zip(blobs.values(), outcomes, strict=True):
            result.blobs[outcome] += 1
            result.sizes[outcome] += blob.size
            if error is not None:
                result.errors.append(error)
        return result

    async def _walk(
        self,
        name: str,
        reference: str,
        platforms: Sequence[Platform],
        blobs: dict[Digest, _Blob],
        result: ImageResult,
        depth: int,
    ) -> None:
        media_type, manifest = await self._manifest(name, reference)
        entries = manifest.get("manifests")
        if media_type in _INDEX_TYPES or isinstance(entries, list):
            if depth >= _MAX_DEPTH or not isinstance(entries, list):
                raise WarmError("an index nested too deep, or without a list of manifests")
            chosen = [e for e in entries if isinstance(e, dict) and selects(platforms, e)]
            if not chosen:
                raise WarmError(f"the index has no manifest for {', '.join(str(p) for p in platforms)}")
            for entry in chosen:
                if isinstance(platform := entry.get("platform"), dict) and (found := Platform.of_descriptor(platform)):
                    result.platforms.append(str(found))
                child = str(_descriptor(entry).digest)
                try:
                    await self._walk(name, child, platforms, blobs, result, depth + 1)
                except WarmError as exc:
                    raise WarmError(f"manifest {child}: {exc}") from None
            return
        layers = manifest.get("layers")
        if "config" not in manifest or not isinstance(layers, list):
            raise WarmError(f"unsupported manifest type {media_type or '(none)'}")
        for raw in [manifest["config"], *layers]:
            # Foreign (Windows base) layers are not served by registries; clients fetch them from their URLs.
            if isinstance(raw, dict) and "foreign" in str(raw.get("mediaType", "")):
                continue
            blob = _descriptor(raw)
            blobs.setdefault(blob.digest, blob)

    async def _manifest(self, name: str, reference: str) -> tuple[str, dict[str, Any]]:
        async with self._client.stream(
            "GET", f"/v2/{name}/manifests/{reference}", headers={"Accept": _ACCEPT}
        ) as response:
            if response.status_code != 200:
                raise WarmError(await _describe(response))
            body = await _read_bounded(response, MAX_MANIFEST_SIZE)
        expected = _digest(reference) if ":" in reference else None
        actual = Digest.of(body, expected.algorithm if expected else "sha256")
        announced = response.headers.get("docker-content-digest")
        if (expected and actual != expected) or (announced and expected is None and announced != str(actual)):
            raise WarmError(f"the manifest of {reference} does not match its digest")
        try:
            manifest = json.loads(body)
        except ValueError:
            raise WarmError("the manifest is not JSON") from None
        if not isinstance(manifest, dict):
            raise WarmError("the manifest is not a JSON object")
        media_type = base_media_type(response.headers.get("content-type", "")) or str(manifest.get("mediaType", ""))
        return media_type, manifest

    async def _blob(self, name: str, blob: _Blob) -> tuple[BlobOutcome, str | None]:
        earlier = self.blobs.get(blob.digest)
        if earlier is not None and earlier[1] is not BlobOutcome.FAILED:
            return BlobOutcome.CACHED, None  # an earlier image of this run brought it in
        async with self._slots:
            self._observer.blob_started(str(blob.digest), blob.size)
            outcome, error = BlobOutcome.FAILED, None
            try:
                outcome = await self._fetch(name, blob)
            except WarmError as exc:
                error = str(exc)
            except httpx.HTTPError as exc:
                error = f"{blob.digest}: {_transport_error(exc)}"
            self._observer.blob_finished(str(blob.digest), blob.size, outcome)
        self.blobs[blob.digest] = (blob.size, outcome)
        return outcome, error

    async def _fetch(self, name: str, blob: _Blob) -> BlobOutcome:
        url = f"/v2/{name}/blobs/{blob.digest}"
        received = 0
        async with self._client.stream("GET", url) as response:
            if response.status_code != 200:
                raise WarmError(f"{blob.digest}: {await _describe(response)}")
            cache = response.headers.get("x-cache")
            if cache == "HIT":
                return BlobOutcome.CACHED
            async for chunk in response.aiter_raw():
                received += len(chunk)
                self._observer.blob_advanced(str(blob.digest), len(chunk))
        if received != blob.size:
            raise WarmError(f"{blob.digest}: received {received} bytes, the manifest says {blob.size}")
        if cache in ("MISS", "RELAYED"):  # RELAYED: the proxy said it could not keep it; the second GET shows it
            async with self._client.stream("GET", url) as again:
                if again.status_code != 200 or again.headers.get("x-cache") != "HIT":
                    raise WarmError(
                        f"{blob.digest}: the proxy served it but did not keep it (its cache may be full or "
                        "unwritable: see its log)"
                    )
        return BlobOutcome.FETCHED


def _descriptor(raw: Any) -> _Blob:
    if not isinstance(raw, dict) or not isinstance(raw.get("digest"), str):
        raise WarmError("the manifest has a descriptor without a digest")
    size = raw.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise WarmError(f"the manifest has no valid size for {raw['digest'][:80]}")
    return _Blob(_digest(raw["digest"]), size)


def _digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except InvalidDigest as exc:
        raise WarmError(str(exc)) from None


async def _read_bounded(response: httpx.Response, limit: int) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > limit:
            raise WarmError(f"{response.url.path}: larger than {limit} bytes")
    return bytes(body)


async def _describe(response: httpx.Response) -> str:
    """``404 MANIFEST_UNKNOWN: manifest unknown``: the status and the registry error the proxy sent, if any."""
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > _MAX_ERROR_BODY:
            break
    try:
        error = json.loads(bytes(body))["errors"][0]
        text = f"{response.status_code} {error['code']}: {error['message']}"
    except (ValueError, LookupError, TypeError):
        text = f"HTTP {response.status_code}"
    return "".join(c if c.isprintable() else "?" for c in text)[:300]


def _transport_error(exc: httpx.HTTPError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
