"""Issue 12 with real parts: the proxy over TLS with client authentication, in front of the token-auth upstream.

The proxy holds the upstream's credentials (so it can fetch ``private/secret``); its clients log in to the proxy
itself: dockerd with ``docker login`` (trusting the proxy's CA through ``certs.d``), containerd with ``ctr --user``
(trusting it through ``hosts.toml``'s ``ca``), skopeo with ``--creds`` (``--src-cert-dir``). Public images stay
pullable anonymously; the private image is refused to anonymous clients, by tag and by digest, with no bytes.
"""

from __future__ import annotations

import secrets
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest

from tests.conftest import Secrets
from tests.harness.containerd import CommandError, Containerd, missing_requirements, module_containerd
from tests.harness.dockerd import Dockerd, dockerd_binary
from tests.harness.images import Images
from tests.harness.proxy_server import ProxyServer
from tests.harness.registry import DistributionRegistry
from tests.harness.skopeo import SkopeoError, read_dir_layout, skopeo_copy
from tests.harness.tls import Certificates, make_certificates
from tests.harness.tokens import TokenIssuer
from tests.harness.upstreams import ghcr_env, ghcr_upstream_config

USER = "alice"
UPSTREAM_PASSWORD_ENV = "HUB_PASSWORD"
DOCKER_CERTS = Path("/etc/docker/certs.d")


@pytest.fixture(scope="module")
def password(used_secrets: Secrets) -> str:
    value = secrets.token_urlsafe(18)
    used_secrets.add(value)
    return value


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def proxy(
    upstream_registry: DistributionRegistry,
    ghcr_registry: DistributionRegistry,
    token_issuer: TokenIssuer,
    certificates: Certificates,
    password: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyServer]:
    workdir = tmp_path_factory.mktemp("tls-proxy")
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text(f"{USER}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(5)).decode()}\n")
    server = f'tls_cert = "{certificates.cert}"\ntls_key = "{certificates.key}"\n'
    upstream = f'username = "{token_issuer.username}"\npassword_env = "{UPSTREAM_PASSWORD_ENV}"\n'
    # The proxy reaches Docker Hub with credentials, so by default everything needs a login; library/* is public.
    extra = f'[auth]\nhtpasswd = "{htpasswd}"\n\n[[access]]\nregistry = "docker.io"\nrepository = "library/*"\n'
    extra += 'pull = "anonymous"\n'
    extra += ghcr_upstream_config(ghcr_registry)  # a second registry, reached by the ghcr.io/ path prefix
    with ProxyServer(
        workdir,
        upstream_registry.url,
        server_config=server,
        extra_upstream=upstream,
        extra_config=extra,
        env={UPSTREAM_PASSWORD_ENV: token_issuer.password, **ghcr_env()},
        ca=certificates.ca,
    ) as started:
        yield started


@pytest.fixture(scope="module")
def cert_dir(certificates: Certificates, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A certs.d-style directory for skopeo: the CA as ca.crt."""
    directory = tmp_path_factory.mktemp("skopeo-certs")
    shutil.copy(certificates.ca, directory / "ca.crt")
    return directory


def test_skopeo_pulls_public_anonymously_and_private_with_creds(
    proxy: ProxyServer, images: Images, skopeo: str, cert_dir: Path, password: str, tmp_path: Path
) -> None:
    public, private = images["oci"], images["private"]
    skopeo_copy(proxy.ref(public.ref), tmp_path / "public", cert_dir=cert_dir)
    layout = read_dir_layout(tmp_path / "public")
    assert layout.manifest_digest == public.digest
    with pytest.raises(SkopeoError):
        skopeo_copy(proxy.ref(private.ref), tmp_path / "anonymous", cert_dir=cert_dir)
    skopeo_copy(proxy.ref(private.ref), tmp_path / "private", cert_dir=cert_dir, creds=f"{USER}:{password}")
    pulled = read_dir_layout(tmp_path / "private")
    pulled.verify_blobs()
    assert pulled.manifest_digest == private.digest
    assert set(pulled.blobs) == {blob.digest for blob in private.blobs}


def test_private_content_is_refused_to_anonymous_clients_with_no_bytes(
    proxy: ProxyServer, images: Images, certificates: Certificates, password: str, used_secrets: Secrets
) -> None:
    private = images["private"]
    verify = ssl.create_default_context(cafile=certificates.ca)
    with httpx.Client(base_url=proxy.url, verify=verify, timeout=30) as client:
        # Cached by an authorised client first, so the bytes are on the proxy's disk.
        login = client.get("/auth/token", params={"scope": f"repository:{private.repository}:pull"},
                           auth=(USER, password))  # fmt: skip
        assert login.status_code == 200
        token = login.json()["token"]
        used_secrets.add(token)
        authorised = {"Authorization": f"Bearer {token}", "Accept": private.media_type}
        assert client.get(f"/v2/{private.repository}/manifests/{private.tag}", headers=authorised).status_code == 200
        for blob in private.blobs:
            assert client.get(f"/v2/{private.repository}/blobs/{blob.digest}", headers=authorised).status_code == 200

        anonymous_token = client.get("/auth/token", params={"scope": f"repository:{private.repository}:pull"})
        for headers in ({}, {"Authorization": f"Bearer {anonymous_token.json()['token']}"}):
            headers["Accept"] = private.media_type
            paths = [f"/v2/{private.repository}/manifests/{ref}" for ref in (private.tag, private.digest)]
            paths += [f"/v2/{private.repository}/blobs/{blob.digest}" for blob in private.blobs]
            for path in paths:
                for method in ("GET", "HEAD"):
                    response = client.request(method, path, headers=headers)
                    assert response.status_code == 401, (method, path)
                    assert "docker-content-digest" not in response.headers
                    assert private.manifest not in response.content
                    challenge = response.headers["www-authenticate"]
                    assert challenge.startswith(f'Bearer realm="{proxy.url}/auth/token"')
        assert client.get(f"/v2/{private.repository}/manifests/{private.tag}").status_code == 401


@pytest.fixture(scope="module")
def docker_trusts_proxy(proxy: ProxyServer, certificates: Certificates) -> Iterator[None]:
    """dockerd reads CAs for a registry from /etc/docker/certs.d/<host:port>/ca.crt (a fixed path)."""
    directory = DOCKER_CERTS / proxy.host
    try:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copy(certificates.ca, directory / "ca.crt")
    except PermissionError:
        pytest.skip(f"cannot write {directory} (dockerd's certs.d needs root)")
    yield
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    if dockerd_binary() is None or missing_requirements():
        pytest.skip("dockerd (Debian package docker.io) is not installed")
    with Dockerd(tmp_path_factory.mktemp("dockerd-tls")) as daemon:
        yield daemon


def test_docker_login_and_pull_over_tls(
    proxy: ProxyServer, images: Images, dockerd: Dockerd, docker_trusts_proxy: None, password: str
) -> None:
    docker = dockerd.client()
    private, public = images["private"], images["oci"]
    ref = proxy.ref(private.ref)
    with pytest.raises(CommandError):
        docker.pull(ref)  # not logged in
    docker.login(proxy.host, USER, password)
    pulled = docker.pull(ref)
    assert f"{proxy.host}/{private.repository}@{private.digest}" in pulled.repo_digests
    assert proxy.ref(f"{public.repository}@{public.digest}") in docker.pull(proxy.ref(public.ref)).repo_digests
    docker.remove_image(ref, proxy.ref(public.ref))


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    with module_containerd(tmp_path_factory.mktemp("containerd-tls")) as daemon:
        yield daemon


def test_containerd_pulls_over_tls_with_credentials(
    proxy: ProxyServer, images: Images, containerd: Containerd, certificates: Certificates, password: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    # hosts.toml for the proxy's own address: trust its CA (the documented containerd set-up).
    hosts_dir = tmp_path / "certs.d"
    (hosts_dir / proxy.host).mkdir(parents=True)
    (hosts_dir / proxy.host / "hosts.toml").write_text(
        f'server = "{proxy.url}"\n\n[host."{proxy.url}"]\n  capabilities = ["pull", "resolve"]\n'
        f'  ca = "{certificates.ca}"\n'
    )
    ctr = containerd.client()
    private = images["private"]
    ref = proxy.ref(private.ref)
    with pytest.raises(CommandError):
        ctr.pull(ref, hosts_dir=hosts_dir)
    image = ctr.pull(ref, hosts_dir=hosts_dir, user=f"{USER}:{password}")
    assert image.digest == private.digest
    assert {blob.digest for blob in private.blobs} <= ctr.content_digests()
    ctr.remove_image(ref)


def test_private_layers_cannot_be_read_through_another_repository_or_registry(
    proxy: ProxyServer, images: Images, certificates: Certificates, password: str
) -> None:
    private, public = images["private"], images["oci"]
    verify = ssl.create_default_context(cafile=certificates.ca)
    with (
        httpx.Client(base_url=proxy.url, verify=verify, timeout=30, auth=(USER, password)) as alice,
        httpx.Client(base_url=proxy.url, verify=verify, timeout=30) as anonymous,
    ):
        # Cached by an authorised client: the bytes are on the proxy's disk.
        headers = {"Accept": private.media_type}
        assert alice.get(f"/v2/{private.repository}/manifests/{private.tag}", headers=headers).status_code == 200
        for blob in private.blobs:
            assert alice.get(f"/v2/{private.repository}/blobs/{blob.digest}").status_code == 200
        # Through a public repository of the same registry (anonymous pulls allowed there) and through the other
        # registry's prefix (logins needed there): the upstream is asked under that name and says no, or the client
        # is asked to log in first. Never a byte of the blob.
        expected = {
            (alice, public.repository): (404, "BLOB_UNKNOWN"),
            (alice, "ghcr.io/org/app"): (404, "BLOB_UNKNOWN"),
            (anonymous, public.repository): (404, "BLOB_UNKNOWN"),
            (anonymous, "ghcr.io/org/app"): (401, "UNAUTHORIZED"),
        }
        for (client, name), (status, code) in expected.items():
            for blob in private.blobs:
                head = client.head(f"/v2/{name}/blobs/{blob.digest}")
                assert head.status_code == status and "docker-content-digest" not in head.headers, (name, blob)
                response = client.get(f"/v2/{name}/blobs/{blob.digest}")
                assert response.status_code == status, (name, blob)
                assert response.headers["content-type"] == "application/json"
                assert response.json()["errors"][0]["code"] == code
