"""Tag lists: always asked of the upstream (a list is only as good as its freshness), with the tags this
cache knows as the fallback when the upstream is down."""

from __future__ import annotations

import json
import logging

from proxy.errors import RegistryError
from proxy.pagination import next_link, paginate, rewrite_link
from proxy.routing import Target
from storage.interfaces import RepositoryIndex

__all__ = ["TagList", "TagService", "list_path", "namespace_params"]

log = logging.getLogger(__name__)


class TagList:
    def __init__(self, body: bytes, link: str | None, stale: bool = False) -> None:
        self.body = body
        self.link = link
        self.stale = stale


def list_path(target: Target) -> str:
    return f"/v2/{target.name}/tags/list"


def namespace_params(target: Target) -> dict[str, str]:
    return {"ns": target.namespace} if target.namespace is not None else {}


class TagService:
    def __init__(self, index: RepositoryIndex) -> None:
        self._index = index

    async def list(self, target: Target, n: int | None, last: str | None) -> TagList:
        if n == 0:
            # The spec: n=0 is an empty list and no Link, whatever the repository holds.
            return TagList(_body(target.repository, []), None)
        try:
            page = await target.origin.remote.get_tags(target.repository, n, last)
        except RegistryError as exc:
            if not exc.is_outage:
                raise
            known = await self._index.list_tags(target.origin.registry, target.repository)
            if not known:
                raise
            log.warning("upstream down (%s); listing the %d cached tags of %s", exc.message, len(known), target.name)
            tags, next_last = paginate(known, n, last)
            link = next_link(list_path(target), n, next_last, namespace_params(target)) if next_last else None
            return TagList(_body(target.repository, tags), link, stale=True)
        # The upstream's Link points at its own path for the repository; clients must come back through us.
        return TagList(page.body, rewrite_link(page.link, list_path(target), namespace_params(target)))


def _body(name: str, tags: list[str]) -> bytes:
    return json.dumps({"name": name, "tags": tags}).encode()
