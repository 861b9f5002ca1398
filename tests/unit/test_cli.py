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
