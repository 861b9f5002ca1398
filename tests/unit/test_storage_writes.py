"""FilesystemBlobWriter.write in a worker thread: cancelling the caller must not close the file under the thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from storage.blobs import FilesystemBlobStore, FilesystemBlobWriter
from storage.digest import Digest


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
