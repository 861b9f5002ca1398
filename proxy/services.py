"""The objects request handlers work with, built once by the app factory and kept in lifespan state."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from proxy.auth.access import AccessControl
from proxy.auth.tokens import TokenService
from proxy.pullthrough.blobs import BlobService
from proxy.pullthrough.catalog import CatalogService
from proxy.pullthrough.manifests import ManifestService
from proxy.pullthrough.referrers import ReferrersService
from proxy.pullthrough.tags import TagService
from proxy.routing import Router

__all__ = ["Services", "services"]


@dataclass(frozen=True)
class Services:
    router: Router
    blobs: BlobService
    manifests: ManifestService
    tags: TagService
    referrers: ReferrersService
    catalog: CatalogService
    # Client authentication and access rules; None when the config has no [auth] (everyone may pull everything).
    access: AccessControl | None = None
    tokens: TokenService | None = None


def services(request: Request) -> Services:
    found = request.state.services
    assert isinstance(found, Services)
    return found
