"""Hostile load against a real proxy in front of a local token-auth Distribution, and what a normal client sees.

    .venv/bin/python -m bench.hostile_load [--scenario all|stalled|flood|burst] [--mib 200]

stalled  300 clients ask for a cached big blob and never read, 2000 connections never send a byte, 50 drip
         their headers one byte a second. Meanwhile a normal client fetches a cached small blob and a cached
         manifest (each on a new connection); prints those latencies, how many silent connections are still
         open after 30 s, and the proxy's RSS.
flood    2 connections each send up to 300 MB of header lines; prints what they got back and the proxy's RSS
         before and after.
burst    3 bursts of 2000 concurrent GETs of unknown blob digests; during the third, skopeo pulls an uncached
         image through the proxy. Prints the statuses of each burst, the pull's time and digest check, the
         upstream requests the bursts caused, and the proxy's peak RSS.
names    100,000 manifest requests, each under a repository name never seen before (each costs the proxy a token
         and an upstream 404); prints the proxy's RSS after 10 %, 50 % and 100 % of them.

Every loop is bounded in count and time; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import resource
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from tests.harness.images import Images, seed
from tests.harness.proxy_server import ProxyServer
from tests.harness.registry import DistributionRegistry
from tests.harness.skopeo import read_dir_layout, skopeo_copy
from tests.harness.tokens import TokenIssuer

LOOPBACK = "127.0.0.1"


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proxy_pid(proxy: ProxyServer) -> int:
    assert proxy._process is not None
    return proxy._process.pid


async def request_once(port: int, path: str, timeout: float = 30.0) -> tuple[int, int, float]:
    """One GET on a new connection: (status, body bytes, seconds); status 0 if the connection failed."""
    started = time.perf_counter()
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), timeout)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nConnection: close\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = int(head.split(b" ", 2)[1])
        body = await asyncio.wait_for(reader.read(), timeout)
        return status, len(body), time.perf_counter() - started
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
        return 0, 0, time.perf_counter() - started
    finally:
        if writer is not None:
            writer.close()


async def normal_client(port: int, paths: dict[str, str], samples: int = 5) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(samples):
        for name, path in paths.items():
            status, _, seconds = await request_once(port, path)
            latencies[name].append(seconds if status == 200 else float("inf"))
        await asyncio.sleep(0.2)
    return latencies


def describe(latencies: dict[str, list[float]]) -> str:
    return ", ".join(
        f"{name}: median {statistics.median(v) * 1000:.0f} ms, max {max(v) * 1000:.0f} ms"
        for name, v in latencies.items()
    )


async def stalled(proxy: ProxyServer, images: Images) -> None:
    big, small = images["big"], images["oci"]
    big_path = f"/v2/{big.repository}/blobs/{big.layers[0].digest}"
    paths = {
        "cached small blob": f"/v2/{small.repository}/blobs/{small.blobs[-1].digest}",
        "cached manifest": f"/v2/{small.repository}/manifests/{small.digest}",
    }
    for path in [big_path, *paths.values()]:
        status, _, _ = await request_once(proxy.port, path, timeout=300)
        assert status == 200, (path, status)
    pid = proxy_pid(proxy)
    print(f"stalled: warm cache; proxy RSS {rss_mib(pid):.0f} MiB, {open_fds(pid)} fds")
    print(f"stalled: baseline, no load: {describe(await normal_client(proxy.port, paths))}")

    writers: list[asyncio.StreamWriter] = []
    for _ in range(300):
        reader, writer = await asyncio.open_connection(LOOPBACK, proxy.port, limit=4096)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        writer.write(f"GET {big_path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        writers.append(writer)  # never read from again
    silent = [await asyncio.open_connection(LOOPBACK, proxy.port) for _ in range(2000)]
    drippers = [await asyncio.open_connection(LOOPBACK, proxy.port) for _ in range(50)]

    async def drip(writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        for _ in range(40):  # one byte a second, for at most 40 s
            if writer.is_closing():
                return
            writer.write(b"X")
            try:
                await writer.drain()
            except OSError:
                return
            await asyncio.sleep(1)

    dripping = [asyncio.create_task(drip(w)) for _, w in drippers]
    await asyncio.sleep(1)
    print(
        f"stalled: 300 stalled readers, 2000 silent, 50 dripping; proxy RSS {rss_mib(pid):.0f} MiB, {open_fds(pid)} fds"
    )
    print(f"stalled: under load: {describe(await normal_client(proxy.port, paths, samples=10))}")
    await asyncio.sleep(max(0.0, 31 - 1 - 10 * 0.4))
    still_open = 0
    for reader, _writer in silent:
        try:
            data = await asyncio.wait_for(reader.read(1), 0.01)
            still_open += 0 if data == b"" else 1
        except TimeoutError:
            still_open += 1
        except OSError:
            pass
    print(f"stalled: after 30 s, silent connections still open: {still_open} of 2000")
    print(f"stalled: still under load: {describe(await normal_client(proxy.port, paths))}")
    print(f"stalled: proxy RSS {rss_mib(pid):.0f} MiB, peak {rss_mib(pid, 'VmHWM'):.0f} MiB, {open_fds(pid)} fds")
    for task in dripping:
        task.cancel()
    for _, writer in [*silent, *drippers]:
        writer.close()
    for writer in writers:
        writer.close()


async def flood(proxy: ProxyServer) -> None:
    pid = proxy_pid(proxy)
    before = rss_mib(pid)
    line = b"X-Flood: " + b"f" * 8183 + b"\r\n"  # 8 KiB a line

    async def one() -> tuple[bytes, int]:
        reader, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
        # Read while sending, as a client would: the answer arrives as soon as the proxy cuts the flood.
        answer = asyncio.create_task(reader.read(4096))
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        sent = 0
        try:
            for _ in range(300 * 1024 * 1024 // len(line)):  # up to 300 MB
                if answer.done():
                    break
                writer.write(line)
                sent += len(line)
                await asyncio.wait_for(writer.drain(), 10)
        except (OSError, TimeoutError):
            pass
        try:
            got = await asyncio.wait_for(answer, 5)
        except (OSError, TimeoutError):
            got = b""
        writer.close()
        return got, sent

    results = await asyncio.gather(one(), one())
    for answer, sent in results:
        status_line = answer.split(b"\r\n", 1)[0].decode() or "(reset)"
        print(f"flood: sent {sent / 2**20:.1f} MiB of headers; answer: {status_line}")
    print(
        f"flood: proxy RSS before {before:.0f} MiB, after {rss_mib(pid):.0f} MiB, peak {rss_mib(pid, 'VmHWM'):.0f} MiB"
    )


async def burst(proxy: ProxyServer, upstream: DistributionRegistry, images: Images, work: Path) -> None:
    pid = proxy_pid(proxy)
    repository = images["docker"].repository
    mark = upstream.mark()

    async def one_burst(number: int) -> collections.Counter[int]:
        paths = [f"/v2/{repository}/blobs/sha256:{os.urandom(32).hex()}" for _ in range(2000)]
        started = time.perf_counter()
        results = await asyncio.gather(*(request_once(proxy.port, p, timeout=90) for p in paths))
        statuses = collections.Counter(status for status, _, _ in results)
        fivexx = sum(n for s, n in statuses.items() if s >= 500 or s == 0)
        print(
            f"burst {number}: {time.perf_counter() - started:.1f} s; statuses {dict(sorted(statuses.items()))}; "
            f"5xx or no answer: {fivexx / 20:.1f} %"
        )
        return statuses

    await one_burst(1)
    await one_burst(2)
    image = images["oci"]  # not pulled by anything above: uncached
    destination = work / "pulled"

    def pull() -> float:
        started = time.perf_counter()
        skopeo_copy(proxy.ref(image.ref), destination, timeout=120)
        return time.perf_counter() - started

    pulling = asyncio.create_task(asyncio.to_thread(pull))
    await one_burst(3)
    try:
        seconds = await asyncio.wait_for(pulling, 120)
        layout = read_dir_layout(destination)
        layout.verify_blobs()
        ok = layout.manifest_digest == image.digest and set(layout.blobs) == {b.digest for b in image.blobs}
        print(f"burst: skopeo pull of an uncached image during burst 3: {seconds:.1f} s, digest matches: {ok}")
    except Exception as exc:  # reported, not raised: the figures above still stand
        print(f"burst: skopeo pull during burst 3 FAILED: {exc!r}")
    upstream.wait_quiet()
    since = upstream.requests_since(mark)
    print(f"burst: upstream requests caused: {len(since)} ({dict(collections.Counter(r.status for r in since))})")
    print(f"burst: proxy RSS {rss_mib(pid):.0f} MiB, peak {rss_mib(pid, 'VmHWM'):.0f} MiB")


async def names(proxy: ProxyServer, count: int) -> None:
    """``count`` requests, each under a repository name never seen before: every per-name table in the proxy (tokens,
    flights, negative answers) would grow with them if it were not bounded."""
    pid = proxy_pid(proxy)
    # 100 at a time: the stand-in token issuer (Python's http.server) falls behind with more, and the proxy's
    # breaker then answers most requests without any token fetch, which would measure less than it claims.
    batch = 100
    marks = {count // 10, count // 2, count}
    print(f"names: start: proxy RSS {rss_mib(pid):.0f} MiB")
    statuses: collections.Counter[int] = collections.Counter()
    started = time.perf_counter()
    for first in range(0, count, batch):
        paths = [f"/v2/bench/name-{n}/manifests/1" for n in range(first, min(first + batch, count))]
        results = await asyncio.gather(*(request_once(proxy.port, path, timeout=60) for path in paths))
        statuses.update(status for status, _, _ in results)
        done = first + len(paths)
        if done in marks:
            rss, peak = rss_mib(pid), rss_mib(pid, "VmHWM")
            print(f"names: {done} distinct repositories ({time.perf_counter() - started:.0f} s): "
                  f"proxy RSS {rss:.0f} MiB, peak {peak:.0f} MiB; statuses {dict(statuses)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["all", "stalled", "flood", "burst", "names"], default="all")
    parser.add_argument("--names", type=int, default=100_000, help="distinct repository names for 'names'")
    parser.add_argument("--mib", type=int, default=200, help="size of the big layer")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process opens thousands of connections

    with tempfile.TemporaryDirectory(prefix="bench-hostile-load-") as tmp:
        work = Path(tmp)
        with TokenIssuer(work / "issuer") as issuer, DistributionRegistry(work / "upstream", issuer) as upstream:
            images = seed(upstream, work / "images", big_layer_mib=args.mib)
            scenarios: dict[str, Callable[[ProxyServer], Coroutine[Any, Any, None]]] = {
                "stalled": lambda proxy: stalled(proxy, images),
                "flood": flood,
                "burst": lambda proxy: burst(proxy, upstream, images, work),
                "names": lambda proxy: names(proxy, args.names),
            }
            for name, scenario in scenarios.items():
                if args.scenario in ("all", name):
                    with ProxyServer(work / f"proxy-{name}", upstream.url) as proxy:
                        asyncio.run(scenario(proxy))


if __name__ == "__main__":
    main()
