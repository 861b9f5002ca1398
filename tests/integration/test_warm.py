"""``registry-proxy warm`` (the real CLI) against the proxy under uvicorn and the token-auth Distribution upstream:
after a warm, pulling the warmed images with skopeo makes no upstream request at all."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import bcrypt
import pytest

from tests.conftest import Secrets
from tests.harness.images import Images, PushedImage
from tests.harness.proxy_server import ProxyServer
from tests.harness.registry import DistributionRegistry
from tests.harness.skopeo import read_dir_layout, skopeo_copy
from tests.harness.tls import make_certificates
from tests.harness.tokens import TokenIssuer

# The seeded images by the names a CI file would give them: Docker Hub short names, which mean library/.
SHORT_NAMES = {"oci": "oci-image:1", "index": "oci-index:1", "docker": "docker-image:1", "list": "docker-list:1"}


def warm(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("registry-proxy")
    env = {**{k: v for k, v in os.environ.items() if k != "REGISTRY_PROXY_CONFIG"}, **(env or {})}
    return subprocess.run(
        [str(cli), "warm", *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def pull(proxy: ProxyServer, image: PushedImage, dest: Path) -> None:
    """skopeo pulls every platform of an index (--all), and the pull is what was pushed."""
    skopeo_copy(proxy.ref(image.ref), dest, all_images=image.is_index)
    layout = read_dir_layout(dest)
    assert layout.manifest_digest == image.digest
    layout.verify_blobs()
    assert {d for d in layout.blobs if d not in layout.instance_manifests} == {b.digest for b in image.content_blobs}


def blob_gets(upstream: DistributionRegistry, mark: int) -> Counter[str]:
    return Counter(
        r.path.rsplit("/", 1)[1] for r in upstream.requests_since(mark) if r.method == "GET" and "/blobs/" in r.path
    )


def assert_pulls_are_served_from_the_cache(
    proxy: ProxyServer, upstream: DistributionRegistry, images: list[PushedImage], tmp_path: Path
) -> None:
    upstream.wait_quiet()
    mark = upstream.mark()
    for image in images:
        pull(proxy, image, tmp_path / f"pulled-{image.key}")
    upstream.wait_quiet()
    assert upstream.requests_since(mark) == []  # no token, manifest or blob request


@pytest.mark.parametrize("key", ["oci", "index", "list"])
def test_warm_then_pull_makes_no_upstream_request(
    key: str, upstream_registry: DistributionRegistry, images: Images, skopeo: str, tmp_path: Path
) -> None:
    image = images[key]
    with ProxyServer(tmp_path / "proxy", upstream_registry.url) as proxy:
        mark = upstream_registry.mark()
        result = warm("--proxy", proxy.url, SHORT_NAMES[key])
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"fetched         docker.io/library/{SHORT_NAMES[key]}")
        blobs = len(image.content_blobs)
        assert f": {blobs} blobs, " in lines[0]
        assert lines[1] == "images: 0 cached already, 1 fetched, 0 failed, 0 skipped"
        assert lines[2].startswith(f"blobs: 0 cached already (0 B), {blobs} fetched (")
        upstream_registry.wait_quiet()
        # Every blob of every platform came from the upstream exactly once.
        assert blob_gets(upstream_registry, mark) == Counter(b.digest for b in image.content_blobs)

        assert_pulls_are_served_from_the_cache(proxy, upstream_registry, [image], tmp_path)

        again = warm("--proxy", proxy.url, SHORT_NAMES[key])
        assert again.returncode == 0
        assert again.stdout.startswith(f"cached already  docker.io/library/{SHORT_NAMES[key]}")


def test_warm_one_platform_of_an_index(
    upstream_registry: DistributionRegistry, images: Images, skopeo: str, tmp_path: Path
) -> None:
    index = images["index"]
    arm64 = index.child("arm64")
    with ProxyServer(tmp_path / "proxy", upstream_registry.url) as proxy:
        mark = upstream_registry.mark()
        result = warm("--proxy", proxy.url, "--platform", "linux/arm64", SHORT_NAMES["index"])
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith("fetched         docker.io/library/oci-index:1 [linux/arm64/v8]: ")
        assert f": {len(arm64.blobs)} blobs, " in result.stdout.splitlines()[0]
        upstream_registry.wait_quiet()
        assert blob_gets(upstream_registry, mark) == Counter(b.digest for b in arm64.blobs)
        # The arm64 image pulled by its digest, as a client on arm64 does after reading the index.
        upstream_registry.wait_quiet()
        mark = upstream_registry.mark()
        skopeo_copy(proxy.ref(arm64.digest_ref), tmp_path / "arm64")
        upstream_registry.wait_quiet()
        assert upstream_registry.requests_since(mark) == []


def write_ci_files(directory: Path) -> list[Path]:
    workflow = directory / ".github" / "workflows" / "ci.yml"
    workflow.parent.mkdir(parents=True)
    workflow.write_text(
        "on: push\n"
        "jobs:\n"
        "  test:\n"
        "    runs-on: ubuntu-latest\n"
        "    container: oci-image:1\n"
        "    services:\n"
        "      db:\n"
        "        image: docker-image:1\n"
        "    steps:\n"
        "      - uses: docker://docker-list:1\n"
        "  matrix:\n"
        "    runs-on: ubuntu-latest\n"
        "    container: ${{ matrix.image }}\n"
        "    steps: [{run: 'true'}]\n"
    )
    gitlab = directory / ".gitlab-ci.yml"
    gitlab.write_text(
        "default:\n"
        "  image: {name: oci-index:1, entrypoint: ['']}\n"
        "test:\n"
        "  services: [docker-image:1, {name: '$CI_REGISTRY_IMAGE/db:1', alias: db}]\n"
        "  script: [make test]\n"
    )
    compose = directory / "compose.yaml"
    compose.write_text(
        "services:\n"
        "  app:\n"
        "    build: .\n"
        "    image: registry.example.com/team/app:dev\n"
        "  db:\n"
        "    image: docker.io/library/oci-image:1\n"
    )
    dockerfile = directory / "Dockerfile"
    dockerfile.write_text(
        "ARG BASE=docker-list:1\n"
        "FROM ${BASE} AS base\n"
        "FROM base AS build\n"
        "RUN true\n"
        "FROM scratch\n"
        "COPY --from=build / /\n"
    )
    return [workflow, gitlab, compose, dockerfile]


def test_warm_from_ci_files_then_pull_makes_no_upstream_request(
    upstream_registry: DistributionRegistry, images: Images, skopeo: str, tmp_path: Path
) -> None:
    files = write_ci_files(tmp_path / "repo")
    warmed = [images[key] for key in ("oci", "docker", "list", "index")]
    with ProxyServer(tmp_path / "proxy", upstream_registry.url) as proxy:
        result = warm("--proxy", proxy.url, "--from", *map(str, files))
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stderr == ""
        out = result.stdout.splitlines()
        assert sorted(line.split()[0] for line in out[:-2]) == ["fetched"] * 4 + ["skipped"] * 3
        assert "skipped         ${{ matrix.image }} (" in result.stdout
        assert "skipped         $CI_REGISTRY_IMAGE/db:1 (" in result.stdout
        assert "skipped         registry.example.com/team/app:dev (" in result.stdout
        assert out[-2] == "images: 0 cached already, 4 fetched, 0 failed, 3 skipped"

        assert_pulls_are_served_from_the_cache(proxy, upstream_registry, warmed, tmp_path)


@pytest.mark.parametrize("how", ["config only", "--stopped"])
def test_warm_a_stopped_cache_then_serve_it(
    how: str, upstream_registry: DistributionRegistry, images: Images, skopeo: str, tmp_path: Path
) -> None:
    image = images["index"]
    proxy = ProxyServer(tmp_path / "proxy", upstream_registry.url)  # configured, not started
    args = ["--config", str(proxy.config_path), SHORT_NAMES["index"]]
    result = warm(*args, *(["--stopped"] if how == "--stopped" else []))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("fetched         docker.io/library/oci-index:1 [linux/amd64, linux/arm64/v8]")
    if how == "config only":
        assert f"warming the cache at {proxy.cache_dir} directly" in result.stderr
    with proxy:
        assert_pulls_are_served_from_the_cache(proxy, upstream_registry, [image], tmp_path)


def test_warm_logs_in_to_a_proxy_over_tls(
    upstream_registry: DistributionRegistry,
    token_issuer: TokenIssuer,
    images: Images,
    skopeo: str,
    used_secrets: Secrets,
    tmp_path: Path,
) -> None:
    image = images["private"]  # the proxy fetches it with its upstream credentials; its clients must log in
    password = secrets.token_urlsafe(18)
    used_secrets.add(password)
    certificates = make_certificates(tmp_path / "tls")
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"ci:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(5)).decode()}\n")
    with ProxyServer(
        tmp_path / "proxy",
        upstream_registry.url,
        server_config=f'tls_cert = "{certificates.cert}"\ntls_key = "{certificates.key}"\n',
        extra_upstream=f'username = "{token_issuer.username}"\npassword_env = "HUB_PASSWORD"\n',
        extra_config=f'[auth]\nhtpasswd = "{htpasswd}"\n',
        env={"HUB_PASSWORD": token_issuer.password},
        ca=certificates.ca,
    ) as proxy:
        tls = ["--proxy", proxy.url, "--cacert", str(certificates.ca), "private/secret:1"]
        anonymous = warm(*tls)
        assert anonymous.returncode == 2 and "wants a login (HTTP 401)" in anonymous.stderr

        result = warm(*tls, "--username", "ci", "--password-env", "WARM_PASSWORD", env={"WARM_PASSWORD": password})
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith("fetched         docker.io/private/secret:1: ")
        assert password not in result.stdout + result.stderr

        cert_dir = tmp_path / "certs.d"
        cert_dir.mkdir()
        shutil.copy(certificates.ca, cert_dir / "ca.crt")
        upstream_registry.wait_quiet()
        mark = upstream_registry.mark()
        skopeo_copy(proxy.ref(image.ref), tmp_path / "pulled", cert_dir=cert_dir, creds=f"ci:{password}")
        assert read_dir_layout(tmp_path / "pulled").manifest_digest == image.digest
        upstream_registry.wait_quiet()
        assert upstream_registry.requests_since(mark) == []
