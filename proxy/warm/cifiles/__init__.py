"""Image references in CI files, one module per format; :func:`read_ci_file` tells the format and reads one.

The format comes from the file's name (``.gitlab-ci.yml``, ``.github/workflows/*.yml``, ``compose.yaml``,
``docker-compose*.yml``, ``Dockerfile*``, ``*.Dockerfile``, ``Containerfile``), else from what a YAML file
holds, or from an explicit ``format``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from proxy.warm.cifiles import compose, dockerfile, github, gitlab, kubernetes
from proxy.warm.cifiles.mention import Mention
from proxy.warm.cifiles.yamlfile import CIFileError, load_documents

__all__ = ["FORMATS", "CIFileError", "Mention", "detect_by_content", "detect_by_name", "read_ci_file"]

_YAML_FORMATS: dict[str, Callable[[list[Any], str], Iterator[Mention]]] = {
    "github": github.images,
    "gitlab": gitlab.images,
    "compose": compose.images,
    "kubernetes": kubernetes.images,
}
FORMATS = (*_YAML_FORMATS, "dockerfile")
_DOCKERFILE_NAMES = ("dockerfile", "containerfile", "*.dockerfile", "dockerfile.*", "containerfile.*")
# CI files are small; anything this big is not one, and is not read into memory.
_MAX_FILE_SIZE = 16 * 1024 * 1024


def read_ci_file(path: Path, kind: str | None = None) -> list[Mention]:
    """The image references in ``path``; ``kind`` (one of :data:`FORMATS`) overrides the detection."""
    source = str(path)
    try:
        if path.stat().st_size > _MAX_FILE_SIZE:
            raise CIFileError(f"{source}: larger than {_MAX_FILE_SIZE >> 20} MiB, not a CI file")
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CIFileError(f"{source}: file not found") from None
    except OSError as exc:
        raise CIFileError(f"{source}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise CIFileError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    kind = kind or detect_by_name(path)
    if kind == "dockerfile":
        return list(dockerfile.images(text, source))
    documents = load_documents(text, source)
    kind = kind or detect_by_content(documents)
    if kind is None:
        raise CIFileError(f"{source}: cannot tell which kind of CI file this is; say it with --format")
    return list(_YAML_FORMATS[kind](documents, source))


def detect_by_name(path: Path) -> str | None:
    name = path.name.lower()
    if any(fnmatch.fnmatch(name, pattern) for pattern in _DOCKERFILE_NAMES):
        return "dockerfile"
    if path.suffix.lower() not in (".yml", ".yaml"):
        return None
    if name.endswith((".gitlab-ci.yml", ".gitlab-ci.yaml")):  # also "templates/build.gitlab-ci.yml"
        return "gitlab"
    if path.parent.name == "workflows" and path.parent.parent.name == ".github":
        return "github"
    if fnmatch.fnmatch(name, "compose*.y*ml") or fnmatch.fnmatch(name, "docker-compose*.y*ml"):
        return "compose"
    return None


def detect_by_content(documents: list[Any]) -> str | None:
    mappings = [d for d in documents if isinstance(d, dict)]
    if not mappings:
        return None
    if all("apiVersion" in d and "kind" in d for d in mappings):
        return "kubernetes"
    first = mappings[0]
    jobs = first.get("jobs")
    if isinstance(jobs, dict) and any(isinstance(j, dict) and ("runs-on" in j or "steps" in j) for j in jobs.values()):
        return "github"
    # compose's services: is a mapping of services; GitLab's is a list of images.
    if isinstance(first.get("services"), dict):
        return "compose"
    if "stages" in first or any(isinstance(v, dict) and "script" in v for v in first.values()):
        return "gitlab"
    return None
