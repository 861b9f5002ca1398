"""[storage] backend = "s3": the keys of issue 13's config contract, and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, S3StorageSettings, load

S3 = '[storage]\nbackend = "s3"\nendpoint = "http://127.0.0.1:8333"\nbucket = "registry-cache"\n'
KEYS = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3-secret-from-env"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_filesystem_is_the_default(tmp_path: Path) -> None:
    settings = load(write(tmp_path, "[storage]\n"), environ={})
    assert (settings.storage.backend, settings.storage.s3) == ("filesystem", None)


def test_the_issue_contract(tmp_path: Path) -> None:
    text = S3 + 'root = "/var/lib/registry-proxy"\nregion = "eu-west-1"\nprefix = "cache"\n'
    settings = load(write(tmp_path, text), environ=KEYS)
    assert settings.storage.backend == "s3"
    assert settings.storage.root == Path("/var/lib/registry-proxy")
    assert settings.storage.s3 == S3StorageSettings(
        "http://127.0.0.1:8333", "registry-cache", "eu-west-1", "cache/", "AKIDEXAMPLE", "s3-secret-from-env"
    )
    assert "s3-secret-from-env" not in repr(settings) and "AKIDEXAMPLE" not in repr(settings)


def test_credentials_from_files(tmp_path: Path) -> None:
    (tmp_path / "access").write_text("AKIDFILE\n")
    (tmp_path / "secret").write_text("secret-from-file\n")
    text = S3 + f'access_key_file = "{tmp_path / "access"}"\nsecret_key_file = "{tmp_path / "secret"}"\n'
    s3 = load(write(tmp_path, text), environ=KEYS).storage.s3
    assert s3 is not None and (s3.access_key, s3.secret_key, s3.region, s3.prefix) == (
        "AKIDFILE", "secret-from-file", "us-east-1", ""
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        ('[storage]\nbackend = "nfs"\n', {}, 'storage.backend: expected "filesystem" or "s3"'),
        ('[storage]\nbucket = "b"\n', {}, 'storage.bucket: only with backend = "s3"'),
        ('[storage]\nbackend = "s3"\nbucket = "b"\n', KEYS, "storage.endpoint: required"),
        ('[storage]\nbackend = "s3"\nendpoint = "http://x:1"\n', KEYS, "storage.bucket: required"),
        (S3.replace("http://127.0.0.1:8333", "s3.example"), KEYS, "storage.endpoint: expected http(s)"),
        (S3.replace("8333", "8333/bucket"), KEYS, "storage.endpoint: no path"),
        (S3.replace("8333", "port"), KEYS, "storage.endpoint: expected http(s)"),
        (S3.replace("registry-cache", "Registry_Cache"), KEYS, "storage.bucket: not an S3 bucket name"),
        (S3 + 'region = "US East"\n', KEYS, "storage.region"),
        (S3 + 'prefix = "/abs/"\n', KEYS, "storage.prefix"),
        (S3 + 'prefix = "a/../b/"\n', KEYS, "storage.prefix"),
        (S3, {}, "storage.access_key_file: no S3 credentials"),
        (S3, {"AWS_ACCESS_KEY_ID": "x"}, "storage.access_key_file: no S3 credentials"),
        (S3 + 'access_key_file = "/nonexistent/a"\n', KEYS, "set access_key_file and secret_key_file together"),
        (S3 + 'access_key_file = "/nonexistent/a"\nsecret_key_file = "/x"\n', KEYS, "storage.access_key_file: cannot"),
        (S3 + 'secret_key = "inline"\n', KEYS, "storage.secret_key: unknown key"),
    ],
)
def test_bad_s3_configs_name_the_key(tmp_path: Path, text: str, environ: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text), environ=environ)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_an_unreachable_bucket_refuses_to_start(tmp_path: Path) -> None:
    from tests.harness.ports import free_port
    from tests.unit.test_cli import one_line, run_cli

    (tmp_path / "access").write_text("AKIDFILE\n")
    (tmp_path / "secret").write_text("secret-from-file\n")
    closed = free_port()  # nothing listens there
    config = write(
        tmp_path,
        f'[server]\nhost = "127.0.0.1"\nport = 1\n[storage]\nroot = "{tmp_path / "cache"}"\nbackend = "s3"\n'
        f'endpoint = "http://127.0.0.1:{closed}"\nbucket = "cache"\n'
        f'access_key_file = "{tmp_path / "access"}"\nsecret_key_file = "{tmp_path / "secret"}"\n',
    )
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    line = one_line(result)
    assert "storage.endpoint" in line and f"127.0.0.1:{closed}" in line and "secret-from-file" not in line
