"""One thread that owns the inventory's SQLite connection: every call runs there, in order, off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from storage.inventory import Inventory

__all__ = ["InventoryThread"]

T = TypeVar("T")


class InventoryThread:
    def __init__(self) -> None:
        # One worker: SQLite connections belong to the thread that made them, and one writer per process is
        # all SQLite allows anyway.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inventory")
        self._inventory: Inventory | None = None

    async def open(self, path: Path, *, create: bool = True) -> None:
        self._inventory = await self._submit(lambda: Inventory.open(path, create=create))

    async def run(self, call: Callable[[Inventory], T]) -> T:
        inventory = self._inventory
        if inventory is None:
            raise RuntimeError("the inventory is not open")
        return await self._submit(lambda: call(inventory))

    async def close(self) -> None:
        inventory, self._inventory = self._inventory, None
        if inventory is not None:
            await self._submit(inventory.close)
        # Nothing is queued any more: shutting down does not block the loop.
        self._executor.shutdown(wait=False)

    async def _submit(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)
