"""The inventory's SQLite schema, versioned with ``PRAGMA user_version``.

Digests are stored as text (``sha256:<hex>``); times as seconds since the epoch (REAL). Version 1::

    blobs                 one row per committed blob in blobs/ (kept in step by the server; reconciled at start-up)
      digest PK, size, added_at, last_access, access_count
      index (last_access, digest): the eviction order, least recently used first
    totals                one row: bytes and count of the blobs table, kept by triggers, so that the budget check
                          is one row read, not a sum over every blob
    manifests             every manifest cached by some repository, with what it is
      digest PK, media_type, size, platforms ("linux/amd64,linux/arm64/v8" for an index; "" for an image)
    manifest_refs         manifest → the digests it refers to: config, layers, an index's children
      (manifest, digest, kind) PK, size (as declared), platform (an index child's)
      index (digest): "is this blob referenced by any cached manifest?"
    repository_manifests  which repository holds which manifest (a blob says nothing about who may see it)
      (registry, repository, digest) PK, added_at
    images                one row per tag: what the upstream last said it points to, and how it is used
      (registry, repository, tag) PK, digest, media_type, fetched_at (when the upstream last confirmed it),
      last_pulled, pull_count
    pins                  what eviction must keep: a tag (its current digest) or a digest, expanded through
      (registry, repository, reference) PK, pinned_at           manifest_refs to every manifest, config and layer

Bump ``SCHEMA_VERSION`` and append to ``_MIGRATIONS`` for any change; a server never writes a database of a
newer version than it knows (see :class:`NewerSchema`).
"""

from __future__ import annotations

import sqlite3

__all__ = ["SCHEMA_VERSION", "NewerSchema", "migrate"]

SCHEMA_VERSION = 1

_VERSION_1 = (
    """CREATE TABLE blobs (
        digest TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        added_at REAL NOT NULL,
        last_access REAL NOT NULL,
        access_count INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID""",
    "CREATE INDEX blobs_by_last_access ON blobs (last_access, digest)",
    """CREATE TABLE totals (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        bytes INTEGER NOT NULL,
        blobs INTEGER NOT NULL
    )""",
    "INSERT INTO totals (id, bytes, blobs) VALUES (0, 0, 0)",
    """CREATE TRIGGER blobs_inserted AFTER INSERT ON blobs BEGIN
        UPDATE totals SET bytes = bytes + NEW.size, blobs = blobs + 1;
    END""",
    """CREATE TRIGGER blobs_deleted AFTER DELETE ON blobs BEGIN
        UPDATE totals SET bytes = bytes - OLD.size, blobs = blobs - 1;
    END""",
    """CREATE TRIGGER blobs_resized AFTER UPDATE OF size ON blobs BEGIN
        UPDATE totals SET bytes = bytes - OLD.size + NEW.size;
    END""",
    """CREATE TABLE manifests (
        digest TEXT PRIMARY KEY,
        media_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        platforms TEXT NOT NULL DEFAULT ''
    ) WITHOUT ROWID""",
    """CREATE TABLE manifest_refs (
        manifest TEXT NOT NULL,
        digest TEXT NOT NULL,
        kind TEXT NOT NULL,
        size INTEGER NOT NULL,
        platform TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (manifest, digest, kind)
    ) WITHOUT ROWID""",
    "CREATE INDEX manifest_refs_by_digest ON manifest_refs (digest)",
    """CREATE TABLE repository_manifests (
        registry TEXT NOT NULL,
        repository TEXT NOT NULL,
        digest TEXT NOT NULL,
        added_at REAL NOT NULL,
        PRIMARY KEY (registry, repository, digest)
    ) WITHOUT ROWID""",
    """CREATE TABLE images (
        registry TEXT NOT NULL,
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        digest TEXT NOT NULL,
        media_type TEXT NOT NULL,
        fetched_at REAL NOT NULL,
        last_pulled REAL,
        pull_count INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (registry, repository, tag)
    ) WITHOUT ROWID""",
    """CREATE TABLE pins (
        registry TEXT NOT NULL,
        repository TEXT NOT NULL,
        reference TEXT NOT NULL,
        pinned_at REAL NOT NULL,
        PRIMARY KEY (registry, repository, reference)
    ) WITHOUT ROWID""",
)

# _MIGRATIONS[n] takes a database from version n to n + 1.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (_VERSION_1,)


class NewerSchema(Exception):
    """The database was written by a newer version of registry-proxy; this one must not change it."""

    def __init__(self, found: int) -> None:
        super().__init__(f"inventory schema version {found} is newer than this registry-proxy knows ({SCHEMA_VERSION})")
        self.found = found


def migrate(connection: sqlite3.Connection) -> None:
    """Bring the database to ``SCHEMA_VERSION``; the connection must be in autocommit mode."""
    if _version(connection) == SCHEMA_VERSION:
        return
    # IMMEDIATE: of two processes starting at once, one migrates and the other then finds it done.
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = _version(connection)
        if version > SCHEMA_VERSION:
            raise NewerSchema(version)
        for statements in _MIGRATIONS[version:]:
            for statement in statements:
                connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def _version(connection: sqlite3.Connection) -> int:
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    return int(version)
