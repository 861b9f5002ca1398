"""Fill claims on the filesystem (storage.claims): one filler per blob and upstream key across processes.

Two FilesystemBlobStore objects on one root stand for two processes (``flock`` locks belong to open files, so they
conflict within one process too); a filler that dies is a real child process that exits mid-fill.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from storage.blobs import FilesystemBlobStore, FilesystemBlobWriter
from storage.claims import FilesystemForeignFill
from storage.digest import Digest
from storage.interfaces import DigestMismatch, FillState

BLOB = bytes(range(256)) * 1024  # 256 KiB
DIGEST = Digest.of(BLOB)
KEY = "docker.io/library/app"


async def claim_writer(store: FilesystemBlobStore, key: str = KEY) -> FilesystemBlobWriter:
    claimed = await store.claim(DIGEST, key)
    assert isinstance(claimed, FilesystemBlobWriter)
    return claimed


async def claim_follower(store: FilesystemBlobStore, key: str = KEY) -> FilesystemForeignFill:
    claimed = await store.claim(DIGEST, key)
    assert isinstance(claimed, FilesystemForeignFill)
    return claimed


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.name.endswith((".partial", ".claim")))


async def test_a_second_claim_follows_the_first_through_to_the_commit(tmp_path: Path) -> None:
    writer = await claim_writer(FilesystemBlobStore(tmp_path))
    follower = await claim_follower(FilesystemBlobStore(tmp_path))
    progress = await follower.progress()
    assert (progress.state, progress.started, progress.written) == (FillState.RUNNING, False, 0)
    assert follower.open_reader() is None  # nothing to read before the upstream answered

    await writer.started(len(BLOB))
    await writer.write(BLOB[:100_000])
    progress = await follower.progress()
    assert (progress.state, progress.started, progress.size, progress.written) == (
        FillState.RUNNING, True, len(BLOB), 100_000,
    )  # fmt: skip
    reader = follower.open_reader()
    assert reader is not None
    assert await reader.read(0, 100_000) == BLOB[:100_000]

    await writer.write(BLOB[100_000:])
    await writer.commit(len(BLOB))
    progress = await follower.progress()
    assert (progress.state, progress.written) == (FillState.COMMITTED, len(BLOB))
    assert await reader.read(0, len(BLOB)) == BLOB  # the same file, now under its final name
    await reader.close()
    await follower.close()
    assert await FilesystemBlobStore(tmp_path).stat(DIGEST) == len(BLOB)
    assert leftovers(tmp_path) == []


async def test_claims_under_other_keys_do_not_wait_for_each_other(tmp_path: Path) -> None:
    first = await claim_writer(FilesystemBlobStore(tmp_path), "docker.io/library/app")
    second = await claim_writer(FilesystemBlobStore(tmp_path), "docker.io/someone/else")
    for writer in (first, second):
        await writer.started(len(BLOB))
        await writer.write(BLOB)
        await writer.commit(len(BLOB))
    assert leftovers(tmp_path) == []


async def test_a_fill_that_drops_its_bytes_is_seen_as_failed_not_abandoned(tmp_path: Path) -> None:
    writer = await claim_writer(FilesystemBlobStore(tmp_path))
    follower = await claim_follower(FilesystemBlobStore(tmp_path))
    await writer.started(len(BLOB))
    await writer.write(b"x" * len(BLOB))
    assert (await follower.progress()).state is FillState.RUNNING
    with pytest.raises(DigestMismatch):
        await writer.commit(len(BLOB))
    assert (await follower.progress()).state is FillState.FAILED
    await follower.close()
    assert leftovers(tmp_path) == []
    assert await FilesystemBlobStore(tmp_path).stat(DIGEST) is None


async def test_a_claim_after_the_commit_reports_it_committed(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    await store.put(DIGEST, BLOB)
    follower = await claim_follower(store)
    progress = await follower.progress()
    assert (progress.state, progress.size) == (FillState.COMMITTED, len(BLOB))
    await follower.close()
    assert leftovers(tmp_path) == []


def die_mid_fill(root: Path, keep: int, announce: bool = True) -> None:
    """A child process claims the fill, writes ``keep`` bytes and dies without cleaning up (as kill -9 would)."""
    code = textwrap.dedent(
        f"""
        import asyncio, os, sys
        from pathlib import Path
        from storage.blobs import FilesystemBlobStore
        from storage.digest import Digest
        blob = bytes(range(256)) * 1024

        async def main():
            writer = await FilesystemBlobStore(Path({str(root)!r})).claim(Digest.of(blob), {KEY!r})
            if {announce!r}:
                await writer.started(len(blob))
            await writer.write(blob[:{keep}])
            os._exit(9)

        asyncio.run(main())
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2], timeout=60, check=False)
    assert result.returncode == 9


async def test_a_fill_whose_process_died_is_taken_over_with_its_bytes(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    die_mid_fill(tmp_path, keep=150_000)
    writer = await claim_writer(store)
    assert writer.written == 150_000  # hashed again, to be resumed from there
    follower = await claim_follower(FilesystemBlobStore(tmp_path))
    progress = await follower.progress()
    assert (progress.state, progress.started, progress.size) == (FillState.RUNNING, True, len(BLOB))
    await writer.write(BLOB[150_000:])
    await writer.commit(len(BLOB))  # verified: the bytes taken over count in the digest
    assert (await follower.progress()).state is FillState.COMMITTED
    await follower.close()
    assert await store.get(DIGEST, len(BLOB)) == BLOB
    assert leftovers(tmp_path) == []


async def test_a_follower_sees_a_dead_fill_as_abandoned(tmp_path: Path) -> None:
    writer = await claim_writer(FilesystemBlobStore(tmp_path))
    follower = await claim_follower(FilesystemBlobStore(tmp_path))
    await writer.started(len(BLOB))
    await writer.write(BLOB[:1000])
    # Its process "dies": the kernel closes its files and so drops the lock, and nothing is cleaned up.
    writer._close_fd()
    assert writer._claim is not None
    writer._claim._fd, fd = -1, writer._claim._fd
    os.close(fd)
    assert (await follower.progress()).state is FillState.ABANDONED
    await follower.close()


async def test_bytes_of_a_fill_that_never_learned_the_size_are_not_resumed(tmp_path: Path) -> None:
    die_mid_fill(tmp_path, keep=150_000, announce=False)
    writer = await claim_writer(FilesystemBlobStore(tmp_path))
    assert writer.written == 0  # a Range request needs the size to be checked against: start over
    await writer.started(len(BLOB))
    await writer.write(BLOB)
    await writer.commit(len(BLOB))
    assert leftovers(tmp_path) == []


async def test_sweep_leaves_a_running_fill_alone_and_removes_dead_ones(tmp_path: Path) -> None:
    die_mid_fill(tmp_path, keep=1000)
    running = await claim_writer(FilesystemBlobStore(tmp_path), "docker.io/other/repo")
    await running.started(len(BLOB))
    await running.write(BLOB[:1000])
    assert len(leftovers(tmp_path)) == 4  # two fills, each a partial file and a claim

    removed = await FilesystemBlobStore(tmp_path).sweep()
    assert removed == 2  # the dead fill's partial file and claim
    assert len(leftovers(tmp_path)) == 2
    await running.write(BLOB[1000:])
    await running.commit(len(BLOB))
    assert leftovers(tmp_path) == []


async def test_a_holder_that_stops_making_progress_is_reported_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stopped process keeps its lock: without a bound its followers' clients would wait forever.
    monkeypatch.setattr("storage.claims.STALL_LIMIT", 0.5)
    writer = await claim_writer(FilesystemBlobStore(tmp_path))
    follower = await claim_follower(FilesystemBlobStore(tmp_path))
    await writer.started(len(BLOB))
    await writer.write(BLOB[:1000])
    assert (await follower.progress()).state is FillState.RUNNING  # bytes moved since it last looked
    await asyncio.sleep(0.6)
    assert (await follower.progress()).state is FillState.FAILED  # none for longer than the limit
    await follower.close()
    await writer.cancel()
