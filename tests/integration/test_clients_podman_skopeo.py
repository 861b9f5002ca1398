"""podman and skopeo pull the seeded images through the proxy, as a mirror (registries.conf) and by full name.

The test ids form the client × route × image matrix: ``test_skopeo_pull[mirror-index-arm64]``,
``test_podman_pull[name-ghcr]``, ``test_podman_run[mirror-busybox]``.

- route ``mirror``: the reference names the real registry (``docker.io/library/oci-image:1``, ``ghcr.io/org/app:1``)
  and registries.conf makes the proxy its mirror (``127.0.0.1:PORT`` for docker.io, ``127.0.0.1:PORT/ghcr.io`` for
  ghcr.io, which containers/image turns into ``/v2/ghcr.io/org/app/...``).
- route ``name``: the reference names the proxy (``127.0.0.1:PORT/library/oci-image:1``,
  ``127.0.0.1:PORT/ghcr.io/org/app:1``), an insecure registry in registries.conf.

Every client runs with HTTP(S)_PROXY on a refusing port (tests.harness.containers.client_env), so a fallback to the
real registry fails: a pass means the proxy served the pull. Each test also checks that the digest the client reports
is the pushed one and that the proxy's access log has the manifest and every blob the client needed.

One proxy serves the whole module, so only the first client to pull an image fills the cache from the upstream; the
others are served from the cache. Each test has a podman store of its own, so each one pulls every blob.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

import pytest

from tests.harness.accesslog import LoggedRequest
from tests.harness.containers import (
    ClientError,
    Podman,
    ProxyAccessLog,
    ProxyRequest,
    Skopeo,
    write_registries_conf,
)
from tests.harness.images import BUSYBOX_OUTPUT, Images, PushedImage
from tests.harness.negotiation import schema2_only_client_first, tag_digest
from tests.harness.oci import Platform
from tests.harness.proxy_server import ProxyServer
from tests.harness.registry import DistributionRegistry
from tests.harness.upstreams import ghcr_env, ghcr_upstream_config

Route = Literal["mirror", "name"]
ROUTES: tuple[Route, ...] = ("mirror", "name")
DOCKER_HUB = "docker.io"
GHCR = "ghcr.io"
GHCR_REPOSITORY = "org/app"
"""Where the ``ghcr_registry`` fixture pushed a copy of ``images["oci"]``."""
PROXY_USER_AGENT = "registry-proxy/"
QUIET_SECONDS = 0.2
"""Enough for Distribution to log requests whose responses a client has already read to the end."""

# Case ids: an image key ("ghcr": images["oci"] as org/app:1 on the ghcr.io stand-in), then any of: "-all" (skopeo
# copies the whole index), "-amd64"/"-arm64" (the client picks that platform of an index), "-digest" (the reference
# names the manifest by digest, not by tag), "-short" (a one-segment docker.io name, without "library/").
SKOPEO_CASES = (
    "oci",
    "oci-digest",
    "index-all",
    "index-amd64",
    "index-arm64",
    "index-all-digest",
    "docker",
    "docker-short",
    "list-all",
    "list-amd64",
    "list-arm64",
    "big",
    "ghcr",
    "ghcr-digest",
)
# podman always picks one platform of an index (its default is the machine's), so each is asked for explicitly.
PODMAN_CASES = (
    "oci",
    "oci-digest",
    "index-amd64",
    "index-arm64",
    "index-arm64-digest",
    "docker",
    "docker-short",
    "list-amd64",
    "list-arm64",
    "big",
    "ghcr",
    "ghcr-digest",
)
RUN_CASES = ("busybox", "busybox-oci", "busybox-short")
_ARCHITECTURES = ("amd64", "arm64")


@dataclass(frozen=True)
class Subject:
    """One image as a test pulls it: where from, under which name, and what should arrive."""

    pushed: PushedImage
    """What the reference resolves to: an image, or an index."""
    registry: str
    repository: str
    """The repository on ``registry``, in full (``library/...`` on docker.io)."""
    platform: Platform | None = None
    """The platform a client is told to pick from an index; None for an image or a whole index."""
    all_images: bool = False
    by_digest: bool = False
    short: bool = False
    """Name a docker.io ``library/`` repository without ``library/``."""

    @property
    def expected(self) -> PushedImage:
        """The manifest that ends up pulled: the index's child for the platform, else what the reference names."""
        if self.platform is not None:
            return self.pushed.child(self.platform.architecture)
        return self.pushed

    @property
    def manifest_reference(self) -> str:
        """The tag or digest in the reference, and so in the first manifest request."""
        if self.by_digest:
            return self.pushed.digest
        assert self.pushed.tag is not None
        return self.pushed.tag

    def proxy_name(self, route: Route) -> str:
        """The name in the ``/v2/<name>/`` requests that reach the proxy.

        Through the mirror, containers/image adds ``library/`` itself; by name, a one-segment name reaches the proxy
        as it is, and the proxy adds ``library/``.
        """
        if self.registry != DOCKER_HUB:
            return f"{self.registry}/{self.repository}"
        if self.short and route == "name":
            return self.repository.removeprefix("library/")
        return self.repository

    def reference(self, route: Route, proxy: ProxyServer) -> str:
        separator = "@" if self.by_digest else ":"
        if route == "mirror":
            repository = self.repository.removeprefix("library/") if self.short else self.repository
            return f"{self.registry}/{repository}{separator}{self.manifest_reference}"
        return f"{proxy.host}/{self.proxy_name(route)}{separator}{self.manifest_reference}"

    @property
    def blobs(self) -> set[str]:
        """Every config and layer a client has to fetch."""
        return {blob.digest for blob in (self.pushed if self.all_images else self.expected).content_blobs}


def subject(images: Images, case: str) -> Subject:
    """The :class:`Subject` a case id stands for (see SKOPEO_CASES)."""
    words = case.split("-")
    flags = {word for word in words if word in ("all", "digest", "short", *_ARCHITECTURES)}
    key = "-".join(word for word in words if word not in flags)
    architecture = next((word for word in words if word in _ARCHITECTURES), None)
    if key == "ghcr":
        pushed, registry, repository = images["oci"], GHCR, GHCR_REPOSITORY
    else:
        pushed = images[key]
        registry, repository = DOCKER_HUB, pushed.repository
    return Subject(
        pushed,
        registry,
        repository,
        platform=pushed.child(architecture).platform if architecture else None,
        all_images="all" in flags,
        by_digest="digest" in flags,
        short="short" in flags,
    )


# -- fixtures ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy(
    upstream_registry: DistributionRegistry,
    ghcr_registry: DistributionRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyServer]:
    with ProxyServer(
        tmp_path_factory.mktemp("proxy"),
        upstream_registry.url,
        extra_config=ghcr_upstream_config(ghcr_registry),
        env=ghcr_env(),
    ) as server:
        yield server


@pytest.fixture(scope="module")
def registries_conf(proxy: ProxyServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_registries_conf(tmp_path_factory.mktemp("registries") / "registries.conf", proxy.host)


@pytest.fixture
def proxy_log(proxy: ProxyServer) -> ProxyAccessLog:
    return ProxyAccessLog(proxy.log_path)


@pytest.fixture
def upstreams(
    upstream_registry: DistributionRegistry, ghcr_registry: DistributionRegistry
) -> list[DistributionRegistry]:
    return [upstream_registry, ghcr_registry]


@pytest.fixture
def skopeo_client(skopeo: str, registries_conf: Path, tmp_path: Path) -> Skopeo:
    return Skopeo(tmp_path / "skopeo", registries_conf)


@pytest.fixture
def podman(registries_conf: Path, tmp_path: Path) -> Iterator[Podman]:
    missing = [name for name in ("podman", "runc", "conmon") if shutil.which(name) is None]
    if missing:
        pytest.skip(f"not on PATH: {', '.join(missing)} (Debian packages podman, runc, conmon)")
    with Podman(tmp_path / "podman", registries_conf) as client:
        yield client


# -- checks ------------------------------------------------------------------------------------------------------------


def assert_proxy_served(log: ProxyAccessLog, mark: int, item: Subject, route: Route) -> None:
    """The proxy's log since ``mark`` has the manifest as referenced, and a successful GET of every blob the client
    needed, all under the name the route should give.

    The proxy logs a request once its last byte was sent, which can be a moment after the client read it and exited:
    the log is read again for up to 2 s until every line is there.
    """
    name = item.proxy_name(route)
    manifest_path = f"/v2/{name}/manifests/{item.manifest_reference}"
    blob_paths = [f"/v2/{name}/blobs/{digest}" for digest in item.blobs]
    for _ in range(20):  # bounded: 20 x 0.1 s
        requests = log.since(mark)
        missing = [] if any(_ok(r, manifest_path, ("GET", "HEAD")) for r in requests) else [manifest_path]
        missing += [path for path in blob_paths if not any(_ok(r, path, ("GET",)) for r in requests)]
        if not missing:
            return
        time.sleep(0.1)
    context = "\n".join(f"{r.method} {r.target} {r.status}" for r in requests)
    raise AssertionError(f"no 200 for {', '.join(missing)}:\n{context}")


def _ok(request: ProxyRequest, path: str, methods: tuple[str, ...]) -> bool:
    # containers/image sends the digest's colon as %3A; the proxy's log has the path as sent.
    return request.method in methods and request.status == 200 and unquote(request.path) == path


def assert_only_the_proxy_reached_upstreams(upstreams: list[DistributionRegistry], marks: list[int]) -> None:
    """Every request the upstreams logged since the marks came from the proxy: the clients never reached them."""
    for upstream, mark in zip(upstreams, marks, strict=True):
        upstream.wait_quiet(QUIET_SECONDS)
        strangers = [r for r in upstream.requests_since(mark) if not _from_proxy(r)]
        assert strangers == [], f"{upstream.url} was reached by something other than the proxy: {strangers}"


def _from_proxy(request: LoggedRequest) -> bool:
    if request.user_agent.startswith(PROXY_USER_AGENT):
        return True
    # The proxy's first request to an upstream is a GET /v2/ that learns how it authenticates; it is sent without
    # the proxy's User-Agent (httpx auth flows build that request bare). No client sends an empty User-Agent.
    return request.method == "GET" and request.path == "/v2/" and request.user_agent == ""


def marks(upstreams: list[DistributionRegistry]) -> list[int]:
    for upstream in upstreams:
        upstream.wait_quiet(QUIET_SECONDS)
    return [upstream.mark() for upstream in upstreams]


# -- skopeo ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", SKOPEO_CASES)
@pytest.mark.parametrize("route", ROUTES)
def test_skopeo_pull(
    route: Route,
    case: str,
    images: Images,
    proxy: ProxyServer,
    proxy_log: ProxyAccessLog,
    upstreams: list[DistributionRegistry],
    skopeo_client: Skopeo,
    tmp_path: Path,
) -> None:
    item = subject(images, case)
    upstream_marks, mark = marks(upstreams), proxy_log.mark()
    layout = skopeo_client.copy(
        item.reference(route, proxy), tmp_path / "pulled", all_images=item.all_images, platform=item.platform
    )
    # dir: keeps the manifest bytes as served: the top one is the index (--all), the platform's image, or the image.
    assert layout.manifest_digest == item.expected.digest
    layout.verify_blobs()
    if item.all_images:
        assert set(layout.instance_manifests) == {child.digest for child in item.pushed.children}
    assert set(layout.blobs) - set(layout.instance_manifests) == item.blobs
    assert_proxy_served(proxy_log, mark, item, route)
    assert_only_the_proxy_reached_upstreams(upstreams, upstream_marks)


def test_skopeo_unconfigured_registry_prefix_is_name_unknown(
    proxy: ProxyServer, proxy_log: ProxyAccessLog, skopeo_client: Skopeo
) -> None:
    # quay.io is a registry host (it has a dot) that the proxy has no upstream for.
    mark = proxy_log.mark()
    with pytest.raises(ClientError) as failure:
        skopeo_client.inspect_raw(f"{proxy.host}/quay.io/org/app:1")
    requests = [r for r in proxy_log.since(mark) if "/manifests/" in r.path]
    assert requests, proxy_log.text_since(mark)
    assert {r.status for r in requests} == {404}, proxy_log.text_since(mark)
    assert "name unknown" in failure.value.stderr.lower()


def test_skopeo_fallback_to_the_real_registry_fails(skopeo_client: Skopeo) -> None:
    """The harness's own check: when the mirror cannot serve a reference, the client tries the real registry and
    that fails through the refusing HTTPS proxy, so no test can pass by reaching Docker Hub."""
    with pytest.raises(ClientError) as failure:
        skopeo_client.inspect_raw("docker.io/library/not-seeded:1")
    assert "proxyconnect tcp" in failure.value.stderr
    assert "connection refused" in failure.value.stderr


# -- podman ------------------------------------------------------------------------------------------------------------


def check_podman_image(podman: Podman, reference: str, image_id: str, item: Subject) -> None:
    expected = item.expected
    # The image ID is the config's digest; the recorded digest is what the tag resolved to (an index's own
    # digest when a platform was picked from it), and the child's digest is among the repo digests.
    assert image_id == expected.config.hex
    inspected = podman.inspect_image(reference)
    assert inspected["Digest"] == item.pushed.digest
    assert podman.image_digest(reference) == item.pushed.digest
    repo_digests = {entry.rpartition("@")[2] for entry in inspected["RepoDigests"]}
    assert expected.digest in repo_digests
    assert expected.platform is not None
    assert inspected["Architecture"] == expected.platform.architecture


def podman_pull_through_proxy(
    route: Route,
    case: str,
    images: Images,
    proxy: ProxyServer,
    proxy_log: ProxyAccessLog,
    upstreams: list[DistributionRegistry],
    podman: Podman,
) -> str:
    """Pull ``case`` by ``route`` and check the image, that the proxy served it and that only it reached the
    upstreams; the reference pulled."""
    item = subject(images, case)
    reference = item.reference(route, proxy)
    upstream_marks, mark = marks(upstreams), proxy_log.mark()
    image_id = podman.pull(reference, platform=item.platform)
    check_podman_image(podman, reference, image_id, item)
    assert_proxy_served(proxy_log, mark, item, route)
    assert_only_the_proxy_reached_upstreams(upstreams, upstream_marks)
    return reference


@pytest.mark.parametrize("case", PODMAN_CASES)
@pytest.mark.parametrize("route", ROUTES)
def test_podman_pull(
    route: Route,
    case: str,
    images: Images,
    proxy: ProxyServer,
    proxy_log: ProxyAccessLog,
    upstreams: list[DistributionRegistry],
    podman: Podman,
) -> None:
    podman_pull_through_proxy(route, case, images, proxy, proxy_log, upstreams, podman)


@pytest.mark.parametrize("case", RUN_CASES)
@pytest.mark.parametrize("route", ROUTES)
def test_podman_run(
    route: Route,
    case: str,
    images: Images,
    proxy: ProxyServer,
    proxy_log: ProxyAccessLog,
    upstreams: list[DistributionRegistry],
    podman: Podman,
) -> None:
    reference = podman_pull_through_proxy(route, case, images, proxy, proxy_log, upstreams, podman)
    assert podman.run(reference).stdout == f"{BUSYBOX_OUTPUT}\n"


# -- after a client that accepts only schema2 (issue 7, item 2) --------------------------------------------------------

RESTARTS = pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted"])


@pytest.fixture
def own_proxy(upstream_registry: DistributionRegistry, tmp_path: Path) -> Iterator[ProxyServer]:
    """A proxy with an empty cache of its own, so that the test decides which client asks for a tag first."""
    with ProxyServer(tmp_path / "own-proxy", upstream_registry.url) as server:
        yield server


@pytest.fixture
def own_registries_conf(own_proxy: ProxyServer, tmp_path: Path) -> Path:
    return write_registries_conf(tmp_path / "own-registries" / "registries.conf", own_proxy.host)


@RESTARTS
def test_skopeo_arm64_after_a_schema2_only_client(
    restart: bool, images: Images, own_proxy: ProxyServer, own_registries_conf: Path, skopeo: str, tmp_path: Path
) -> None:
    item = subject(images, "list-arm64")
    schema2_only_client_first(own_proxy, item.pushed, restart=restart)
    client = Skopeo(tmp_path / "skopeo", own_registries_conf)
    layout = client.copy(item.reference("name", own_proxy), tmp_path / "pulled", platform=item.platform)
    assert layout.manifest_digest == item.expected.digest
    layout.verify_blobs()
    assert set(layout.blobs) - set(layout.instance_manifests) == item.blobs
    assert tag_digest(own_proxy, item.pushed) == item.pushed.digest


@RESTARTS
def test_podman_arm64_after_a_schema2_only_client(
    restart: bool, images: Images, own_proxy: ProxyServer, own_registries_conf: Path, tmp_path: Path
) -> None:
    missing = [name for name in ("podman", "runc", "conmon") if shutil.which(name) is None]
    if missing:
        pytest.skip(f"not on PATH: {', '.join(missing)} (Debian packages podman, runc, conmon)")
    item = subject(images, "list-arm64")
    schema2_only_client_first(own_proxy, item.pushed, restart=restart)
    reference = item.reference("name", own_proxy)
    with Podman(tmp_path / "podman", own_registries_conf) as client:
        image_id = client.pull(reference, platform=item.platform)
        check_podman_image(client, reference, image_id, item)
    assert tag_digest(own_proxy, item.pushed) == item.pushed.digest
