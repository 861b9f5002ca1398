"""``registry-proxy ls``: one row per cached image, read from the inventory (also while the server runs)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import httpx

from proxy.app import upstream_registry
from proxy.config import Settings
from proxy.lifecycle.listing import Listed, to_json, to_markdown, to_text
from proxy.lifecycle.outdated import check_outdated
from proxy.lifecycle.service import open_inventory, reconcile_inventory
from proxy.lifecycle.thread import InventoryThread
from storage.blobs import FilesystemBlobStore
from storage.contents import platform_of_config
from storage.digest import Digest, InvalidDigest
from storage.index import FilesystemIndex
from storage.interfaces import StorageError
from storage.inventory import ImageRow, Inventory, InventoryDamaged, NewerSchema
from storage.paths import INVENTORY

__all__ = ["list_images", "register", "run"]

# An image config is a few KiB; one larger than this is not read for its platform.
_MAX_CONFIG_SIZE = 1024 * 1024


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "ls", help="list the cached images: tag, digest, platforms, size, pulls (works while the server runs)"
    )
    parser.add_argument("--config", type=Path, default=None, help="as for serve")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="JSON, one object per image")
    output.add_argument("--markdown", action="store_true", help="a Markdown table, to paste into a project's docs")
    parser.add_argument(
        "--outdated", action="store_true", help="ask the upstream about each tag (one HEAD) and mark those that moved"
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    if settings.storage.s3 is not None:
        # It reconciles the inventory with the blobs under root, which on S3 hold only scratch files.
        print('registry-proxy ls: not yet for [storage] backend = "s3"', file=sys.stderr)
        return 2
    try:
        rows = asyncio.run(list_images(settings, outdated=args.outdated))
    except (OSError, InventoryDamaged, NewerSchema) as exc:
        print(f"registry-proxy ls: cache inventory unusable: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(to_json(rows))
    elif args.markdown:
        print(to_markdown(rows))
    elif rows:
        print(to_text(rows))
    else:
        print(f"no cached images under {settings.storage.root}", file=sys.stderr)
    return 0


async def list_images(
    settings: Settings, *, outdated: bool = False, transport: httpx.AsyncBaseTransport | None = None
) -> list[Listed]:
    """The inventory's images; ``transport`` replaces the network for ``outdated`` (tests)."""
    root = settings.storage.root
    if not root.is_dir():
        return []
    blobs = FilesystemBlobStore(root)
    thread = InventoryThread()
    try:
        fresh = not (root / INVENTORY).exists()
        await open_inventory(thread, root / INVENTORY)
        if fresh:
            # A cache from before the inventory (or never served since): build it from the disk first.
            await reconcile_inventory(thread, blobs, FilesystemIndex(root))
        images = await thread.run(Inventory.images)
    finally:
        await thread.close()
    rows = [Listed(image, image.platforms or await _config_platform(blobs, image)) for image in images]
    if not outdated:
        return rows
    upstreams = {upstream.registry: upstream_registry(upstream, transport) for upstream in settings.upstreams}
    try:
        return await check_outdated(rows, upstreams)
    finally:
        for remote in upstreams.values():
            await remote.aclose()


async def _config_platform(blobs: FilesystemBlobStore, image: ImageRow) -> tuple[str, ...]:
    # An image manifest names no platform; its config does (when cached).
    if image.config is None:
        return ()
    try:
        body = await blobs.get(Digest.parse(image.config), _MAX_CONFIG_SIZE)
    except (InvalidDigest, StorageError):
        return ()
    platform = platform_of_config(body) if body is not None else ""
    return (platform,) if platform else ()
