"""deploy/replicas (the documented production shape of several replicas on one bucket) stays usable: its proxy
config loads as the proxy would load it, its nginx config passes ``nginx -t``, and the compose file names them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from proxy.config import load

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "replicas"


def test_the_replicas_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "access")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    settings = load(DEPLOY / "proxy.toml")
    assert settings.storage.backend == "s3"
    assert settings.storage.s3 is not None and settings.storage.s3.bucket == "registry-cache"
    assert settings.server.workers is None  # one per CPU


def test_the_compose_file_runs_three_replicas_behind_the_load_balancer() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    replicas = sorted(name for name in services if name.startswith("proxy-"))
    assert replicas == ["proxy-1", "proxy-2", "proxy-3"]
    for name in replicas:
        assert services[name]["command"] == ["--config", "/etc/registry-proxy/proxy.toml"]
        assert "./proxy.toml:/etc/registry-proxy/proxy.toml:ro" in services[name]["volumes"]
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert all(f"server {name}:5000" in nginx for name in replicas)


def test_the_load_balancer_config_is_valid_nginx(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        pytest.skip("nginx is not installed (Debian package nginx; ./scripts/test installs it)")
    # The replicas' names only resolve inside compose's network: stand them in with loopback.
    config = (DEPLOY / "nginx.conf").read_text()
    for n in (1, 2, 3):
        config = config.replace(f"server proxy-{n}:5000", f"server 127.0.0.{n}:5000")
    config = config.replace("listen 5000;", "listen 127.0.0.1:1;")  # never bound: -t only checks
    (tmp_path / "nginx.conf").write_text(config)
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
