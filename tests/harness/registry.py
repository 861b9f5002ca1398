"""A real CNCF Distribution registry (Debian's ``docker-registry``) running as a subprocess on 127.0.0.1."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import httpx

from tests.harness.accesslog import LoggedRequest, read_log
from tests.harness.deadline import poll_until
from tests.harness.htpasswd import write_htpasswd
from tests.harness.ports import LOOPBACK, free_port
from tests.harness.tokens import TokenIssuer

AuthMode = Literal["token", "basic", "none"]
BINARY = "docker-registry"
# The readiness probe's requests are left out of requests(): tests count what their clients did.
PROBE_USER_AGENT = "test-harness-readiness-probe"
BIND_ATTEMPTS = 3


class RegistryStartError(RuntimeError):
    pass


class DistributionRegistry:
    """``docker-registry serve`` with a generated config, its own storage and its logs under ``workdir``.

    ``auth="token"`` needs ``issuer`` and behaves like registry-1.docker.io; ``"basic"`` uses an htpasswd file with
    the issuer's (or the default) user and password; ``"none"`` lets everyone do everything.

    The port is chosen on the first start and kept, so ``stop()`` then ``start()`` brings the registry back at the
    same URL (an upstream outage, as the proxy sees it). The logs are appended to across restarts.
    """

    def __init__(
        self,
        workdir: Path,
        issuer: TokenIssuer | None = None,
        auth: AuthMode = "token",
        *,
        username: str | None = None,
        password: str | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        if auth == "token" and issuer is None:
            raise ValueError("token auth needs a TokenIssuer")
        self.workdir = workdir
        self.issuer = issuer
        self.auth: AuthMode = auth
        self.username = username or (issuer.username if issuer else "pusher")
        self.password = password or (issuer.password if issuer else "s3cret")
        self.start_timeout = start_timeout
        self.storage_dir = workdir / "storage"
        self.config_path = workdir / "config.yml"
        self.access_log = workdir / "access.log"  # stdout: one line per request
        self.app_log = workdir / "registry.log"  # stderr: JSON
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> DistributionRegistry:
        if self._process is not None:
            return self
        binary = shutil.which(BINARY)
        if binary is None:
            raise RegistryStartError(f"{BINARY} is not on PATH")
        keep_port = self.port is not None
        attempts_left = BIND_ATTEMPTS
        while True:
            attempts_left -= 1
            if not keep_port:
                self.port = free_port()
            self._write_config()
            self._spawn(binary)
            try:
                self._wait_ready()
                return self
            except RegistryStartError:
                self._terminate()
                # Another process may have taken the port between free_port() and the registry's bind: try again,
                # a bounded number of times.
                if attempts_left == 0 or "address already in use" not in self.log_tail(lines=3):
                    raise

    def stop(self) -> None:
        self._terminate()

    def __enter__(self) -> DistributionRegistry:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of an image reference."""
        if self.port is None:
            raise RuntimeError("registry was never started")
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def ref(self, name: str) -> str:
        """An image reference on this registry, e.g. ``ref("library/oci-image:1")``."""
        return f"{self.host}/{name}"

    # -- request accounting ------------------------------------------------------------------------------------

    def requests(self) -> list[LoggedRequest]:
        """Every request the registry has logged so far, in the order the responses completed."""
        return [r for r in read_log(self.access_log) if r.user_agent != PROBE_USER_AGENT]

    def mark(self) -> int:
        """A position in :meth:`requests`, for :meth:`requests_since`. Call :meth:`wait_quiet` first if requests
        may still be in flight, or their entries may land after the mark."""
        return len(self.requests())

    def requests_since(self, mark: int) -> list[LoggedRequest]:
        return self.requests()[mark:]

    def wait_quiet(self, seconds: float = 0.5, timeout: float = 10.0) -> None:
        """Return once neither log has grown for ``seconds``; TimeoutError if that does not happen in ``timeout``.

        The registry logs a request when its handler returns, which can be a moment after the client has read the
        last byte; and a request that a client abandoned is logged whenever the registry notices. Waiting for a
        quiet log makes counts taken afterwards final.
        """
        last_sizes = self._log_sizes()
        last_change = time.monotonic()

        def settled() -> bool | None:
            nonlocal last_sizes, last_change
            sizes = self._log_sizes()
            now = time.monotonic()
            if sizes != last_sizes:
                last_sizes, last_change = sizes, now
            return True if now - last_change >= seconds else None

        poll_until(settled, timeout=timeout, interval=min(0.05, seconds / 4), what="the registry log to go quiet")

    def log_tail(self, lines: int = 20) -> str:
        """The end of the registry's JSON log, for error messages."""
        try:
            text = self.app_log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ---------------------------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "json", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                # Lets a test delete a tag or blob upstream and see what the proxy does.
                "delete": {"enabled": True},
                # Purging would delete uploads in progress at a random moment; nothing here lives that long anyway.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            # A fixed secret so that upload state stays valid across a stop() and start().
            "http": {"addr": f"{LOOPBACK}:{self.port}", "secret": self._http_secret()},
        }
        if self.auth == "token":
            assert self.issuer is not None
            config["auth"] = {
                "token": {
                    "realm": self.issuer.realm,
                    "service": self.issuer.service,
                    "issuer": self.issuer.issuer,
                    "rootcertbundle": str(self.issuer.cert_path),
                }
            }
        elif self.auth == "basic":
            htpasswd = write_htpasswd(self.workdir / "htpasswd", {self.username: self.password})
            config["auth"] = {"htpasswd": {"realm": "test-registry", "path": str(htpasswd)}}
        return config

    def _http_secret(self) -> str:
        path = self.workdir / "http-secret"
        if not path.exists():
            path.write_text(secrets.token_hex(16))
        return path.read_text()

    def _write_config(self) -> None:
        # JSON is YAML, and writing it with json.dumps leaves no quoting to get wrong.
        self.config_path.write_text(json.dumps(self._config(), indent=2))

    def _spawn(self, binary: str) -> None:
        # REGISTRY_* variables override the config file; one left in the environment must not change the test.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        with self.access_log.open("ab") as stdout, self.app_log.open("ab") as stderr:
            self._process = subprocess.Popen(
                [binary, "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=env,
                cwd=self.workdir,
            )

    def _wait_ready(self) -> None:
        process = self._process
        assert process is not None

        def answered() -> bool | None:
            if process.poll() is not None:
                raise RegistryStartError(f"{BINARY} exited with {process.returncode}:\n{self.log_tail()}")
            try:
                response = httpx.get(f"{self.url}/v2/", headers={"User-Agent": PROBE_USER_AGENT}, timeout=1.0)
            except httpx.TransportError:
                return None
            return True if response.status_code in (200, 401) else None

        try:
            poll_until(answered, timeout=self.start_timeout, what=f"{BINARY} on {self.url}")
        except TimeoutError as exc:
            raise RegistryStartError(f"{exc}\n{self.log_tail()}") from exc

    def _log_sizes(self) -> tuple[int, int]:
        return _size(self.access_log), _size(self.app_log)

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
