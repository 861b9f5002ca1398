from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli import main


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[[upstreams]]\ntag_ttl = "soon"\n')
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(config) in err and "upstreams[0].tag_ttl" in err


def test_config_path_from_the_environment(tmp_path: Path) -> None:
    # Through the real entry point, so that "python -m proxy" and the environment variable are covered too.
    missing = tmp_path / "missing.toml"
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve"],
        env={"REGISTRY_PROXY_CONFIG": str(missing), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"registry-proxy: config error: {missing}: file not found"


def test_verify_reports_and_removes_corrupt_blobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    root = tmp_path / "cache"
    good, bad = b"intact blob", b"damaged blob"
    for data in (good, bad):
        hexdigest = hashlib.sha256(data).hexdigest()
        path = root / "blobs" / "sha256" / hexdigest[:2] / hexdigest
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if data == good else b"rotted blob!")
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\nroot = "{root}"\n')

    assert main(["verify", "--config", str(config), "--dry-run"]) == 1
    assert "kept" in capsys.readouterr().out
    assert main(["verify", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert out.count("CORRUPT") == 1 and hashlib.sha256(bad).hexdigest() in out and "removed" in out
    assert "checked 2 blobs" in out
    assert main(["verify", "--config", str(config)]) == 0
    assert "checked 1 blobs" in capsys.readouterr().out


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real entry point in a subprocess: what an operator sees, exit status and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "latin1.toml"
    config.write_bytes(b'[server]\nhost = "caf\xe9"\n')
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert str(config) in one_line(result) and "UTF-8" in result.stderr


def test_a_password_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"\xff\xfe binary")
    config = tmp_path / "config.toml"
    config.write_text(f'[[upstreams]]\nusername = "ci"\npassword_file = "{secret}"\n')
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    line = one_line(result)
    assert "upstreams[0].password_file" in line and "UTF-8" in line
    assert "binary" not in line  # the secret's content is never echoed


def test_an_address_in_use_is_one_line_naming_it(tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = tmp_path / "config.toml"
        config.write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\n[storage]\nroot = "{tmp_path / "cache"}"\n')
        result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    line = one_line(result)
    assert f"127.0.0.1:{port}" in line and "server." in line


def test_a_host_that_does_not_resolve_is_one_line_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nhost = "no-such-host.invalid"\n[storage]\nroot = "{tmp_path / "cache"}"\n')
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    line = one_line(result)
    assert "server.host" in line and "no-such-host.invalid" in line


def test_an_unusable_cache_root_refuses_to_start(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache should be")
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nhost = "127.0.0.1"\nport = 1\n[storage]\nroot = "{blocker / "cache"}"\n')
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    line = one_line(result)
    assert "storage.root" in line and str(blocker / "cache") in line and "required = false" in line


def test_an_unusable_cache_root_may_be_allowed_explicitly(tmp_path: Path) -> None:
    import httpx

    from tests.harness.deadline import poll_until
    from tests.harness.ports import free_port

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache should be")
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n[storage]\nroot = "{blocker / "cache"}"\nrequired = false\n'
    )
    log = tmp_path / "proxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(config)],
            env={"PATH": "/usr/bin:/bin"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def answers() -> int | None:
            assert process.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code
            except httpx.TransportError:
                return None

        assert poll_until(answers, timeout=20, what="the proxy to answer") == 200
    finally:
        process.terminate()
        process.wait(timeout=15)
    assert "relaying every pull uncached" in log.read_text()


def test_a_bad_htpasswd_file_refuses_to_start(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:$apr1$weak$md5hash\n")
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\nroot = "{tmp_path / "cache"}"\n[auth]\nhtpasswd = "{htpasswd}"\n')
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    line = one_line(result)
    assert "auth.htpasswd" in line and "bcrypt" in line and "md5hash" not in line


def test_unusable_tls_files_refuse_to_start(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\n[storage]\nroot = "{tmp_path / "cache"}"\n')
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert "server.tls_cert/server.tls_key" in one_line(result)


@pytest.mark.parametrize("command", ["gc", "ls"])
def test_gc_and_ls_refuse_the_s3_backend_in_one_line(command: str, tmp_path: Path) -> None:
    # They work on files under root; on a bucket shared by replicas gc would delete the wrong things.
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\nroot = "{tmp_path / "cache"}"\nbackend = "s3"\nendpoint = "http://127.0.0.1:9"\n'
        'bucket = "registry-cache"\naccess_key_file = "a"\nsecret_key_file = "s"\n'
    )
    (tmp_path / "a").write_text("access")
    (tmp_path / "s").write_text("secret")
    result = subprocess.run(
        [sys.executable, "-m", "proxy", command, "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and 'backend = "s3"' in result.stderr
