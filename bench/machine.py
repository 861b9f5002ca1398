"""What a result was measured on: the machine, and the versions of everything measured."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Any

from bench.anchors import nginx_version
from bench.wrk import wrk_version

__all__ = ["load_average", "machine_info"]


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "python": sys.version.split()[0],
        "versions": {
            **{name: _package_version(name) for name in ("registry-proxy", "uvicorn", "httpx", "starlette", "uvloop")},
            # "docker-registry github.com/docker/distribution 2.8.2+ds1", "curl 7.88.1 (x86_64-pc-linux-gnu) ...":
            # the version is the last word, or the second.
            "distribution": _word(["docker-registry", "--version"], -1),
            "nginx": nginx_version().removeprefix("nginx/"),
            "wrk": wrk_version(),
            "curl": _word(["curl", "--version"], 1),
        },
    }


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: a busy machine makes noisy figures, and the JSON should say so."""
    return [round(load, 2) for load in os.getloadavg()]


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _word(command: list[str], index: int) -> str:
    """One word of the first line a command prints: where its version is."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError as exc:
        return f"unavailable ({exc.strerror})"
    lines = (result.stdout or result.stderr).strip().splitlines()
    words = lines[0].split() if lines else []
    return words[index] if -len(words) <= index < len(words) else "?"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "?"
