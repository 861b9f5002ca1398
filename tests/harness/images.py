"""The images the tests pull: built offline from bytes made here, pushed to the upstream registry.

``seed()`` pushes one image of each kind a registry proxy has to get right:

======== =========================== ==============================================================================
key      reference                   what
======== =========================== ==============================================================================
oci      library/oci-image:1         OCI image manifest, OCI config, two small gzip layers
index    library/oci-index:1         OCI image index, linux/amd64 and linux/arm64/v8 OCI images
docker   library/docker-image:1      Docker schema2 manifest, Docker config, two small gzip layers
list     library/docker-list:1       Docker manifest list, linux/amd64 and linux/arm64/v8 schema2 images
big      library/big:1               OCI image with one uncompressed tar layer of ``big_layer_mib`` MiB of random data
private  private/secret:1            small OCI image, pullable only with credentials
======== =========================== ==============================================================================

Every image has blobs of its own (no layer is shared between two images), so a test can count upstream fetches per
image without one pull warming the cache for another. All but the big layer are deterministic: same digests on every
run. Every blob also stays on disk in ``Images.store``, to compare what a client pulled with what was pushed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.harness.blobstore import BlobStore
from tests.harness.layers import Layer, gzip_layer, image_config, image_manifest, index_manifest, random_tar_layer
from tests.harness.oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    Descriptor,
    Platform,
    sha256_digest,
)
from tests.harness.push import Pusher
from tests.harness.registry import DistributionRegistry

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")
MIB = 1024 * 1024


@dataclass(frozen=True)
class PushedImage:
    """One manifest as pushed: an image (``blobs`` = config then layers) or an index (``blobs`` = its children's
    manifest descriptors, and ``children`` the images themselves)."""

    key: str
    repository: str
    tag: str | None
    digest: str
    media_type: str
    manifest: bytes
    blobs: tuple[Descriptor, ...]
    children: tuple[PushedImage, ...] = ()
    platform: Platform | None = None
    """For an index's child: the platform the index lists it under."""

    @property
    def ref(self) -> str:
        """``repository:tag``, or ``repository@digest`` for an index's child (those have no tag)."""
        return f"{self.repository}:{self.tag}" if self.tag else self.digest_ref

    @property
    def digest_ref(self) -> str:
        return f"{self.repository}@{self.digest}"

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.manifest), self.platform)

    @property
    def config(self) -> Descriptor:
        if self.is_index:
            raise ValueError(f"{self.ref} is an index and has no config")
        return self.blobs[0]

    @property
    def layers(self) -> tuple[Descriptor, ...]:
        if self.is_index:
            raise ValueError(f"{self.ref} is an index and has no layers")
        return self.blobs[1:]

    @property
    def content_blobs(self) -> tuple[Descriptor, ...]:
        """Every config and layer of this image, or of all images of this index: what ``/blobs/`` serves."""
        if not self.is_index:
            return self.blobs
        return tuple(blob for child in self.children for blob in child.blobs)

    def child(self, architecture: str) -> PushedImage:
        for child in self.children:
            if child.platform is not None and child.platform.architecture == architecture:
                return child
        raise KeyError(f"{self.ref} has no {architecture} image")


class Images(Mapping[str, PushedImage]):
    """The seeded images by key ("oci", "index", "docker", "list", "big", "private"), and the blobs behind them."""

    def __init__(self, store: BlobStore, images: Mapping[str, PushedImage]) -> None:
        self.store = store
        self._images = dict(images)

    def __getitem__(self, key: str) -> PushedImage:
        return self._images[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._images)

    def __len__(self) -> int:
        return len(self._images)


def seed(registry: DistributionRegistry, workdir: Path, *, big_layer_mib: int = 200) -> Images:
    """Build the images under ``workdir`` and push them to ``registry`` with its credentials."""
    store = BlobStore(workdir / "blobs")
    with Pusher(registry.url, store, (registry.username, registry.password)) as pusher:
        seeder = _Seeder(store, pusher)
        big_layer = random_tar_layer(store, big_layer_mib * MIB, OCI_LAYER_TAR)
        images = [
            seeder.image("oci", "library/oci-image", "1", OCI_MANIFEST, seeder.small_layers("oci", 2, OCI_LAYER_GZIP)),
            seeder.index("index", "library/oci-index", "1", OCI_INDEX, OCI_MANIFEST, OCI_LAYER_GZIP),
            seeder.image(
                "docker",
                "library/docker-image",
                "1",
                DOCKER_MANIFEST,
                seeder.small_layers("docker", 2, DOCKER_LAYER_GZIP),
            ),
            seeder.index("list", "library/docker-list", "1", DOCKER_LIST, DOCKER_MANIFEST, DOCKER_LAYER_GZIP),
            seeder.image("big", "library/big", "1", OCI_MANIFEST, [big_layer]),
            seeder.image(
                "private", "private/secret", "1", OCI_MANIFEST, seeder.small_layers("private", 1, OCI_LAYER_GZIP)
            ),
        ]
    return Images(store, {image.key: image for image in images})


class _Seeder:
    def __init__(self, store: BlobStore, pusher: Pusher) -> None:
        self.store = store
        self.pusher = pusher

    def small_layers(self, key: str, count: int, media_type: str, platform: Platform = AMD64) -> list[Layer]:
        """``count`` gzip layers whose files name the image, so no two images share a layer."""
        return [
            gzip_layer(
                self.store,
                {
                    f"{key}/layer-{n}.txt": f"image {key}, {platform.architecture}, layer {n}\n".encode(),
                    f"{key}/layer-{n}.bin": bytes(range(256)) * (4 * (n + 1)),
                },
                media_type,
            )
            for n in range(count)
        ]

    def image(
        self,
        key: str,
        repository: str,
        tag: str | None,
        media_type: str,
        layers: Sequence[Layer],
        platform: Platform = AMD64,
    ) -> PushedImage:
        """Push config and layers, then the manifest under ``tag`` (or only by digest when None)."""
        config_type = OCI_CONFIG if media_type == OCI_MANIFEST else DOCKER_CONFIG
        config = image_config(self.store, config_type, platform, layers, labels={"tests.harness.image": key})
        blobs = (config, *(layer.descriptor for layer in layers))
        for blob in blobs:
            self.pusher.push_blob(repository, blob)
        manifest = image_manifest(media_type, config, layers)
        digest = self.pusher.push_manifest(repository, tag or sha256_digest(manifest), manifest, media_type)
        return PushedImage(key, repository, tag, digest, media_type, manifest, blobs, platform=platform)

    def index(
        self, key: str, repository: str, tag: str, media_type: str, child_type: str, layer_type: str
    ) -> PushedImage:
        """Push one distinct image per platform by digest (the registry checks they exist), then the index."""
        children = tuple(
            self.image(
                f"{key}/{platform.architecture}",
                repository,
                None,
                child_type,
                self.small_layers(f"{key}-{platform.architecture}", 1, layer_type, platform),
                platform,
            )
            for platform in (AMD64, ARM64)
        )
        manifest = index_manifest(media_type, [child.descriptor for child in children])
        digest = self.pusher.push_manifest(repository, tag, manifest, media_type)
        blobs = tuple(child.descriptor for child in children)
        return PushedImage(key, repository, tag, digest, media_type, manifest, blobs, children)
