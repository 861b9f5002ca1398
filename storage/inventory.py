"""The inventory: what the cache holds and how it is used, in SQLite (``<root>/inventory.sqlite``).

Why SQLite: the standard library has it; one file holds sizes, access times, images, references and pins with
transactions and indexes (the least recently used blob is one index lookup, the budget one row); in WAL mode
any number of readers (``registry-proxy ls`` while the server runs) never wait on the one writer, and several
processes sharing one cache directory serialize their writes through its file locks (``busy_timeout`` makes them
wait their turn instead of failing). Files with mtimes were the alternative: no schema, but no atomic update of
several facts, a ``stat`` per blob for every budget check, and nowhere natural for images, references and pins.

Every method blocks: callers run them on one thread of their own (:mod:`proxy.lifecycle.thread`), never on an
event loop. Schema: :mod:`storage.inventory_schema`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from storage.contents import contents_of
from storage.interfaces import StoredBlob
from storage.inventory_schema import NewerSchema, migrate

__all__ = [
    "BlobRow",
    "Changes",
    "ImageRow",
    "Inventory",
    "InventoryDamaged",
    "NewerSchema",
    "Pin",
    "PublishedPin",
    "Reconciled",
]

# Another process holding the write lock (a start-up reconcile of a big cache) is waited for this long.
_BUSY_TIMEOUT_MS = 30_000

TagKey = tuple[str, str, str]  # registry, repository, tag


class InventoryDamaged(Exception):
    """The file is not a usable SQLite database."""


@dataclass
class Changes:
    """What happened since the last write, gathered in memory so that a request never waits on the database."""

    added: dict[str, tuple[int, float]] = field(default_factory=dict)  # digest → (size, when committed)
    accessed: dict[str, tuple[int, float]] = field(default_factory=dict)  # digest → (reads, last read)
    # (registry, repository, digest, media type, body, when)
    manifests: list[tuple[str, str, str, str, bytes, float]] = field(default_factory=list)
    tags: dict[TagKey, tuple[str, str, float]] = field(default_factory=dict)  # → (digest, media type, fetched_at)
    pulls: dict[TagKey, tuple[int, float]] = field(default_factory=dict)  # → (pulls, last pull)

    def __len__(self) -> int:
        return len(self.added) + len(self.accessed) + len(self.manifests) + len(self.tags) + len(self.pulls)

    @property
    def added_bytes(self) -> int:
        return sum(size for size, _ in self.added.values())

    def merge(self, later: Changes) -> None:
        """Fold ``later`` into this (to retry a write that failed, with what came meanwhile)."""
        self.added.update(later.added)
        for digest, (count, last) in later.accessed.items():
            before = self.accessed.get(digest, (0, 0.0))
            self.accessed[digest] = (before[0] + count, max(before[1], last))
        self.manifests.extend(later.manifests)
        self.tags.update(later.tags)
        for key, (count, last) in later.pulls.items():
            before = self.pulls.get(key, (0, 0.0))
            self.pulls[key] = (before[0] + count, max(before[1], last))


@dataclass(frozen=True)
class BlobRow:
    digest: str
    size: int
    added_at: float
    last_access: float
    access_count: int


@dataclass(frozen=True)
class ImageRow:
    registry: str
    repository: str
    tag: str  # "" for a manifest cached by digest that no tag or index of its repository points to
    digest: str
    media_type: str
    platforms: tuple[str, ...]
    size: int  # every manifest, config and layer of every platform, as declared, each blob counted once
    cached: int  # the part of ``size`` on disk now
    fetched_at: float
    last_pulled: float | None
    pull_count: int
    pinned: bool
    config: str | None  # an image manifest's config digest (its platform, when ``platforms`` is empty)


@dataclass(frozen=True)
class Pin:
    registry: str
    repository: str
    reference: str  # a tag, or a digest
    pinned_at: float


@dataclass(frozen=True)
class PublishedPin:
    """A pin as replicas without a shared inventory exchange it: the digests it keeps, worked out by whoever pinned.

    ``expires``: seconds since the epoch, on the writer's clock; a pin nobody renews stops counting then.
    """

    registry: str
    repository: str
    reference: str
    digests: frozenset[str]
    pinned_at: float
    expires: float

    @property
    def key(self) -> TagKey:
        return self.registry, self.repository, self.reference


@dataclass(frozen=True)
class Reconciled:
    added: int  # on disk, unknown to the inventory
    dropped: int  # in the inventory, gone from disk
    resized: int


class Inventory:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> Inventory:
        """Open (or create) the database and bring its schema up to date.

        Raises FileNotFoundError (``create=False`` and no database), InventoryDamaged (not a database, or a corrupt
        one), NewerSchema, or OSError (cannot be opened or written: permissions, a full disk).
        """
        if not create and not path.exists():
            raise FileNotFoundError(str(path))
        uri = f"file:{path}?mode={'rwc' if create else 'rw'}"
        try:
            connection = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as exc:
            raise OSError(f"cannot open {path}: {exc}") from None
        try:
            connection.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL never corrupts; a power cut may lose the last few access times, which is harmless.
            connection.execute("PRAGMA synchronous = NORMAL")
            migrate(connection)
        except NewerSchema:
            connection.close()
            raise
        except sqlite3.Error as exc:
            connection.close()
            if exc.sqlite_errorcode in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                raise InventoryDamaged(f"{path}: {exc}") from None
            raise OSError(f"cannot use {path}: {exc}") from None
        return cls(connection)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so a transaction never fails half-way on another writer.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # Blobs

    def record(self, changes: Changes) -> None:
        """Write one batch of changes in one transaction (manifest bodies are parsed here, off the event loop)."""
        manifests = [
            (registry, repository, digest, media_type, body, at, contents_of(body))
            for registry, repository, digest, media_type, body, at in changes.manifests
        ]
        with self._write() as db:
            db.executemany(
                "INSERT INTO blobs (digest, size, added_at, last_access) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (digest) DO UPDATE SET size = excluded.size, "
                "last_access = max(last_access, excluded.last_access)",
                [(digest, size, at, at) for digest, (size, at) in changes.added.items()],
            )
            db.executemany(
                "UPDATE blobs SET access_count = access_count + ?, last_access = max(last_access, ?) WHERE digest = ?",
                [(count, last, digest) for digest, (count, last) in changes.accessed.items()],
            )
            for registry, repository, digest, media_type, body, at, contents in manifests:
                db.execute(
                    "INSERT INTO manifests (digest, media_type, size, platforms) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (digest) DO UPDATE SET media_type = excluded.media_type, size = excluded.size, "
                    "platforms = excluded.platforms",
                    (digest, media_type, len(body), ",".join(contents.platforms)),
                )
                db.execute("DELETE FROM manifest_refs WHERE manifest = ?", (digest,))
                db.executemany(
                    "INSERT OR IGNORE INTO manifest_refs (manifest, digest, kind, size, platform) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(digest, str(ref.digest), ref.kind, ref.size, ref.platform) for ref in contents.references],
                )
                db.execute(
                    "INSERT OR IGNORE INTO repository_manifests (registry, repository, digest, added_at) "
                    "VALUES (?, ?, ?, ?)",
                    (registry, repository, digest, at),
                )
            db.executemany(
                "INSERT INTO images (registry, repository, tag, digest, media_type, fetched_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (registry, repository, tag) DO UPDATE SET "
                "digest = excluded.digest, media_type = excluded.media_type, "
                "fetched_at = max(fetched_at, excluded.fetched_at)",
                [(*key, digest, media_type, at) for key, (digest, media_type, at) in changes.tags.items()],
            )
            db.executemany(
                "UPDATE images SET pull_count = pull_count + ?, last_pulled = max(coalesce(last_pulled, 0), ?) "
                "WHERE registry = ? AND repository = ? AND tag = ?",
                [(count, last, *key) for key, (count, last) in changes.pulls.items()],
            )

    def total(self) -> tuple[int, int]:
        """Bytes and number of the blobs in the cache."""
        row = self._db.execute("SELECT bytes, blobs FROM totals").fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def blob(self, digest: str) -> BlobRow | None:
        row = self._db.execute(
            "SELECT digest, size, added_at, last_access, access_count FROM blobs WHERE digest = ?", (digest,)
        ).fetchone()
        return BlobRow(*row) if row else None

    def least_recently_used(self, after: tuple[float, str] | None, limit: int) -> list[BlobRow]:
        """The next ``limit`` blobs in eviction order, after the (last_access, digest) of the previous page."""
        last_access, digest = after if after is not None else (float("-inf"), "")
        rows = self._db.execute(
            "SELECT digest, size, added_at, last_access, access_count FROM blobs "
            "WHERE (last_access, digest) > (?, ?) ORDER BY last_access, digest LIMIT ?",
            (last_access, digest, limit),
        ).fetchall()
        return [BlobRow(*row) for row in rows]

    def accessed_since(self, since: float) -> dict[str, float]:
        """Digest → last access of every blob used (read, written, or read elsewhere) at ``since`` or later."""
        rows = self._db.execute("SELECT digest, last_access FROM blobs WHERE last_access >= ?", (since,))
        return {digest: last for digest, last in rows}

    def touch(self, accesses: Mapping[str, float]) -> None:
        """Blobs read elsewhere (another replica), and when: last accesses move forward, never back; read counts
        stay this cache's own. Digests the inventory does not hold are ignored."""
        with self._write() as db:
            db.executemany(
                "UPDATE blobs SET last_access = max(last_access, ?) WHERE digest = ?",
                [(last, digest) for digest, last in accesses.items()],
            )

    def forget(self, digests: Iterable[str]) -> None:
        with self._write() as db:
            db.executemany("DELETE FROM blobs WHERE digest = ?", [(digest,) for digest in digests])

    def reconcile(self, on_disk: Iterable[StoredBlob], started: float) -> Reconciled:
        """Make the blobs table match the disk as walked from ``started`` on.

        A blob the walk did not see is dropped only if the inventory has known it since before the walk began:
        another process may have committed it meanwhile.
        """
        known = {digest: size for digest, size in self._db.execute("SELECT digest, size FROM blobs")}
        seen: set[str] = set()
        new: list[tuple[str, int, float, float]] = []
        resized: list[tuple[int, str]] = []
        for blob in on_disk:
            digest = str(blob.digest)
            seen.add(digest)
            size = known.get(digest)
            if size is None:
                new.append((digest, blob.size, blob.modified, blob.modified))
            elif size != blob.size:
                resized.append((blob.size, digest))
        gone = [(digest, started) for digest in known if digest not in seen]
        with self._write() as db:
            db.executemany("INSERT OR IGNORE INTO blobs (digest, size, added_at, last_access) VALUES (?, ?, ?, ?)", new)
            db.executemany("UPDATE blobs SET size = ? WHERE digest = ?", resized)
            dropped = 0
            for digest, before in gone:
                dropped += db.execute("DELETE FROM blobs WHERE digest = ? AND added_at < ?", (digest, before)).rowcount
        return Reconciled(len(new), dropped, len(resized))

    def unreferenced(self, before: float) -> list[BlobRow]:
        """Blobs no cached manifest is or refers to, not read since ``before``, least recently used first."""
        rows = self._db.execute(
            "SELECT digest, size, added_at, last_access, access_count FROM blobs AS b "
            "WHERE last_access < ? "
            "AND NOT EXISTS (SELECT 1 FROM manifests AS m WHERE m.digest = b.digest) "
            "AND NOT EXISTS (SELECT 1 FROM manifest_refs AS r WHERE r.digest = b.digest) "
            "ORDER BY last_access, digest",
            (before,),
        ).fetchall()
        return [BlobRow(*row) for row in rows]

    # Manifests and images

    def known_manifests(self) -> set[tuple[str, str, str]]:
        """(registry, repository, digest) of every manifest the inventory has."""
        rows = self._db.execute("SELECT registry, repository, digest FROM repository_manifests")
        return {(registry, repository, digest) for registry, repository, digest in rows}

    def images(self) -> list[ImageRow]:
        """One row per tag, then one per manifest cached by digest that nothing else in its repository points to."""
        pinned = {(r, n, ref) for r, n, ref in self._db.execute("SELECT registry, repository, reference FROM pins")}
        rows = self._db.execute(
            "SELECT i.registry, i.repository, i.tag, i.digest, i.media_type, coalesce(m.platforms, ''), "
            "i.fetched_at, i.last_pulled, i.pull_count FROM images AS i LEFT JOIN manifests AS m USING (digest) "
            "UNION ALL "
            "SELECT rm.registry, rm.repository, '', rm.digest, m.media_type, m.platforms, rm.added_at, "
            "b.last_access, coalesce(b.access_count, 0) "
            "FROM repository_manifests AS rm JOIN manifests AS m USING (digest) LEFT JOIN blobs AS b USING (digest) "
            "WHERE NOT EXISTS (SELECT 1 FROM images AS i WHERE i.registry = rm.registry "
            "  AND i.repository = rm.repository AND i.digest = rm.digest) "
            "AND NOT EXISTS (SELECT 1 FROM manifest_refs AS r JOIN repository_manifests AS p ON p.digest = r.manifest "
            "  WHERE r.digest = rm.digest AND p.registry = rm.registry AND p.repository = rm.repository) "
            "ORDER BY 1, 2, 3, 4"
        ).fetchall()
        images: list[ImageRow] = []
        for registry, repository, tag, digest, media_type, platforms, fetched_at, last_pulled, pulls in rows:
            size, cached = self._sizes(digest)
            config = self._db.execute(
                "SELECT digest FROM manifest_refs WHERE manifest = ? AND kind = 'config'", (digest,)
            ).fetchone()
            images.append(
                ImageRow(
                    registry=registry,
                    repository=repository,
                    tag=tag,
                    digest=digest,
                    media_type=media_type,
                    platforms=tuple(p for p in platforms.split(",") if p),
                    size=size,
                    cached=cached,
                    fetched_at=fetched_at,
                    last_pulled=last_pulled,
                    pull_count=pulls,
                    pinned=(registry, repository, tag) in pinned or (registry, repository, digest) in pinned,
                    config=config[0] if config else None,
                )
            )
        return images

    def _sizes(self, root: str) -> tuple[int, int]:
        row = self._db.execute(
            "WITH RECURSIVE closure (digest, size) AS ("
            "  SELECT ?, coalesce((SELECT size FROM manifests WHERE digest = ?), 0) "
            "  UNION SELECT r.digest, r.size FROM manifest_refs AS r JOIN closure AS c ON r.manifest = c.digest"
            "), distinct_blobs AS (SELECT digest, max(size) AS size FROM closure GROUP BY digest) "
            "SELECT coalesce(sum(d.size), 0), coalesce(sum(b.size), 0) "
            "FROM distinct_blobs AS d LEFT JOIN blobs AS b USING (digest)",
            (root, root),
        ).fetchone()
        return int(row[0]), int(row[1])

    # Pins

    def pin(self, registry: str, repository: str, reference: str, now: float) -> None:
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO pins (registry, repository, reference, pinned_at) VALUES (?, ?, ?, ?)",
                (registry, repository, reference, now),
            )

    def unpin(self, registry: str, repository: str, reference: str) -> bool:
        with self._write() as db:
            cursor = db.execute(
                "DELETE FROM pins WHERE registry = ? AND repository = ? AND reference = ?",
                (registry, repository, reference),
            )
        return cursor.rowcount > 0

    def pins(self) -> list[Pin]:
        rows = self._db.execute("SELECT registry, repository, reference, pinned_at FROM pins ORDER BY 1, 2, 3")
        return [Pin(*row) for row in rows]

    def pinned_digests(self) -> set[str]:
        """Every digest a pin keeps: the pinned manifest (a tag's current one), its children, configs and layers."""
        return self._closure("SELECT registry, repository, reference FROM pins", ())

    def closure(self, references: Iterable[TagKey]) -> set[str]:
        """What pins of these (registry, repository, tag or digest) would keep, whether pinned here or not."""
        wanted = list(references)
        if not wanted:
            return set()
        values = ", ".join("(?, ?, ?)" for _ in wanted)
        return self._closure(f"VALUES {values}", [part for key in wanted for part in key])

    def _closure(self, wanted: str, parameters: Iterable[str]) -> set[str]:
        rows = self._db.execute(
            f"WITH RECURSIVE wanted (registry, repository, reference) AS ({wanted}), roots (digest) AS ("
            "  SELECT i.digest FROM wanted AS p JOIN images AS i ON i.registry = p.registry "
            "    AND i.repository = p.repository AND i.tag = p.reference "
            "  UNION SELECT reference FROM wanted WHERE instr(reference, ':') > 0"  # tags cannot hold a ':'
            "), closure (digest) AS ("
            "  SELECT digest FROM roots "
            "  UNION SELECT r.digest FROM manifest_refs AS r JOIN closure AS c ON r.manifest = c.digest"
            ") SELECT digest FROM closure",
            tuple(parameters),
        )
        return {digest for (digest,) in rows}
