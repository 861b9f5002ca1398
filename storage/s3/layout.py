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

Multipart uploads in flight are under the blob's own key (invisible until completed); those left by a crash
are found with ListMultipartUploads and aborted by ``sweep``. Partial copies a fill keeps for the clients of
its own process (who read it while it grows) are local files: ``<root>/s3-scratch/<alg>-<hex>.<random>.partial``.

``<prefix>`` is ``[storage] prefix``: empty, or a path ending in ``/``. The repository index, the tags and the
lifecycle inventory are not in the bucket yet: they stay under ``<root>`` as :mod:`storage.paths` describes.
"""

from __future__ import annotations

import hashlib

from storage.digest import SUPPORTED_ALGORITHMS, Digest, InvalidDigest

__all__ = ["BLOBS", "FILLS", "SCRATCH", "blob_digest", "blob_key", "fills_prefix", "lease_key"]

BLOBS = "blobs/"
FILLS = "fills/"
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


def _check_digest(digest: Digest) -> None:
    # Digest instances are normally built by Digest.parse; this guards hand-built ones (as storage.paths does).
    expected = SUPPORTED_ALGORITHMS.get(digest.algorithm)
    if expected is None or len(digest.hex) != expected or not all(c in "0123456789abcdef" for c in digest.hex):
        raise ValueError(f"invalid digest {str(digest)[:80]!r}")
