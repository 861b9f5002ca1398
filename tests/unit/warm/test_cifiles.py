from __future__ import annotations

from pathlib import Path

import pytest

from proxy.warm.cifiles import CIFileError, Mention, read_ci_file
from tests.unit.warm.samples import COMPOSE, DOCKERFILE, GITHUB_WORKFLOW, GITLAB_CI, KUBERNETES


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def texts(mentions: list[Mention]) -> list[str]:
    return [m.text for m in mentions]


def places(mentions: list[Mention], path: Path) -> list[str]:
    return [str(m.where).removeprefix(f"{path}: ") for m in mentions]


def test_github_workflow(tmp_path: Path) -> None:
    path = write(tmp_path, ".github/workflows/ci.yml", GITHUB_WORKFLOW)
    found = read_ci_file(path)
    assert texts(found) == [
        "node:20",
        "redis:7",
        "postgres:16-alpine",
        "koalaman/shellcheck:v0.10.0",
        "ghcr.io/org/builder:2024.1",
        "alpine:3.20",
        "${{ matrix.image }}",
        "${{ matrix.cache || '' }}",
    ]
    assert places(found, path)[:5] == [
        "jobs.test.container",
        "jobs.test.services.redis.image",
        "jobs.test.services.postgres.image",
        "jobs.test.steps[2].uses",
        "jobs.build.container.image",
    ]


def test_gitlab_ci(tmp_path: Path) -> None:
    path = write(tmp_path, ".gitlab-ci.yml", GITLAB_CI)
    found = read_ci_file(path)
    assert texts(found) == [
        "ruby:3.3",
        "postgres:16",
        "redis:7-alpine",
        "node:20-alpine",  # the hidden template job
        "golang:1.22",
        "node:20-alpine",  # test, through the YAML merge key
        "mysql:8.0",
        "$CI_REGISTRY_IMAGE/fixtures:latest",  # predefined: stays unresolved
        "ruby:3.3-slim",  # from the file's variables:
        "$CI_REGISTRY/ops/deployer:latest",
    ]
    assert places(found, path)[:5] == [
        "default.image",
        "default.services[0]",
        "default.services[1]",
        ".node-template.image",
        "build.image",
    ]


def test_gitlab_top_level_image_and_job_variables(tmp_path: Path) -> None:
    text = "image: python:3.12\nvariables: {TAG: '1'}\nlint:\n  variables: {TAG: '2'}\n  image: app:$TAG\n  script: x\n"
    path = write(tmp_path, "ci/lint.gitlab-ci.yml", text)
    found = read_ci_file(path)
    assert texts(found) == ["python:3.12", "app:2"]
    assert places(found, path) == ["image", "lint.image"]


def test_compose(tmp_path: Path) -> None:
    path = write(tmp_path, "compose.yaml", COMPOSE)
    found = read_ci_file(path)
    assert texts(found) == ["registry.example.com/team/web:dev", "postgres:16", "redis:7.2", "nginx:${NGINX_TAG}"]
    web, db, cache, _ = found
    assert web.skip is not None and "build" in web.skip  # compose builds it rather than pulling it
    assert db.skip is None and places([db], path) == ["services.db.image"]
    assert cache.platform == "linux/arm64"


def test_dockerfile(tmp_path: Path) -> None:
    path = write(tmp_path, "Dockerfile", DOCKERFILE)
    found = read_ci_file(path)
    # Not: the stage "build", scratch, the FROM inside a heredoc.
    assert [(m.text, m.platform) for m in found] == [
        ("golang:1.22", None),  # $BUILDPLATFORM is the builder's: the command's platforms apply
        ("debian:bookworm-slim", "linux/arm64"),
        ("alpine:3.20", None),
        ("${UNSET_BASE}", None),
    ]
    assert [m.where for m in found] == [f"{path}:{n}" for n in (6, 18, 21, 24)]


def test_dockerfile_escape_directive_and_names(tmp_path: Path) -> None:
    text = "# escape=`\nFROM `\n  mcr.microsoft.com/windows/servercore:ltsc2022\n"
    for name in ("Containerfile", "build.Dockerfile", "Dockerfile.ci"):
        assert texts(read_ci_file(write(tmp_path, name, text))) == ["mcr.microsoft.com/windows/servercore:ltsc2022"]


def test_kubernetes(tmp_path: Path) -> None:
    path = write(tmp_path, "deploy/app.yaml", KUBERNETES)
    found = read_ci_file(path)
    assert texts(found) == ["ghcr.io/org/migrate:1.4", "nginx:1.27", "busybox:1.36", "python:3.12-slim"]
    assert places(found, path) == [
        "Deployment/web spec.template.spec.initContainers[0].image",
        "Deployment/web spec.template.spec.containers[0].image",
        "Deployment/web spec.template.spec.containers[1].image",
        "CronJob/nightly spec.jobTemplate.spec.template.spec.containers[0].image",
    ]


@pytest.mark.parametrize(
    ("text", "kind"),
    [(GITHUB_WORKFLOW, "github"), (GITLAB_CI, "gitlab"), (COMPOSE, "compose"), (KUBERNETES, "kubernetes")],
)
def test_yaml_formats_are_told_apart_by_content(tmp_path: Path, text: str, kind: str) -> None:
    detected = texts(read_ci_file(write(tmp_path, "some-file.yml", text)))
    assert detected  # every sample names images
    assert detected == texts(read_ci_file(write(tmp_path, "other.yml", text), kind))


def test_explicit_format_overrides_the_name(tmp_path: Path) -> None:
    path = write(tmp_path, "docker-compose.yml", "FROM alpine:3.20\n")
    assert texts(read_ci_file(path, "dockerfile")) == ["alpine:3.20"]


def test_unparseable_yaml_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, ".gitlab-ci.yml", "build:\n  image: [unclosed\n  script: x\n")
    with pytest.raises(CIFileError) as caught:
        read_ci_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: line ") and "invalid YAML" in message and "\n" not in message


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("missing.yml", None, "file not found"),
        ("binary.yml", b"\xff\xfe\x00bad", "not UTF-8"),
        ("notes.yml", b"just: a mapping\n", "cannot tell which kind of CI file"),
        ("README.md", b"# hello\n", "cannot tell which kind of CI file"),
    ],
)
def test_unreadable_files_say_why(tmp_path: Path, name: str, content: bytes | None, problem: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CIFileError, match=problem):
        read_ci_file(path)


def test_yaml_aliases_do_not_blow_up(tmp_path: Path) -> None:
    # The "billion laughs" shape: each level refers to the one before ten times.
    lines = ["apiVersion: v1", "kind: List", "a0: &a0 [{containers: [{image: 'x:1'}]}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    found = read_ci_file(write(tmp_path, "k8s.yaml", "\n".join(lines) + "\n"))
    assert texts(found) == ["x:1"]
