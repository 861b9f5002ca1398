"""Many clients asking at once for one uncached big blob: upstream GETs, wall time, proxy memory.

    .venv/bin/python -m bench.concurrent [--clients 8] [--mib 200] [--rounds 3]

Each round starts a fresh proxy (empty cache) in front of a local token-auth Distribution, pulls the blob
once with one client (the baseline), then starts another fresh proxy and has N clients pull it at the
same time. Prints the upstream GETs of the blob (from Distribution's access log), whether every body
hashed to the digest, both wall times and their ratio, and the proxy's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tests.harness.images import seed
from tests.harness.proxy_server import ProxyServer
from tests.harness.registry import DistributionRegistry
from tests.harness.tokens import TokenIssuer


def fetch(url: str, results: list[str], errors: list[str], token: str | None = None) -> None:
    # curl piped into openssl (which uses the CPU's SHA extensions; coreutils' sha256sum is 10x slower):
    # C clients, as real pullers (Go, containerd) are, so that the 2 cores
    # measure the proxy rather than Python clients hashing 8 copies of the blob.
    auth = f"-H 'Authorization: Bearer {token}' -L" if token else ""
    command = f"curl --silent --fail --max-time 300 {auth} '{url}' | openssl dgst -sha256 -r"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        errors.append(f"curl exited with {result.returncode}: {result.stderr.strip()}")
    else:
        results.append("sha256:" + result.stdout.split()[0])


def pull_together(url: str, clients: int, token: str | None = None) -> tuple[float, list[str], list[str]]:
    results: list[str] = []
    errors: list[str] = []
    threads = [threading.Thread(target=fetch, args=(url, results, errors, token)) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    return time.perf_counter() - started, results, errors


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-concurrent-") as tmp:
        work = Path(tmp)
        with TokenIssuer(work / "issuer") as issuer, DistributionRegistry(work / "upstream", issuer) as upstream:
            image = seed(upstream, work / "images", big_layer_mib=args.mib)["big"]
            layer = image.layers[0]
            path = f"/v2/{image.repository}/blobs/{layer.digest}"
            token = httpx.get(
                issuer.realm,
                params={"service": "registry.docker.io", "scope": f"repository:{image.repository}:pull"},
                timeout=30,
            ).json()["token"]
            direct, _, direct_errors = pull_together(upstream.url + path, args.clients, token)
            assert not direct_errors, direct_errors
            print(f"reference: {args.clients} clients straight from Distribution (Go, no cache): {direct:.2f} s")
            singles, crowds, ratios, rss = [], [], [], []
            for round_ in range(args.rounds):
                with ProxyServer(work / f"single-{round_}", upstream.url) as proxy:
                    single, ok, errors = pull_together(proxy.url + path, 1)
                    assert ok == [layer.digest] and not errors, errors
                with ProxyServer(work / f"crowd-{round_}", upstream.url) as proxy:
                    upstream.wait_quiet()
                    mark = upstream.mark()
                    crowd, hashes, errors = pull_together(proxy.url + path, args.clients)
                    upstream.wait_quiet()
                    gets = [r for r in upstream.requests_since(mark) if r.method == "GET" and r.path == path]
                    assert proxy._process is not None
                    rss.append(peak_rss_mib(proxy._process.pid))
                good = sum(1 for h in hashes if h == layer.digest)
                singles.append(single)
                crowds.append(crowd)
                ratios.append(crowd / single)
                print(
                    f"round {round_ + 1}: {args.clients} clients: upstream GETs of the blob: {len(gets)} "
                    f"(statuses {[r.status for r in gets]}); bodies hashing to the digest: {good}/{args.clients}; "
                    f"errors: {len(errors)}; one client {single:.2f} s, {args.clients} clients {crowd:.2f} s "
                    f"(x{crowd / single:.2f}); proxy peak RSS {rss[-1]:.0f} MiB"
                )
            print(
                f"median: one client {statistics.median(singles):.2f} s, {args.clients} clients "
                f"{statistics.median(crowds):.2f} s, ratio x{statistics.median(ratios):.2f}, "
                f"peak RSS max {max(rss):.0f} MiB ({image.layers[0].size / 2**20:.0f} MiB blob)"
            )


if __name__ == "__main__":
    main()
