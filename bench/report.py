"""The benchmark's outcome: the table it prints, and the JSON it writes to ``bench/results/<date>.json``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.figures import DISTRIBUTION, NGINX, PROXY, S3, SUBJECT_NAMES, UPSTREAM, Measured, Unit
from bench.targets import Verdict

__all__ = ["Report", "busy", "format_figure", "format_table", "result_paths", "write_json"]

# Same-day results get -2, -3...: a bound so that a full directory cannot make the search loop long.
MAX_RESULTS_PER_DAY = 1000


@dataclass(frozen=True)
class Report:
    date: str
    """UTC, ISO 8601, when the run started."""
    mode: str
    settings: dict[str, Any]
    machine: dict[str, Any]
    load: dict[str, list[float]]
    """The machine's load averages before and after the run."""
    measured: dict[str, Measured]
    verdicts: list[Verdict]


def format_figure(value: float, unit: Unit) -> str:
    if unit == "s":
        return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "B/s":
        return f"{value / 1e9:.2f} GB/s" if value >= 1e9 else f"{value / 1e6:.0f} MB/s"
    if unit == "req/s":
        return f"{value:,.0f} req/s"
    if unit == "B":
        return f"{value / 1e6:.0f} MB"
    return f"{value:.0f}"


def format_table(report: Report) -> str:
    settings = report.settings
    lines = [
        f"registry-proxy benchmark ({report.mode}), {report.date}: {settings['big_layer_mib']} MiB blob, "
        f"{settings['runs']} run(s) each (median; worst run for GETs and RSS), wrk {settings['wrk_seconds']:g} s, "
        f"client {settings['client']}; {report.machine['cpu_count']} CPUs, load {report.load['before'][0]:.2f} "
        f"before, {report.load['after'][0]:.2f} after",
    ]
    if busy(report):
        lines.append("The machine was busy before the run started: these figures are noisy.")
    lines.append("")
    columns = (PROXY, DISTRIBUTION)
    widths = (52, 18, 20)
    header = ["figure", *(SUBJECT_NAMES[s] for s in columns), "reference"]
    lines.append(_row(header, widths))
    for measured in report.measured.values():
        cells = [measured.title]
        cells += [format_figure(measured.value(s), measured.unit) if s in measured.runs else "" for s in columns]
        cells.append(
            "; ".join(
                f"{format_figure(measured.value(s), measured.unit)} ({SUBJECT_NAMES[s]})"
                for s in (UPSTREAM, NGINX, S3)
                if s in measured.runs
            )
        )
        lines.append(_row(cells, widths))
    lines += ["", _row(["target", *(SUBJECT_NAMES[s] for s in columns), "target", ""], widths)]
    for verdict in report.verdicts:
        target = verdict.target
        cells = [target.label, *(_ratio(verdict.ratios[s], target.unit) for s in columns)]
        cells += [f"{target.op} {target.bound:g}{target.unit}", "met" if verdict.met else "MISSED"]
        lines.append(_row(cells, (*widths, 12)))
    met = sum(v.met for v in report.verdicts)
    lines += ["", f"{met} of {len(report.verdicts)} targets met."]
    return "\n".join(lines)


def busy(report: Report) -> bool:
    """Whether other work was loading the machine (over half its CPUs) when the run began."""
    cpus = report.machine.get("cpu_count") or 1
    return report.load["before"][0] > cpus / 2


def result_paths(out_dir: Path, date: str) -> tuple[Path, Path]:
    """``<out>/<date>.json`` and ``.png``; a second run on the same day gets ``<date>-2``, and so on."""
    out_dir.mkdir(parents=True, exist_ok=True)
    day = date[:10]
    for n in range(1, MAX_RESULTS_PER_DAY + 1):
        stem = day if n == 1 else f"{day}-{n}"
        json_path, png_path = out_dir / f"{stem}.json", out_dir / f"{stem}.png"
        if not json_path.exists() and not png_path.exists():
            return json_path, png_path
    raise RuntimeError(f"{out_dir} already holds {MAX_RESULTS_PER_DAY} results of {day}")


def write_json(report: Report, path: Path) -> None:
    path.write_text(json.dumps(to_json(report), indent=2) + "\n")


def to_json(report: Report) -> dict[str, Any]:
    return {
        "date": report.date,
        "mode": report.mode,
        "settings": report.settings,
        "machine": report.machine,
        "load_average": report.load,
        "subjects": SUBJECT_NAMES,
        "scenarios": {key: _scenario_json(measured) for key, measured in report.measured.items()},
        "targets": [
            {
                **dataclasses.asdict(verdict.target),
                "ratios": verdict.ratios,
                "met": verdict.met,
            }
            for verdict in report.verdicts
        ],
    }


def _scenario_json(measured: Measured) -> dict[str, Any]:
    return {
        "title": measured.title,
        "unit": measured.unit,
        "aggregate": measured.aggregate,
        "runs": measured.runs,
        "value": {subject: measured.value(subject) for subject in measured.runs},
        "details": measured.details,
    }


def _ratio(ratio: float, unit: str) -> str:
    return f"{ratio:.2f}{unit}" if unit == "x" else f"{ratio:.0f}{unit}"


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=False)]
    return "  ".join(padded + list(cells[len(widths) :])).rstrip()
