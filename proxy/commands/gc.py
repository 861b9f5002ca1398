"""``registry-proxy gc``: remove leftover partial files, unreferenced blobs and blobs past the budget."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from proxy.config import Settings, parse_duration
from proxy.lifecycle.budget import Budget
from proxy.lifecycle.gc import GcReport, collect_garbage
from proxy.lifecycle.service import open_inventory
from proxy.lifecycle.thread import InventoryThread
from storage.blobs import FilesystemBlobStore
from storage.index import FilesystemIndex
from storage.inventory import InventoryDamaged, NewerSchema
from storage.paths import INVENTORY

__all__ = ["register", "run"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "gc",
        help="remove leftover partial files, blobs no cached manifest refers to, and blobs past the budget "
        "(safe while the server runs)",
    )
    parser.add_argument("--config", type=Path, default=None, help="as for serve")
    parser.add_argument("--dry-run", action="store_true", help="print what would be removed, and the bytes")
    parser.add_argument(
        "--grace",
        type=_duration,
        default=24 * 3600.0,
        help='blobs no cached manifest refers to are removed once unread this long (default "24h")',
    )
    parser.add_argument(
        "--partial-grace",
        type=_duration,
        default=3600.0,
        help='partial files are removed once unwritten this long (default "1h"; a running fill writes continuously)',
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    if settings.storage.s3 is not None:
        # It walks and deletes files under root: on a bucket shared by replicas that would be wrong, not just
        # useless (the replicas evict under the budget there, one at a time).
        print('registry-proxy gc: not for [storage] backend = "s3" (the replicas keep the bucket in budget)',
              file=sys.stderr)  # fmt: skip
        return 2
    root = settings.storage.root
    if not root.is_dir():
        print(f"registry-proxy gc: no cache at {root}", file=sys.stderr)
        return 1
    try:
        report = asyncio.run(_collect(settings, args.grace, args.partial_grace, args.dry_run))
    except (OSError, InventoryDamaged, NewerSchema) as exc:
        print(f"registry-proxy gc: cache inventory unusable: {exc}", file=sys.stderr)
        return 1
    _print(report, args.dry_run)
    return 0


async def _collect(settings: Settings, grace: float, partial_grace: float, dry_run: bool) -> GcReport:
    root = settings.storage.root
    thread = InventoryThread()
    try:
        await open_inventory(thread, root / INVENTORY)
        return await collect_garbage(
            root,
            thread,
            FilesystemBlobStore(root),
            FilesystemIndex(root),
            Budget.of(settings.storage),
            grace=grace,
            partial_grace=partial_grace,
            dry_run=dry_run,
        )
    finally:
        await thread.close()


def _print(report: GcReport, dry_run: bool) -> None:
    verb = "would remove" if dry_run else "removed"
    for removal in report.removed:
        print(f"{verb} {removal.reason}: {removal.name} ({removal.size} bytes)")
    for note in report.notes:
        print(f"note: {note}")
    kept = f"; {report.in_use} blobs being read were kept" if report.in_use else ""
    print(f"gc: {verb} {len(report.removed)} files, {report.freed} bytes ({report.freed / 2**20:.1f} MiB){kept}")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
