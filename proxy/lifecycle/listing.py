"""``registry-proxy ls`` output: the inventory's image rows as a text table, a Markdown table, or JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from storage.inventory import ImageRow

__all__ = ["Listed", "to_json", "to_markdown", "to_text"]

_SHORT_TYPES = {
    "application/vnd.oci.image.index.v1+json": "OCI index",
    "application/vnd.oci.image.manifest.v1+json": "OCI manifest",
    "application/vnd.docker.distribution.manifest.list.v2+json": "Docker list",
    "application/vnd.docker.distribution.manifest.v2+json": "Docker manifest",
}


@dataclass(frozen=True)
class Listed:
    image: ImageRow
    platforms: tuple[str, ...]  # the index's, or the image config's
    checked: bool = False  # --outdated asked the upstream about this row
    upstream_digest: str | None = None
    check_error: str | None = None

    @property
    def outdated(self) -> bool | None:
        """Whether the tag moved upstream since it was cached; None if unknown (not checked, no tag, or failed)."""
        if not self.checked or self.upstream_digest is None:
            return None
        return self.upstream_digest != self.image.digest


def to_json(rows: Sequence[Listed]) -> str:
    entries = []
    for row in rows:
        image = row.image
        entry: dict[str, object] = {
            "registry": image.registry,
            "repository": image.repository,
            "tag": image.tag or None,
            "digest": image.digest,
            "media_type": image.media_type,
            "platforms": list(row.platforms),
            "size": image.size,
            "cached_size": image.cached,
            "fetched_at": _iso(image.fetched_at),
            "last_pulled": _iso(image.last_pulled),
            "pull_count": image.pull_count,
            "pinned": image.pinned,
        }
        if row.checked:
            entry |= {"outdated": row.outdated, "upstream_digest": row.upstream_digest, "check_error": row.check_error}
        entries.append(entry)
    return json.dumps(entries, indent=2)


def to_markdown(rows: Sequence[Listed]) -> str:
    """A GitHub-flavoured Markdown table, to paste into a project's docs: where each CI image comes from."""
    header = ["Image", "Digest", "Type", "Platforms", "Size", "Fetched", "Last pulled", "Pulls", "Pinned"]
    checked = any(row.checked for row in rows)
    if checked:
        header.append("Upstream")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for row in rows:
        image = row.image
        cells = [
            f"`{_reference(image)}`",
            f"`{image.digest}`",
            _type(image.media_type),
            ", ".join(row.platforms),
            _size(image.size),
            _date(image.fetched_at),
            _date(image.last_pulled),
            str(image.pull_count),
            "yes" if image.pinned else "",
        ]
        if checked:
            cells.append(_status(row))
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def to_text(rows: Sequence[Listed]) -> str:
    header = ["REGISTRY", "REPOSITORY", "TAG", "DIGEST", "TYPE", "PLATFORMS", "SIZE", "CACHED", "FETCHED",
              "LAST PULLED", "PULLS", "PINNED"]  # fmt: skip
    checked = any(row.checked for row in rows)
    if checked:
        header.append("UPSTREAM")
    table = [header]
    for row in rows:
        image = row.image
        cells = [
            image.registry,
            image.repository,
            image.tag or "<none>",
            image.digest[: image.digest.index(":") + 13],
            _type(image.media_type),
            ",".join(row.platforms) or "-",
            _size(image.size),
            _size(image.cached),
            _date(image.fetched_at) or "-",
            _date(image.last_pulled) or "-",
            str(image.pull_count),
            "yes" if image.pinned else "no",
        ]
        if checked:
            cells.append(_status(row) or "-")
        table.append(cells)
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in table)  # fmt: skip


def _reference(image: ImageRow) -> str:
    name = f"{image.registry}/{image.repository}"
    return f"{name}:{image.tag}" if image.tag else f"{name}@{image.digest}"


def _status(row: Listed) -> str:
    if not row.checked:
        return ""
    if row.check_error is not None:
        return f"unknown ({row.check_error})"
    if row.outdated:
        return f"moved to {row.upstream_digest}"
    return "current" if row.outdated is False else ""


def _type(media_type: str) -> str:
    return _SHORT_TYPES.get(media_type, media_type)


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _date(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M")


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
