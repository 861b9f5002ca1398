"""What a scenario measures: raw figures per run, per subject (the server measured)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["DISTRIBUTION", "NGINX", "PROXY", "S3", "SUBJECT_NAMES", "UPSTREAM", "Measured", "Unit"]

PROXY = "proxy"
DISTRIBUTION = "distribution"
UPSTREAM = "upstream"
NGINX = "nginx"
S3 = "s3"  # the proxy itself, on the S3 backend (bench.backends)
SUBJECT_NAMES = {
    PROXY: "registry-proxy",
    DISTRIBUTION: "Distribution proxy",
    UPSTREAM: "straight from upstream",
    NGINX: "nginx",
    S3: "S3 backend",
}

Unit = Literal["s", "B/s", "req/s", "GETs", "B"]


@dataclass(frozen=True)
class Measured:
    """One scenario's figures: ``runs[subject]`` holds one number per run, in ``unit`` (SI base units)."""

    key: str
    title: str
    unit: Unit
    runs: dict[str, list[float]]
    aggregate: Literal["median", "max"] = "median"
    """How runs become one figure: the median, or the worst run for budgets (memory, upstream requests)."""
    details: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping from the runs (statuses, request counts), for the JSON."""

    def value(self, subject: str) -> float:
        runs = self.runs[subject]
        return statistics.median(runs) if self.aggregate == "median" else max(runs)
