"""``python -m bench.compare --quick`` still runs end to end (issue 11): every scenario measured on every server,
a JSON result and a chart. Never a word about speed: these figures come from a busy test machine."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# What the quick mode takes on a 2-core machine is ~20 s; this only catches a hang.
TIMEOUT = 240
SCENARIOS = {
    "cold_blob": {"proxy", "distribution", "upstream"},
    "cold_blob_cpu": {"proxy", "distribution", "upstream"},
    "herd_single": {"proxy", "distribution"},
    "herd_wall": {"proxy", "distribution"},
    "herd_cpu": {"proxy", "distribution"},
    "herd_gets": {"proxy", "distribution"},
    "warm_blob": {"proxy", "distribution", "nginx"},
    **{
        f"manifest_{kind}{figure}": {"proxy", "distribution"}
        for kind in ("tag", "digest")
        for figure in ("", "_p50", "_p99")
    },
    "backend_cold": {"proxy", "s3"},
    "backend_warm": {"proxy", "s3"},
    "peak_rss": {"proxy", "distribution"},
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def bench_tools(distribution_binary: str) -> None:
    for tool, package in (("nginx", "nginx"), ("wrk", "wrk"), ("curl", "curl"), ("openssl", "openssl")):
        if not (shutil.which(tool) or shutil.which(tool, path="/usr/sbin")):
            pytest.skip(f"{tool} is not installed (Debian package {package}; ./scripts/test installs it)")


def run_quick_benchmark(out: Path) -> subprocess.CompletedProcess[str]:
    # Its own session, so that a hang can be ended with every server it started.
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.compare", "--quick", "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)  # the benchmark stops its servers on SIGTERM
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        pytest.fail(f"the quick benchmark took more than {TIMEOUT} s:\n{output}")
    return subprocess.CompletedProcess(process.args, process.returncode, output)


def test_quick_benchmark_measures_every_scenario(bench_tools: None, tmp_path: Path):
    result = run_quick_benchmark(tmp_path / "results")

    assert result.returncode == 0, result.stdout
    [json_path] = (tmp_path / "results").glob("*.json")
    data = json.loads(json_path.read_text())
    assert data["mode"] == "quick"
    assert {key: set(scenario["runs"]) for key, scenario in data["scenarios"].items()} == SCENARIOS
    for key, scenario in data["scenarios"].items():
        for subject, runs in scenario["runs"].items():
            assert runs and all(_positive_number(n) for n in runs), (key, subject, runs)
            assert _positive_number(scenario["value"][subject]), (key, subject)
    assert len(data["targets"]) == 7
    for target in data["targets"]:
        assert set(target["ratios"]) == {"proxy", "distribution"}
        assert all(_positive_number(r) for r in target["ratios"].values()), target
        assert isinstance(target["met"], bool)
    assert data["machine"]["cpu_count"] >= 1
    assert json_path.with_suffix(".png").read_bytes().startswith(PNG_SIGNATURE)
    assert "targets met" in result.stdout


def _positive_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
