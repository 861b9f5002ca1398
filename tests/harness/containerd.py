"""A private containerd daemon and ``ctr``, a real containerd client, pulling through the proxy.

``Containerd(workdir)`` runs ``containerd --config FILE`` with its own root, state, socket and generated config, all
under ``workdir``, so it never touches (or is touched by) a containerd the machine may already run. The CRI plugin
is disabled: ``ctr`` needs only the content store, the snapshotters and the runc v2 runtime. It needs root (mounts,
namespaces) and the Debian packages containerd and runc.

``Containerd.client()`` gives a :class:`Ctr`: ``ctr image pull`` (by name with ``--plain-http``, or through a
``hosts.toml`` mirror with ``--hosts-dir``), reading back what was pulled, and ``ctr run --rm``.
``write_hosts_toml`` writes the containerd hosts configuration that turns the proxy into a registry's mirror; through
it containerd adds ``?ns=<registry>`` to every request (see shared/docs/PROTOCOL.md section 5).

Every daemon and client here runs with :func:`closed_proxy_env`: HTTP(S)_PROXY point at a closed loopback port and
only 127.0.0.1 is exempt, so a request that would go past the proxy to the real registry fails at once instead of
quietly succeeding.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest

from tests.harness.deadline import poll_until

CONTAINERD = "containerd"
CTR = "ctr"
RUNC = "runc"
NAMESPACE = "test"
DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "https://registry-1.docker.io"
GHCR = "ghcr.io"
GHCR_SERVER = "https://ghcr.io"
CLOSED_PROXY = "http://127.0.0.1:9"
"""Port 9 (discard) on loopback: nothing listens there, so a client that tries to use the proxy gets a refusal."""
# sockaddr_un.sun_path is 108 bytes; containerd also adds ".ttrpc" to the address for its ttrpc socket.
MAX_SOCKET_PATH = 100
STOP_TIMEOUT = 20.0
CTR_TIMEOUT = 30.0
"""Any ctr call that is not a pull or a run: they answer from the local daemon."""


def closed_proxy_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with every proxy variable pointing at a closed port.

    Go (containerd, ctr, dockerd) reads both spellings; NO_PROXY exempts only loopback, where the proxy under test
    and the upstream stand-ins listen. Variables that could change where clients look (a docker context, a
    snapshotter default) are dropped, so the machine's setup cannot leak into a test.
    """
    env = {
        key: value
        for key, value in (os.environ if base is None else base).items()
        if not key.upper().startswith(("DOCKER_", "CONTAINERD_")) and key.upper() not in ("ALL_PROXY", "FTP_PROXY")
    }
    for name in ("HTTPS_PROXY", "HTTP_PROXY"):
        env[name] = env[name.lower()] = CLOSED_PROXY
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def missing_requirements(binaries: Iterable[str] = (CONTAINERD, CTR, RUNC)) -> str | None:
    """Why this machine cannot run the daemons here (a skip reason), or None if it can."""
    if os.geteuid() != 0:
        return "containerd and dockerd need root (mounts, namespaces, cgroups)"
    missing = [name for name in binaries if shutil.which(name) is None]
    if missing:
        return f"not on PATH: {', '.join(missing)} (Debian packages containerd, runc, docker.io)"
    return None


class CommandError(RuntimeError):
    """A client command that exited non-zero; the message holds its arguments and output."""

    def __init__(self, args: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(f"{' '.join(args)} exited with {returncode}:\n{stderr.strip()}\n{stdout.strip()[-2000:]}")
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def run_command(args: Sequence[str], env: Mapping[str, str], timeout: float, stdin: str | None = None) -> str:
    """Run a client command to completion and return its stdout; CommandError if it fails. ``stdin``: its input
    (a password, which then never appears in the process list)."""
    completed = subprocess.run(
        list(args),
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        check=False,
    )
    if completed.returncode != 0:
        raise CommandError(args, completed.returncode, completed.stdout, completed.stderr)
    return completed.stdout


def write_hosts_toml(
    hosts_dir: Path,
    registry: str,
    server: str,
    mirror_url: str,
    capabilities: Sequence[str] = ("pull", "resolve"),
) -> Path:
    """Write ``hosts_dir/<registry>/hosts.toml``: ``mirror_url`` first, ``server`` (the real registry) last.

    ``server`` is there as in a real setup, so that a mirror answering 404 shows as a (failing) fallback to the
    real registry, not as a silent success.
    """
    directory = hosts_dir / registry
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "hosts.toml"
    quoted = ", ".join(f'"{capability}"' for capability in capabilities)
    path.write_text(f'server = "{server}"\n\n[host."{mirror_url}"]\n  capabilities = [{quoted}]\n')
    return path


@contextmanager
def module_containerd(workdir: Path) -> Iterator[Containerd]:
    """A private containerd under ``workdir`` for one test module; skips the module where it cannot run."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    with Containerd(workdir) as daemon:
        yield daemon
    # stop() has unmounted everything below workdir, or raised; the unpacked layers need not outlive the module.
    shutil.rmtree(daemon.root, ignore_errors=True)


@dataclass(frozen=True)
class CtrImage:
    """One row of ``ctr image ls``."""

    name: str
    media_type: str
    digest: str
    """The image's target: the manifest (or, for an index, the index) digest it was pulled by."""
    platforms: tuple[str, ...]


class Containerd:
    """``containerd --config <workdir>/config.toml`` with root, state, sockets and logs under ``workdir``."""

    def __init__(self, workdir: Path, *, start_timeout: float = 30.0) -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        self.state = workdir / "state"
        self.address = workdir / "containerd.sock"
        self.config_path = workdir / "config.toml"
        self.log_path = workdir / "containerd.log"
        self.runc_root = workdir / "runc"
        self.fifo_dir = workdir / "fifo"
        self.start_timeout = start_timeout
        self.snapshotter = "overlayfs"
        """The snapshotter pulls and runs use: overlayfs where it loaded, else native (plain copies)."""
        self.env = closed_proxy_env()
        self._process: subprocess.Popen[bytes] | None = None
        if len(str(self.address)) + len(".ttrpc") > MAX_SOCKET_PATH:
            raise ValueError(f"socket path too long for a unix socket: {self.address}")

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> Containerd:
        for directory in (self.root, self.state, self.runc_root, self.fifo_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._config())
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [CONTAINERD, "--config", str(self.config_path), "--log-level", "info"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                # Its own process group: a Ctrl-C in the test run must reach containerd only through stop().
                start_new_session=True,
            )
        try:
            poll_until(self._ready, timeout=self.start_timeout, interval=0.2, what=f"containerd on {self.address}")
            self.snapshotter = self._pick_snapshotter()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every container of ours, then containerd, then sweep what may be left (see :func:`sweep`)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            try:
                self.client().remove_all_containers()
            except (CommandError, subprocess.TimeoutExpired):
                pass  # best effort: the shim and mount sweep below catches what this missed
        if process is not None:
            stop_process(process, STOP_TIMEOUT)
        # The shim keeps runc's state in <runc root>/<namespace>.
        sweep(runc_roots=sorted(self.runc_root.glob("*")), markers=[str(self.address)], workdir=self.workdir)

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def client(self, namespace: str = NAMESPACE) -> Ctr:
        return Ctr(self, namespace)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    # -- internals ---------------------------------------------------------------------------------------------

    def _config(self) -> str:
        # Version 2 config; every path that defaults to /var/lib/containerd or /run/containerd is set, except the
        # shim sockets (/run/containerd/s/<hash of our socket path, namespace and id>: unique to us anyway).
        return f"""version = 2
root = "{self.root}"
state = "{self.state}"
# CRI would want CNI plugins, a sandbox image and more; ctr needs none of it.
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{self.address}"

[ttrpc]
  address = "{self.address}.ttrpc"

[debug]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.workdir / "opt"}"
"""

    def _ready(self) -> bool | None:
        process = self._process
        if process is None or process.poll() is not None:
            raise RuntimeError(f"containerd exited with {process and process.returncode}:\n{self.log_tail()}")
        if not self.address.exists():
            return None
        try:
            run_command([CTR, "--address", str(self.address), "version"], self.env, timeout=5)
        except (CommandError, subprocess.TimeoutExpired):
            return None
        return True

    def _pick_snapshotter(self) -> str:
        listing = run_command([CTR, "--address", str(self.address), "plugins", "ls"], self.env, CTR_TIMEOUT)
        for line in listing.splitlines():
            fields = line.split()
            if fields[:2] == ["io.containerd.snapshotter.v1", "overlayfs"] and fields[-1] == "ok":
                return "overlayfs"
        return "native"


class Ctr:
    """``ctr --address SOCK -n NAMESPACE ...`` against one :class:`Containerd`."""

    def __init__(self, daemon: Containerd, namespace: str = NAMESPACE) -> None:
        self.daemon = daemon
        self.namespace = namespace

    def command(self, *args: str, timeout: float = CTR_TIMEOUT) -> str:
        """Run ``ctr ... ARGS`` and return its stdout."""
        base = [CTR, "--address", str(self.daemon.address), "--namespace", self.namespace]
        return run_command([*base, *args], self.daemon.env, timeout)

    def pull(
        self,
        ref: str,
        *,
        hosts_dir: Path | None = None,
        platform: str | None = None,
        plain_http: bool = False,
        user: str | None = None,
        timeout: float = 300.0,
    ) -> CtrImage:
        """``ctr image pull`` (unpacked with the daemon's snapshotter) and the image as containerd recorded it.

        ``ref`` is a full reference: ``docker.io/library/x:1`` with ``hosts_dir`` for a mirror, or
        ``127.0.0.1:PORT/library/x:1`` with ``plain_http`` to pull from the proxy by name.
        """
        args = ["image", "pull", "--snapshotter", self.daemon.snapshotter]
        if hosts_dir is not None:
            args += ["--hosts-dir", str(hosts_dir)]
        if platform is not None:
            args += ["--platform", platform]
        if plain_http:
            args.append("--plain-http")
        if user is not None:
            args += ["--user", user]  # user:password, as ctr takes it
        self.command(*args, ref, timeout=timeout)
        return self.image(ref)

    def images(self) -> list[CtrImage]:
        """Every image in the namespace, from ``ctr image ls`` (REF TYPE DIGEST SIZE PLATFORMS LABELS)."""
        rows = self.command("image", "ls").splitlines()[1:]
        images = []
        for row in rows:
            fields = row.split()
            if len(fields) < 6:
                continue
            # SIZE is two fields ("2.4 KiB"), so PLATFORMS is the sixth.
            images.append(CtrImage(fields[0], fields[1], fields[2], tuple(fields[5].split(","))))
        return images

    def image(self, ref: str) -> CtrImage:
        for image in self.images():
            if image.name == ref:
                return image
        raise KeyError(f"containerd has no image {ref}")

    def content_digests(self) -> set[str]:
        """The digest of every blob and manifest in the content store (``ctr content ls -q``)."""
        return set(self.command("content", "ls", "--quiet").split())

    def remove_image(self, ref: str) -> None:
        """Remove the image and wait for the garbage collector, so its content and snapshots are gone: the next
        pull of it fetches everything again instead of finding it locally."""
        if any(image.name == ref for image in self.images()):
            self.command("image", "rm", "--sync", ref)

    def run(self, ref: str, *command: str, timeout: float = 60.0) -> str:
        """``ctr run --rm`` of a pulled image (its default command unless ``command``); returns its stdout.

        The container gets its own empty network namespace (ctr's default without ``--net-host``). runc's state
        and the IO fifos go under the daemon's workdir rather than /run/containerd.
        """
        container_id = f"run-{secrets.token_hex(4)}"
        args = [
            "run",
            "--rm",
            "--snapshotter",
            self.daemon.snapshotter,
            "--runc-root",
            str(self.daemon.runc_root),
            "--fifo-dir",
            str(self.daemon.fifo_dir),
            ref,
            container_id,
            *command,
        ]
        try:
            return self.command(*args, timeout=timeout)
        finally:
            # After a timeout or a failed start the task may still be there; --rm only cleans up a normal exit.
            try:
                self._remove_container(container_id)
            except (CommandError, subprocess.TimeoutExpired):
                pass  # the daemon is in trouble: let the run's own error show; stop() sweeps the rest

    def remove_all_containers(self) -> None:
        for container_id in self.command("container", "ls", "--quiet").split():
            self._remove_container(container_id)

    def _remove_container(self, container_id: str) -> None:
        if container_id not in self.command("container", "ls", "--quiet").split():
            return
        for args in (
            ("task", "kill", "--signal", "SIGKILL", container_id),
            ("task", "delete", "--force", container_id),
            ("container", "delete", container_id),
        ):
            try:
                self.command(*args)
            except CommandError:
                pass  # no task (it never started, or already exited): go on to the next step


# -- process and mount clean-up, shared with tests.harness.dockerd ----------------------------------------------------

SHIM_SOCKET_DIR = Path("/run/containerd/s")
"""Where containerd 1.6 puts every shim's socket, whatever its state dir (``defaults.DefaultStateDir``)."""


def sweep(*, runc_roots: Sequence[Path], markers: Sequence[str], workdir: Path) -> None:
    """What is left of a daemon after it stopped, or crashed, or was killed: end it all, in an order that leaves no
    process behind.

    1. Containers, through runc's own state in ``runc_roots``: killing a shim would not end the container's
       processes, and they would run on (and in this sandbox, whose init does not reap, stay zombies).
    2. Processes whose command line holds one of ``markers`` (paths no other daemon uses): shims, which outlive
       containerd by design, and a containerd that dockerd started. Their shim sockets go too.
    3. Mounts under ``workdir``.
    """
    for root in runc_roots:
        delete_runc_containers(root)
    for marker in markers:
        for cmdline in kill_processes_mentioning(marker).values():
            remove_shim_socket(cmdline)
    unmount_under(workdir)


def delete_runc_containers(root: Path) -> list[str]:
    """``runc --root ROOT delete --force`` every container runc knows under ``root``; returns their ids."""
    if not root.is_dir():
        return []
    env = closed_proxy_env()
    try:
        ids = run_command([RUNC, "--root", str(root), "list", "--quiet"], env, timeout=CTR_TIMEOUT).split()
    except (CommandError, subprocess.TimeoutExpired):
        return []
    for container_id in ids:
        try:
            run_command([RUNC, "--root", str(root), "delete", "--force", container_id], env, timeout=CTR_TIMEOUT)
        except (CommandError, subprocess.TimeoutExpired):
            pass  # gone already, or stuck: the mount sweep still runs, and the error is in no one's way
    return ids


def remove_shim_socket(cmdline: Sequence[str]) -> None:
    """Remove the socket of a killed containerd-shim-runc-v2 (a clean shim exit removes it itself).

    The shim was started as ``... -namespace NS -id ID -address CONTAINERD_SOCKET ...``, and its socket is
    ``/run/containerd/s/<sha256 of CONTAINERD_SOCKET/NS/ID>`` (containerd 1.6 ``runtime/v2/shim.SocketAddress``).
    """
    flags = {name: value for name, value in zip(cmdline, cmdline[1:], strict=False) if name.startswith("-")}
    if not {"-namespace", "-id", "-address"} <= flags.keys():
        return
    key = os.path.join(flags["-address"], flags["-namespace"], flags["-id"])
    (SHIM_SOCKET_DIR / hashlib.sha256(key.encode()).hexdigest()).unlink(missing_ok=True)


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait(timeout=10)


def kill_processes_mentioning(marker: str, *, timeout: float = 10.0) -> dict[int, list[str]]:
    """SIGKILL every process whose command line contains ``marker`` (a path unique to one daemon), by pid, and
    wait until they are gone. Returns the command line of each, by pid."""
    found = {pid: args for pid, args in _processes() if any(marker in arg for arg in args) and pid != os.getpid()}
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def gone() -> bool | None:
        alive = {pid for pid, _ in _processes()}
        return True if not alive.intersection(found) else None

    if found:
        poll_until(gone, timeout=timeout, interval=0.1, what=f"processes {sorted(found)} to exit")
    return found


def unmount_under(directory: Path, *, attempts: int = 3) -> None:
    """Lazily unmount every mount point at or below ``directory``, deepest first.

    Daemons that were killed, or crashed, leave overlay and bind mounts (container root filesystems, network
    namespaces) behind; left there, they would keep the disk space and break removing the directory.
    """
    prefix = str(directory.resolve())
    for _ in range(attempts):
        mounts = sorted(
            (point for point in _mount_points() if point == prefix or point.startswith(prefix + "/")),
            key=len,
            reverse=True,
        )
        if not mounts:
            return
        for point in mounts:
            subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=10, check=False)
    remaining = [point for point in _mount_points() if point.startswith(prefix)]
    if remaining:
        raise RuntimeError(f"still mounted after {attempts} rounds of umount: {remaining}")


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            # Field 5 is the mount point, with space, tab, newline and backslash octal-escaped.
            points.append(fields[4].encode().decode("unicode_escape"))
    return points


def _processes() -> list[tuple[int, list[str]]]:
    """(pid, argv) of every process but zombies (a killed zombie has no command line, and is not ours to reap)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # exited while we looked
        if raw:
            found.append((int(entry.name), raw.decode(errors="replace").rstrip("\0").split("\0")))
    return found
