"""Cold and warm pull of the big image through the proxy, with skopeo, against a local token-auth Distribution.

    .venv/bin/python -m bench.pull [--mib 200] [--rounds 3]

Prints the wall time of a direct pull from the upstream (for reference), of a cold pull through the proxy
(empty cache) and of a warm pull (everything cached), and how many requests each pass sent upstream.
Run it after ./scripts/test has installed everything.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.upstream import seeded_upstream
from tests.harness.proxy_server import ProxyServer
from tests.harness.skopeo import read_dir_layout, skopeo_copy


def timed_pull(ref: str, dest: Path, expected_digest: str) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    started = time.perf_counter()
    skopeo_copy(ref, dest)
    elapsed = time.perf_counter() - started
    if read_dir_layout(dest).manifest_digest != expected_digest:
        raise SystemExit(f"pulled the wrong manifest from {ref}")
    return elapsed


def summarize(requests: list[tuple[str, str, int]]) -> str:
    counts = Counter(f"{method} {kind} {status}" for method, kind, status in requests)
    return ", ".join(f"{n}× {what}" for what, n in sorted(counts.items())) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=200, help="size of the big layer (MiB)")
    parser.add_argument("--rounds", type=int, default=3, help="cold/warm rounds (each cold round uses a new cache)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp:
        work = Path(tmp)
        with seeded_upstream(work, args.mib) as seeded:
            upstream, image = seeded.registry, seeded.big
            print(f"image {image.ref}: {sum(b.size for b in image.blobs) / 2**20:.1f} MiB in {len(image.blobs)} blobs")
            direct, cold, warm = [], [], []
            for round_ in range(args.rounds):
                direct.append(timed_pull(upstream.ref(image.ref), work / "out", image.digest))
                with ProxyServer(work / f"proxy-{round_}", upstream.url) as proxy:
                    mark = upstream.mark()
                    cold.append(timed_pull(proxy.ref(image.ref), work / "out", image.digest))
                    upstream.wait_quiet()
                    cold_requests = [(r.method, r.kind, r.status) for r in upstream.requests_since(mark)]
                    mark = upstream.mark()
                    warm.append(timed_pull(proxy.ref(image.ref), work / "out", image.digest))
                    upstream.wait_quiet()
                    warm_requests = [(r.method, r.kind, r.status) for r in upstream.requests_since(mark)]
                print(f"round {round_ + 1}: upstream requests cold: {summarize(cold_requests)}; "
                      f"warm: {summarize(warm_requests)}")  # fmt: skip
            for name, times in (("direct from upstream", direct), ("cold through proxy", cold), ("warm", warm)):
                runs = ", ".join(f"{t:.2f}" for t in times)
                print(f"{name:>22}: median {statistics.median(times):.2f} s  (runs: {runs})")


if __name__ == "__main__":
    main()
