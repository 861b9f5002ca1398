"""Starting the servers a scenario needs: fresh caches for cold pulls, and the long-lived warm trio."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from bench.anchors import DistributionProxy, NginxBlobServer
from bench.figures import PROXY
from bench.upstream import SeededUpstream
from tests.harness.proxy_server import ProxyServer

__all__ = ["WarmServers", "fresh_distribution", "fresh_proxy", "fresh_server", "warm_servers"]

# The proxy as shipped: one worker process per CPU (the test harness pins one unless told).
PROXY_SERVER = 'workers = "auto"'


@contextlib.contextmanager
def fresh_proxy(upstream: SeededUpstream, workdir: Path) -> Iterator[ProxyServer]:
    """The proxy with an empty cache; its cache is deleted afterwards (a 200 MiB blob per run adds up)."""
    try:
        with ProxyServer(workdir, upstream.registry.url, server_config=PROXY_SERVER) as proxy:
            yield proxy
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def fresh_distribution(upstream: SeededUpstream, workdir: Path) -> Iterator[DistributionProxy]:
    """Distribution in proxy mode with an empty cache, deleted afterwards."""
    try:
        with DistributionProxy(workdir, upstream.registry.url) as registry:
            yield registry
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def fresh_server(
    subject: str, upstream: SeededUpstream, workdir: Path
) -> AbstractContextManager[ProxyServer | DistributionProxy]:
    """The proxy (``subject`` PROXY) or Distribution's, with an empty cache."""
    return fresh_proxy(upstream, workdir) if subject == PROXY else fresh_distribution(upstream, workdir)


@dataclass(frozen=True)
class WarmServers:
    proxy: ProxyServer
    distribution: DistributionProxy
    nginx: NginxBlobServer


@contextlib.contextmanager
def warm_servers(upstream: SeededUpstream, work: Path) -> Iterator[WarmServers]:
    """The proxy, Distribution's proxy and nginx (serving the big layer's file at the same path), all three
    stopped on the way out whatever happens."""
    with (
        ProxyServer(work / "warm-proxy", upstream.registry.url, server_config=PROXY_SERVER) as proxy,
        DistributionProxy(work / "warm-distribution", upstream.registry.url) as distribution,
        NginxBlobServer(work / "nginx", upstream.big_layer_file, upstream.big_layer_path) as nginx,
    ):
        yield WarmServers(proxy, distribution, nginx)
