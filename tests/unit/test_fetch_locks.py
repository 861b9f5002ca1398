"""Fetch locks on the filesystem (storage.locks): processes sharing a cache ask the upstream one at a time per key.

Two FilesystemFetchLocks on one root stand for two processes (``flock`` locks belong to open files).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from storage.files import sweep_partials
from storage.locks import FilesystemFetchLocks
from storage.paths import EVICT_LOCK, LOCKS

KEY = "manifest docker.io/library/alpine:3.20"


def lock_files(root: Path) -> list[Path]:
    return sorted((root / LOCKS).rglob("*.lock")) if (root / LOCKS).exists() else []


async def test_a_second_process_waits_for_the_first_then_is_told_it_waited(tmp_path: Path) -> None:
    first, second = FilesystemFetchLocks(tmp_path), FilesystemFetchLocks(tmp_path)
    events: list[str] = []
    release = asyncio.Event()

    async def holder() -> None:
        async with first.hold(KEY) as waited:
            events.append(f"first holds (waited={waited})")
            await release.wait()
            events.append("first done")

    async def waiter() -> None:
        async with second.hold(KEY) as waited:
            events.append(f"second holds (waited={waited})")

    task = asyncio.create_task(holder())
    await asyncio.sleep(0.05)
    other = asyncio.create_task(waiter())
    await asyncio.sleep(0.2)
    assert events == ["first holds (waited=False)"]  # the second is still waiting
    release.set()
    await asyncio.wait_for(asyncio.gather(task, other), timeout=5)
    assert events == ["first holds (waited=False)", "first done", "second holds (waited=True)"]
    assert lock_files(tmp_path) == []


async def test_other_keys_do_not_wait(tmp_path: Path) -> None:
    first, second = FilesystemFetchLocks(tmp_path), FilesystemFetchLocks(tmp_path)
    async with first.hold(KEY), second.hold(KEY + "-other") as waited:
        assert waited is False


async def test_a_waiter_goes_ahead_after_the_bound(tmp_path: Path) -> None:
    first, second = FilesystemFetchLocks(tmp_path), FilesystemFetchLocks(tmp_path, max_wait=0.3)
    async with first.hold(KEY):
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with second.hold(KEY) as waited:
            assert waited is True
            assert 0.3 <= loop.time() - started < 3


async def test_sweep_removes_free_leftover_locks_only(tmp_path: Path) -> None:
    locks = FilesystemFetchLocks(tmp_path)
    async with locks.hold(KEY):
        held = lock_files(tmp_path)
        assert len(held) == 1
        leftover = held[0].with_name("0" * 64 + ".lock")  # a holder that died: nobody holds it
        leftover.touch()
        evict = tmp_path / EVICT_LOCK  # not a fetch lock: never swept
        evict.touch()
        assert sweep_partials(tmp_path) == 1
        assert lock_files(tmp_path) == held and evict.exists()
    assert lock_files(tmp_path) == []


async def test_an_unusable_root_makes_nobody_wait(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    locks = FilesystemFetchLocks(blocker / "cache", max_wait=30)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with locks.hold(KEY) as first, locks.hold(KEY) as second:
        assert (first, second) == (False, False)
    assert loop.time() - started < 5  # not the 30 s bound: there is no lock to wait for
