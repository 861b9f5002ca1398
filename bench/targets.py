"""Issue 11's targets: each a ratio of a scenario's figure to an anchor's (or a plain budget), and a bound."""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from bench.figures import DISTRIBUTION, NGINX, PROXY, UPSTREAM, Measured

__all__ = ["Target", "Verdict", "evaluate", "issue_targets"]

Op = Literal["<=", ">="]


@dataclass(frozen=True)
class Target:
    key: str
    """The scenario whose figure is judged."""
    label: str
    op: Op
    bound: float
    reference: tuple[str, str | None] | None = None
    """The figure it is divided by: (scenario, subject), where subject None means the same subject as the
    numerator. None: the figure itself is judged, divided by ``divisor``."""
    divisor: float = 1.0
    unit: str = "x"

    def met(self, ratio: float) -> bool:
        compare = operator.le if self.op == "<=" else operator.ge
        return bool(compare(ratio, self.bound))


def issue_targets(herd_clients: int) -> list[Target]:
    return [
        Target("cold_blob", "cold blob: time / straight from upstream", "<=", 1.3, ("cold_blob", UPSTREAM)),
        Target("warm_blob", "warm blob: throughput / nginx", ">=", 0.9, ("warm_blob", NGINX)),
        Target("manifest_tag", "manifest by tag: req/s / Distribution", ">=", 25, ("manifest_tag", DISTRIBUTION)),
        Target(
            "manifest_digest", "manifest by digest: req/s / Distribution", ">=", 8, ("manifest_digest", DISTRIBUTION)
        ),
        Target("herd_gets", f"{herd_clients} clients, one blob: upstream GETs", "<=", 1, unit=""),
        Target(
            "herd_wall", f"{herd_clients} clients, one blob: wall / one cold pull", "<=", 1.5, ("herd_single", None)
        ),
        Target("peak_rss", "peak RSS of all processes", "<=", 200, divisor=1e6, unit=" MB"),
    ]


@dataclass(frozen=True)
class Verdict:
    target: Target
    ratios: dict[str, float]
    """Per subject (the proxy, and Distribution's proxy for comparison)."""

    @property
    def met(self) -> bool:
        """Whether the proxy meets the target (the anchors are not judged)."""
        return self.target.met(self.ratios[PROXY])


def evaluate(targets: Sequence[Target], measured: Mapping[str, Measured]) -> list[Verdict]:
    verdicts = []
    for target in targets:
        scenario = measured[target.key]
        ratios: dict[str, float] = {}
        for subject in (PROXY, DISTRIBUTION):
            value = scenario.value(subject)
            if target.reference is None:
                ratios[subject] = value / target.divisor
            else:
                key, reference_subject = target.reference
                ratios[subject] = value / measured[key].value(reference_subject or subject)
        verdicts.append(Verdict(target, ratios))
    return verdicts
