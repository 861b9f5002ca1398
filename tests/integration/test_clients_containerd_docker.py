"""Real containerd (ctr) and Docker Engine (dockerd 20.10) pull every kind of seeded image through the proxy.

Each daemon is private to this module (its own root, state and socket under a tmp dir) and starts once. Two ways in:

- ``mirror``: the client keeps the image's normal name and is configured to use the proxy as the registry's mirror:
  containerd through ``hosts.toml`` (requests carry ``?ns=docker.io`` / ``?ns=ghcr.io``), dockerd through
  ``registry-mirrors`` (Docker Hub only; no ``ns``).
- ``fullname``: the image is named with the proxy's address (``127.0.0.1:PORT/library/x:1``; ghcr.io images by the
  path prefix ``127.0.0.1:PORT/ghcr.io/org/app:1``).

Daemons and clients run with HTTP(S)_PROXY on a closed port, so a client that falls back to the real registry
fails: a pass means the proxy served the pull. Every pull is also checked against the proxy's access log (the
manifest and each blob was requested from the proxy, with the expected ``ns``, and nothing got an error), and the
digest the client reports against the digest that was pushed. For an index or manifest list both clients report the
digest of the index itself (ctr: the image's target; docker: RepoDigests); the platform is checked separately (ctr:
which child manifest is in the content store; docker: the image ID is the chosen child's config digest).

Each test removes what it pulled, so the next pull of the same image downloads everything again.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from tests.harness.containerd import (
    CLOSED_PROXY,
    DOCKER_HUB,
    DOCKER_HUB_SERVER,
    GHCR,
    GHCR_SERVER,
    CommandError,
    Containerd,
    Ctr,
    missing_requirements,
    module_containerd,
    write_hosts_toml,
)
from tests.harness.dockerd import Docker, Dockerd, dockerd_binary
from tests.harness.images import BUSYBOX_OUTPUT, Images, PushedImage
from tests.harness.negotiation import schema2_only_client_first, tag_digest
from tests.harness.proxy_server import ProxyServer
from tests.harness.registry import DistributionRegistry
from tests.harness.upstreams import ghcr_env, ghcr_upstream_config

NOT_SEEDED = "library/not-seeded:1"
"""Exists nowhere: the proxy answers 404 and the client falls back to the real registry, through the closed proxy."""
GHCR_REPOSITORY = "org/app"
GHCR_TAG = "1"


# -- the proxy's access log ---------------------------------------------------------------------------------------

# 2026-11-28 01:02:00,414 INFO proxy.access: 127.0.0.1:58924 - "HEAD /v2/org/app/manifests/1?ns=ghcr.io HTTP/1.1" 404 0
#   0.9ms cache=none upstream=ghcr.io
_ACCESS_LINE = re.compile(r'proxy\.access: \S+ \S+ "(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3})')


@dataclass(frozen=True)
class Served:
    """One request as the proxy logged it."""

    method: str
    path: str
    """Percent-decoded (clients differ in whether they encode the ``:`` of a digest)."""
    query: dict[str, list[str]]
    status: int
    line: str

    @property
    def ns(self) -> str | None:
        values = self.query.get("ns")
        return values[0] if values else None


class ProxyLog:
    def __init__(self, proxy: ProxyServer) -> None:
        self.path = proxy.log_path

    def _lines(self) -> list[str]:
        return self.path.read_text(encoding="utf-8", errors="replace").splitlines()

    def mark(self) -> int:
        return len(self._lines())

    def since(self, mark: int) -> list[Served]:
        served = []
        for line in self._lines()[mark:]:
            match = _ACCESS_LINE.search(line)
            if match is None:
                continue
            target = urlsplit(match["target"])
            served.append(
                Served(match["method"], unquote(target.path), parse_qs(target.query), int(match["status"]), line)
            )
        return served


def show(requests: list[Served]) -> str:
    return "\n".join(request.line for request in requests) or "(no requests)"


def assert_served(
    requests: list[Served], repository: str, top: PushedImage, image: PushedImage, ns: str | None
) -> None:
    """The proxy answered this pull: ``top`` (tag or digest) and, for an index, the child ``image``, then every blob
    of ``image``, all under ``repository`` with ``?ns=`` as expected, and no request got an error."""
    prefix = f"/v2/{repository}/"
    errors = [request for request in requests if request.status >= 400]
    assert errors == [], f"requests that failed:\n{show(errors)}"
    ours = [request for request in requests if request.path.startswith(prefix)]
    assert ours, f"no request for {repository} reached the proxy:\n{show(requests)}"
    assert {request.ns for request in ours} == {ns}, f"expected ns={ns}:\n{show(ours)}"
    manifests = {request.path.removeprefix(prefix + "manifests/") for request in ours if "/manifests/" in request.path}
    assert manifests & {str(top.tag), top.digest}, f"{top.ref} was not resolved through the proxy:\n{show(ours)}"
    if image is not top:
        assert image.digest in manifests, f"child {image.digest} was not fetched:\n{show(ours)}"
    blobs = {request.path.removeprefix(prefix + "blobs/") for request in ours if request.method == "GET"}
    missing = {blob.digest for blob in image.blobs} - blobs
    assert not missing, f"blobs not fetched from the proxy: {sorted(missing)}\n{show(ours)}"


# -- the image matrix ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    key: str
    platform: str | None = None

    @property
    def architecture(self) -> str | None:
        return self.platform.split("/")[1] if self.platform else None

    def pulled(self, images: Images) -> tuple[PushedImage, PushedImage]:
        """The image as tagged, and the image manifest the client should end up with (the platform's child)."""
        top = images[self.key]
        return top, (top.child(self.architecture) if self.architecture else top)


CASES = {
    "oci": Case("oci"),
    "index-amd64": Case("index", "linux/amd64"),
    "index-arm64": Case("index", "linux/arm64"),
    "docker": Case("docker"),
    "list-amd64": Case("list", "linux/amd64"),
    "list-arm64": Case("list", "linux/arm64"),
    "big": Case("big"),
}
ROUTES = ("mirror", "fullname")
MATRIX = [pytest.param(route, case, id=f"{route}-{name}") for route in ROUTES for name, case in CASES.items()]


# -- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy(
    upstream_registry: DistributionRegistry,
    ghcr_registry: DistributionRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyServer]:
    config = ghcr_upstream_config(ghcr_registry)
    with ProxyServer(tmp_path_factory.mktemp("proxy"), upstream_registry.url, extra_config=config, env=ghcr_env()) as p:
        yield p


@pytest.fixture
def proxy_log(proxy: ProxyServer) -> ProxyLog:
    return ProxyLog(proxy)


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    with module_containerd(tmp_path_factory.mktemp("containerd")) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def hosts_dir(proxy: ProxyServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """containerd's certs.d-style directory: the proxy as mirror of docker.io and of ghcr.io."""
    directory = tmp_path_factory.mktemp("hosts.d")
    write_hosts_toml(directory, DOCKER_HUB, DOCKER_HUB_SERVER, proxy.url)
    write_hosts_toml(directory, GHCR, GHCR_SERVER, proxy.url)
    return directory


@pytest.fixture
def ctr(containerd: Containerd) -> Iterator[Ctr]:
    client = containerd.client()
    before = {image.name for image in client.images()}
    yield client
    for image in client.images():
        if image.name not in before:
            client.remove_image(image.name)


@pytest.fixture(scope="module")
def dockerd(proxy: ProxyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    reason = missing_requirements() or (None if dockerd_binary() else "dockerd is not installed (package docker.io)")
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("dockerd")
    with Dockerd(workdir, mirrors=[proxy.url], insecure_registries=[proxy.host]) as daemon:
        yield daemon
    shutil.rmtree(daemon.data_root, ignore_errors=True)


@pytest.fixture
def docker(dockerd: Dockerd) -> Iterator[Docker]:
    client = dockerd.client()
    yield client
    # The daemon is this module's alone: whatever it holds now, this test pulled.
    client.remove_all_containers()
    image_ids = set(client.command("image", "ls", "--all", "--quiet", "--no-trunc").split())
    if image_ids:
        client.command("image", "rm", "--force", *sorted(image_ids))


# -- containerd ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("route", "case"), MATRIX)
def test_ctr_pull(
    route: str, case: Case, ctr: Ctr, hosts_dir: Path, proxy: ProxyServer, proxy_log: ProxyLog, images: Images
) -> None:
    top, image = case.pulled(images)
    mark = proxy_log.mark()
    if route == "mirror":
        pulled = ctr.pull(f"{DOCKER_HUB}/{top.ref}", hosts_dir=hosts_dir, platform=case.platform)
        ns: str | None = DOCKER_HUB
    else:
        pulled = ctr.pull(proxy.ref(top.ref), plain_http=True, platform=case.platform)
        ns = None
    # ctr records the digest it resolved the tag to: for an index, the index's.
    assert pulled.digest == top.digest
    assert pulled.media_type == top.media_type
    content = ctr.content_digests()
    assert {image.digest, *(blob.digest for blob in image.blobs)} <= content
    if image is not top:
        # Only the requested platform's image was fetched.
        assert {child.digest for child in top.children if child is not image}.isdisjoint(content)
    assert_served(proxy_log.since(mark), top.repository, top, image, ns)


@pytest.mark.parametrize("route", ["mirror", "prefix"])
def test_ctr_pull_ghcr(
    route: str,
    ctr: Ctr,
    hosts_dir: Path,
    proxy: ProxyServer,
    proxy_log: ProxyLog,
    images: Images,
    ghcr_registry: DistributionRegistry,
) -> None:
    expected = images["oci"]  # ghcr_registry holds org/app:1 as the same manifest
    mark = proxy_log.mark()
    if route == "mirror":
        pulled = ctr.pull(f"{GHCR}/{GHCR_REPOSITORY}:{GHCR_TAG}", hosts_dir=hosts_dir)
        repository, ns = GHCR_REPOSITORY, GHCR
    else:
        pulled = ctr.pull(proxy.ref(f"{GHCR}/{GHCR_REPOSITORY}:{GHCR_TAG}"), plain_http=True)
        repository, ns = f"{GHCR}/{GHCR_REPOSITORY}", None
    assert pulled.digest == expected.digest
    assert_served(proxy_log.since(mark), repository, expected, expected, ns)
    # The tag was resolved at the ghcr.io upstream (by this test or an earlier one; the proxy caches it).
    assert any(r.path == f"/v2/{GHCR_REPOSITORY}/manifests/{GHCR_TAG}" for r in ghcr_registry.requests())


def test_ctr_fallback_past_the_proxy_fails(ctr: Ctr, hosts_dir: Path, proxy_log: ProxyLog) -> None:
    # What makes every pass above mean "the proxy served it": containerd tries the real registry (hosts.toml's
    # server) after the mirror fails, and that attempt goes to the closed proxy port.
    mark = proxy_log.mark()
    with pytest.raises(CommandError) as failure:
        ctr.pull(f"{DOCKER_HUB}/{NOT_SEEDED}", hosts_dir=hosts_dir, timeout=60)
    assert urlsplit(CLOSED_PROXY).netloc in failure.value.stderr
    assert [(r.path, r.status) for r in proxy_log.since(mark)][:1] == [("/v2/library/not-seeded/manifests/1", 404)]


def test_ctr_run_busybox(ctr: Ctr, hosts_dir: Path, proxy_log: ProxyLog, images: Images) -> None:
    image = images["busybox"]
    mark = proxy_log.mark()
    pulled = ctr.pull(f"{DOCKER_HUB}/{image.ref}", hosts_dir=hosts_dir)
    assert pulled.digest == image.digest
    assert_served(proxy_log.since(mark), image.repository, image, image, DOCKER_HUB)
    assert ctr.run(f"{DOCKER_HUB}/{image.ref}").strip() == BUSYBOX_OUTPUT


# -- dockerd ------------------------------------------------------------------------------------------------------


def docker_name(route: str, proxy: ProxyServer, repository: str) -> str:
    """The name to pull, and the one docker records in RepoDigests: Docker Hub's official images lose their
    ``library/`` there."""
    if route == "mirror":
        return repository.removeprefix("library/")
    return proxy.ref(repository)


@pytest.mark.parametrize(("route", "case"), MATRIX)
def test_docker_pull(
    route: str, case: Case, docker: Docker, proxy: ProxyServer, proxy_log: ProxyLog, images: Images
) -> None:
    top, image = case.pulled(images)
    name = docker_name(route, proxy, top.repository)
    mark = proxy_log.mark()
    pulled = docker.pull(f"{name}:{top.tag}", platform=case.platform)
    # dockerd records the digest the tag resolved to: for a manifest list or index, the list's.
    assert pulled.digest_for(name) == top.digest, pulled.repo_digests
    # The image ID is the config digest: this says which platform's image it took.
    assert pulled.id == image.config.digest
    if case.architecture:
        assert pulled.architecture == case.architecture
    assert_served(proxy_log.since(mark), top.repository, top, image, None)


def test_docker_pull_ghcr_by_prefix(docker: Docker, proxy: ProxyServer, proxy_log: ProxyLog, images: Images) -> None:
    # registry-mirrors covers Docker Hub only, so for ghcr.io the path prefix is the one way through dockerd.
    expected = images["oci"]
    name = proxy.ref(f"{GHCR}/{GHCR_REPOSITORY}")
    mark = proxy_log.mark()
    pulled = docker.pull(f"{name}:{GHCR_TAG}")
    assert pulled.digest_for(name) == expected.digest
    assert_served(proxy_log.since(mark), f"{GHCR}/{GHCR_REPOSITORY}", expected, expected, None)


def test_docker_fallback_past_the_proxy_fails(docker: Docker, proxy_log: ProxyLog) -> None:
    # dockerd falls back from a failing mirror to registry-1.docker.io by itself; here that goes to the closed port.
    mark = proxy_log.mark()
    with pytest.raises(CommandError) as failure:
        docker.pull(NOT_SEEDED, timeout=60)
    assert urlsplit(CLOSED_PROXY).netloc in failure.value.stderr
    assert ("/v2/library/not-seeded/manifests/1", 404) in [(r.path, r.status) for r in proxy_log.since(mark)]


def test_docker_run_busybox(docker: Docker, proxy_log: ProxyLog, images: Images) -> None:
    image = images["busybox"]
    mark = proxy_log.mark()
    # No pull first: run pulls the missing image itself, through the mirror.
    output = docker.run(f"busybox:{image.tag}")
    assert output.strip() == BUSYBOX_OUTPUT
    assert docker.inspect(f"busybox:{image.tag}").digest_for("busybox") == image.digest
    assert_served(proxy_log.since(mark), image.repository, image, image, None)


# -- after a client that accepts only schema2 (issue 7, item 2) ---------------------------------------------------


@pytest.fixture
def own_proxy(upstream_registry: DistributionRegistry, tmp_path: Path) -> Iterator[ProxyServer]:
    """A proxy with an empty cache of its own, so that the test decides which client asks for a tag first."""
    with ProxyServer(tmp_path / "own-proxy", upstream_registry.url) as server:
        yield server


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted"])
def test_ctr_arm64_after_a_schema2_only_client(restart: bool, ctr: Ctr, own_proxy: ProxyServer, images: Images) -> None:
    case = CASES["list-arm64"]
    top, image = case.pulled(images)
    schema2_only_client_first(own_proxy, top, restart=restart)
    pulled = ctr.pull(own_proxy.ref(top.ref), plain_http=True, platform=case.platform)
    assert pulled.digest == top.digest
    assert pulled.media_type == top.media_type
    content = ctr.content_digests()
    assert {image.digest, *(blob.digest for blob in image.blobs)} <= content
    assert top.child("amd64").digest not in content
    assert tag_digest(own_proxy, top) == top.digest
