"""Compose files: ``services.<name>.image`` (and ``platform:``). A service that also has ``build:`` is built by
compose and tagged with that name, not pulled, so it is reported as skipped. ``${NAME:-default}`` takes its
default, as compose does when the variable is not set."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from proxy.warm.cifiles.mention import Mention
from proxy.warm.variables import substitute

__all__ = ["images"]


def images(documents: list[Any], source: str) -> Iterator[Mention]:
    for document in documents:
        services = document.get("services") if isinstance(document, dict) else None
        if not isinstance(services, dict):
            continue
        for name, service in services.items():
            if not isinstance(service, dict):
                continue
            image = service.get("image")
            if not isinstance(image, str) or not image.strip():
                continue  # build: only
            platform = service.get("platform")
            yield Mention(
                substitute(image.strip(), {}, defaults=True),
                f"{source}: services.{name}.image",
                platform=substitute(platform, {}, defaults=True) if isinstance(platform, str) else None,
                skip="built by compose (the service has build:), not pulled" if "build" in service else None,
            )
