from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from proxy.config import ConfigError, UpstreamSettings, load, parse_duration

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
        ('[server]\ntls_cert = "/x.pem"\n', "server.tls_cert: set tls_cert and tls_key together"),
        ('[[access]]\nrepository = "x/*"\npull = "authenticated"\n', "access[0].pull: needs client authentication"),
        ('[[access]]\nregistry = "quay.io"\npull = "anonymous"\n', "access[0].registry"),
        ('[[access]]\npull = "everyone"\n', "access[0].pull"),
        ('[auth]\npassword = "inline"\n', "auth.password: unknown key"),
        ('[[auth.tokens]]\nname = "ci"\ntoken = "inline-secret"\n', "auth.tokens[0].token: unknown key"),
        ('[auth]\ntoken_lifetime = "1s"\n', "auth.token_lifetime"),
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


def test_docker_hub_redirect_hosts_and_realm_are_built_in_and_others_have_none(tmp_path: Path) -> None:
    text = '[[upstreams]]\n\n[[upstreams]]\nregistry = "ghcr.io"\nurl = "https://ghcr.io"\n'
    hub, ghcr = load(write(tmp_path, text), environ={}).upstreams
    assert "production.cloudflare.docker.com" in hub.redirect_hosts
    assert "production.cloudfront.docker.com" in hub.redirect_hosts
    assert hub.token_realms == ("https://auth.docker.io/token",)
    assert load(None).upstreams[0].redirect_hosts == hub.redirect_hosts
    assert (ghcr.redirect_hosts, ghcr.token_realms) == ((), ())


def test_redirect_hosts_and_token_realms_are_read_and_normalised(tmp_path: Path) -> None:
    text = """
[[upstreams]]
registry = "quay.io"
url = "https://quay.io"
redirect_hosts = ["CDN01.quay.io", " *.Example.com. ", "[::1]", "10.0.0.1"]
token_realms = ["https://Auth.Example.com/token", "http://10.0.0.1:8080/t", "auth2.example.com"]
"""
    [quay] = load(write(tmp_path, text), environ={}).upstreams
    assert quay.redirect_hosts == ("cdn01.quay.io", "*.example.com", "::1", "10.0.0.1")
    assert quay.token_realms == ("https://auth.example.com/token", "http://10.0.0.1:8080/t", "auth2.example.com")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('redirect_hosts = "cdn.example.com"', "upstreams[0].redirect_hosts: expected a list of strings"),
        ("redirect_hosts = [1]", "upstreams[0].redirect_hosts: expected a list of strings"),
        ('redirect_hosts = ["ok.example.com", "https://cdn.example.com"]', "upstreams[0].redirect_hosts[1]: expected"),
        ('redirect_hosts = ["cdn.*.example.com"]', "upstreams[0].redirect_hosts[0]"),
        ('redirect_hosts = ["*.com"]', "would allow a whole top-level domain"),
        ('redirect_hosts = ["*"]', "upstreams[0].redirect_hosts[0]"),
        ('token_realms = ["*.docker.io"]', "upstreams[0].token_realms[0]: expected a token realm URL"),
        ('token_realms = ["ftp://auth.example.com/token"]', "upstreams[0].token_realms[0]"),
        ('token_realms = ["https://u:p@auth.example.com/token"]', "upstreams[0].token_realms[0]"),
        ('token_realms = ["https://auth.example.com/token?service=x"]', "upstreams[0].token_realms[0]"),
        ('token_realms = ["https://auth.example.com:99999/token"]', "upstreams[0].token_realms[0]"),
    ],
)
def test_bad_redirect_hosts_and_token_realms_name_the_entry(tmp_path: Path, line: str, expected: str) -> None:
    path = write(tmp_path, f"[[upstreams]]\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert str(info.value).startswith(f"{path}: ")
    assert expected in str(info.value)


def test_example_config_documents_the_built_in_docker_hub_hosts() -> None:
    # The commented redirect_hosts / token_realms under docker.io, uncommented, are exactly the defaults.
    lines = (REPO / "config.example.toml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# redirect_hosts = ["))
    end = next(i for i, line in enumerate(lines) if line.startswith("# token_realms = "))
    documented = tomllib.loads("\n".join(line.removeprefix("# ") for line in lines[start : end + 1]))
    hub = UpstreamSettings()
    assert tuple(documented["redirect_hosts"]) == hub.redirect_hosts
    assert tuple(documented["token_realms"]) == hub.token_realms


def test_auth_and_access(tmp_path: Path) -> None:
    token_file = tmp_path / "ci-token"
    token_file.write_text("0123456789abcdef0123\n")
    text = f"""
[auth]
htpasswd = "{tmp_path / "htpasswd"}"
token_lifetime = "10m"

[[auth.tokens]]
name = "ci"
file = "{token_file}"

[auth.groups]
ci = ["alice", "bob"]

[[access]]
registry = "docker.io"
repository = "private/*"
pull = ["alice", "group:ci"]
"""
    settings = load(write(tmp_path, text))
    assert settings.auth.enabled and settings.auth.token_lifetime == 600
    assert settings.auth.tokens[0].name == "ci" and settings.auth.tokens[0].token == "0123456789abcdef0123"
    assert "0123456789abcdef0123" not in repr(settings)
    assert settings.auth.groups == (("ci", ("alice", "bob")),)
    assert settings.access[0].pull == ("alice", "group:ci")


def test_access_rules_name_known_groups(tmp_path: Path) -> None:
    text = '[auth]\nhtpasswd = "/h"\n[[access]]\npull = ["group:nobody"]\n'
    with pytest.raises(ConfigError, match="unknown group 'nobody'"):
        load(write(tmp_path, text))


def test_static_tokens_must_be_long_enough(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("1234")
    with pytest.raises(ConfigError, match="fewer than 16 characters"):
        load(write(tmp_path, f'[[auth.tokens]]\nname = "ci"\nfile = "{short}"\n'))
