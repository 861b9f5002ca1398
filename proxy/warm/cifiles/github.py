"""GitHub Actions workflows: ``jobs.<id>.container``, ``jobs.<id>.services.<name>`` and ``docker://`` steps."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from proxy.warm.cifiles.mention import Mention

__all__ = ["images"]


def images(documents: list[Any], source: str) -> Iterator[Mention]:
    for document in documents:
        jobs = document.get("jobs") if isinstance(document, dict) else None
        if not isinstance(jobs, dict):
            continue
        for job_id, job in jobs.items():
            if not isinstance(job, dict):
                continue
            where = f"{source}: jobs.{job_id}"
            # A string, or a mapping with image: (and credentials:, options:...).
            yield from _image(job.get("container"), f"{where}.container")
            services = job.get("services")
            if isinstance(services, dict):
                for name, service in services.items():
                    yield from _image(service, f"{where}.services.{name}")
            steps = job.get("steps")
            if isinstance(steps, list):
                for i, step in enumerate(steps):
                    uses = step.get("uses") if isinstance(step, dict) else None
                    if isinstance(uses, str) and uses.startswith("docker://"):
                        yield Mention(uses.removeprefix("docker://"), f"{where}.steps[{i}].uses")


def _image(value: Any, where: str) -> Iterator[Mention]:
    if isinstance(value, dict):
        value, where = value.get("image"), f"{where}.image"
    # An empty image is how a workflow switches a service off for some matrix entries.
    if isinstance(value, str) and value.strip():
        yield Mention(value.strip(), where)
