"""What the proxy is measured against: CNCF Distribution in proxy mode (the anchor) and nginx serving the big
layer's file (the limit), each on a free port of 127.0.0.1."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.harness.deadline import poll_until
from tests.harness.ports import LOOPBACK, free_port
from tests.harness.registry import DistributionRegistry

__all__ = ["DistributionProxy", "NginxBlobServer", "nginx_version"]

BIND_ATTEMPTS = 3


class DistributionProxy(DistributionRegistry):
    """``docker-registry`` as a pull-through cache of ``remote_url``, with an empty cache under ``workdir``.

    It has no auth of its own (clients pull anonymously, as from the proxy). For the upstream it pings
    ``remote_url/v2/``, learns the Bearer realm from the challenge and fetches pull tokens from it; without
    ``username`` and ``password`` it asks for them anonymously.
    """

    def __init__(
        self, workdir: Path, remote_url: str, *, username: str | None = None, password: str | None = None
    ) -> None:
        super().__init__(workdir, None, auth="none")
        self.remote_url = remote_url
        self.remote_username = username
        self.remote_password = password

    def __enter__(self) -> DistributionProxy:
        self.start()
        return self

    def _config(self) -> dict[str, Any]:
        # The harness's config (storage, logs as Distribution logs by default, address), plus the proxy section.
        config = super()._config()
        proxy: dict[str, str] = {"remoteurl": self.remote_url}
        if self.remote_username is not None and self.remote_password is not None:
            proxy |= {"username": self.remote_username, "password": self.remote_password}
        config["proxy"] = proxy
        return config


def nginx_binary() -> str:
    # Debian installs it in /usr/sbin, which is not on a normal user's PATH.
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("nginx is not installed (Debian package nginx; ./scripts/test installs it)")
    return found


def nginx_version() -> str:
    result = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True, timeout=10, check=False)
    return (result.stderr or result.stdout).strip().removeprefix("nginx version: ")


class NginxBlobServer:
    """nginx serving one file at one URL path, as the current user, with everything it writes under ``workdir``.

    ``sendfile off; output_buffers 2 4m;`` was the fastest way to send one big file over loopback here (issue 11).
    """

    def __init__(self, workdir: Path, file: Path, url_path: str, *, start_timeout: float = 10.0) -> None:
        self.workdir = workdir
        self.file = file
        self.url_path = url_path
        self.start_timeout = start_timeout
        self.config_path = workdir / "nginx.conf"
        self.error_log = workdir / "error.log"
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("nginx was never started")
        return f"http://{LOOPBACK}:{self.port}{self.url_path}"

    def config(self) -> str:
        temp = self.workdir / "temp"
        # As root, nginx would switch its workers to "nobody", who cannot read our files: keep them ours.
        user = ""
        if os.geteuid() == 0:
            user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
        temp_paths = "".join(
            f"    {kind}_temp_path {temp / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return (
            f"{user}"
            "daemon off;\n"
            "worker_processes 1;\n"
            f"pid {self.workdir / 'nginx.pid'};\n"
            f"error_log {self.error_log} warn;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            "    access_log off;\n"
            f"{temp_paths}"
            "    sendfile off;\n"
            "    output_buffers 2 4m;\n"
            "    keepalive_timeout 75s;\n"
            "    server {\n"
            f"        listen {LOOPBACK}:{self.port};\n"
            f"        location = {self.url_path} {{\n"
            f"            alias {self.file};\n"
            "            default_type application/octet-stream;\n"
            "        }\n"
            "    }\n"
            "}\n"
        )

    def start(self) -> NginxBlobServer:
        binary = nginx_binary()
        (self.workdir / "temp").mkdir(exist_ok=True)  # nginx makes each temp path, but not their parent
        # free_port() releases the port before nginx binds it: another process may take it, so retry (bounded).
        for attempt in range(BIND_ATTEMPTS):
            self.port = free_port()
            self.config_path.write_text(self.config())
            with (self.workdir / "stderr.log").open("ab") as stderr:
                self._process = subprocess.Popen(
                    # -e: nginx opens its compiled-in error log before reading the config; keep that one ours too.
                    [binary, "-p", str(self.workdir), "-c", str(self.config_path), "-e", str(self.error_log)],
                    stdin=subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=stderr,
                )
            try:
                self._wait_ready()
                return self
            except RuntimeError:
                self.stop()
                if attempt == BIND_ATTEMPTS - 1 or "Address already in use" not in self.log_tail():
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()  # SIGTERM: nginx's fast shutdown, the master stops its worker
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def log_tail(self, lines: int = 10) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def _wait_ready(self) -> None:
        process = self._process
        assert process is not None

        def answered() -> bool | None:
            if process.poll() is not None:
                raise RuntimeError(f"nginx exited with {process.returncode}:\n{self.log_tail()}")
            try:
                status = httpx.head(self.url, timeout=1.0).status_code
            except httpx.TransportError:
                return None
            if status != 200:
                raise RuntimeError(f"nginx answers {status} for {self.url}:\n{self.log_tail()}")
            return True

        try:
            poll_until(answered, timeout=self.start_timeout, what=f"nginx on {self.url}")
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}\n{self.log_tail()}") from exc

    def __enter__(self) -> NginxBlobServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
