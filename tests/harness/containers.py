"""Real container clients, podman and skopeo, pulling through the proxy as a mirror or by name.

The pieces, each usable on its own:

- :func:`client_env`: the environment every client or daemon gets. Its HTTP(S) proxy variables point at a loopback
  port that refuses connections, with ``NO_PROXY`` for 127.0.0.1 and localhost: a client that falls back from the
  mirror to the real registry (registry-1.docker.io, ghcr.io) fails at once and loudly, so a pull that passes was
  served by the proxy. It also points the auth file at an empty one, so no credentials of the machine are sent.
- :func:`registries_conf` / :func:`write_registries_conf`: a ``containers-registries.conf(5)`` that makes the proxy
  the mirror of docker.io (``127.0.0.1:PORT``) and of other registries (``127.0.0.1:PORT/<registry>``, which
  containers/image turns into ``/v2/<registry>/<repository>/...`` requests: the proxy's path-prefix routing), and
  lets images be pulled by their full name on the proxy over plain HTTP.
- :class:`Skopeo`: ``skopeo copy`` and ``inspect`` with such a file (skopeo 1.9 ignores ``CONTAINERS_REGISTRIES_CONF``
  and needs ``--registries-conf``).
- :class:`Podman`: podman with storage, network config and events of its own under one directory and run state in a
  short one of its own, so that it neither sees nor leaves images or containers on the machine (podman 4.3 still
  creates an empty ``/run/containers/networks`` whatever its flags); ``pull``, ``image inspect``, ``run``.
- :class:`ProxyAccessLog`: the requests the proxy logged (its access log in ``ProxyServer.log_path``) since a
  mark, to show which requests a client sent.

What podman 4.3 needs to run a container as root in a sandbox without ``CAP_SYS_RESOURCE`` (see :data:`RUN_ULIMITS`):
explicit ``--ulimit nofile`` and ``--ulimit nproc`` no higher than the hard limits podman hands to conmon (nofile:
this process's; nproc: 32768 here, below this process's own). Without them podman asks runc for far higher ones,
which only a process that may raise its hard limits can set:
``runc create failed: ... error setting rlimit type 6 (or 7): operation not permitted``. Its run state must also be
under a path of at most 50 characters (``the specified runroot is longer than 50 characters``).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from tests.harness.oci import Platform
from tests.harness.ports import LOOPBACK
from tests.harness.skopeo import DirLayout, docker_ref, read_dir_layout

DOCKER_HUB = "docker.io"
NO_PROXY = f"{LOOPBACK},localhost"
# Variables that would change where a client goes or what it reads; client_env() drops them all before setting its
# own, so whatever the test runner's environment holds does not leak into a client.
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
_CLIENT_VARIABLE_PREFIXES = ("CONTAINERS_", "REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "CONTAINER_HOST", "BUILDAH_")

StorageDriver = Literal["overlay", "vfs"]
SHORT_TMP = "/tmp"
"""Where :class:`Podman` puts its run state: a short path, whatever ``TMPDIR`` or pytest's tmp_path are."""

# -- a loopback port that refuses connections --------------------------------------------------------------------------

_refusing_lock = threading.Lock()
_refusing_socket: socket.socket | None = None


def refusing_port() -> int:
    """A loopback port on which every connection is refused, for as long as this process lives.

    A socket bound but never listening holds the port (no other process can take it and start answering) and makes
    the kernel answer every connection attempt with a reset: clients get "connection refused" at once, not a timeout.
    """
    global _refusing_socket
    with _refusing_lock:
        if _refusing_socket is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            # Closed explicitly at exit: a socket collected while open raises ResourceWarning, an error under pytest.
            atexit.register(sock.close)
            _refusing_socket = sock
        port: int = _refusing_socket.getsockname()[1]
        return port


def refusing_proxy_url() -> str:
    return f"http://{LOOPBACK}:{refusing_port()}"


def proxy_env() -> dict[str, str]:
    """HTTP(S) proxy variables, in both spellings (Go reads upper case first, curl prefers lower case), that send
    everything but loopback traffic to a refusing port."""
    url = refusing_proxy_url()
    env: dict[str, str] = {}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = url
    env["NO_PROXY"] = env["no_proxy"] = NO_PROXY
    return env


def client_env(workdir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a client or daemon: the test process's own (PATH and the like), minus anything that points
    container tools at other configuration or credentials, plus :func:`proxy_env` and an empty auth file in
    ``workdir``. ``extra`` comes last, e.g. ``CONTAINERS_REGISTRIES_CONF``."""
    drop = {name.lower() for name in _PROXY_VARIABLES}
    env = {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in drop and not name.startswith(_CLIENT_VARIABLE_PREFIXES)
    }
    workdir.mkdir(parents=True, exist_ok=True)
    auth_file = workdir / "auth.json"
    if not auth_file.exists():
        auth_file.write_text('{"auths": {}}\n')
    env["REGISTRY_AUTH_FILE"] = str(auth_file)
    env.update(proxy_env())
    env.update(extra or {})
    return env


# -- registries.conf ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mirror:
    """``[[registry]] prefix = location = registry`` with one ``[[registry.mirror]]`` at ``location``."""

    registry: str
    location: str
    """``host:port`` or ``host:port/path``; containers/image puts the repository after it."""


def proxy_mirror(proxy_host: str, registry: str) -> Mirror:
    """The proxy as a mirror of ``registry``: at its root for docker.io (what dockerd's ``registry-mirrors`` sends as
    well), under the ``/<registry>`` path prefix for any other registry."""
    return Mirror(registry, proxy_host if registry == DOCKER_HUB else f"{proxy_host}/{registry}")


def registries_conf(mirrors: Sequence[Mirror], insecure: Sequence[str] = ()) -> str:
    """A ``registries.conf`` (v2 format) with ``mirrors``, all insecure (plain HTTP), and ``insecure`` hosts that may
    be pulled from by full name over plain HTTP.

    No unqualified search registries: every reference in the tests is fully qualified, and a short name must fail
    rather than be looked up somewhere.
    """
    lines = ["unqualified-search-registries = []", 'short-name-mode = "disabled"', ""]
    for mirror in mirrors:
        lines += [
            "[[registry]]",
            f"prefix = {_toml_string(mirror.registry)}",
            f"location = {_toml_string(mirror.registry)}",
            "",
            "[[registry.mirror]]",
            f"location = {_toml_string(mirror.location)}",
            "insecure = true",
            "",
        ]
    for host in insecure:
        lines += ["[[registry]]", f"location = {_toml_string(host)}", "insecure = true", ""]
    return "\n".join(lines)


def write_registries_conf(path: Path, proxy_host: str, registries: Sequence[str] = (DOCKER_HUB, "ghcr.io")) -> Path:
    """Write a ``registries.conf`` making the proxy at ``proxy_host`` the mirror of each of ``registries`` and an
    insecure registry by its own name (``proxy_host/library/x:1``, ``proxy_host/ghcr.io/org/app:1``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(registries_conf([proxy_mirror(proxy_host, r) for r in registries], insecure=[proxy_host]))
    return path


def _toml_string(value: str) -> str:
    # JSON string escaping is valid TOML basic-string escaping for everything a host or path holds.
    return json.dumps(value)


# -- running clients ---------------------------------------------------------------------------------------------------


class ClientError(RuntimeError):
    """A client exited with a non-zero status; ``stderr`` says why."""

    def __init__(self, args: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(f"{' '.join(args)} exited with {returncode}:\n{stderr.strip()}")
        self.args_list = list(args)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def run_client(
    args: Sequence[str], env: Mapping[str, str], timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a client to completion (killed after ``timeout`` seconds); ClientError unless it exits with 0."""
    completed = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=dict(env),
        cwd=cwd,
        check=False,
    )
    if completed.returncode != 0:
        raise ClientError(args, completed.returncode, completed.stdout, completed.stderr)
    return completed


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not on PATH")
    return found


# -- skopeo ------------------------------------------------------------------------------------------------------------


class Skopeo:
    """skopeo with a registries.conf of its own and :func:`client_env`; anonymous, no signature policy."""

    def __init__(self, workdir: Path, registries_conf: Path | None = None, *, timeout: float = 300) -> None:
        self.binary = _binary("skopeo")
        self.workdir = workdir
        self.registries_conf = registries_conf
        self.timeout = timeout
        self.env = client_env(workdir)

    def _global_args(self, platform: Platform | None) -> list[str]:
        args = [self.binary, "--insecure-policy"]
        if self.registries_conf is not None:
            args += ["--registries-conf", str(self.registries_conf)]
        if platform is not None:
            args += ["--override-os", platform.os, "--override-arch", platform.architecture]
            if platform.variant:
                args += ["--override-variant", platform.variant]
        return args

    def copy(
        self,
        ref: str,
        dest: Path,
        *,
        all_images: bool = False,
        platform: Platform | None = None,
        tls_verify: bool | None = None,
    ) -> DirLayout:
        """``skopeo copy docker://ref dir:dest``; the ``dir:`` layout keeps the manifest bytes as served.

        ``tls_verify=None`` leaves plain HTTP or not to registries.conf (``insecure = true``), which is what a test of
        that file wants; ``False`` forces ``--src-tls-verify=false``.
        """
        dest.mkdir(parents=True, exist_ok=True)
        args = [*self._global_args(platform), "copy", "--retry-times=0", "--src-no-creds"]
        if tls_verify is not None:
            args.append(f"--src-tls-verify={str(tls_verify).lower()}")
        if all_images:
            args.append("--all")
        args += [docker_ref(ref), f"dir:{dest}"]
        run_client(args, self.env, self.timeout)
        return read_dir_layout(dest)

    def inspect_raw(self, ref: str, *, tls_verify: bool | None = None) -> bytes:
        """The manifest bytes served for ``ref`` (the index itself for an index)."""
        args = [*self._global_args(None), "inspect", "--raw", "--retry-times=0", "--no-creds"]
        if tls_verify is not None:
            args.append(f"--tls-verify={str(tls_verify).lower()}")
        args.append(docker_ref(ref))
        return run_client(args, self.env, self.timeout).stdout.encode()


# -- podman ------------------------------------------------------------------------------------------------------------


def run_ulimits() -> list[str]:
    """``--ulimit`` options for ``podman run`` that work without ``CAP_SYS_RESOURCE``.

    podman (as root) asks for nofile and nproc limits of 1048576 and more by default, and runc fails to set them where
    the process may not raise its hard limits. podman also lowers its own (and so conmon's and runc's) nproc hard
    limit to 32768 here, so nproc must not exceed that even when this process's limit is higher. For root, nproc is
    not enforced anyway; nofile 1024 soft is what most distributions give a container.
    """
    nofile_hard = min(_hard_limit(resource.RLIMIT_NOFILE), 20000)
    nproc = min(_hard_limit(resource.RLIMIT_NPROC), 4096)
    return ["--ulimit", f"nofile={min(1024, nofile_hard)}:{nofile_hard}", "--ulimit", f"nproc={nproc}:{nproc}"]


def _hard_limit(which: int) -> int:
    hard = resource.getrlimit(which)[1]
    return 1 << 20 if hard == resource.RLIM_INFINITY else hard


RUN_ULIMITS = run_ulimits()


class Podman:
    """podman as root with everything of its own: under ``workdir`` the image store (``--root``), network config,
    storage.conf, registries.conf (``CONTAINERS_REGISTRIES_CONF``) and auth file; run state, libpod's tmpdir and its
    events file under :attr:`rundir`, a short directory in ``/tmp``; cgroupfs instead of systemd, runc.

    ``vfs`` by default: it needs no kernel overlay support (nested containers, odd filesystems) and leaves no mount
    behind if a test is killed. It copies each layer in full where overlay would not, which costs nothing noticeable
    with the seeded images (one or two layers each; the 200 MiB image pulls in about 4 s either way).

    Use as a context manager, or call :meth:`close`: it removes containers, images and storage (and so any overlay
    mount) with ``podman system reset``, bounded in time.
    """

    def __init__(
        self,
        workdir: Path,
        registries_conf: Path,
        *,
        storage_driver: StorageDriver = "vfs",
        runtime: str = "runc",
        timeout: float = 300,
    ) -> None:
        self.binary = _binary("podman")
        self.runtime = _binary(runtime)
        self.workdir = workdir
        self.registries_conf = registries_conf
        self.storage_driver: StorageDriver = storage_driver
        self.timeout = timeout
        for sub in ("root", "networks"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        # podman refuses a runroot longer than 50 characters ("the specified runroot is longer than 50 characters":
        # conmon's socket paths go under it), and pytest's tmp_path is longer than that: run state goes to a short
        # directory of its own, removed by close().
        self.rundir = Path(tempfile.mkdtemp(prefix="podman-", dir=SHORT_TMP))
        # A storage.conf of our own: the machine's (/etc/containers/storage.conf) must not add image stores or options.
        storage_conf = workdir / "storage.conf"
        storage_conf.write_text(
            f'[storage]\ndriver = "{storage_driver}"\n'
            f"graphroot = {_toml_string(str(workdir / 'root'))}\nrunroot = {_toml_string(str(self.rundir / 'run'))}\n"
        )
        self.env = client_env(
            workdir,
            {"CONTAINERS_REGISTRIES_CONF": str(registries_conf), "CONTAINERS_STORAGE_CONF": str(storage_conf)},
        )

    @property
    def global_args(self) -> list[str]:
        w = self.workdir
        return [
            self.binary,
            f"--root={w / 'root'}",
            f"--runroot={self.rundir / 'run'}",
            f"--tmpdir={self.rundir / 'tmp'}",
            f"--network-config-dir={w / 'networks'}",
            f"--storage-driver={self.storage_driver}",
            "--cgroup-manager=cgroupfs",
            "--events-backend=file",
            f"--runtime={self.runtime}",
        ]

    def __call__(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``podman <global args> <args>``; ClientError unless it exits with 0."""
        return run_client([*self.global_args, *args], self.env, timeout or self.timeout, cwd=self.workdir)

    def pull(self, ref: str, *, platform: Platform | None = None, tls_verify: bool | None = None) -> str:
        """``podman pull``; returns the image ID (the config digest's hex) that podman prints last.

        ``platform`` becomes ``--os``/``--arch``/``--variant``. podman 4.3 has no ``--retry``: a failing pull is tried
        three times, a second apart, before it fails.
        """
        args = ["pull", "--quiet"]
        if platform is not None:
            args += ["--os", platform.os, "--arch", platform.architecture]
            if platform.variant:
                args += ["--variant", platform.variant]
        if tls_verify is not None:
            args.append(f"--tls-verify={str(tls_verify).lower()}")
        args.append(ref)
        lines = self(*args).stdout.split()
        if not lines:
            raise ClientError(args, 0, "", "podman pull printed no image ID")
        return lines[-1]

    def inspect_image(self, ref: str) -> dict[str, Any]:
        """``podman image inspect``: the first (only) entry."""
        entries = json.loads(self("image", "inspect", ref, timeout=60).stdout)
        if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
            raise ValueError(f"unexpected podman image inspect output for {ref}: {entries!r}")
        entry: dict[str, Any] = entries[0]
        return entry

    def image_digest(self, ref: str) -> str:
        """The manifest digest podman recorded for the image: ``podman image inspect --format {{.Digest}}``."""
        return self("image", "inspect", "--format", "{{.Digest}}", ref, timeout=60).stdout.strip()

    def run(self, ref: str, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``podman run --rm`` with no network and :data:`RUN_ULIMITS`; the image's own command unless ``command``.

        ``--pull never``: the image must have been pulled before, so that a run never pulls behind a test's back.
        """
        args = ["run", "--rm", "--pull=never", "--network=none", *RUN_ULIMITS, ref, *command]
        return self(*args, timeout=timeout)

    def close(self) -> None:
        """Remove everything podman made under ``workdir`` (containers, images, layers, mounts)."""
        try:
            self("system", "reset", "--force", timeout=60)
        except (ClientError, subprocess.TimeoutExpired):
            pass  # best effort: the directory is the test's tmp_path, and a failed reset must not hide the test
        # podman system reset keeps the storage directories themselves; nothing is mounted there any more.
        shutil.rmtree(self.workdir / "root", ignore_errors=True)
        shutil.rmtree(self.rundir, ignore_errors=True)

    def __enter__(self) -> Podman:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# -- the proxy's access log --------------------------------------------------------------------------------------------

# 2026-11-28 01:01:05,855 INFO proxy.access: 127.0.0.1:47696 - "GET /v2/library/oci-image/manifests/1 HTTP/1.1" 200
#   1234 0.8ms cache=hit upstream=docker.io
_ACCESS = re.compile(
    r"proxy\.access: (?P<client>\S+) \S+ \"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[0-9.]+\" (?P<status>\d{3})"
)


@dataclass(frozen=True)
class ProxyRequest:
    method: str
    target: str
    """Path (percent-decoded: ``sha256:...`` however the client wrote it) and query string, as logged."""
    status: int

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


class ProxyAccessLog:
    """The requests in the proxy's log (``ProxyServer.log_path``), from a byte offset taken with :meth:`mark`.

    The proxy logs a request once it has sent its answer, so call this after the client exited.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def since(self, mark: int) -> list[ProxyRequest]:
        try:
            with self.path.open("rb") as f:
                f.seek(mark)
                text = f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return []
        found = (_ACCESS.search(line) for line in text.splitlines())
        return [ProxyRequest(m["method"], m["target"], int(m["status"])) for m in found if m is not None]

    def text_since(self, mark: int) -> str:
        """Everything logged since ``mark``, for error messages."""
        try:
            with self.path.open("rb") as f:
                f.seek(mark)
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
