"""The ratios as a PNG for the README: one panel per target, the proxy's bar (green: met, red: missed) beside
Distribution's proxy, and the target as a dashed line."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

from bench.figures import DISTRIBUTION, PROXY, SUBJECT_NAMES
from bench.report import Report, busy

__all__ = ["draw_chart"]

COLUMNS = 4
MET, MISSED, ANCHOR = "#2e7d32", "#c62828", "#9e9e9e"
SYMBOLS = {"<=": "\u2264", ">=": "\u2265"}


def draw_chart(report: Report, path: Path) -> None:
    # Agg: renders to a file with no display, on any machine. Chosen before pyplot is imported, or it picks one.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    verdicts = report.verdicts
    rows = math.ceil((len(verdicts) + 1) / COLUMNS)
    figure, axes = plt.subplots(rows, COLUMNS, figsize=(4 * COLUMNS, 3.6 * rows), squeeze=False)
    panels = list(axes.flat)
    for axis, verdict in zip(panels, verdicts, strict=False):
        target = verdict.target
        values = [verdict.ratios[PROXY], verdict.ratios[DISTRIBUTION]]
        bars = axis.bar(
            [SUBJECT_NAMES[PROXY], SUBJECT_NAMES[DISTRIBUTION]],
            values,
            color=[MET if verdict.met else MISSED, ANCHOR],
        )
        axis.bar_label(bars, labels=[_label(v, target.unit) for v in values], padding=2)
        axis.axhline(target.bound, color="black", linestyle="--", linewidth=1)
        axis.annotate(
            f"target {SYMBOLS[target.op]} {target.bound:g}{target.unit}",
            xy=(1.0, target.bound),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="bottom",
            fontsize=8,
        )
        axis.set_ylim(0, max(*values, target.bound) * 1.25)
        axis.set_title("\n".join(textwrap.wrap(target.label, 34)), fontsize=10)
        axis.tick_params(axis="x", labelsize=8)
    info = panels[len(verdicts)]
    info.axis("off")
    settings, machine = report.settings, report.machine
    info.text(
        0.0,
        1.0,
        "\n".join(
            [
                f"registry-proxy benchmark ({report.mode})",
                report.date,
                f"{settings['big_layer_mib']} MiB blob, {settings['runs']} run(s) each,",
                f"wrk {settings['wrk_seconds']:g} s x {settings['connections']} connections",
                f"{machine['cpu_count']} CPUs, load {report.load['before'][0]:.2f} at start"
                + (" (busy: noisy)" if busy(report) else ""),
                f"Distribution {machine['versions']['distribution']}, nginx {machine['versions']['nginx']}",
                f"{sum(v.met for v in verdicts)} of {len(verdicts)} targets met",
            ]
        ),
        va="top",
        fontsize=9,
        family="monospace",
    )
    for axis in panels[len(verdicts) + 1 :]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _label(value: float, unit: str) -> str:
    return f"{value:.2f}x" if unit == "x" else f"{value:.0f}{unit}"
