"""The layout of the cache in an S3 bucket, in one place (:mod:`storage.paths` is the same for a disk).

::

    <prefix>blobs/<alg>/<hex>               content: layers, configs and manifests alike, as on disk (no shard
                                            directory: S3 keys are flat). Only ever written whole and verified:
                                            a small blob by one PutObject, a fill by a multipart upload that is
                                            completed only after its digest and size were checked, so an
                                            incomplete or wrong blob is never visible under this key
    <prefix>fills/<alg>/<hex>/<key-hash>    the lease of the one replica filling a blob for a key (registry and
                                            repository: what it asks its upstream), created with
                                            ``If-None-Match: *``; JSON ``{"holder", "beat", "started", "size"}``,
                                            rewritten with ``If-Match`` every heartbeat; deleted by its holder
                                            once the fill committed or failed. ``<key-hash>`` is the first 32 hex
                                            characters of the key's SHA-256: any key gives a safe, short name
    <prefix>locks/<sha256 of key>           a fetch lock (:mod:`storage.s3.locks`): the lease of the one replica
                                            asking an upstream for a manifest by tag or digest, the same JSON
                                            and the same rules as a fill's lease
    <prefix>repositories/<registry>/<repository>/
      _manifests/<alg>/<hex>                JSON {"media_type", "size"}: this repository is known to have this
                                            manifest
      _tags/<tag>                           JSON {"digest", "media_type", "size", "fetched_at"}: the last answer
                                            an upstream gave for the tag, and when (by the clock of the replica
                                            that asked)
      _referrers/<alg>/<hex>                the same for the referrers index of a subject manifest
      _layers/<alg>/<hex>                   empty: this repository is known to hold this blob; a blob is served
                                            under a repository only with this link
    <prefix>lifecycle/access/<replica>      the blobs used in the last hour as one replica's inventory has them
                                            (its reads and writes, and the others' reads it took in): JSON
                                            ``{"replica", "accesses": {digest: last use}}``, times in seconds
                                            since the epoch on its clock. ``<replica>``: 16 random hex characters
                                            made once per cache root (``<root>/replica-id``), shared by the
                                            replica's worker processes, of which one (holding ``<root>/
                                            lifecycle.sync.lock``) rewrites it whole at most every 30 s when it
                                            changed, and at shutdown: one object per replica, whatever the
                                            traffic. That process also takes in the others' as often (the latest
                                            time of each wins), so a reader that comes by less often than each
                                            rewrite still sees every read of the hour. One not rewritten for an
                                            hour is deleted (``If-Match`` on the version read) by the next reader:
                                            its replica is gone or idle, and everyone has taken it in
    <prefix>lifecycle/pins/<ref-hash>       a pin (``[[prefetch]] pin = true``): JSON ``{"registry",
                                            "repository", "reference", "digests", "pinned_at", "expires",
                                            "writer"}``, with every digest it keeps as the prefetching replica
                                            worked them out (the others' inventories may not know the image);
                                            ``<ref-hash>``: the first 32 hex characters of the SHA-256 of the
                                            JSON list ``[registry, repository, reference]``. Renewed by its
                                            writer an hour at a time, with ``If-Match`` on the version it wrote
                                            (one another replica removed or rewrote is theirs: ``writer``, the
                                            replica id and a random token of the writing process, makes their
                                            version's ETag differ); past ``expires`` it counts no more, and its
                                            next reader deletes it
    <prefix>lifecycle/evict.lease           a lease as above (heartbeat 5 s), held by the one replica evicting
                                            for the length of its pass
    <prefix>lifecycle/prefetch.lease        the same, held by the one replica that prefetches for as long as it
                                            runs; taken over once its holder stops renewing it

The repository index is the disk's (:mod:`storage.paths`) under ``<prefix>``, key for path, and its entries hold
the same JSON: every key is built from a path that :mod:`storage.paths` built, which validated each name in it
first. An entry is written whole by one PutObject, so it is never seen half-written, and S3's read-after-write
consistency lets every replica read what any other wrote last; a tag's entry is the last answer written (each is
a complete answer of the upstream; ordering them by ``fetched_at`` would compare the clocks of different replicas,
and once the manifest service holds a fetch lock per tag, replicas no longer ask at the same time).
A tag list is one listing of ``_tags/``; the repositories are found by listing one level of names at a time
(a delimiter listing per name component), as the disk's are by walking its directories.

Multipart uploads in flight are under the blob's own key (invisible until completed); those left by a crash
are found with ListMultipartUploads and aborted by ``sweep``. Partial copies a fill keeps for the clients of
its own process (who read it while it grows) are local files: ``<root>/s3-scratch/<alg>-<hex>.<random>.partial``.

``<prefix>`` is ``[storage] prefix``: empty, or a path ending in ``/``. Each replica keeps its lifecycle inventory
(sizes, last accesses, pins) under ``<root>`` (:mod:`storage.paths`) as its working copy: reconciled with the
listing of ``blobs/`` (at start-up, every two minutes, and before an eviction pass), and with the access and pin
objects above (:mod:`storage.s3.lifecycle`, :mod:`proxy.lifecycle.service`).
"""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath

from storage.digest import SUPPORTED_ALGORITHMS, Digest, InvalidDigest
from storage.paths import REPOSITORIES

__all__ = [
    "BLOBS",
    "FILLS",
    "LOCKS",
    "SCRATCH",
    "blob_digest",
    "blob_key",
    "fills_prefix",
    "index_key",
    "lease_key",
    "lock_key",
    "locks_prefix",
    "repositories_prefix",
]

BLOBS = "blobs/"
FILLS = "fills/"
LOCKS = "locks/"
SCRATCH = "s3-scratch"


def blob_key(prefix: str, digest: Digest) -> str:
    _check_digest(digest)
    return f"{prefix}{BLOBS}{digest.algorithm}/{digest.hex}"


def blob_digest(prefix: str, key: str) -> Digest | None:
    """The digest whose blob is at ``key``, or None for any other key."""
    if not key.startswith(prefix + BLOBS):
        return None
    algorithm, _, hex_ = key[len(prefix + BLOBS) :].partition("/")
    try:
        return Digest.parse(f"{algorithm}:{hex_}")
    except InvalidDigest:
        return None


def lease_key(prefix: str, digest: Digest, key: str) -> str:
    _check_digest(digest)
    name = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    return f"{prefix}{FILLS}{digest.algorithm}/{digest.hex}/{name}"


def fills_prefix(prefix: str) -> str:
    return prefix + FILLS


def lock_key(prefix: str, key: str) -> str:
    """The fetch lock of ``key`` (any string: only its hash is in the name)."""
    return f"{prefix}{LOCKS}{hashlib.sha256(key.encode('utf-8')).hexdigest()}"


def locks_prefix(prefix: str) -> str:
    return prefix + LOCKS


def index_key(prefix: str, path: PurePosixPath) -> str:
    """The key of the index entry at ``path``: one that a :mod:`storage.paths` function built (and validated)."""
    if path.is_absolute() or path.parts[:1] != (REPOSITORIES,) or ".." in path.parts:
        raise ValueError(f"not a repository index path: {str(path)[:200]!r}")
    return prefix + path.as_posix()


def repositories_prefix(prefix: str) -> str:
    return f"{prefix}{REPOSITORIES}/"


def _check_digest(digest: Digest) -> None:
    # Digest instances are normally built by Digest.parse; this guards hand-built ones (as storage.paths does).
    expected = SUPPORTED_ALGORITHMS.get(digest.algorithm)
    if expected is None or len(digest.hex) != expected or not all(c in "0123456789abcdef" for c in digest.hex):
        raise ValueError(f"invalid digest {str(digest)[:80]!r}")
