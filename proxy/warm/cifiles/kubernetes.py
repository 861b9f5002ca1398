"""Kubernetes manifests: every ``containers``, ``initContainers`` and ``ephemeralContainers`` list wherever it is
(Pod, Deployment, StatefulSet, DaemonSet, Job, CronJob, a List of them, or a custom resource holding a pod
template), in every document of the file."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from proxy.warm.cifiles.mention import Mention

__all__ = ["images"]

_CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
# YAML aliases can make a small file a very deep or wide tree: a pod spec is never nested deeper than this.
_MAX_DEPTH = 32


def images(documents: list[Any], source: str) -> Iterator[Mention]:
    for document in documents:
        if not isinstance(document, dict):
            continue
        metadata = document.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        label = f"{document.get('kind', 'document')}/{name}" if name else str(document.get("kind", "document"))
        yield from _walk(document, f"{source}: {label}", "", 0, set())


def _walk(node: Any, where: str, path: str, depth: int, seen: set[int]) -> Iterator[Mention]:
    if depth > _MAX_DEPTH or id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, dict):
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            if key in _CONTAINER_LISTS and isinstance(value, list):
                for i, container in enumerate(value):
                    image = container.get("image") if isinstance(container, dict) else None
                    if isinstance(image, str) and image.strip():
                        yield Mention(image.strip(), f"{where} {child}[{i}].image")
            else:
                yield from _walk(value, where, child, depth + 1, seen)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(item, where, f"{path}[{i}]", depth + 1, seen)
