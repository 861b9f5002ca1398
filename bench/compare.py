"""The proxy side by side with CNCF Distribution's proxy mode and nginx: issue 11's table, on this machine.

    .venv/bin/python -m bench.compare [--quick] [--runs 3] [--mib 200] [--seconds 10] [--out bench/results]
                                      [--only {blobs,manifests}]

Starts on 127.0.0.1 a token issuer and a token-auth Distribution seeded with a single-layer image of --mib MiB
and small images (the upstream), then the proxy, Distribution in proxy mode and nginx serving the big layer's
file, and measures each scenario on each of them, --runs times (median): a cold blob through an empty cache
(and straight from the upstream with a token), with the CPU time each server spent on it, a warm blob on one
connection, a cached manifest by tag and by digest under wrk (16 connections; req/s, p50/p99), 8 clients at once
on one uncached blob (upstream GETs, wall time, the server's CPU time) and the peak RSS of the proxy's processes.
Prints the figures and their ratios against the targets, and writes <out>/<date>.json and <out>/<date>.png.
Every server it starts is stopped before it exits.

--quick (an 8 MiB blob, 1 s of wrk, one run) only shows that the benchmark works: its figures mean little.
--only runs some scenarios (and judges only their targets): ``blobs`` the cold, herd and warm blob and the storage
backends, ``manifests`` the cached manifests; the peak RSS is measured either way.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import signal
import sys
import tempfile
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from bench.backends import storage_backends
from bench.chart import draw_chart
from bench.figures import Measured
from bench.machine import load_average, machine_info
from bench.report import Report, format_table, result_paths, write_json
from bench.scenarios import Bench, Settings, cached_manifests, cold_blob, herd, peak_rss, warm_blob
from bench.servers import warm_servers
from bench.targets import Target, evaluate, issue_targets
from bench.upstream import seeded_upstream

__all__ = ["main"]

QUICK = Settings(runs=1, big_layer_mib=8, wrk_seconds=1.0)
FULL = Settings()
GROUPS = ("blobs", "manifests")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small blob, 1 s of wrk, one run: proves it works")
    parser.add_argument("--runs", type=int, help=f"runs of each scenario (default {FULL.runs}; quick {QUICK.runs})")
    parser.add_argument("--mib", type=int, help=f"size of the big layer in MiB (default {FULL.big_layer_mib})")
    parser.add_argument("--seconds", type=float, help=f"length of each wrk run (default {FULL.wrk_seconds:g})")
    parser.add_argument("--client", choices=["curl", "socket"], help="blob client: curl | openssl (default) or a "
                        "lean Python socket reader")  # fmt: skip
    parser.add_argument("--only", choices=GROUPS, help="only these scenarios (default: all)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results", help="where the JSON and PNG go (bench/results)"
    )
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    overrides = {
        "runs": args.runs,
        "big_layer_mib": args.mib,
        "wrk_seconds": args.seconds,
        "client": args.client,
    }
    settings = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if settings.runs < 1 or settings.big_layer_mib < 1 or settings.wrk_seconds <= 0:
        parser.error("--runs and --mib must be at least 1, --seconds more than 0")
    return args, settings


def run(work: Path, settings: Settings, groups: Collection[str] = GROUPS) -> list[Measured]:
    """The scenarios of ``groups``, in an order that keeps the upstream's cache of each server as they need it."""
    say = _say
    say(f"seeding the upstream ({settings.big_layer_mib} MiB layer)...")
    measured: list[Measured] = []
    with seeded_upstream(work, settings.big_layer_mib) as upstream:
        bench = Bench(upstream, work, settings, say)
        if "blobs" in groups:
            say("cold blob (a new, empty cache each run)...")
            measured += cold_blob(bench)
            say(f"{settings.herd_clients} clients on one uncached blob...")
            measured += herd(bench)
        say("warm servers: the proxy, Distribution's proxy, nginx...")
        with warm_servers(upstream, work) as servers:
            if "blobs" in groups:
                measured.append(warm_blob(bench, servers))
            if "manifests" in groups:
                measured += cached_manifests(bench, servers)
        if "blobs" in groups:
            say("storage backends: the proxy on the filesystem and on S3 (SeaweedFS)...")
            measured += storage_backends(bench)
        measured.append(peak_rss(bench))
    return measured


def main(argv: list[str] | None = None) -> int:
    args, settings = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    load_before = load_average()
    with _stop_on_sigterm(), tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        measured = {m.key: m for m in run(Path(tmp), settings, [args.only] if args.only else GROUPS)}
    # With --only, the targets of the scenarios not run are left out.
    targets = [t for t in issue_targets(settings.herd_clients) if _measurable(t, measured)]
    report = Report(
        date=started.isoformat(timespec="seconds"),
        mode="quick" if args.quick else "full",
        settings=dataclasses.asdict(settings),
        machine=machine_info(),
        load={"before": load_before, "after": load_average()},
        measured=measured,
        verdicts=evaluate(targets, measured),
    )
    print()
    print(format_table(report))
    json_path, png_path = result_paths(args.out, report.date)
    write_json(report, json_path)
    draw_chart(report, png_path)
    print(f"\nwrote {json_path} and {png_path}")
    return 0


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so that every server started is stopped (and the temporary files go)."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _measurable(target: Target, measured: Mapping[str, Measured]) -> bool:
    return target.key in measured and (target.reference is None or target.reference[0] in measured)


def _say(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
