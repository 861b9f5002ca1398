"""The cache lifecycle's figures: start-up on 100,000 blobs, eviction throughput, peak cache size against the budget.

    .venv/bin/python -m bench.lifecycle [--blobs 100000] [--big-blobs 256] [--big-mib 4] [--mib 200] [--skip-pulls]

1. Start-up: writes ``--blobs`` small blob files (0.5-4 KiB) into a fresh cache, then times what the server's
   start-up does (in the background: serving does not wait for it): the walk of blobs/, the reconciliation into
   an empty inventory (a cache from before the inventory, or a lost database), and again with nothing changed
   (every ordinary restart). The files were just written, so the walk runs on a warm dentry cache.
2. Eviction: the server's eviction pass (LRU order from the inventory, read-lease check, unlink, inventory update)
   on half of those small blobs, then on ``--big-blobs`` blobs of ``--big-mib`` MiB: blobs/s and MB/s.
3. Peak: a real Distribution, skopeo pulls through the proxy with max_size = 1.5 x ``--mib``: a ``--mib`` image,
   two of 0.4 x ``--mib``, the first again. The blobs' size on disk is sampled every 5 ms throughout.
Run it after ./scripts/test has installed everything (part 3 needs docker-registry and skopeo).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from proxy.lifecycle.eviction import evict_lru
from proxy.lifecycle.service import open_inventory, reconcile_inventory
from proxy.lifecycle.thread import InventoryThread
from storage.blobs import FilesystemBlobStore, scan_blobs
from storage.digest import Digest
from storage.index import FilesystemIndex
from storage.inventory import Inventory
from storage.paths import INVENTORY, blob_path
from tests.harness.budget import DiskSampler, blobs_on_disk, push_sized_image
from tests.harness.images import seed
from tests.harness.proxy_server import ProxyServer
from tests.harness.registry import DistributionRegistry
from tests.harness.skopeo import read_dir_layout, skopeo_copy
from tests.harness.tokens import TokenIssuer

MIB = 1024 * 1024


def write_blobs(root: Path, count: int, size: tuple[int, int], seed_: int) -> int:
    """``count`` blob files of sizes in ``size`` (content unique per blob); their total size."""
    rng = random.Random(seed_)
    total = 0
    for n in range(count):
        length = rng.randint(*size)
        unit = n.to_bytes(8, "big") + seed_.to_bytes(8, "big")
        data = (unit * (length // len(unit) + 1))[:length]
        path = root / blob_path(Digest.of(data))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        total += length
    return total


async def start_up(root: Path, blobs: int) -> None:
    print(f"writing {blobs} blob files...", flush=True)
    size = write_blobs(root, blobs, (512, 4096), 1)
    store, index = FilesystemBlobStore(root), FilesystemIndex(root)
    started = time.perf_counter()
    walked = len(scan_blobs(root))
    walk = time.perf_counter() - started
    thread = InventoryThread()
    await open_inventory(thread, root / INVENTORY)
    try:
        started = time.perf_counter()
        await reconcile_inventory(thread, store, index)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        await reconcile_inventory(thread, store, index)
        warm = time.perf_counter() - started
        print(
            f"start-up on {walked} blobs ({size / MIB:.1f} MiB): walk of blobs/ {walk:.2f} s; reconciliation into an "
            f"empty inventory {cold:.2f} s; restart with nothing changed {warm:.2f} s"
        )
        await evict(thread, store, f"{walked // 2} small blobs", target=None)
    finally:
        await thread.close()


async def evict(thread: InventoryThread, store: FilesystemBlobStore, what: str, target: int | None) -> None:
    total, count = await thread.run(Inventory.total)
    goal = total // 2 if target is None else target
    started = time.perf_counter()
    result = await evict_lru(thread, store, total, goal, keep=set())
    elapsed = time.perf_counter() - started
    n, freed = len(result.removed), result.freed
    print(
        f"eviction of {what}: {n} blobs, {freed / MIB:.1f} MiB in {elapsed:.2f} s = {n / elapsed:,.0f} blobs/s, "
        f"{freed / elapsed / 1e6:,.0f} MB/s"
    )


async def big_eviction(root: Path, count: int, mib: int) -> None:
    print(f"writing {count} blobs of {mib} MiB...", flush=True)
    write_blobs(root, count, (mib * MIB, mib * MIB), 2)
    store = FilesystemBlobStore(root)
    thread = InventoryThread()
    await open_inventory(thread, root / INVENTORY)
    try:
        await reconcile_inventory(thread, store, FilesystemIndex(root))
        await evict(thread, store, f"{count} blobs of {mib} MiB", target=0)
    finally:
        await thread.close()


def pulls(work: Path, mib: int) -> None:
    budget = mib * 3 // 2 * MIB
    with TokenIssuer(work / "issuer") as issuer, DistributionRegistry(work / "upstream", issuer) as upstream:
        images = seed(upstream, work / "images", big_layer_mib=mib)
        big = images["big"]
        extras = [push_sized_image(upstream, images.store, f"bench/extra-{k}", mib * 2 // 5 * MIB) for k in "ab"]
        storage = f"max_size = {budget}"
        with ProxyServer(work / "proxy", upstream.url, extra_storage=storage) as proxy:
            sampler = DiskSampler(proxy.cache_dir)
            sampler.start()
            after = []
            for n, image in enumerate([big, *extras, big]):
                dest = work / f"pull-{n}"
                started = time.perf_counter()
                skopeo_copy(proxy.ref(image.ref), dest)
                elapsed = time.perf_counter() - started
                if read_dir_layout(dest).manifest_digest != image.digest:
                    raise SystemExit(f"pulled the wrong manifest for {image.ref}")
                shutil.rmtree(dest)
                size = image.blobs[1].size
                after.append(f"{image.repository} ({size / MIB:.0f} MiB, {elapsed:.1f} s) → "
                             f"{blobs_on_disk(proxy.cache_dir) / MIB:.1f} MiB")  # fmt: skip
            peak = sampler.stop()
    print(f"pulls with max_size {budget / MIB:.0f} MiB, cache size on disk after each:")
    for line in after:
        print(f"  {line}")
    verdict = "within" if peak <= budget else "OVER"
    print(f"peak cache size {peak / MIB:.1f} MiB of a {budget / MIB:.0f} MiB budget ({verdict}; sampled every 5 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blobs", type=int, default=100_000, help="small blobs for the start-up figure")
    parser.add_argument("--big-blobs", type=int, default=256, help="large blobs for the eviction figure")
    parser.add_argument("--big-mib", type=int, default=4, help="size of each large blob (MiB)")
    parser.add_argument("--mib", type=int, default=200, help="the big image for the peak figure (MiB)")
    parser.add_argument("--skip-pulls", action="store_true", help="no registry and skopeo: parts 1 and 2 only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-lifecycle-") as tmp:
        work = Path(tmp)
        asyncio.run(start_up(work / "small", args.blobs))
        shutil.rmtree(work / "small")
        asyncio.run(big_eviction(work / "big", args.big_blobs, args.big_mib))
        shutil.rmtree(work / "big")
        os.sync()
        if not args.skip_pulls:
            pulls(work / "pulls", args.mib)


if __name__ == "__main__":
    main()
