"""The upstream every benchmark pulls from: a token issuer and a token-auth Distribution on 127.0.0.1, seeded
with the test images (``tests.harness.images``), the big single-layer one at the size asked for."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.harness.images import Images, PushedImage, seed
from tests.harness.registry import DistributionRegistry
from tests.harness.tokens import TokenIssuer

__all__ = ["SeededUpstream", "seeded_upstream"]


@dataclass(frozen=True)
class SeededUpstream:
    issuer: TokenIssuer
    registry: DistributionRegistry
    images: Images

    @property
    def big(self) -> PushedImage:
        return self.images["big"]

    @property
    def big_layer_path(self) -> str:
        """The URL path of the big layer, the same on every server the benchmarks start."""
        image = self.big
        return f"/v2/{image.repository}/blobs/{image.layers[0].digest}"

    @property
    def big_layer_file(self) -> Path:
        """The big layer's bytes on disk, as seeded (what nginx serves)."""
        return self.images.store.path(self.big.layers[0].digest)

    def token(self, repository: str) -> str:
        """An anonymous pull token for ``repository``, as a client straight to the upstream gets one."""
        response = httpx.get(
            self.issuer.realm,
            params={"service": self.issuer.service, "scope": f"repository:{repository}:pull"},
            timeout=30,
        )
        response.raise_for_status()
        token: str = response.json()["token"]
        return token

    def gets_since(self, mark: int, path: str) -> list[int]:
        """The statuses of the upstream's GETs of ``path`` since ``mark`` (``registry.mark()``), once its log
        has gone quiet."""
        self.registry.wait_quiet()
        return [r.status for r in self.registry.requests_since(mark) if r.method == "GET" and r.path == path]


@contextmanager
def seeded_upstream(work: Path, big_layer_mib: int) -> Iterator[SeededUpstream]:
    with TokenIssuer(work / "issuer") as issuer, DistributionRegistry(work / "upstream", issuer) as registry:
        yield SeededUpstream(issuer, registry, seed(registry, work / "images", big_layer_mib=big_layer_mib))
