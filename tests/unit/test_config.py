from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, load, parse_duration

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_example_config_loads() -> None:
    settings = load(REPO / "config.example.toml", environ={})
    assert settings.upstreams[0].registry == "docker.io"
    assert settings.upstreams[0].url == "https://registry-1.docker.io"


def test_defaults_without_a_file() -> None:
    settings = load(None)
    assert settings.server.port == 5000
    assert [u.registry for u in settings.upstreams] == ["docker.io"]


@pytest.mark.parametrize(("text", "seconds"), [("30", 30), ('"30s"', 30), ('"5m"', 300), ('"1h"', 3600), ("1.5", 1.5)])
def test_durations(tmp_path: Path, text: str, seconds: float) -> None:
    settings = load(write(tmp_path, f"[[upstreams]]\ntag_ttl = {text}\n"), environ={})
    assert settings.upstreams[0].tag_ttl == seconds


def test_password_from_env_and_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    text = f"""
[[upstreams]]
username = "bot"
password_env = "HUB_TOKEN"

[[upstreams]]
registry = "ghcr.io"
url = "https://ghcr.io"
username = "bot"
password_file = "{secret}"
"""
    settings = load(write(tmp_path, text), environ={"HUB_TOKEN": "from-env"})
    assert [u.password for u in settings.upstreams] == ["from-env", "from-file"]
    assert "from-env" not in repr(settings)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nprot = 1\n", "server.prot: unknown key"),
        ('[server]\nport = "80"\n', "server.port: expected int"),
        ("[server]\nport = 70000\n", "server.port"),
        ('[[upstreams]]\ntag_ttl = "5 minutes"\n', "upstreams[0].tag_ttl"),
        ("[[upstreams]]\ntag_ttl = -1\n", "upstreams[0].tag_ttl"),
        ('[[upstreams]]\nregistry = "ghcr.io"\n', "upstreams[0].url: required"),
        ('[[upstreams]]\nurl = "ftp://x"\n', "upstreams[0].url"),
        ("[[upstreams]]\n[[upstreams]]\n", "upstreams[1].registry"),
        ('[[upstreams]]\nusername = "u"\npassword_env = "NOPE"\n', "NOPE is not set"),
        ('[[upstreams]]\nregistry = "../x"\n', "upstreams[0].registry"),
        ("bogus = 1\n", "bogus: unknown key"),
        ("[server]\nheader_timeout = 0\n", "server.header_timeout: must be more than 0"),
        ('[server]\nkeep_alive = "forever"\n', "server.keep_alive"),
        ("[server]\nmax_header_bytes = 10\n", "server.max_header_bytes"),
        ("[server]\nmax_connections = 0\n", "server.max_connections"),
        ('[storage]\nrequired = "yes"\n', "storage.required: expected bool"),
        ('[storage]\nroot = ""\n', "storage.root"),
        ("[server\n", "invalid TOML"),
    ],
)
def test_bad_configs_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "nope.toml")


def test_parse_duration_rejects_booleans() -> None:
    with pytest.raises(ValueError):
        parse_duration(True)


def test_server_limits(tmp_path: Path) -> None:
    text = '[server]\nheader_timeout = "5s"\nkeep_alive = "40s"\nsend_timeout = "2m"\nmax_header_bytes = 16384\n'
    text += "max_connections = 100\n[storage]\nrequired = false\n"
    settings = load(write(tmp_path, text))
    server = settings.server
    assert (server.header_timeout, server.keep_alive, server.send_timeout) == (5.0, 40.0, 120.0)
    assert (server.max_header_bytes, server.max_connections) == (16384, 100)
    assert settings.storage.required is False
