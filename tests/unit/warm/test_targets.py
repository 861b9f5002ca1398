from __future__ import annotations

from pathlib import Path

from proxy.warm.platforms import Platform
from proxy.warm.targets import Not, plan


def test_each_image_once_with_what_is_not_warmed_and_why(tmp_path: Path) -> None:
    workflow = tmp_path / ".github" / "workflows" / "ci.yml"
    workflow.parent.mkdir(parents=True)
    workflow.write_text(
        "jobs:\n"
        "  a:\n    runs-on: x\n    container: node:20\n"
        "  b:\n    runs-on: x\n    container: docker.io/library/node:20\n"  # the same image, written another way
        "  c:\n    runs-on: x\n    container: ${{ matrix.image }}\n"
        "  d:\n    runs-on: x\n    container: ghcr.io/org/app:1\n"
        "  e:\n    runs-on: x\n    container: Node:20\n"
    )
    broken = tmp_path / "compose.yaml"
    broken.write_text("services: [\n")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM --platform=linux/arm64 alpine:3.20\nFROM alpine:3.20\n")

    result = plan(["node:20", "docker://redis:7"], [workflow, broken, dockerfile], served=frozenset({"docker.io"}))

    assert [(str(t.reference), t.platforms, t.where) for t in result.targets] == [
        ("docker.io/library/node:20", (), None),
        ("docker.io/library/redis:7", (), None),
        ("docker.io/library/alpine:3.20", (Platform("linux", "arm64"),), f"{dockerfile}:1"),
        ("docker.io/library/alpine:3.20", (), f"{dockerfile}:2"),
    ]
    assert result.not_warmed == [
        Not("${{ matrix.image }}", f"{workflow}: jobs.c.container", "unresolved variable ${{ matrix.image }}", False),
        Not("ghcr.io/org/app:1", f"{workflow}: jobs.d.container",
            "not served by this proxy (no [[upstreams]] entry for ghcr.io)", True),
        Not("Node:20", f"{workflow}: jobs.e.container",
            "invalid image reference: 'Node:20': 'library/Node' must be lower-case", True),
    ]  # fmt: skip
    assert len(result.file_errors) == 1 and result.file_errors[0].startswith(f"{broken}: line 2: invalid YAML")
    assert result.failures == 3


def test_without_the_proxys_configuration_every_registry_is_tried() -> None:
    result = plan(["ghcr.io/org/app:1"], [], platforms=(Platform.parse("linux/amd64"),))
    assert [(str(t.reference), t.platforms) for t in result.targets] == [
        ("ghcr.io/org/app:1", (Platform("linux", "amd64"),))
    ]
    assert result.not_warmed == [] and result.failures == 0
