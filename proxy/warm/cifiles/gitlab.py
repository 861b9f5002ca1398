"""GitLab CI: ``image:`` and ``services:`` at the top, under ``default:`` and in every job, each as a string or
as a mapping with ``name:``. ``$VARIABLES`` defined in the file's ``variables:`` (global, then the job's) are
substituted; predefined ones (``$CI_REGISTRY_IMAGE``) are not known here and stay unresolved."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from proxy.warm.cifiles.mention import Mention
from proxy.warm.variables import substitute

__all__ = ["images"]

# Top-level keys that are not jobs (GitLab's "global keywords" and include/spec headers).
_NOT_JOBS = frozenset(
    {"default", "include", "stages", "variables", "workflow", "image", "services", "cache", "before_script",
     "after_script", "spec"}
)  # fmt: skip


def images(documents: list[Any], source: str) -> Iterator[Mention]:
    for document in documents:
        if not isinstance(document, dict):
            continue
        variables = _variables(document.get("variables"))
        # Top-level image:/services: are the deprecated spelling of default:'s.
        yield from _of_job(document, f"{source}: ", variables)
        default = document.get("default")
        if isinstance(default, dict):
            yield from _of_job(default, f"{source}: default.", variables)
        for name, job in document.items():
            if name in _NOT_JOBS or not isinstance(job, dict):
                continue
            job_variables = {**variables, **_variables(job.get("variables"))}
            yield from _of_job(job, f"{source}: {name}.", job_variables)


def _of_job(job: dict[Any, Any], where: str, variables: dict[str, str]) -> Iterator[Mention]:
    yield from _entry(job.get("image"), f"{where}image", variables)
    services = job.get("services")
    if isinstance(services, list):
        for i, service in enumerate(services):
            yield from _entry(service, f"{where}services[{i}]", variables)


def _entry(value: Any, where: str, variables: dict[str, str]) -> Iterator[Mention]:
    if isinstance(value, dict):
        value = value.get("name")
    if isinstance(value, str) and value.strip():
        yield Mention(substitute(value.strip(), variables), where)


def _variables(raw: Any) -> dict[str, str]:
    """The plain values of a ``variables:`` mapping (a value may also be ``{value: ..., description: ...}``)."""
    if not isinstance(raw, dict):
        return {}
    values: dict[str, str] = {}
    for name, value in raw.items():
        if isinstance(value, dict):
            value = value.get("value")
        if isinstance(name, str) and isinstance(value, str | int | float) and not isinstance(value, bool):
            values[name] = str(value)
    return values
