"""FilesystemBlobWriter.write in a worker thread: cancelling the caller must not close the file under the thread; a
write is done once written, its bytes hashed after it, in order; the file's writeback starts while it is written."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from storage import blobs, writeback
from storage.blobs import FilesystemBlobStore, FilesystemBlobWriter
from storage.digest import Digest, Hasher
from storage.paths import blob_path
from storage.writeback import start_writeback

MIB = 1024 * 1024


async def test_a_cancelled_write_waits_for_its_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    go = threading.Event()
    original = FilesystemBlobWriter._write_and_hash

    def held(self: FilesystemBlobWriter, data: bytes, *args: Any) -> None:
        go.wait(10)
        original(self, data, *args)

    monkeypatch.setattr(FilesystemBlobWriter, "_write_and_hash", held)
    data = b"some bytes"
    writer = await FilesystemBlobStore(tmp_path).create(Digest.of(data))
    try:
        writing = asyncio.create_task(writer.write(data))
        await asyncio.sleep(0.05)
        writing.cancel()
        await asyncio.sleep(0.05)
        # Its thread is still in the write: cancelling the writer now would close the file under it.
        assert not writing.done()
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(writing, 10)
    finally:
        go.set()
        await writer.cancel()


async def test_writeback_starts_as_whole_blocks_are_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """So that a commit's fsync finds little left to write; the block being appended to is left alone."""
    started: list[int] = []
    monkeypatch.setattr(blobs, "start_writeback", lambda fd, end: started.append(end))
    pieces = [b"a" * (MIB // 2), b"b" * (MIB + 10), b"c" * (MIB - 20), b"d" * 7]
    data = b"".join(pieces)
    writer = await FilesystemBlobStore(tmp_path).create(Digest.of(data))
    for piece in pieces:
        await writer.write(piece)
    await writer.commit(len(data))
    assert started == [0, MIB, 2 * MIB, 2 * MIB]


def test_starting_writeback_is_only_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"x" * MIB)
    fd = os.open(path, os.O_RDONLY)
    os.close(fd)
    start_writeback(fd, MIB)  # a closed descriptor: nothing happens, nothing is raised
    with path.open("r+b") as f:
        start_writeback(f.fileno(), MIB)
    if sys.platform == "linux":
        assert writeback._SYNC_FILE_RANGE is not None


class HeldHasher:
    """Hashes only once ``release`` is set."""

    def __init__(self, inner: Hasher) -> None:
        self.inner = inner
        self.started = threading.Event()
        self.release = threading.Event()

    def update(self, data: bytes) -> None:
        self.started.set()
        self.release.wait(10)
        self.inner.update(data)

    def digest(self) -> Digest:
        return self.inner.digest()


async def test_a_write_is_done_once_written_and_its_bytes_are_hashed_in_order(tmp_path: Path) -> None:
    pieces = [b"a" * 1000, b"b" * 2000]
    data = b"".join(pieces)
    writer = await FilesystemBlobStore(tmp_path).create(Digest.of(data))
    hasher = HeldHasher(writer._hasher)
    writer._hasher = hasher  # type: ignore[assignment]
    try:
        # Done while its bytes still wait to be hashed: the next write need not wait for that.
        await asyncio.wait_for(writer.write(pieces[0]), 5)
        assert await asyncio.to_thread(hasher.started.wait, 5)
        second = asyncio.create_task(writer.write(pieces[1]))
        await asyncio.sleep(0.1)
        # But not before the first write's bytes are hashed: no more than one write's bytes wait.
        assert not second.done()
        hasher.release.set()
        await asyncio.wait_for(second, 5)
        await writer.commit(len(data))  # the right digest: hashed whole and in order
    finally:
        hasher.release.set()
        await writer.cancel()
    assert (tmp_path / blob_path(Digest.of(data))).read_bytes() == data


async def test_a_commit_waits_for_the_last_bytes_to_be_hashed(tmp_path: Path) -> None:
    data = b"the last bytes"
    writer = await FilesystemBlobStore(tmp_path).create(Digest.of(data))
    hasher = HeldHasher(writer._hasher)
    writer._hasher = hasher  # type: ignore[assignment]
    try:
        await asyncio.wait_for(writer.write(data), 5)
        committing = asyncio.create_task(writer.commit(len(data)))
        await asyncio.sleep(0.1)
        assert not committing.done()
        hasher.release.set()
        await asyncio.wait_for(committing, 5)
    finally:
        hasher.release.set()
        await writer.cancel()
    assert (tmp_path / blob_path(Digest.of(data))).read_bytes() == data
