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
