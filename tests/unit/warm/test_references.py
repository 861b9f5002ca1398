from __future__ import annotations

import pytest

from proxy.warm.platforms import Platform, selects
from proxy.warm.references import InvalidReference, parse_reference
from proxy.warm.variables import substitute, unresolved

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected", "proxy_name", "reference"),
    [
        ("alpine", "docker.io/library/alpine:latest", "docker.io/library/alpine", "latest"),
        ("alpine:3.20", "docker.io/library/alpine:3.20", "docker.io/library/alpine", "3.20"),
        ("bitnami/redis:7", "docker.io/bitnami/redis:7", "docker.io/bitnami/redis", "7"),
        ("docker.io/alpine", "docker.io/library/alpine:latest", "docker.io/library/alpine", "latest"),
        ("index.docker.io/library/node:20", "docker.io/library/node:20", "docker.io/library/node", "20"),
        ("ghcr.io/org/app:1", "ghcr.io/org/app:1", "ghcr.io/org/app", "1"),
        (f"alpine@{DIGEST}", f"docker.io/library/alpine@{DIGEST}", "docker.io/library/alpine", DIGEST),
        (f"alpine:3.20@{DIGEST}", f"docker.io/library/alpine:3.20@{DIGEST}", "docker.io/library/alpine", DIGEST),
        ("registry.example:5000/team/app", "registry.example:5000/team/app:latest", "registry.example:5000/team/app",
         "latest"),
        ("localhost:5000/x:dev", "localhost:5000/x:dev", "localhost:5000/x", "dev"),
        ("localhost/x", "localhost/x:latest", "localhost/x", "latest"),
        ("quay.io/prometheus/node-exporter:v1.8.2", "quay.io/prometheus/node-exporter:v1.8.2",
         "quay.io/prometheus/node-exporter", "v1.8.2"),
    ],
)  # fmt: skip
def test_references_are_read_as_docker_reads_them(text: str, expected: str, proxy_name: str, reference: str) -> None:
    parsed = parse_reference(text)
    assert (str(parsed), parsed.proxy_name, parsed.reference) == (expected, proxy_name, reference)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("Alpine:3", "lower-case"),  # a one-component name with capitals is a repository, and an invalid one
        ("alpine:-bad", "invalid tag"),
        ("alpine@sha256:abc", "sha256 digest"),
        ("docker://alpine", "scheme"),
        ("bad_host:5000x/app", "invalid registry name"),
        ("example.com/../etc", "not a valid repository"),
    ],
)
def test_invalid_references_say_why(text: str, why: str) -> None:
    with pytest.raises(InvalidReference, match=why):
        parse_reference(text)


def test_capitalized_first_component_is_a_registry_as_in_docker() -> None:
    assert parse_reference("Registry.Example/app").registry == "registry.example"


def test_platforms_select_index_entries() -> None:
    amd64 = {"platform": {"os": "linux", "architecture": "amd64"}}
    arm64 = {"platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}
    arm64_bare = {"platform": {"os": "linux", "architecture": "arm64"}}
    attestation = {"platform": {"os": "unknown", "architecture": "unknown"}}
    assert all(selects((), e) for e in (amd64, arm64, attestation))
    wanted = (Platform.parse("linux/arm64/v8"),)
    assert [selects(wanted, e) for e in (amd64, arm64, arm64_bare, attestation)] == [False, True, True, False]
    assert selects((Platform.parse("linux/arm64"),), arm64)
    assert selects((Platform.parse("linux/x86_64"),), amd64)
    assert selects(wanted, {"digest": "sha256:..."})  # an entry that does not say: warmed rather than missed
    with pytest.raises(ValueError, match="os/architecture"):
        Platform.parse("amd64")


def test_variables_are_substituted_from_known_values_only() -> None:
    assert substitute("$REG/app:${TAG}", {"REG": "ghcr.io/org", "TAG": "1"}) == "ghcr.io/org/app:1"
    assert substitute("app:${TAG:-2}", {}, defaults=True) == "app:2"
    assert substitute("app:${TAG:-2}", {"TAG": "3"}, defaults=True) == "app:3"
    assert substitute("app:${TAG:-2}", {}) == "app:${TAG:-2}"
    assert substitute("${{ matrix.image }}", {"matrix": "x"}) == "${{ matrix.image }}"
    assert unresolved("node:20") is None
    assert unresolved("${{ matrix.image }}") == "${{ matrix.image }}"
    assert unresolved("$CI_REGISTRY_IMAGE/app:1") == "$CI_REGISTRY_IMAGE"
    assert unresolved("app:${VERSION}") == "${VERSION}"
    assert unresolved("{{ .Values.image }}") == "{{ .Values.image }}"
