"""Request rates and latencies with wrk (Debian package wrk): running it, and reading what it prints."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["WrkError", "WrkResult", "parse_wrk", "run_wrk", "wrk_version"]

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"
_PERCENTILE = re.compile(rf"^\s+(50|99)(?:\.000)?%\s+{_DURATION}\s*$", re.MULTILINE)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)\s*$", re.MULTILINE)
_TOTAL = re.compile(r"^\s+(\d+) requests in ", re.MULTILINE)
_NON_2XX = re.compile(r"^\s+Non-2xx or 3xx responses: (\d+)\s*$", re.MULTILINE)
_SOCKET_ERRORS = re.compile(
    r"^\s+Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)\s*$", re.MULTILINE
)


class WrkError(RuntimeError):
    pass


@dataclass(frozen=True)
class WrkResult:
    requests_per_second: float
    p50: float
    """Seconds."""
    p99: float
    requests: int
    socket_errors: int
    """Connect, read, write errors and timeouts: a few may happen at the end of a run; the rate counts only answers."""


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise WrkError("wrk is not installed (Debian package wrk; ./scripts/test installs it)")
    return found


def wrk_version() -> str:
    # wrk has no --version: -v prints "wrk debian/4.1.0-3+b2 [epoll] Copyright ..." before its usage text.
    result = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True, timeout=10, check=False)
    words = (result.stdout or result.stderr).split()
    return words[1] if len(words) > 1 else "?"


def run_wrk(
    url: str, *, seconds: float, connections: int = 16, threads: int = 2, headers: Sequence[str] = ()
) -> WrkResult:
    """``wrk -t<threads> -c<connections> -d<seconds>s --latency`` against ``url``; WrkError if any answer was not
    2xx/3xx (a fast error is no measure of a fast server)."""
    command = [wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    for header in headers:
        command += ["-H", header]
    result = subprocess.run([*command, url], capture_output=True, text=True, timeout=seconds + 60, check=False)
    if result.returncode != 0:
        raise WrkError(f"wrk exited with {result.returncode}: {result.stderr.strip()}")
    return parse_wrk(result.stdout)


def parse_wrk(output: str) -> WrkResult:
    rate = _RATE.search(output)
    total = _TOTAL.search(output)
    percentiles = {m[1]: float(m[2]) * _UNITS[m[3]] for m in _PERCENTILE.finditer(output)}
    if rate is None or total is None or set(percentiles) != {"50", "99"}:
        raise WrkError(f"cannot read wrk's output:\n{output}")
    non_2xx = _NON_2XX.search(output)
    if non_2xx is not None and int(non_2xx[1]) > 0:
        raise WrkError(f"{non_2xx[1]} answers were not 2xx or 3xx:\n{output}")
    errors = _SOCKET_ERRORS.search(output)
    return WrkResult(
        requests_per_second=float(rate[1]),
        p50=percentiles["50"],
        p99=percentiles["99"],
        requests=int(total[1]),
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )
