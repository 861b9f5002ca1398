"""``ls --outdated``: one upstream HEAD per cached tag, to tell which moved since they were cached."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import replace

from proxy.errors import RegistryError
from proxy.lifecycle.listing import Listed
from proxy.media_types import Accept
from proxy.upstream.client import UpstreamRegistry

__all__ = ["check_outdated"]

# HEADs in flight at once: enough to list a few hundred tags quickly, few enough not to look like a flood.
_CONCURRENCY = 8


async def check_outdated(rows: Sequence[Listed], upstreams: Mapping[str, UpstreamRegistry]) -> list[Listed]:
    """``rows`` with the upstream's current digest of each tag (rows without a tag cannot move: left unchecked)."""
    slots = asyncio.Semaphore(_CONCURRENCY)

    async def check(row: Listed) -> Listed:
        image = row.image
        if not image.tag:
            return row
        remote = upstreams.get(image.registry)
        if remote is None:
            return replace(row, checked=True, check_error="registry no longer configured")
        async with slots:
            try:
                # Ask for the type that was cached: a tag's digest depends on the manifest type negotiated.
                head = await remote.head_manifest(image.repository, image.tag, Accept((image.media_type,)))
            except RegistryError as exc:
                return replace(row, checked=True, check_error=exc.message)
        if head.digest is None:
            return replace(row, checked=True, check_error="upstream sent no digest")
        return replace(row, checked=True, upstream_digest=str(head.digest))

    return list(await asyncio.gather(*(check(row) for row in rows)))
