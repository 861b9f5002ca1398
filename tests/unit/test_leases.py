"""Read leases: a blob being read (in this process or another) is never deleted; once closed it can be."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from storage.blobs import FilesystemBlobStore
from storage.digest import Digest
from storage.paths import blob_path

DATA = b"a blob someone is reading" * 100


async def stored(root: Path, data: bytes = DATA) -> tuple[FilesystemBlobStore, Digest]:
    store = FilesystemBlobStore(root)
    digest = Digest.of(data)
    await store.put(digest, data)
    return store, digest


async def test_an_open_reader_keeps_its_blob(tmp_path: Path) -> None:
    store, digest = await stored(tmp_path)
    opened = await store.open(digest)
    assert opened is not None
    reader, size = opened
    assert await store.delete_if_unused([digest]) == set()
    assert (tmp_path / blob_path(digest)).exists()
    assert await reader.read(0, size) == DATA
    await reader.close()
    assert await store.delete_if_unused([digest]) == {digest}
    assert not (tmp_path / blob_path(digest)).exists()
    assert await store.open(digest) is None


async def test_a_blob_already_gone_counts_as_deleted(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    missing = Digest.of(b"never cached")
    assert await store.delete_if_unused([missing]) == {missing}


async def test_a_reader_of_a_fill_keeps_the_blob_it_becomes(tmp_path: Path) -> None:
    # Clients tailing a fill read the partial file; their lease carries over when the commit renames it.
    store = FilesystemBlobStore(tmp_path)
    digest = Digest.of(DATA)
    writer = await store.create(digest)
    await writer.write(DATA)
    reader = writer.open_reader()
    await writer.commit(len(DATA))
    assert await store.delete_if_unused([digest]) == set()
    assert await reader.read(0, len(DATA)) == DATA
    await reader.close()
    assert await store.delete_if_unused([digest]) == {digest}


async def test_a_reader_in_another_process_keeps_the_blob(tmp_path: Path) -> None:
    store, digest = await stored(tmp_path)
    other, _ = await stored(tmp_path, b"nobody reads this one")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_READ_LEASE, str(tmp_path / blob_path(digest))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"reading\n"
        unread = Digest.of(b"nobody reads this one")
        assert await store.delete_if_unused([digest, unread]) == {unread}
    finally:
        holder.communicate(b"done\n", timeout=30)
    assert await store.delete_if_unused([digest]) == {digest}


# A second process opens the blob as the proxy's readers do (storage.files.FileReader) and holds it until told.
HOLD_A_READ_LEASE = """
import sys
from pathlib import Path
from storage.files import FileReader
reader = FileReader.open(Path(sys.argv[1]))
print("reading", flush=True)
sys.stdin.readline()
"""
