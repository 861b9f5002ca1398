"""Pulls made by the proxy itself (prefetch) are not pulls: ``ls`` shows how CI uses an image, not how often the
prefetcher looked at it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from storage.digest import Digest
from storage.interfaces import ImageRecorder, TagRecord

__all__ = ["UncountedPulls"]


class UncountedPulls:
    """An :class:`~storage.interfaces.ImageRecorder` that passes everything on, except the pulls made inside
    :meth:`uncounted`.

    A context variable rather than a second manifest service: the manifest service calls ``tag_pulled`` once per
    caller, in the caller's context, outside the flight it shares, so the prefetcher and clients still share one
    lookup (and one upstream round trip) of a tag.
    """

    def __init__(self, inner: ImageRecorder) -> None:
        self._inner = inner
        self._quiet: ContextVar[bool] = ContextVar("uncounted pulls", default=False)

    @contextmanager
    def uncounted(self) -> Iterator[None]:
        token = self._quiet.set(True)
        try:
            yield
        finally:
            self._quiet.reset(token)

    def manifest_cached(self, registry: str, repository: str, digest: Digest, media_type: str, body: bytes) -> None:
        self._inner.manifest_cached(registry, repository, digest, media_type, body)

    def tag_cached(self, registry: str, repository: str, tag: str, record: TagRecord) -> None:
        self._inner.tag_cached(registry, repository, tag, record)

    def tag_pulled(self, registry: str, repository: str, tag: str) -> None:
        if not self._quiet.get():
            self._inner.tag_pulled(registry, repository, tag)
