"""The images the tests pull: built offline from bytes made here, pushed to the upstream registry.

``seed()`` pushes one image of each kind a registry proxy has to get right:

============ ========================== ==========================================================================
key          reference                  what
============ ========================== ==========================================================================
oci          library/oci-image:1        OCI image manifest, OCI config, two small gzip layers
index        library/oci-index:1        OCI image index, linux/amd64 and linux/arm64/v8 OCI images
docker       library/docker-image:1     Docker schema2 manifest, Docker config, two small gzip layers
list         library/docker-list:1      Docker manifest list, linux/amd64 and linux/arm64/v8 schema2 images
big          library/big:1              OCI image with one uncompressed tar layer of ``big_layer_mib`` MiB of random
                                        data
private      private/secret:1           small OCI image, pullable only with credentials
busybox      library/busybox:1          runnable: Docker schema2 manifest, one gzip layer with the machine's
                                        ``/bin/busybox`` and ``/bin/sh`` → busybox; ``Cmd`` echoes ``BUSYBOX_OUTPUT``
busybox-oci  library/busybox-oci:1      the same as an OCI manifest and config
============ ========================== ==========================================================================

The busybox images are for the machine's own architecture (a container has to run here). Where ``/bin/busybox``
(Debian package busybox-static) is missing or not static, they are not seeded, and ``images["busybox"]`` skips the
test that asks for it, with the reason, instead of the whole session failing.

Every image has blobs of its own (no layer is shared between two images), so a test can count upstream fetches per
image without one pull warming the cache for another. All but the big layer are deterministic: same digests on every
run. Every blob also stays on disk in ``Images.store``, to compare what a client pulled with what was pushed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from platform import machine as machine_architecture

from tests.harness.blobstore import BlobStore
from tests.harness.layers import (
    Layer,
    gzip_layer,
    image_config,
    image_manifest,
    index_manifest,
    random_tar_layer,
    rootfs_layer,
)
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

BUSYBOX_BINARY = Path("/bin/busybox")
BUSYBOX_OUTPUT = "hello-from-busybox"
"""What the busybox images print when run with their default command."""
BUSYBOX_CMD = ("/bin/sh", "-c", f"echo {BUSYBOX_OUTPUT}")
# machine_architecture() → the OCI platform of images that run on this machine.
_NATIVE_PLATFORMS = {"x86_64": AMD64, "amd64": AMD64, "aarch64": ARM64, "arm64": ARM64}


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
    """The seeded images by key ("oci", "index", "docker", "list", "big", "private", "busybox", "busybox-oci"), and
    the blobs behind them.

    ``unavailable`` maps the keys that could not be seeded on this machine to the reason; asking for one skips the
    current test with that reason (iteration, ``len`` and ``in`` see only the seeded images).
    """

    def __init__(
        self, store: BlobStore, images: Mapping[str, PushedImage], unavailable: Mapping[str, str] | None = None
    ) -> None:
        self.store = store
        self._images = dict(images)
        self.unavailable = dict(unavailable or {})

    def __getitem__(self, key: str) -> PushedImage:
        if key in self.unavailable and key not in self._images:
            # Imported here: the harness is also used outside pytest (bench/), where no image is ever unavailable
            # that bench asks for.
            import pytest

            pytest.skip(f"image {key!r} was not seeded: {self.unavailable[key]}")
        return self._images[key]

    def __contains__(self, key: object) -> bool:
        # Mapping's default goes through __getitem__, which would skip the test instead of answering False.
        return key in self._images

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
        unavailable: dict[str, str] = {}
        native, busybox, reason = native_platform(), _static_busybox(), None
        if native is None:
            reason = f"no image platform for this machine's architecture {machine_architecture()!r}"
        elif busybox is None:
            reason = f"{BUSYBOX_BINARY} is missing or not statically linked (install Debian package busybox-static)"
        if native is None or busybox is None:
            unavailable = {"busybox": str(reason), "busybox-oci": str(reason)}
        else:
            images += [
                seeder.busybox("busybox", "library/busybox", DOCKER_MANIFEST, DOCKER_LAYER_GZIP, busybox, native),
                seeder.busybox("busybox-oci", "library/busybox-oci", OCI_MANIFEST, OCI_LAYER_GZIP, busybox, native),
            ]
    return Images(store, {image.key: image for image in images}, unavailable)


def native_platform() -> Platform | None:
    """The platform of images that run on this machine, or None for an architecture the harness does not know."""
    return _NATIVE_PLATFORMS.get(machine_architecture().lower())


def _static_busybox() -> bytes | None:
    """The bytes of ``BUSYBOX_BINARY`` if it is a statically linked ELF executable (a dynamic one would not find its
    libraries inside the image), else None."""
    try:
        data = BUSYBOX_BINARY.read_bytes()
    except OSError:
        return None
    return data if _is_static_elf64(data) else None


def _is_static_elf64(data: bytes) -> bool:
    """True for a little-endian 64-bit ELF file without a PT_INTERP program header (i.e. no dynamic loader)."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False
    (phoff,) = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    pt_interp = 3
    for n in range(min(phnum, 256)):  # a corrupt header must not make this loop long
        offset = phoff + n * phentsize
        if offset + 4 > len(data):
            return False
        if struct.unpack_from("<I", data, offset)[0] == pt_interp:
            return False
    return True


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
        cmd: Sequence[str] = ("/bin/sh",),
    ) -> PushedImage:
        """Push config and layers, then the manifest under ``tag`` (or only by digest when None)."""
        config_type = OCI_CONFIG if media_type == OCI_MANIFEST else DOCKER_CONFIG
        labels = {"tests.harness.image": key}
        config = image_config(self.store, config_type, platform, layers, labels=labels, cmd=cmd)
        blobs = (config, *(layer.descriptor for layer in layers))
        for blob in blobs:
            self.pusher.push_blob(repository, blob)
        manifest = image_manifest(media_type, config, layers)
        digest = self.pusher.push_manifest(repository, tag or sha256_digest(manifest), manifest, media_type)
        return PushedImage(key, repository, tag, digest, media_type, manifest, blobs, platform=platform)

    def busybox(
        self, key: str, repository: str, media_type: str, layer_type: str, busybox: bytes, platform: Platform
    ) -> PushedImage:
        """A runnable image: ``/bin/busybox``, ``/bin/sh`` → busybox, and a file naming ``key`` so that the two
        busybox images share no layer (each image's upstream fetches stay countable on their own)."""
        layer = rootfs_layer(
            self.store,
            layer_type,
            executables={"bin/busybox": busybox},
            files={"etc/tests-harness-image": f"{key}\n".encode()},
            symlinks={"bin/sh": "busybox"},
        )
        return self.image(key, repository, "1", media_type, [layer], platform, cmd=BUSYBOX_CMD)

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
