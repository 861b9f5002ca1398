"""The proxy itself, as users run it: ``registry-proxy serve --config FILE`` in a subprocess."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from types import TracebackType

import httpx

from tests.harness.deadline import poll_until
from tests.harness.ports import LOOPBACK, free_port


class ProxyServer:
    """Writes a config naming ``upstream_url`` as docker.io and runs the proxy on a free loopback port."""

    def __init__(
        self,
        workdir: Path,
        upstream_url: str,
        *,
        tag_ttl: str = "5m",
        read_timeout: str = "30s",
        extra_upstream: str = "",
        extra_config: str = "",
        extra_storage: str = "",
        env: dict[str, str] | None = None,
        cache_dir: Path | None = None,
        start_timeout: float = 20.0,
        server_config: str = "",
        ca: Path | None = None,
    ) -> None:
        """``extra_upstream``: more TOML lines for the docker.io upstream table; ``extra_config``: TOML appended
        after it (more ``[[upstreams]]`` tables); ``env``: added to the proxy's environment; ``server_config``: more
        lines for ``[server]`` (with ``tls_cert``, pass ``ca``: the proxy then serves HTTPS, trusted through it; one
        worker process unless they set ``workers``, so that the upstream requests a test counts are one process's);
        ``extra_storage``: more lines for ``[storage]`` (a budget)."""
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.cache_dir = cache_dir or workdir / "cache"
        self.config_path = workdir / "config.toml"
        self.log_path = workdir / "proxy.log"
        self.port = free_port()
        self.start_timeout = start_timeout
        self.config_path.write_text(
            f"""
[server]
host = "{LOOPBACK}"
port = {self.port}
{server_config}
{"" if "workers" in server_config else "workers = 1"}

[storage]
root = "{self.cache_dir}"
{extra_storage}

[[upstreams]]
registry = "docker.io"
url = "{upstream_url}"
tag_ttl = "{tag_ttl}"
connect_timeout = "2s"
read_timeout = "{read_timeout}"
{extra_upstream}

{extra_config}
"""
        )
        self._env = env or {}
        self.ca = ca
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://{self.host}"

    def ref(self, name: str) -> str:
        return f"{self.host}/{name}"

    def start(self) -> ProxyServer:
        cli = Path(sys.executable).with_name("registry-proxy")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(cli), "serve", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**{k: v for k, v in os.environ.items() if k != "REGISTRY_PROXY_CONFIG"}, **self._env},
            )
        process = self._process

        def ready() -> bool | None:
            if process.poll() is not None:
                raise RuntimeError(f"registry-proxy exited with {process.returncode}:\n{self.log_tail()}")
            try:
                # 401 is an answer too: the proxy asks clients to log in when client authentication is on.
                verify = ssl.create_default_context(cafile=self.ca) if self.ca else True
                status = httpx.get(f"{self.url}/v2/", timeout=1.0, verify=verify).status_code
                return True if status in (200, 401) else None
            except httpx.TransportError:
                return None

        try:
            poll_until(ready, timeout=self.start_timeout, what=f"registry-proxy on {self.url}")
        except BaseException:
            self.stop()  # a proxy that never became ready must not outlive the test that started it
            raise
        return self

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def __enter__(self) -> ProxyServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
