"""The scenarios of issue 11's table, each run side by side on the proxy and its anchors.

Each returns raw figures (``bench.figures.Measured``); ``bench.report`` divides them by the anchors'. Runs
alternate between the servers, so that whatever else the machine does at a moment weighs on all of them alike.
Every body is checked against its digest at least once; a scenario with a wrong byte or an error raises
BenchError rather than reporting a figure for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.anchors import DistributionProxy
from bench.clients import ClientName, Download, DownloadFunction, download_client, download_together
from bench.figures import DISTRIBUTION, NGINX, PROXY, UPSTREAM, Measured
from bench.processes import children_cpu_seconds, peak_rss_bytes, server_pid, settled_cpu_seconds
from bench.servers import WarmServers, fresh_distribution, fresh_proxy, fresh_server
from bench.upstream import SeededUpstream
from bench.wrk import WrkResult, run_wrk
from tests.harness.oci import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from tests.harness.proxy_server import ProxyServer

__all__ = [
    "Bench",
    "BenchError",
    "Settings",
    "cached_manifests",
    "cold_blob",
    "herd",
    "peak_rss",
    "warm_blob",
]

# What containerd asks for: every manifest type.
MANIFEST_ACCEPT = ", ".join((DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX))
# A cache is warm when a download sends no GET upstream; a fill that takes longer than this many tries is a bug.
WARM_UP_ATTEMPTS = 5


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Settings:
    runs: int = 3
    big_layer_mib: int = 200
    wrk_seconds: float = 10.0
    connections: int = 16
    wrk_threads: int = 2
    herd_clients: int = 8
    client: ClientName = "curl"


@dataclass(frozen=True)
class Bench:
    """What every scenario works with."""

    upstream: SeededUpstream
    work: Path
    settings: Settings
    say: Callable[[str], None] = print
    rss: dict[str, list[float]] = field(default_factory=lambda: {PROXY: [], DISTRIBUTION: []})
    """Peak RSS of each proxy (and Distribution) process tree, sampled before it was stopped."""

    @property
    def download(self) -> DownloadFunction:
        return download_client(self.settings.client)

    @property
    def mib(self) -> int:
        return self.settings.big_layer_mib


def cold_blob(bench: Bench) -> list[Measured]:
    """One client downloads the big layer through an empty cache (a new server each run), and straight from the
    upstream with a token: the time, and the CPU time each server (with all its processes) spent on it.

    On a machine whose cores the client, the upstream and the server share, the time is bound by the CPU all three
    need; the CPU time is each server's own share of it, a figure the number of cores does not change.
    """
    upstream = bench.upstream
    path, digest = upstream.big_layer_path, upstream.big.layers[0].digest
    runs: dict[str, list[float]] = {UPSTREAM: [], PROXY: [], DISTRIBUTION: []}
    cpu: dict[str, list[float]] = {UPSTREAM: [], PROXY: [], DISTRIBUTION: []}
    clients_cpu: dict[str, list[float]] = {UPSTREAM: [], PROXY: [], DISTRIBUTION: []}
    upstream_pid = server_pid(upstream.registry)
    for n in range(bench.settings.runs):
        token = upstream.token(upstream.big.repository)
        before, clients_before = settled_cpu_seconds(upstream_pid), children_cpu_seconds()
        runs[UPSTREAM].append(_checked(bench.download(upstream.registry.url + path, token=token), digest).seconds)
        cpu[UPSTREAM].append(settled_cpu_seconds(upstream_pid) - before)
        clients_cpu[UPSTREAM].append(children_cpu_seconds() - clients_before)
        with fresh_proxy(upstream, bench.work / f"cold-proxy-{n}") as proxy:
            runs[PROXY].append(_timed_cpu(bench, proxy, path, digest, cpu[PROXY], clients_cpu[PROXY]))
        with fresh_distribution(upstream, bench.work / f"cold-distribution-{n}") as distribution:
            runs[DISTRIBUTION].append(
                _timed_cpu(bench, distribution, path, digest, cpu[DISTRIBUTION], clients_cpu[DISTRIBUTION])
            )
        bench.say(f"  cold blob, run {n + 1}: " + _seconds(runs, n) + "; CPU time " + _seconds(cpu, n))
    return [
        Measured("cold_blob", f"cold {bench.mib} MiB blob, one client", "s", runs),
        Measured(
            "cold_blob_cpu",
            f"cold {bench.mib} MiB blob, CPU time of the server",
            "s",
            cpu,
            details={"CPU time of the client (curl | openssl), s, per run": clients_cpu},
        ),
    ]


def _timed_cpu(
    bench: Bench,
    server: ProxyServer | DistributionProxy,
    path: str,
    digest: str,
    cpu: list[float],
    clients_cpu: list[float],
) -> float:
    """The seconds one client took to download ``path`` from ``server``; the server's CPU time for it goes to
    ``cpu`` (the upstream's is not in it: each server asks the same upstream the same way), the client's to
    ``clients_cpu``."""
    pid = server_pid(server)
    before, clients_before = settled_cpu_seconds(pid), children_cpu_seconds()
    seconds = _checked(bench.download(server.url + path), digest).seconds
    cpu.append(settled_cpu_seconds(pid) - before)
    clients_cpu.append(children_cpu_seconds() - clients_before)
    return seconds


def herd(bench: Bench) -> list[Measured]:
    """``herd_clients`` clients at once on the big layer through an empty cache: the wall time, and how many GETs
    of it reached the upstream (from the upstream's access log); and, as the wall time's yardstick, one client alone
    on the layer through an empty cache, measured the same way.

    The clients count the bytes (each must get all of them) but do not hash them while the clock runs: on a 2-core
    machine 8 clients hashing 8 x 200 MiB take most of a core from the servers, and the figure measured the clients.
    Bodies are verified instead by one more, hashed, download from the same server after each run (what the crowd
    left in the cache), and by the test suite's herd tests, which hash every body.
    """
    upstream, settings = bench.upstream, bench.settings
    path, digest = upstream.big_layer_path, upstream.big.layers[0].digest
    size = upstream.big.layers[0].size
    singles: dict[str, list[float]] = {PROXY: [], DISTRIBUTION: []}
    walls: dict[str, list[float]] = {PROXY: [], DISTRIBUTION: []}
    cpu: dict[str, list[float]] = {PROXY: [], DISTRIBUTION: []}
    clients_cpu: dict[str, list[float]] = {PROXY: [], DISTRIBUTION: []}
    gets: dict[str, list[float]] = {PROXY: [], DISTRIBUTION: []}
    statuses: dict[str, list[list[int]]] = {PROXY: [], DISTRIBUTION: []}
    for n in range(settings.runs):
        for subject in (PROXY, DISTRIBUTION):
            with fresh_server(subject, upstream, bench.work / f"herd-single-{subject}-{n}") as server:
                alone = bench.download(server.url + path, hash_body=False)
                if alone.size != size:
                    raise BenchError(f"{subject}: one client on one blob got {alone.size} of {size} bytes")
                singles[subject].append(alone.seconds)
            with fresh_server(subject, upstream, bench.work / f"herd-{subject}-{n}") as server:
                upstream.registry.wait_quiet()
                mark = upstream.registry.mark()
                pid = server_pid(server)
                cpu_before, clients_before = settled_cpu_seconds(pid), children_cpu_seconds()
                crowd = download_together(server.url + path, settings.herd_clients, bench.download, hash_body=False)
                cpu[subject].append(settled_cpu_seconds(pid) - cpu_before)
                clients_cpu[subject].append(children_cpu_seconds() - clients_before)
                if crowd.errors or any(d.size != size for d in crowd.downloads):
                    raise BenchError(f"{subject}: {settings.herd_clients} clients on one blob: {crowd.errors}")
                run_statuses = upstream.gets_since(mark, path)
                bench.rss[subject].append(peak_rss_bytes(server_pid(server)))
                _checked(bench.download(server.url + path), digest)
            walls[subject].append(crowd.seconds)
            gets[subject].append(sum(1 for status in run_statuses if 200 <= status < 300))
            statuses[subject].append(run_statuses)
        bench.say(f"  {settings.herd_clients} clients on one uncached blob, run {n + 1}: {_seconds(walls, n)} "
                  f"(one client: {_seconds(singles, n)}); "
                  f"upstream GETs {', '.join(f'{s} {gets[s][n]:.0f}' for s in gets)}")  # fmt: skip
    clients = settings.herd_clients
    return [
        Measured("herd_single", f"one client alone on an uncached blob (as the {clients})", "s", singles),
        Measured("herd_wall", f"{clients} clients on one uncached blob, wall", "s", walls),
        Measured(
            "herd_cpu",
            f"{clients} clients on one uncached blob, CPU time of the server",
            "s",
            cpu,
            details={"CPU time of the clients (curl), s, per run": clients_cpu},
        ),
        Measured(
            "herd_gets",
            f"{clients} clients on one uncached blob, upstream GETs",
            "GETs",
            gets,
            aggregate="max",
            details={"statuses of the upstream's GETs of the blob, per run": statuses},
        ),
    ]


def warm_blob(bench: Bench, servers: WarmServers) -> Measured:
    """One client downloads the big layer from a warm cache (and from nginx); the figure is bytes per second.

    The warm-up download checks the digest; the timed ones only count bytes, so that hashing in the client does
    not cap what the server can send.
    """
    upstream = bench.upstream
    path, digest, size = upstream.big_layer_path, upstream.big.layers[0].digest, upstream.big.layers[0].size
    urls = {PROXY: servers.proxy.url + path, DISTRIBUTION: servers.distribution.url + path, NGINX: servers.nginx.url}
    for subject in (PROXY, DISTRIBUTION):
        _warm_up_blob(bench, urls[subject], subject)
    _checked(bench.download(urls[NGINX]), digest)
    runs: dict[str, list[float]] = {subject: [] for subject in urls}
    for n in range(bench.settings.runs):
        for subject, url in urls.items():
            download = bench.download(url, hash_body=False)
            if download.size != size:
                raise BenchError(f"{subject}: {download.size} bytes of {size}")
            runs[subject].append(download.size / download.seconds)
        bench.say(f"  warm blob, run {n + 1}: " + ", ".join(f"{s} {runs[s][n] / 1e6:.0f} MB/s" for s in runs))
    return Measured("warm_blob", f"warm {bench.mib} MiB blob, one connection", "B/s", runs)


def cached_manifests(bench: Bench, servers: WarmServers) -> list[Measured]:
    """wrk on a cached manifest, by tag and by digest, on the proxy and on Distribution's proxy."""
    settings = bench.settings
    image = bench.upstream.images["oci"]
    bases = {PROXY: servers.proxy.url, DISTRIBUTION: servers.distribution.url}
    references = {"tag": image.tag or "", "digest": image.digest}
    for base in bases.values():
        for reference in references.values():
            for _ in range(2):  # the first may fill the cache; the second must come from it
                _check_manifest(f"{base}/v2/{image.repository}/manifests/{reference}", image.digest)
    results: dict[str, dict[str, list[WrkResult]]] = {kind: {s: [] for s in bases} for kind in references}
    for n in range(settings.runs):
        for kind, reference in references.items():
            for subject, base in bases.items():
                results[kind][subject].append(
                    run_wrk(
                        f"{base}/v2/{image.repository}/manifests/{reference}",
                        seconds=settings.wrk_seconds,
                        connections=settings.connections,
                        threads=settings.wrk_threads,
                        headers=[f"Accept: {MANIFEST_ACCEPT}"],
                    )
                )
            rates = ", ".join(f"{s} {results[kind][s][n].requests_per_second:.0f} req/s" for s in bases)
            bench.say(f"  manifest by {kind}, run {n + 1}: {rates}")
    connections = settings.connections
    measured: list[Measured] = []
    for kind, per_subject in results.items():
        details = {
            "requests": {s: [r.requests for r in rs] for s, rs in per_subject.items()},
            "socket errors": {s: [r.socket_errors for r in rs] for s, rs in per_subject.items()},
        }
        measured += [
            Measured(
                f"manifest_{kind}",
                f"cached manifest by {kind}, {connections} connections",
                "req/s",
                {s: [r.requests_per_second for r in rs] for s, rs in per_subject.items()},
                details=details,
            ),
            Measured(
                f"manifest_{kind}_p50",
                f"  by {kind}: p50 latency",
                "s",
                {s: [r.p50 for r in rs] for s, rs in per_subject.items()},
            ),
            Measured(
                f"manifest_{kind}_p99",
                f"  by {kind}: p99 latency",
                "s",
                {s: [r.p99 for r in rs] for s, rs in per_subject.items()},
            ),
        ]
    for subject, server in ((PROXY, servers.proxy), (DISTRIBUTION, servers.distribution)):
        bench.rss[subject].append(peak_rss_bytes(server_pid(server)))
    return measured


def peak_rss(bench: Bench) -> Measured:
    """The largest peak RSS of any proxy's process tree: those of the herds, and the warm one after wrk."""
    return Measured(
        "peak_rss",
        "peak RSS, all processes of one proxy",
        "B",
        {subject: list(samples) for subject, samples in bench.rss.items()},
        aggregate="max",
    )


def _warm_up_blob(bench: Bench, url: str, subject: str) -> None:
    upstream = bench.upstream
    path, digest = upstream.big_layer_path, upstream.big.layers[0].digest
    for _ in range(WARM_UP_ATTEMPTS):
        upstream.registry.wait_quiet()
        mark = upstream.registry.mark()
        _checked(bench.download(url), digest)
        if not any(200 <= status < 300 for status in upstream.gets_since(mark, path)):
            return
    raise BenchError(f"{subject}: still fetching the blob from the upstream after {WARM_UP_ATTEMPTS} downloads")


def _check_manifest(url: str, digest: str) -> None:
    response = httpx.get(url, headers={"Accept": MANIFEST_ACCEPT}, timeout=30)
    body_digest = "sha256:" + hashlib.sha256(response.content).hexdigest()
    if response.status_code != 200 or body_digest != digest:
        raise BenchError(f"{url}: {response.status_code}, body {body_digest}, expected {digest}")


def _checked(download: Download, digest: str) -> Download:
    if download.digest != digest:
        raise BenchError(f"downloaded {download.digest}, expected {digest}")
    return download


def _seconds(runs: dict[str, list[float]], n: int) -> str:
    return ", ".join(f"{subject} {times[n]:.2f} s" for subject, times in runs.items())
