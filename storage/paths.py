"""The on-disk layout of the cache, in one place.

::

    <root>/
      blobs/<alg>/<hex[0:2]>/<hex>          content: layers, configs and manifests alike, shared by every
                                            upstream and repository (content-addressed, so it cannot clash)
      repositories/<registry>/<repository>/
        _manifests/<alg>/<hex>              JSON {"media_type", "size"}: this repository is known to have
                                            this manifest (blobs alone say nothing about who may see them)
        _tags/<tag>                         JSON {"digest", "media_type", "size", "fetched_at"}: the last
                                            answer the upstream gave for the tag, and when
        _referrers/<alg>/<hex>              the same for the referrers index of a subject manifest (the
                                            index's bytes are a blob, keyed by their own digest)
        _layers/<alg>/<hex>                 empty: this repository is known to hold this blob (a layer or
                                            config of one of its cached manifests, or the upstream served or
                                            confirmed it under this name); a blob is served under a
                                            repository only with this link
      .../<name>.<random>.partial           any file above while it is being written; renamed into place
                                            only once complete (and, for blobs, verified). Swept at start-up,
                                            and by ``registry-proxy gc`` once older than a grace period.
      blobs/.../<hex>.<keyhash>.partial     a blob being filled from an upstream: the name is fixed by the
                                            upstream key (registry and repository, hashed), so every process
                                            on this cache finds the same fill (:mod:`storage.claims`)
      blobs/.../<hex>.<keyhash>.claim       its lock: ``flock``-ed by the one process filling it, holding the
                                            size the upstream announced; removed when the fill ends. A leftover
                                            (its holder died) is taken over by the next fill, or swept when free
      inventory.sqlite (-wal, -shm)         the lifecycle inventory (SQLite in WAL mode, shared by every
                                            process using this root): blob sizes and last accesses, images
                                            (tag → digest, pulls), manifest → referenced digests, pins.
                                            Derived from the files above where it can be (reconciled at
                                            start-up; rebuilt if missing or damaged); schema in
                                            :mod:`storage.inventory_schema`
      inventory.evict.lock                  held (``flock``) by the one process evicting at a time
      locks/<hh>/<sha256 of key>.lock       held (``flock``) by the process asking an upstream for a manifest, so
                                            that other processes wait for its answer instead of asking too
                                            (:mod:`storage.locks`); removed when done, a leftover swept when free

Blob files are read under a shared ``flock`` (a *read lease*, taken by every reader, including readers of a
partial file, whose lock carries over to the committed file it is renamed to); eviction deletes a blob only
while it holds the exclusive lock, so a blob being read is never evicted (:mod:`storage.leases`).

``<registry>`` is the upstream's registry name (``docker.io``, ``ghcr.io``), ``<repository>`` is a
validated repository name such as ``library/alpine``. Repository components cannot start with ``_``,
so ``_manifests`` and ``_tags`` never clash with a nested repository (the trick Distribution uses).

Every function here is pure; callers pass values already validated (``Digest.parse``,
``references.is_*``), and each function re-checks them so that no caller can build a path outside the root.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from storage.digest import SUPPORTED_ALGORITHMS, Digest, InvalidDigest
from storage.references import is_registry, is_repository, is_tag

__all__ = [
    "BLOBS",
    "CLAIM_SUFFIX",
    "EVICT_LOCK",
    "INVENTORY",
    "LOCKS",
    "LOCK_SUFFIX",
    "PARTIAL_SUFFIX",
    "REPOSITORIES",
    "blob_digest",
    "blob_link_path",
    "blob_path",
    "claim_name",
    "lock_path",
    "manifest_link_path",
    "manifests_dir",
    "partial_name",
    "referrers_path",
    "tag_path",
    "tags_dir",
]

BLOBS = "blobs"
REPOSITORIES = "repositories"
INVENTORY = "inventory.sqlite"
EVICT_LOCK = "inventory.evict.lock"
MANIFESTS_DIR = "_manifests"
LAYERS_DIR = "_layers"
TAGS_DIR = "_tags"

PARTIAL_SUFFIX = ".partial"
CLAIM_SUFFIX = ".claim"
LOCKS = "locks"
LOCK_SUFFIX = ".lock"


def blob_path(digest: Digest) -> PurePosixPath:
    _check_digest(digest)
    return PurePosixPath(BLOBS, digest.algorithm, digest.hex[:2], digest.hex)


def blob_digest(algorithm: str, shard: str, name: str) -> Digest | None:
    """The digest whose blob lives at ``blobs/<algorithm>/<shard>/<name>``, or None for any other file."""
    try:
        digest = Digest.parse(f"{algorithm}:{name}")
    except InvalidDigest:
        return None
    return digest if shard == digest.hex[:2] else None


def blob_link_path(registry: str, repository: str, digest: Digest) -> PurePosixPath:
    _check_digest(digest)
    return _repository_dir(registry, repository) / LAYERS_DIR / digest.algorithm / digest.hex


def manifest_link_path(registry: str, repository: str, digest: Digest) -> PurePosixPath:
    _check_digest(digest)
    return _repository_dir(registry, repository) / MANIFESTS_DIR / digest.algorithm / digest.hex


def manifests_dir(registry: str, repository: str) -> PurePosixPath:
    return _repository_dir(registry, repository) / MANIFESTS_DIR


def referrers_path(registry: str, repository: str, subject: Digest) -> PurePosixPath:
    _check_digest(subject)
    return _repository_dir(registry, repository) / "_referrers" / subject.algorithm / subject.hex


def tags_dir(registry: str, repository: str) -> PurePosixPath:
    return _repository_dir(registry, repository) / TAGS_DIR


def tag_path(registry: str, repository: str, tag: str) -> PurePosixPath:
    if not is_tag(tag):
        raise ValueError(f"invalid tag {tag[:130]!r}")
    return tags_dir(registry, repository) / tag


def partial_name(final_name: str, token: str) -> str:
    """The name of a file being written next to ``final_name`` (same directory, so rename is atomic)."""
    return f"{final_name}.{token}{PARTIAL_SUFFIX}"


def claim_name(final_name: str, key_hash: str) -> str:
    """The lock file of the fill of ``final_name`` whose partial file is ``partial_name(final_name, key_hash)``."""
    return f"{final_name}.{key_hash}{CLAIM_SUFFIX}"


def lock_path(key_hash: str) -> PurePosixPath:
    """The lock file of a fetch lock, by the hex hash of its key."""
    if len(key_hash) != 64 or not all(c in "0123456789abcdef" for c in key_hash):
        raise ValueError(f"invalid lock key hash {key_hash[:80]!r}")
    return PurePosixPath(LOCKS, key_hash[:2], key_hash + LOCK_SUFFIX)


def _repository_dir(registry: str, repository: str) -> PurePosixPath:
    if not is_registry(registry):
        raise ValueError(f"invalid registry name {registry[:80]!r}")
    if not is_repository(repository):
        raise ValueError(f"invalid repository name {repository[:80]!r}")
    return PurePosixPath(REPOSITORIES, registry, repository)


def _check_digest(digest: Digest) -> None:
    # Digest instances are normally built by Digest.parse; this guards hand-built ones.
    expected = SUPPORTED_ALGORITHMS.get(digest.algorithm)
    if expected is None or len(digest.hex) != expected or not all(c in "0123456789abcdef" for c in digest.hex):
        raise ValueError(f"invalid digest {str(digest)[:80]!r}")
