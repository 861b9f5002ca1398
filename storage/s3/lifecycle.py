"""What replicas on one bucket share of the cache's lifecycle: recent reads, pins, whose turn it is to evict, and
who prefetches (the keys and their bodies: :mod:`storage.s3.layout`).

Each replica keeps its inventory locally, as its working copy; this is what it cannot see there. Reads are
published as one object per replica (per cache root: its id is kept in ``<root>/replica-id``, so a restart
rewrites its own object rather than leaving one behind) holding every blob used in the last ``window`` seconds
as its inventory has them, the others' reads it took in included. The lifecycle publishes at most once a half
minute, so the writes are bounded whatever the traffic, and a reader that comes by less often than each
publication still sees every read of the window. Times are the replicas' own clocks (seconds since the epoch): a
few seconds of skew does not change which blobs are least recently used.

Pins hold the digests they keep, as the replica that pinned worked them out, because the others' inventories
may not know the image. A pin expires unless renewed; a renewal is conditional on the version its writer wrote
last, so a replica whose pin was since removed or rewritten by another (which won the prefetch election from it)
stops renewing it rather than bringing it back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from storage.digest import Digest, InvalidDigest
from storage.inventory import PublishedPin
from storage.s3.leases import Lease, take
from storage.s3.objects import ObjectClient, ObjectInfo, PreconditionFailed, S3Settings

__all__ = [
    "ACCESS_WINDOW",
    "BucketElection",
    "BucketLifecycle",
    "access_key",
    "pin_key",
    "replica_id",
]

log = logging.getLogger(__name__)

LIFECYCLE = "lifecycle/"
ACCESS = LIFECYCLE + "access/"
PINS = LIFECYCLE + "pins/"
EVICT_LEASE = LIFECYCLE + "evict.lease"
PREFETCH_LEASE = LIFECYCLE + "prefetch.lease"
REPLICA_ID = "replica-id"  # under the cache root

# Reads older than this are dropped from a replica's object; an object not rewritten for this long is deleted.
ACCESS_WINDOW = 3600.0
# The eviction and prefetch leases are renewed this often; one not renewed for 3 beats is taken over.
HEARTBEAT = 5.0
# The lifecycle's requests are few and small: a pool of their own, apart from the blobs' streams.
_CONNECTIONS = 8


def access_key(prefix: str, replica: str) -> str:
    if not _is_replica_id(replica):
        raise ValueError(f"invalid replica id {replica[:40]!r}")
    return f"{prefix}{ACCESS}{replica}"


def replica_id(root: Path) -> str:
    """The id of the replica using ``root``: made once (by whichever of its processes comes first), then read.

    OSError if the root cannot be written.
    """
    path = root / REPLICA_ID
    for _ in range(3):
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            pass
        except (UnicodeDecodeError, ValueError):
            path.unlink(missing_ok=True)  # damaged: made anew
        else:
            if _is_replica_id(text):
                return text
            path.unlink(missing_ok=True)
        # Written aside, then linked into place: of processes starting together one wins, the others read its id.
        aside = root / f"{REPLICA_ID}.{secrets.token_hex(8)}.partial"
        aside.write_text(secrets.token_hex(8) + "\n", encoding="ascii")
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        finally:
            aside.unlink()
    raise OSError(f"cannot make {path}")


def pin_key(prefix: str, registry: str, repository: str, reference: str) -> str:
    # Any reference gives a short, safe name; JSON keeps the three parts apart.
    name = hashlib.sha256(json.dumps([registry, repository, reference]).encode()).hexdigest()[:32]
    return f"{prefix}{PINS}{name}"


class BucketLifecycle:
    """A :class:`proxy.lifecycle.shared.SharedLifecycle` in the bucket, for one replica (its processes share the
    replica id, and the inventory)."""

    replicated = True

    def __init__(
        self,
        client: ObjectClient,
        replica: str,
        *,
        heartbeat: float = HEARTBEAT,
        window: float = ACCESS_WINDOW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._prefix = client.settings.prefix
        self.replica = replica
        self._own_key = access_key(self._prefix, replica)
        self._heartbeat = heartbeat
        self.access_window = window
        self._clock = clock
        # Pin key → the version this process wrote last: renewals are made by the process that wrote.
        self._pin_etags: dict[str, str] = {}
        self._writer = f"{replica}.{secrets.token_hex(4)}"  # this process, in the pins it writes

    @classmethod
    def for_root(cls, client: ObjectClient, root: Path, **options: Any) -> BucketLifecycle:
        """The lifecycle state in ``client``'s bucket for the replica using ``root`` (its id is kept there)."""
        try:
            root.mkdir(parents=True, exist_ok=True)
            replica = replica_id(root)
        except OSError as exc:
            # The root is unusable (the proxy then serves uncached): an id for this process alone will do.
            replica = secrets.token_hex(8)
            log.warning("cannot keep the replica id under %s (%s); using %s for this process", root, exc, replica)
        return cls(client, replica, **options)

    @classmethod
    @asynccontextmanager
    async def connect(cls, settings: S3Settings, root: Path, **options: Any) -> AsyncIterator[BucketLifecycle]:
        """:meth:`for_root` on a client of its own, for ``settings``' bucket (created if missing)."""
        async with ObjectClient(settings, max_connections=_CONNECTIONS) as client:
            await client.ensure_bucket()
            yield cls.for_root(client, root, **options)

    # Reads

    async def publish_accesses(self, accesses: Mapping[str, float]) -> None:
        cutoff = self._clock() - self.access_window
        reads = {digest: round(last, 3) for digest, last in accesses.items() if last >= cutoff}
        body = {"replica": self.replica, "accesses": reads}
        await self._client.put(self._own_key, json.dumps(body, separators=(",", ":"), sort_keys=True).encode())

    async def read_accesses(self) -> dict[str, float]:
        keys = [key async for key, _, _ in self._client.list_objects(self._prefix + ACCESS) if key != self._own_key]
        merged: dict[str, float] = {}
        for key in keys:
            found = await self._client.get(key)
            if found is None:
                continue  # deleted since the listing
            data, info = found
            for digest, last in _reads(data).items():
                merged[digest] = max(last, merged.get(digest, last))
            age = _age(info)
            if age is not None and age > self.access_window:
                # Not rewritten for a whole window: its replica is gone, or read nothing since; every replica still
                # running has taken it in long ago. Only this version: one written meanwhile stays.
                try:
                    await self._client.delete(key, if_match=info.etag)
                except PreconditionFailed:
                    pass
        return merged

    # Pins

    async def put_pin(self, pin: PublishedPin, *, renew: bool = False) -> bool:
        key = pin_key(self._prefix, *pin.key)
        body = {
            "registry": pin.registry,
            "repository": pin.repository,
            "reference": pin.reference,
            "digests": sorted(pin.digests),
            "pinned_at": pin.pinned_at,
            "expires": pin.expires,
            # ETags are digests of the content: naming the writer makes another process's version of a pin differ.
            "writer": self._writer,
        }
        data = json.dumps(body, separators=(",", ":")).encode()
        written = self._pin_etags.get(key)
        if renew and written is None:
            return False
        try:
            self._pin_etags[key] = await self._client.put(key, data, if_match=written if renew else None)
        except PreconditionFailed:
            # Removed or rewritten by another replica since: theirs to keep (or not), not ours to bring back.
            self._pin_etags.pop(key, None)
            return False
        return True

    async def delete_pin(self, registry: str, repository: str, reference: str) -> None:
        key = pin_key(self._prefix, registry, repository, reference)
        self._pin_etags.pop(key, None)
        await self._client.delete(key)

    async def read_pins(self) -> list[PublishedPin]:
        keys = [key async for key, _, _ in self._client.list_objects(self._prefix + PINS)]
        pins: list[PublishedPin] = []
        now = self._clock()
        for key in keys:
            found = await self._client.get(key)
            if found is None:
                continue
            data, info = found
            pin = _pin(data)
            if pin is None or pin_key(self._prefix, *pin.key) != key:
                log.warning("ignoring %s: not a pin this proxy wrote", key)
                continue
            if pin.expires >= now:
                pins.append(pin)
                continue
            try:
                await self._client.delete(key, if_match=info.etag)  # nobody renewed it; unless renewed just now
            except PreconditionFailed:
                pass
        return pins

    # Turns

    @asynccontextmanager
    async def eviction_turn(self) -> AsyncIterator[bool]:
        lease = await take(self._client, self._prefix + EVICT_LEASE, self._heartbeat, what="eviction turn")
        if lease is None:
            yield False
            return
        try:
            yield True
        finally:
            await lease.release()

    def prefetch_election(self) -> BucketElection:
        return BucketElection(self._client, self._prefix + PREFETCH_LEASE, self._heartbeat)


class BucketElection:
    """An :class:`proxy.lifecycle.shared.Election` by a lease in the bucket, held (and renewed) until released."""

    def __init__(self, client: ObjectClient, key: str, heartbeat: float) -> None:
        self._client = client
        self._key = key
        self._heartbeat = heartbeat
        self._lease: Lease | None = None

    @property
    def held(self) -> bool:
        return self._lease is not None and not self._lease.lost

    async def acquire(self) -> bool:
        if not self.held:
            self._lease = await take(self._client, self._key, self._heartbeat, what="prefetch lease")
        return self.held

    async def release(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            await lease.release()


def _age(info: ObjectInfo) -> float | None:
    """Seconds since the object was written, on the server's clock alone."""
    return (info.server_now - info.modified).total_seconds() if info.server_now else None


def _reads(data: bytes) -> dict[str, float]:
    """The reads in an access object; entries that are not a digest and a time are skipped (a damaged object)."""
    try:
        accesses = json.loads(data).get("accesses")
    except (ValueError, AttributeError):
        return {}
    if not isinstance(accesses, dict):
        return {}
    reads: dict[str, float] = {}
    for digest, last in accesses.items():
        if isinstance(last, int | float) and not isinstance(last, bool) and math.isfinite(last) and _digest(digest):
            reads[digest] = float(last)
    return reads


def _pin(data: bytes) -> PublishedPin | None:
    try:
        body = json.loads(data)
        registry, repository, reference = body["registry"], body["repository"], body["reference"]
        digests, pinned_at, expires = body["digests"], float(body["pinned_at"]), float(body["expires"])
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if not all(isinstance(part, str) for part in (registry, repository, reference)) or not isinstance(digests, list):
        return None
    kept = frozenset(digest for digest in digests if _digest(digest))
    return PublishedPin(registry, repository, reference, kept, pinned_at, expires)


def _is_replica_id(text: str) -> bool:
    return 0 < len(text) <= 64 and all(c in "0123456789abcdef" for c in text)


def _digest(text: object) -> bool:
    if not isinstance(text, str):
        return False
    try:
        Digest.parse(text)
    except InvalidDigest:
        return False
    return True
