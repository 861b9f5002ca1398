"""Many clients asking at once for one uncached big blob: upstream GETs, wall time, proxy memory.

    .venv/bin/python -m bench.concurrent [--clients 8] [--mib 200] [--rounds 3]

Each round starts a fresh proxy (empty cache) in front of a local token-auth Distribution, pulls the blob
once with one client (the baseline), then starts another fresh proxy and has N clients pull it at the
same time. Prints the upstream GETs of the blob (from Distribution's access log), whether every body
hashed to the digest, both wall times and their ratio, and the proxy's peak RSS (VmHWM, all its processes).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.clients import DownloadFunction, download_client, download_together
from bench.processes import peak_rss_bytes, server_pid
from bench.upstream import SeededUpstream, seeded_upstream
from tests.harness.proxy_server import ProxyServer
from tests.harness.throttle import ThrottledRelay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--upstream-mbps",
        type=float,
        default=0,
        help="cap the proxy's link to the upstream at this many megabits/s (0: loopback speed)",
    )
    parser.add_argument(
        "--client",
        choices=["curl", "socket"],
        default="curl",
        help="curl | openssl dgst per client (default), or one lean socket+hashlib thread per client",
    )
    args = parser.parse_args()
    client = download_client(args.client)

    with tempfile.TemporaryDirectory(prefix="bench-concurrent-") as tmp:
        work = Path(tmp)
        with seeded_upstream(work, args.mib) as upstream:
            image = upstream.big
            token = upstream.token(image.repository)
            url = upstream.registry.url + upstream.big_layer_path
            direct = download_together(url, args.clients, client, token=token)
            assert not direct.errors, direct.errors
            print(f"reference: {args.clients} clients straight from Distribution (Go): {direct.seconds:.2f} s")
            with contextlib.ExitStack() as stack:
                upstream_url = upstream.registry.url
                if args.upstream_mbps:
                    port = upstream.registry.port
                    assert port is not None
                    rate = args.upstream_mbps * 1e6 / 8
                    relay = stack.enter_context(ThrottledRelay("127.0.0.1", port, rate))
                    upstream_url = relay.url
                    print(f"the proxy reaches the upstream through a {args.upstream_mbps:.0f} Mbit/s link")
                rounds = [
                    one_round(args.clients, client, work, number, upstream, upstream_url)
                    for number in range(args.rounds)
                ]
            print(
                f"median: one client {statistics.median(r.single for r in rounds):.2f} s, {args.clients} clients "
                f"{statistics.median(r.crowd for r in rounds):.2f} s, "
                f"ratio x{statistics.median(r.crowd / r.single for r in rounds):.2f}, "
                f"peak RSS max {max(r.peak_rss_mib for r in rounds):.0f} MiB "
                f"({image.layers[0].size / 2**20:.0f} MiB blob)"
            )


@dataclass(frozen=True)
class Round:
    single: float  # seconds for one client on a cold cache
    crowd: float  # seconds for all clients at once on a cold cache
    peak_rss_mib: float


def one_round(
    clients: int, client: DownloadFunction, work: Path, number: int, upstream: SeededUpstream, upstream_url: str
) -> Round:
    path, digest = upstream.big_layer_path, upstream.big.layers[0].digest
    with ProxyServer(work / f"single-{number}", upstream_url) as proxy:
        single = download_together(proxy.url + path, 1, client)
        assert [d.digest for d in single.downloads] == [digest] and not single.errors, single.errors
    with ProxyServer(work / f"crowd-{number}", upstream_url) as proxy:
        upstream.registry.wait_quiet()
        mark = upstream.registry.mark()
        crowd = download_together(proxy.url + path, clients, client)
        statuses = upstream.gets_since(mark, path)
        rss = peak_rss_bytes(server_pid(proxy)) / 2**20
    good = sum(1 for d in crowd.downloads if d.digest == digest)
    print(
        f"round {number + 1}: {clients} clients: upstream GETs of the blob: {len(statuses)} "
        f"(statuses {statuses}); bodies hashing to the digest: {good}/{clients}; "
        f"errors: {len(crowd.errors)}; one client {single.seconds:.2f} s, {clients} clients {crowd.seconds:.2f} s "
        f"(x{crowd.seconds / single.seconds:.2f}); proxy peak RSS {rss:.0f} MiB"
    )
    return Round(single.seconds, crowd.seconds, rss)


if __name__ == "__main__":
    main()
