"""``[[prefetch]]``: images warmed in the background after start-up, re-checked on their interval, maybe pinned.

How it warms: in-process, through the manifest and blob services a pull goes through (:mod:`.walk`), not over
HTTP: no dependence on the listen address, TLS or client logins, and single flight and the budget hold as for any
pull. A check asks the manifest service for the tag with a TTL of zero: one upstream HEAD, and a GET only when the
tag moved to a manifest the cache lacks. The walk that follows is local (a stat per blob) and fetches only what is
missing, so it also refills what eviction or ``gc`` removed.

Pins: an entry with ``pin = true`` pins its tag (or digest) in the inventory. The inventory expands a tag pin
through the tag's current digest, so when the tag moves the new content is pinned and the old becomes evictable
at the moment the move is recorded, with no pin/unpin pair that a crash could leave half done. Pins belong to the
configuration: at start-up, pins no entry asks for any more are removed.

Several worker processes (or replicas on a bucket): only the one that won the election (an :class:`Election`:
``<root>/prefetch.lock``, or a lease in the bucket) prefetches; the others try again every minute, so the job moves
on if that process dies. One that finds it lost the election (another replica took its lease over, thinking it
dead) stops and stands again. A pinned entry is pinned again after each check with every digest its walk went
through, so that replicas without this inventory keep exactly what was cached.

Failures (upstream down, tag missing) are logged at WARNING with the image's name and retried with a backoff,
never raised.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from proxy.config import PrefetchSettings
from proxy.errors import RegistryError
from proxy.lifecycle.pulls import UncountedPulls
from proxy.lifecycle.shared import PREFETCH_LOCK, Election
from proxy.lifecycle.walk import ImageWalker, Walked, WalkFailed
from proxy.media_types import Accept
from proxy.pullthrough.blobs import BlobService
from proxy.pullthrough.manifests import Manifest, ManifestService
from proxy.routing import Origin, Router
from proxy.warm.platforms import Platform
from proxy.warm.references import ImageReference, parse_reference
from storage.digest import Digest
from storage.interfaces import StorageError
from storage.inventory import Pin

__all__ = ["PREFETCH_LOCK", "Pins", "PrefetchTarget", "Prefetcher", "targets"]

log = logging.getLogger(__name__)

# A worker without the lock asks for it again this often.
LOCK_RETRY = 60.0
# After a failure: the first retry, doubled each time up to the cap (and never later than the entry's refresh).
RETRY_FIRST = 30.0
RETRY_MAX = 1800.0


@dataclass(frozen=True)
class PrefetchTarget:
    reference: ImageReference
    platforms: tuple[Platform, ...]  # empty: every platform of an index
    pin: bool
    refresh: float  # seconds; 0: only at start-up

    @property
    def pin_key(self) -> tuple[str, str, str]:
        ref = self.reference
        return ref.registry, ref.repository, ref.reference


def targets(entries: Sequence[PrefetchSettings]) -> list[PrefetchTarget]:
    """The configured entries, parsed (the config loader has checked them with the same rules)."""
    return [
        PrefetchTarget(parse_reference(e.image), tuple(Platform.parse(p) for p in e.platforms), e.pin, e.refresh)
        for e in entries
    ]


class Pins(Protocol):
    async def pin(self, registry: str, repository: str, reference: str, content: Collection[Digest] = ()) -> None:
        """``content``: digests the caller knows the pin keeps (a walk's), besides what the inventory says."""
        ...

    async def unpin(self, registry: str, repository: str, reference: str) -> bool: ...

    async def pins(self) -> list[Pin]: ...


@dataclass
class _State:
    digest: Digest | None = None  # what the reference pointed to at the last successful check
    failures: int = 0


class Prefetcher:
    def __init__(
        self,
        entries: Sequence[PrefetchTarget],
        router: Router,
        manifests: ManifestService,
        blobs: BlobService,
        pins: Pins,
        pulls: UncountedPulls,
        election: Election,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries = list(entries)
        self._router = router
        self._manifests = manifests
        self._walker = ImageWalker(manifests, blobs)
        self._pins = pins
        self._pulls = pulls
        self._election = election
        self._clock = clock
        self._states = [_State() for _ in self._entries]
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="prefetch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            await self._election.release()
        except Exception as exc:
            log.warning("prefetch: cannot give up the election: %s", exc)

    async def _run(self) -> None:
        # With nothing to warm, only pins left by entries since removed are to go, which any process may drop
        # (idempotently) without being elected.
        if not self._entries:
            await self._reconcile_pins()
            return
        due = {i: 0.0 for i in range(len(self._entries))}
        while due:
            if not await self._elected():
                return
            await self._reconcile_pins()
            while due and self._election.held:
                i = min(due, key=due.__getitem__)
                wait = due[i] - self._clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                delay = self._next_check(i, await self.check(i))
                if delay is None:
                    del due[i]
                else:
                    due[i] = self._clock() + delay
            if due:
                log.warning("prefetch: another process took the job over; standing again")

    async def _reconcile_pins(self) -> None:
        try:
            await self.reconcile_pins()
        except Exception as exc:
            log.warning("prefetch: cannot bring the pins in line with the configuration: %s", exc)

    async def _elected(self) -> bool:
        """Wait until this process wins the prefetch election; False if it cannot even stand (a cache root whose
        lock file cannot be opened)."""
        while True:
            try:
                if await self._election.acquire():
                    return True
            except OSError as exc:
                # The cache root is unusable: pulls are relayed uncached, and there is nothing to warm.
                log.warning("prefetch: disabled, cannot open its lock file: %s", exc.strerror)
                return False
            except StorageError as exc:
                log.warning("prefetch: cannot stand for the election (retrying in %.0f s): %s", LOCK_RETRY, exc)
            await asyncio.sleep(LOCK_RETRY)

    def _next_check(self, i: int, ok: bool) -> float | None:
        """Seconds until entry ``i`` is checked again, or None for never."""
        entry, state = self._entries[i], self._states[i]
        if ok:
            return entry.refresh or None
        backoff = min(RETRY_FIRST * 2.0 ** min(state.failures - 1, 16), RETRY_MAX)
        return min(backoff, entry.refresh) if entry.refresh else backoff

    async def reconcile_pins(self) -> None:
        """Pin what the configuration pins; unpin what it no longer does (an entry removed, or ``pin = false``)."""
        wanted = {entry.pin_key for entry in self._entries if entry.pin}
        for pin in await self._pins.pins():
            key = (pin.registry, pin.repository, pin.reference)
            if key not in wanted:
                await self._pins.unpin(*key)
                log.info("unpinned %s/%s:%s: no [[prefetch]] entry pins it any more", *key)
        for key in sorted(wanted):
            await self._pins.pin(*key)

    async def check(self, i: int) -> bool:
        """Check entry ``i`` upstream and cache what it lacks; whether that worked. Never raises (but cancellation)."""
        entry, state = self._entries[i], self._states[i]
        try:
            manifest = await self._resolve(entry)
            moved = state.digest is not None and manifest.digest != state.digest
            walked = await self._walker.walk(*self._where(entry), manifest, entry.platforms)
        except (RegistryError, StorageError, WalkFailed) as exc:
            state.failures += 1
            message = exc.message if isinstance(exc, RegistryError) else str(exc)
            log.warning("prefetch of %s failed (attempt %d, retrying later): %s", entry.reference, state.failures,
                        message)  # fmt: skip
            return False
        except Exception:
            state.failures += 1
            log.exception("prefetch of %s failed unexpectedly (retrying later)", entry.reference)
            return False
        if moved:
            log.info("prefetch: %s moved from %s to %s", entry.reference, state.digest, manifest.digest)
        state.digest, state.failures = manifest.digest, 0
        if entry.pin:
            await self._pin_walked(entry, walked)
        platforms = f" [{', '.join(walked.platforms)}]" if walked.platforms else ""
        level = logging.INFO if walked.fetched or moved else logging.DEBUG
        log.log(level, "prefetched %s%s: %s, %d blobs, %d fetched (%.1f MiB)%s", entry.reference, platforms,
                manifest.digest, walked.blobs, walked.fetched, walked.fetched_bytes / 2**20,
                "; pinned" if entry.pin else "")  # fmt: skip
        return True

    async def _pin_walked(self, entry: PrefetchTarget, walked: Walked) -> None:
        try:
            await self._pins.pin(*entry.pin_key, content=walked.digests)
        except Exception as exc:
            # The pin set at election still holds; what it keeps is worked out again at the next check.
            log.warning("prefetch: cannot record what the pin of %s keeps: %s", entry.reference, exc)

    async def _resolve(self, entry: PrefetchTarget) -> Manifest:
        origin, repository = self._where(entry)
        # A TTL of zero: when the prefetcher asks, the tag is revalidated now (one HEAD), whatever the upstream's
        # tag_ttl; clients keep theirs, and gain from the fresh record.
        fresh = replace(origin, tag_ttl=0.0)
        every = Accept.every_type()
        ref = entry.reference
        with self._pulls.uncounted():
            if ref.digest is not None:
                return await self._manifests.by_digest(fresh, repository, ref.digest, every)
            manifest = await self._manifests.by_tag(fresh, repository, ref.reference, every)
        if manifest.stale:
            raise WalkFailed(f"upstream unreachable; the cached {manifest.digest} is kept")
        return manifest

    def _where(self, entry: PrefetchTarget) -> tuple[Origin, str]:
        target = self._router.resolve(entry.reference.proxy_name)
        return target.origin, target.repository
