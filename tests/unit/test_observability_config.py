"""[log] and [metrics] in the config file, and who may read /metrics and the status page."""

from __future__ import annotations

import base64
from pathlib import Path

import bcrypt
import httpx
import pytest
from starlette.testclient import TestClient

from proxy.app import create_app
from proxy.config import (
    AuthSettings,
    ConfigError,
    LogSettings,
    MetricsSettings,
    Settings,
    StorageSettings,
    UpstreamSettings,
    load,
)
from tests.conftest import Secrets
from tests.unit.fakes import FAKE_TOKEN_REALMS, REGISTRY, FakeRegistry

PASSWORD = "metrics-reader-secret"


def loaded(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load(path, environ={})


def test_log_and_metrics_tables(tmp_path: Path) -> None:
    settings = loaded(
        tmp_path, '[log]\nformat = "json"\nlevel = "warning"\naccess = false\n[metrics]\naccess = "loopback"\n'
    )
    assert settings.log == LogSettings(format="json", level="warning", access=False)
    assert settings.metrics == MetricsSettings(access="loopback")
    assert loaded(tmp_path, "").log == LogSettings()
    assert loaded(tmp_path, "").metrics == MetricsSettings(access=None)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[log]\nformat = "xml"\n', "log.format"),
        ('[log]\nlevel = "loud"\n', "log.level"),
        ('[log]\naccess = "yes"\n', "log.access"),
        ("[log]\ncolour = true\n", "log.colour"),
        ('[metrics]\naccess = "everyone"\n', "metrics.access"),
        ('[metrics]\naccess = "authenticated"\n', "metrics.access: needs client authentication"),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        loaded(tmp_path, text)


def app(tmp_path: Path, fake: FakeRegistry, **settings: object) -> TestClient:
    upstream = UpstreamSettings(registry="docker.io", url=REGISTRY, token_realms=FAKE_TOKEN_REALMS)
    config = Settings(storage=StorageSettings(root=tmp_path / "cache"), upstreams=(upstream,), **settings)  # type: ignore[arg-type]
    return TestClient(create_app(config, transport=httpx.MockTransport(fake)))


def test_loopback_only(tmp_path: Path, fake: FakeRegistry) -> None:
    with app(tmp_path, fake, metrics=MetricsSettings("loopback")) as local:
        # TestClient's client is "testclient", not a loopback address.
        for path in ("/metrics", "/"):
            response = local.get(path)
            assert response.status_code == 403 and response.json()["errors"][0]["code"] == "DENIED"
        assert local.get("/healthz").status_code == 200
    with TestClient(
        create_app(
            Settings(storage=StorageSettings(root=tmp_path / "c2"), metrics=MetricsSettings("loopback")),
            transport=httpx.MockTransport(fake),
        ),
        client=("127.0.0.1", 50000),
    ) as on_the_machine:
        assert on_the_machine.get("/metrics").status_code == 200
        assert on_the_machine.get("/").status_code == 200


def test_with_client_auth_the_pages_need_a_login_and_health_does_not(
    tmp_path: Path, fake: FakeRegistry, used_secrets: Secrets
) -> None:
    used_secrets.add(PASSWORD)
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"prometheus:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()}\n")
    login = {"Authorization": "Basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()}
    with app(tmp_path, fake, auth=AuthSettings(htpasswd=htpasswd)) as client:
        for path in ("/metrics", "/"):
            refused = client.get(path)
            assert refused.status_code == 401 and refused.json()["errors"][0]["code"] == "UNAUTHORIZED"
            assert refused.headers["www-authenticate"].startswith('Basic realm="registry-proxy"')
            assert client.get(path, headers=login).status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
