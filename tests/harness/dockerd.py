"""A private Docker daemon (dockerd) and the docker client, pulling through the proxy.

``Dockerd(workdir, mirrors=[...], insecure_registries=[...])`` runs ``dockerd --config-file FILE`` with its own
data root, exec root, pid file and unix socket under ``workdir``, no bridge network and no iptables rules, so it
leaves the machine's network setup alone and coexists with any other Docker (it only adds cgroups under /docker).
It starts a containerd of its own (socket in the exec root). ``Dockerd.client()`` gives a :class:`Docker`:
pull, ``image inspect``, ``run --rm --network none``.

The daemon and its client run with :func:`tests.harness.containerd.closed_proxy_env`: a pull that would reach the real
Docker Hub (the daemon falls back to it whenever a mirror fails) fails instead.

The client is the docker CLI that matches the daemon: Debian's docker.io puts it at /usr/bin/docker, but another,
newer CLI may come first on PATH; that one is used only with DOCKER_API_VERSION pinned to the daemon's.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.harness.containerd import (
    CommandError,
    closed_proxy_env,
    run_command,
    stop_process,
    sweep,
)
from tests.harness.deadline import poll_until

DOCKERD = "/usr/sbin/dockerd"
DOCKER_CLI = "/usr/bin/docker"
API_VERSION = "1.41"
"""The API version of Docker Engine 20.10 (Debian bookworm's docker.io)."""
# dockerd waits up to 10 s for running containers on SIGTERM, then for its containerd.
STOP_TIMEOUT = 40.0
CLIENT_TIMEOUT = 30.0
MAX_SOCKET_PATH = 100


def dockerd_binary() -> str | None:
    return DOCKERD if Path(DOCKERD).exists() else shutil.which("dockerd")


def overlay_supported() -> bool:
    """Whether the kernel has overlayfs (then overlay2 works on ext4/xfs roots; else vfs: full copies)."""
    try:
        return any(line.split()[-1] == "overlay" for line in Path("/proc/filesystems").read_text().splitlines())
    except OSError:
        return False


@dataclass(frozen=True)
class DockerImage:
    """What ``docker image inspect`` says about a pulled image."""

    id: str
    """The image ID: the digest of its config blob."""
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    """``name@digest`` for each repository it was pulled from; the digest is the manifest (or list) digest."""
    architecture: str
    os: str

    def digest_for(self, name: str) -> str | None:
        """The digest recorded for repository ``name`` as docker spells it (``oci-image`` for Docker Hub's
        ``library/oci-image``, ``127.0.0.1:5000/library/oci-image`` otherwise)."""
        for entry in self.repo_digests:
            repository, _, digest = entry.partition("@")
            if repository == name:
                return digest
        return None


class Dockerd:
    """dockerd with everything it writes under ``workdir``; ``mirrors`` go to ``registry-mirrors`` (Docker Hub only)
    and ``insecure_registries`` let it pull from a plain-HTTP registry by name."""

    def __init__(
        self,
        workdir: Path,
        *,
        mirrors: Sequence[str] = (),
        insecure_registries: Sequence[str] = (),
        storage_driver: str | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.workdir = workdir
        self.data_root = workdir / "data"
        self.exec_root = workdir / "exec"
        self.socket = workdir / "docker.sock"
        self.pidfile = workdir / "docker.pid"
        self.config_path = workdir / "daemon.json"
        self.log_path = workdir / "dockerd.log"
        self.client_config = workdir / "client-config"
        self.mirrors = list(mirrors)
        self.insecure_registries = list(insecure_registries)
        self.storage_driver = storage_driver or ("overlay2" if overlay_supported() else "vfs")
        self.start_timeout = start_timeout
        self.env = closed_proxy_env()
        self._process: subprocess.Popen[bytes] | None = None
        # dockerd's own containerd listens on <exec-root>/containerd/containerd.sock(.ttrpc).
        if len(str(self.exec_root / "containerd" / "containerd.sock.ttrpc")) > MAX_SOCKET_PATH:
            raise ValueError(f"workdir too long for the unix sockets dockerd creates under it: {workdir}")

    @property
    def host(self) -> str:
        """The ``DOCKER_HOST`` value."""
        return f"unix://{self.socket}"

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> Dockerd:
        binary = dockerd_binary()
        if binary is None:
            raise FileNotFoundError("dockerd is not installed (Debian package docker.io)")
        for directory in (self.data_root, self.exec_root, self.client_config):
            directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self._config(), indent=2))
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [binary, "--config-file", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        try:
            poll_until(self._ready, timeout=self.start_timeout, interval=0.2, what=f"dockerd on {self.socket}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every container, then dockerd (which stops its containerd), then sweep what may be left (see
        :func:`tests.harness.containerd.sweep`)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            try:
                self.client().remove_all_containers()
            except (CommandError, subprocess.TimeoutExpired):
                pass  # best effort: the sweep below catches what this missed
        if process is not None:
            stop_process(process, STOP_TIMEOUT)
        # dockerd keeps runc's state for its containers in <exec-root>/runtime-runc/<containerd namespace>.
        runc_roots = sorted((self.exec_root / "runtime-runc").glob("*"))
        sweep(runc_roots=runc_roots, markers=[str(self.exec_root)], workdir=self.workdir)

    def __enter__(self) -> Dockerd:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def client(self) -> Docker:
        return Docker(self)

    def info(self) -> dict[str, Any]:
        """``GET /info`` from the daemon's API."""
        with self._api() as api:
            response = api.get("/info")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    # -- internals ---------------------------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        return {
            "hosts": [self.host],
            "data-root": str(self.data_root),
            "exec-root": str(self.exec_root),
            "pidfile": str(self.pidfile),
            "registry-mirrors": self.mirrors,
            "insecure-registries": self.insecure_registries,
            "storage-driver": self.storage_driver,
            # No docker0 bridge and no iptables/NAT rules: containers run with --network none, and the machine's
            # network setup stays as it was.
            "bridge": "none",
            "iptables": False,
            "ip-masq": False,
            "ip-forward": False,
            # Only one pull runs at a time anyway; fewer parallel layer downloads keep the proxy log in order.
            "max-concurrent-downloads": 3,
        }

    def _api(self) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://docker", timeout=5)

    def _ready(self) -> bool | None:
        process = self._process
        if process is None or process.poll() is not None:
            raise RuntimeError(f"dockerd exited with {process and process.returncode}:\n{self.log_tail()}")
        if not self.socket.exists():
            return None
        try:
            with self._api() as api:
                return True if api.get("/_ping").status_code == 200 else None
        except httpx.TransportError:
            return None


class Docker:
    """The docker CLI with ``DOCKER_HOST`` set to one :class:`Dockerd` and an empty client config (no credentials
    from the machine)."""

    def __init__(self, daemon: Dockerd) -> None:
        self.daemon = daemon
        cli = DOCKER_CLI if Path(DOCKER_CLI).exists() else shutil.which("docker")
        if cli is None:
            raise FileNotFoundError("the docker CLI is not installed (Debian package docker.io)")
        self.cli = cli
        self.env = {**daemon.env, "DOCKER_HOST": daemon.host, "DOCKER_CONFIG": str(daemon.client_config)}
        if cli != DOCKER_CLI:
            self.env["DOCKER_API_VERSION"] = API_VERSION

    def command(self, *args: str, timeout: float = CLIENT_TIMEOUT) -> str:
        return run_command([self.cli, *args], self.env, timeout)

    def login(self, registry: str, user: str, password: str) -> str:
        """``docker login REGISTRY -u USER --password-stdin``: the credentials land in this client's own config."""
        return run_command([self.cli, "login", registry, "-u", user, "--password-stdin"], self.env, CLIENT_TIMEOUT,
                           stdin=password)  # fmt: skip

    def pull(self, ref: str, *, platform: str | None = None, timeout: float = 300.0) -> DockerImage:
        """``docker pull [--platform P] REF`` and the pulled image."""
        args = ["pull"]
        if platform is not None:
            args += ["--platform", platform]
        self.command(*args, ref, timeout=timeout)
        return self.inspect(ref)

    def inspect(self, ref: str) -> DockerImage:
        (raw,) = json.loads(self.command("image", "inspect", ref))
        return DockerImage(
            id=raw["Id"],
            repo_tags=tuple(raw.get("RepoTags") or ()),
            repo_digests=tuple(raw.get("RepoDigests") or ()),
            architecture=raw.get("Architecture", ""),
            os=raw.get("Os", ""),
        )

    def remove_image(self, *refs: str) -> None:
        """Untag ``refs``; once an image has no tag left, docker deletes it and its layers, so the next pull of it
        downloads every layer again."""
        present = [ref for ref in refs if self._exists(ref)]
        if present:
            self.command("image", "rm", "--force", *present)

    def run(self, ref: str, *command: str, timeout: float = 60.0) -> str:
        """``docker run --rm --network none REF [COMMAND]``; returns its stdout."""
        name = f"run-{secrets.token_hex(4)}"
        try:
            return self.command("run", "--rm", "--network", "none", "--name", name, ref, *command, timeout=timeout)
        finally:
            # --rm cleans up only after a normal exit; after a client timeout the container may still run.
            try:
                if name in self.command("ps", "--all", "--filter", f"name=^{name}$", "--format", "{{.Names}}"):
                    self.command("rm", "--force", name)
            except (CommandError, subprocess.TimeoutExpired):
                pass  # the daemon is in trouble: let the run's own error show; stop() sweeps the rest

    def remove_all_containers(self) -> None:
        ids = self.command("ps", "--all", "--quiet").split()
        if ids:
            self.command("rm", "--force", *ids)

    def _exists(self, ref: str) -> bool:
        try:
            self.command("image", "inspect", "--format", "{{.Id}}", ref)
        except CommandError:
            return False
        return True
