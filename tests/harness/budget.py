"""For budget tests and bench.lifecycle: the size of a cache's blobs on disk (and its peak), and images of a size."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.harness.blobstore import BlobStore
from tests.harness.images import AMD64, PushedImage
from tests.harness.layers import image_config, image_manifest, random_tar_layer
from tests.harness.oci import OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST
from tests.harness.push import Pusher
from tests.harness.registry import DistributionRegistry


def blobs_on_disk(cache_dir: Path) -> int:
    """Bytes of every file under ``<cache_dir>/blobs``, partial files included: what the budget is about."""
    total = 0
    for path in (cache_dir / "blobs").rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except FileNotFoundError:
            pass  # evicted between the listing and the stat
    return total


class DiskSampler(threading.Thread):
    """Samples :func:`blobs_on_disk` every few milliseconds until stopped (or ``timeout``): the peak, not just the
    size once a pull has finished."""

    def __init__(self, cache_dir: Path, timeout: float = 1800) -> None:
        super().__init__(name="disk-sampler", daemon=True)
        self._cache_dir = cache_dir
        self._done = threading.Event()
        self._deadline = time.monotonic() + timeout
        self.peak = 0

    def run(self) -> None:
        while not self._done.is_set() and time.monotonic() < self._deadline:
            self.peak = max(self.peak, blobs_on_disk(self._cache_dir))
            self._done.wait(0.005)

    def stop(self) -> int:
        self._done.set()
        self.join(timeout=10)
        return self.peak


def push_sized_image(registry: DistributionRegistry, store: BlobStore, repository: str, size: int) -> PushedImage:
    """Push ``repository:1``: an OCI image with one layer of ``size`` bytes of random data (no layer shared)."""
    credentials = (registry.username, registry.password)
    with Pusher(registry.url, store, credentials) as pusher:
        layer = random_tar_layer(store, size, OCI_LAYER_TAR, name=f"{repository.replace('/', '-')}.bin")
        config = image_config(store, OCI_CONFIG, AMD64, [layer], labels={"tests.harness.image": repository})
        for blob in (config, layer.descriptor):
            pusher.push_blob(repository, blob)
        manifest = image_manifest(OCI_MANIFEST, config, [layer])
        digest = pusher.push_manifest(repository, "1", manifest, OCI_MANIFEST)
    return PushedImage(repository, repository, "1", digest, OCI_MANIFEST, manifest, (config, layer.descriptor))
