"""The SQLite inventory: schema, batches, LRU order, reconciliation, images, pins, two writers at once."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from storage.digest import Digest
from storage.interfaces import StoredBlob
from storage.inventory import Changes, Inventory, InventoryDamaged, NewerSchema
from storage.inventory_schema import SCHEMA_VERSION

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def d(name: str) -> str:
    return str(Digest.of(name.encode()))


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    return Inventory.open(tmp_path / "inventory.sqlite")


def image(config: str, *layers: tuple[str, int]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"digest": config, "size": 100},
            "layers": [{"digest": layer, "size": size} for layer, size in layers],
        }
    ).encode()


def index(*children: tuple[bytes, str]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"digest": str(Digest.of(body)), "size": len(body), "platform": {"os": "linux", "architecture": arch}}
                for body, arch in children
            ],
        }
    ).encode()


def test_schema_is_versioned_and_reopening_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "inventory.sqlite"
    Inventory.open(path).close()
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    connection.close()
    Inventory.open(path, create=False).close()


def test_a_newer_schema_is_refused_and_garbage_is_damaged(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite"
    connection = sqlite3.connect(newer)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()
    with pytest.raises(NewerSchema):
        Inventory.open(newer)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database" * 1000)
    with pytest.raises(InventoryDamaged):
        Inventory.open(garbage)
    with pytest.raises(FileNotFoundError):
        Inventory.open(tmp_path / "missing.sqlite", create=False)


def test_batches_keep_totals_and_least_recently_used_order(inventory: Inventory) -> None:
    inventory.record(Changes(added={d("a"): (100, 1.0), d("b"): (200, 2.0), d("c"): (300, 3.0)}))
    assert inventory.total() == (600, 3)
    inventory.record(Changes(accessed={d("a"): (2, 10.0)}))
    order = [row.digest for row in inventory.least_recently_used(None, 10)]
    assert order == [d("b"), d("c"), d("a")]
    assert inventory.blob(d("a")) is not None and inventory.blob(d("a")).access_count == 2  # type: ignore[union-attr]
    page = inventory.least_recently_used(None, 1)
    assert [row.digest for row in inventory.least_recently_used((page[0].last_access, page[0].digest), 5)] == [
        d("c"),
        d("a"),
    ]
    inventory.forget([d("b"), d("unknown")])
    assert inventory.total() == (400, 2)


def test_reconcile_adds_drops_and_resizes_but_spares_blobs_added_during_the_walk(inventory: Inventory) -> None:
    inventory.record(Changes(added={d("kept"): (10, 1.0), d("gone"): (20, 1.0), d("new"): (30, 50.0)}))
    on_disk = [StoredBlob(Digest.of(b"kept"), 11, 1.0), StoredBlob(Digest.of(b"unknown"), 40, 5.0)]
    # The walk started at t=20: "new" was committed (by another process) after it, so the walk could miss it.
    result = inventory.reconcile(on_disk, started=20.0)
    assert (result.added, result.dropped, result.resized) == (1, 1, 1)
    assert inventory.total() == (11 + 40 + 30, 3)
    assert inventory.blob(d("gone")) is None


def test_images_sizes_platforms_and_untagged_manifests(inventory: Inventory) -> None:
    amd, arm = image(d("cfg-amd"), (d("layer-amd"), 1000)), image(d("cfg-arm"), (d("layer-arm"), 2000))
    top = index((amd, "amd64"), (arm, "arm64"))
    lone = image(d("cfg-lone"), (d("layer-lone"), 500))
    changes = Changes(
        added={str(Digest.of(amd)): (len(amd), 1.0), d("cfg-amd"): (100, 1.0), d("layer-amd"): (1000, 1.0)},
        manifests=[
            ("docker.io", "library/app", str(Digest.of(top)), OCI_INDEX, top, 1.0),
            ("docker.io", "library/app", str(Digest.of(amd)), OCI_MANIFEST, amd, 1.0),
            ("docker.io", "library/app", str(Digest.of(arm)), OCI_MANIFEST, arm, 1.0),
            ("docker.io", "library/lone", str(Digest.of(lone)), OCI_MANIFEST, lone, 2.0),
        ],
        tags={("docker.io", "library/app", "1"): (str(Digest.of(top)), OCI_INDEX, 3.0)},
        pulls={("docker.io", "library/app", "1"): (2, 4.0)},
    )
    inventory.record(changes)
    inventory.record(Changes(pulls={("docker.io", "library/app", "1"): (1, 5.0)}))
    rows = inventory.images()
    # The index's children are part of its row, not rows of their own; the manifest pulled by digest alone is.
    assert [(row.repository, row.tag) for row in rows] == [("library/app", "1"), ("library/lone", "")]
    app = rows[0]
    assert app.digest == str(Digest.of(top)) and app.platforms == ("linux/amd64", "linux/arm64")
    assert (app.pull_count, app.last_pulled, app.fetched_at) == (3, 5.0, 3.0)
    assert app.size == len(top) + len(amd) + len(arm) + 100 + 1000 + 100 + 2000
    assert app.cached == len(amd) + 100 + 1000
    assert rows[1].config == d("cfg-lone") and not rows[1].pinned


def test_pins_expand_through_indexes_to_layers(inventory: Inventory) -> None:
    amd = image(d("cfg"), (d("layer"), 10))
    top = index((amd, "amd64"))
    other = image(d("other-cfg"), (d("other-layer"), 10))
    inventory.record(
        Changes(
            manifests=[
                ("docker.io", "library/app", str(Digest.of(top)), OCI_INDEX, top, 1.0),
                ("docker.io", "library/app", str(Digest.of(amd)), OCI_MANIFEST, amd, 1.0),
                ("docker.io", "library/other", str(Digest.of(other)), OCI_MANIFEST, other, 1.0),
            ],
            tags={("docker.io", "library/app", "1"): (str(Digest.of(top)), OCI_INDEX, 1.0)},
        )
    )
    inventory.pin("docker.io", "library/app", "1", now=5.0)
    assert inventory.pinned_digests() == {str(Digest.of(top)), str(Digest.of(amd)), d("cfg"), d("layer")}
    inventory.pin("docker.io", "library/other", str(Digest.of(other)), now=6.0)
    assert {d("other-cfg"), d("other-layer")} <= inventory.pinned_digests()
    assert [pin.reference for pin in inventory.pins()] == ["1", str(Digest.of(other))]
    assert [row.pinned for row in inventory.images()] == [True, True]
    assert inventory.unpin("docker.io", "library/app", "1")
    assert not inventory.unpin("docker.io", "library/app", "1")
    assert d("layer") not in inventory.pinned_digests()


def test_the_closure_of_references_nobody_pinned_here(inventory: Inventory) -> None:
    amd = image(d("cfg"), (d("layer"), 10))
    top = index((amd, "amd64"))
    inventory.record(
        Changes(
            manifests=[
                ("docker.io", "library/app", str(Digest.of(top)), OCI_INDEX, top, 1.0),
                ("docker.io", "library/app", str(Digest.of(amd)), OCI_MANIFEST, amd, 1.0),
            ],
            tags={("docker.io", "library/app", "1"): (str(Digest.of(top)), OCI_INDEX, 1.0)},
        )
    )
    everything = {str(Digest.of(top)), str(Digest.of(amd)), d("cfg"), d("layer")}
    assert inventory.closure([("docker.io", "library/app", "1")]) == everything
    assert inventory.closure([("docker.io", "library/app", str(Digest.of(amd)))]) == everything - {str(Digest.of(top))}
    # A tag this inventory has never seen keeps nothing here; a digest keeps at least itself.
    assert inventory.closure([("docker.io", "library/app", "2")]) == set()
    assert inventory.closure([("docker.io", "library/x", d("unknown"))]) == {d("unknown")}
    assert inventory.closure([]) == set() and inventory.pinned_digests() == set()


def test_accesses_from_elsewhere_only_move_last_access_forward(inventory: Inventory) -> None:
    inventory.record(Changes(added={d("a"): (100, 1.0), d("b"): (200, 2.0)}, accessed={d("a"): (1, 5.0)}))
    inventory.touch({d("a"): 3.0, d("b"): 9.0, d("unknown"): 7.0})
    a, b = inventory.blob(d("a")), inventory.blob(d("b"))
    assert a is not None and (a.last_access, a.access_count) == (5.0, 1)
    assert b is not None and (b.last_access, b.access_count) == (9.0, 0)
    assert inventory.blob(d("unknown")) is None and inventory.total() == (300, 2)
    assert inventory.accessed_since(5.0) == {d("a"): 5.0, d("b"): 9.0}
    assert inventory.accessed_since(6.0) == {d("b"): 9.0}


def test_unreferenced_blobs(inventory: Inventory) -> None:
    manifest = image(d("cfg"), (d("layer"), 10))
    inventory.record(
        Changes(
            added={d("cfg"): (100, 1.0), d("layer"): (10, 1.0), d("orphan"): (5, 1.0), d("fresh-orphan"): (5, 99.0)},
            manifests=[("docker.io", "library/app", str(Digest.of(manifest)), OCI_MANIFEST, manifest, 1.0)],
        )
    )
    assert [row.digest for row in inventory.unreferenced(before=50.0)] == [d("orphan")]


def test_two_writers_on_one_database(tmp_path: Path) -> None:
    # Two processes sharing a cache each have a connection; WAL plus busy_timeout serialize their writes.
    path = tmp_path / "inventory.sqlite"
    first, errors = Inventory.open(path), []

    def write(name: str) -> None:
        try:
            mine = Inventory.open(path)
            for n in range(200):
                mine.record(Changes(added={d(f"{name}-{n}"): (1, float(n))}))
            mine.close()
        except Exception as exc:  # reported below: an assertion in a thread would be lost
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(name,)) for name in ("x", "y")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert first.total() == (400, 400)
