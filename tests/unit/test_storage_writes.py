"""FilesystemBlobWriter.write in a worker thread: cancelling the caller must not close the file under the thread; the
file's writeback starts while it is written."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

import pytest

from storage import blobs, writeback
from storage.blobs import FilesystemBlobStore, FilesystemBlobWriter
from storage.digest import Digest
from storage.writeback import start_writeback

MIB = 1024 * 1024


async def test_a_cancelled_write_waits_for_its_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    go = threading.Event()
    original = FilesystemBlobWriter._write_and_hash

    def held(self: FilesystemBlobWriter, data: bytes) -> None:
        go.wait(10)
        original(self, data)

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
