"""The access log: one line per request on our own logger, text or JSON, never a credential."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import bcrypt
import httpx
import pytest
from starlette.testclient import TestClient

from proxy.app import create_app
from proxy.auth.challenge import TOKEN_PATH
from proxy.config import AuthSettings, LogSettings, Settings, StorageSettings, UpstreamSettings
from proxy.observability import logs
from proxy.observability.access_log import ACCESS_LOGGER, AccessLog
from proxy.server.runner import build_server
from tests.conftest import Secrets
from tests.unit.fakes import FAKE_REDIRECT_HOSTS, FAKE_TOKEN_REALMS, REGISTRY, FakeRegistry

PASSWORD = "access-log-secret-9"


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == ACCESS_LOGGER]


def test_one_line_per_request_with_the_digest_as_written(
    client: TestClient, fake: FakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    digest = fake.add_blob(b"logged" * 100)
    hex_part = digest.removeprefix("sha256:")
    with caplog.at_level(logging.INFO, ACCESS_LOGGER):
        # Clients differ: some encode the digest's colon. The log shows the digest as it reads.
        assert client.get(f"/v2/library/alpine/blobs/sha256%3A{hex_part}").status_code == 200
        assert client.get("/v2/library/alpine/manifests/3.20?ns=docker.io").status_code == 200
    first, second = access_lines(caplog)
    assert first.getMessage().startswith(
        f'testclient:50000 - "GET /v2/library/alpine/blobs/{digest} HTTP/1.1" 200 600 '
    )
    assert first.getMessage().endswith(" cache=miss upstream=docker.io")
    assert "%3A" not in first.getMessage()
    assert '"GET /v2/library/alpine/manifests/3.20?ns=docker.io HTTP/1.1" 200 ' in second.getMessage()
    assert first.levelno == logging.INFO
    fields = first.args
    assert isinstance(fields, dict)
    assert (fields["status"], fields["bytes"], fields["cache"], fields["upstream"]) == (200, 600, "miss", "docker.io")
    assert fields["duration_ms"] >= 0


def test_json_lines_carry_the_same_fields(
    client: TestClient, fake: FakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, ACCESS_LOGGER):
        assert client.get("/v2/library/alpine/manifests/3.20").status_code == 200
    (record,) = access_lines(caplog)
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["logger"] == "proxy.access" and entry["level"] == "INFO"
    assert entry["time"].endswith("+00:00")
    assert {k: entry[k] for k in ("client", "user", "method", "path", "status", "cache", "upstream")} == {
        "client": "testclient:50000",
        "user": "-",
        "method": "GET",
        "path": "/v2/library/alpine/manifests/3.20",
        "status": 200,
        "cache": "miss",
        "upstream": "docker.io",
    }
    assert entry["bytes"] == len(fake.manifests[("library/alpine", "3.20")][1])
    # Other lines are JSON too, with their message.
    other = logging.LogRecord("proxy.app", logging.WARNING, __file__, 1, "cache at %s", ("/x",), None)
    assert json.loads(logs.JsonFormatter().format(other))["message"] == "cache at /x"


def test_a_path_that_could_forge_a_line_is_escaped(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, ACCESS_LOGGER):
        client.get('/v2/library/alpine/manifests/a%0A2026-01-01 INFO proxy.access: forged "x"')
    (record,) = access_lines(caplog)
    message = record.getMessage()
    assert "\n" not in message and '"x"' not in message
    assert "/manifests/a%0A2026-01-01%20INFO%20proxy.access:%20forged%20%22x%22" in message


def test_no_credential_reaches_the_log(
    tmp_path: Path, fake: FakeRegistry, caplog: pytest.LogCaptureFixture, used_secrets: Secrets
) -> None:
    used_secrets.add(PASSWORD)
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"dana:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()}\n")
    settings = Settings(
        storage=StorageSettings(root=tmp_path / "cache"),
        upstreams=(
            UpstreamSettings(
                registry="docker.io", url=REGISTRY, redirect_hosts=FAKE_REDIRECT_HOSTS, token_realms=FAKE_TOKEN_REALMS
            ),
        ),
        auth=AuthSettings(htpasswd=htpasswd),
    )
    login = {"Authorization": "Basic " + base64.b64encode(f"dana:{PASSWORD}".encode()).decode()}
    with TestClient(create_app(settings, transport=httpx.MockTransport(fake))) as client:
        with caplog.at_level(logging.INFO):
            assert client.get("/v2/library/alpine/manifests/3.20", headers=login).status_code == 200
            client.get(f"{TOKEN_PATH}?service=registry-proxy&access_token=query-token-value", headers=login)
    lines = [record.getMessage() for record in access_lines(caplog)]
    assert len(lines) == 2
    assert lines[0].startswith('testclient:50000 dana "GET /v2/library/alpine/manifests/3.20 ')  # the user, by name
    assert "access_token=REDACTED" in lines[1]
    # The proxy's own records (the test's HTTP client logs its requests, query and all, on "httpx").
    everything = "\n".join(record.getMessage() for record in caplog.records if record.name.startswith("proxy"))
    assert PASSWORD not in everything and "query-token-value" not in everything
    assert "Basic " not in everything and "authorization" not in everything.lower()


def test_with_info_off_no_line_is_even_built(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("an access line was built although nothing would show it")

    monkeypatch.setattr(AccessLog, "write", never)
    with caplog.at_level(logging.WARNING, ACCESS_LOGGER):
        assert client.get("/v2/library/alpine/manifests/3.20").status_code == 200
    assert not access_lines(caplog)


def test_the_access_log_can_be_switched_off(
    tmp_path: Path, fake: FakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        storage=StorageSettings(root=tmp_path / "quiet"),
        upstreams=(UpstreamSettings(registry="docker.io", url=REGISTRY, token_realms=FAKE_TOKEN_REALMS),),
        log=LogSettings(access=False),
    )
    with TestClient(create_app(settings, transport=httpx.MockTransport(fake))) as client:
        with caplog.at_level(logging.INFO, ACCESS_LOGGER):
            assert client.get("/v2/library/alpine/manifests/3.20").status_code == 200
    assert not access_lines(caplog)


def test_uvicorn_writes_no_access_log_and_no_routine_lines(tmp_path: Path) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure(LogSettings(format="json"), "info")
        assert isinstance(root.handlers[0].formatter, logs.JsonFormatter)
        server = build_server(Settings(storage=StorageSettings(root=tmp_path / "cache")), "info")
        assert server.config.access_log is False
        assert not logging.getLogger("uvicorn.error").isEnabledFor(logging.INFO)
        assert logging.getLogger("proxy.access").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("uvicorn.error").setLevel(logging.NOTSET)
        logging.getLogger("httpx").setLevel(logging.NOTSET)


def test_a_huge_query_is_logged_cut_and_redacted_in_linear_time(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    # A backtracking pattern over a long query held the event loop for seconds (the hostile-request test saw it).
    with caplog.at_level(logging.INFO, ACCESS_LOGGER):
        client.get("/v2/library/alpine/tags/list?password=hunter2&last=" + "z" * 50_000)  # httpx allows 64 KiB
    (record,) = access_lines(caplog)
    assert "?password=REDACTED&last=zzz" in record.getMessage()
    assert "hunter2" not in record.getMessage()
    assert len(record.getMessage()) < 2000
