"""Pagination of lists (tags, repositories, referrers) as the distribution spec defines it: ``n``, ``last``,
``Link``."""

from __future__ import annotations

import re
from collections.abc import Collection
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["next_link", "paginate", "rewrite_link", "rewrite_opaque_link"]

_LINK = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')


def paginate(items: list[str], n: int | None, last: str | None) -> tuple[list[str], str | None]:
    """The page after ``last`` (exclusive) of at most ``n`` sorted items, and the ``last`` of the next page."""
    ordered = sorted(items)
    if last is not None:
        ordered = [item for item in ordered if item > last]
    if n is None or len(ordered) <= n:
        return ordered, None
    page = ordered[:n]
    return page, page[-1]


def next_link(path: str, n: int | None, last: str, extra: dict[str, str] | None = None) -> str:
    params = {**({"n": str(n)} if n is not None else {}), "last": last, **(extra or {})}
    return f'<{path}?{urlencode(params)}>; rel="next"'


def rewrite_link(link: str | None, path: str, extra: dict[str, str] | None = None) -> str | None:
    """An upstream's ``Link: <...>; rel="next"`` pointed at this proxy's ``path`` instead, keeping n and last."""
    query = _next_query(link)
    if query is None:
        return None
    params = {k: v for k, v in query if k in ("n", "last") and v}
    if "last" not in params:
        return None
    return f'<{path}?{urlencode({**params, **(extra or {})})}>; rel="next"'


def rewrite_opaque_link(link: str | None, path: str, extra: dict[str, str], own: Collection[str] = ()) -> str | None:
    """An upstream's next-page Link whose query only the upstream understands (the referrers API leaves it to each
    registry), pointed at this proxy's ``path``: its query is kept as it is, but for the parameters this proxy reads
    itself (``own``, and those in ``extra``, which are added)."""
    query = _next_query(link)
    if not query:
        return None
    params = [(k, v) for k, v in query if k not in own and k not in extra]
    return f'<{path}?{urlencode([*params, *extra.items()])}>; rel="next"'


def _next_query(link: str | None) -> list[tuple[str, str]] | None:
    """The query of the ``rel="next"`` target of a Link header, or None if there is none."""
    if not link:
        return None
    match = _LINK.search(link)
    if match is None:
        return None
    return parse_qsl(urlsplit(match.group(1)).query, keep_blank_values=True)
