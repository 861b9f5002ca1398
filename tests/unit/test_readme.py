"""The README's client snippets are exactly what the client tests configure (with the proxy's address)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.harness.containerd import DOCKER_HUB, DOCKER_HUB_SERVER, GHCR, GHCR_SERVER, write_hosts_toml
from tests.harness.containers import write_registries_conf
from tests.harness.dockerd import Dockerd

README = Path(__file__).resolve().parents[2] / "README.md"
PROXY = "cache.example:5000"


def snippet(name: str) -> str:
    match = re.search(rf"<!-- snippet: {re.escape(name)} -->\n```\w+\n(.*?)```", README.read_text(), re.DOTALL)
    assert match, f"README has no snippet {name!r}"
    return match.group(1)


@pytest.mark.parametrize(("name", "registry", "server"), [("docker.io", DOCKER_HUB, DOCKER_HUB_SERVER),
                                                           ("ghcr.io", GHCR, GHCR_SERVER)])  # fmt: skip
def test_hosts_toml(tmp_path: Path, name: str, registry: str, server: str) -> None:
    written = write_hosts_toml(tmp_path, registry, server, f"http://{PROXY}")
    assert snippet(f"hosts.toml {name}") == written.read_text()


def test_registries_conf(tmp_path: Path) -> None:
    written = write_registries_conf(tmp_path / "registries.conf", PROXY)
    assert snippet("registries.conf").strip() == written.read_text().strip()


def test_daemon_json(tmp_path: Path) -> None:
    # As the client tests start dockerd: Dockerd(mirrors=[proxy.url], insecure_registries=[proxy.host]). The rest
    # of the daemon's config is the test machine's business (its own data root, no bridge).
    daemon = Dockerd(tmp_path, mirrors=[f"http://{PROXY}"], insecure_registries=[PROXY])
    registry_keys = {k: v for k, v in daemon._config().items() if k in ("registry-mirrors", "insecure-registries")}
    assert json.loads(snippet("daemon.json")) == registry_keys
