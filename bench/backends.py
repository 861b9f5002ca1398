"""The proxy on its two storage backends side by side: the S3 row of the table (issue 13).

A SeaweedFS on loopback (the harness's, data in the bench's temporary directory) holds the S3 backend's bucket;
the same big layer is pulled cold (a new bucket and an empty root each run) and warm (one connection, bytes
counted) through a proxy on each backend. S3 hits cannot use zero-copy sends (the bytes come over HTTP from the
object store), and a cold fill uploads as it downloads: the figures say what that costs next to the disk.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
from collections.abc import Iterator

from bench.figures import PROXY, S3, Measured
from bench.scenarios import Bench, BenchError, _checked
from bench.servers import PROXY_SERVER, fresh_proxy
from tests.harness.proxy_server import ProxyServer
from tests.harness.seaweed import SeaweedS3

__all__ = ["storage_backends"]


def storage_backends(bench: Bench) -> list[Measured]:
    upstream = bench.upstream
    path, digest, size = upstream.big_layer_path, upstream.big.layers[0].digest, upstream.big.layers[0].size
    cold: dict[str, list[float]] = {PROXY: [], S3: []}
    warm: dict[str, list[float]] = {PROXY: [], S3: []}
    with SeaweedS3(bench.work / "seaweedfs") as seaweed:
        for n in range(bench.settings.runs):
            for subject in (PROXY, S3):
                server = (
                    fresh_proxy(upstream, bench.work / f"backend-fs-{n}")
                    if subject == PROXY
                    else _fresh_s3_proxy(bench, seaweed, n)
                )
                with server as proxy:
                    cold[subject].append(_checked(bench.download(proxy.url + path), digest).seconds)
                    _checked(bench.download(proxy.url + path), digest)  # a hit now: what the warm runs read
                    download = bench.download(proxy.url + path, hash_body=False)
                    if download.size != size:
                        raise BenchError(f"{subject}: {download.size} bytes of {size}")
                    warm[subject].append(download.size / download.seconds)
            bench.say(
                f"  storage backends, run {n + 1}: cold filesystem {cold[PROXY][n]:.2f} s, S3 {cold[S3][n]:.2f} s; "
                f"warm filesystem {warm[PROXY][n] / 1e6:.0f} MB/s, S3 {warm[S3][n] / 1e6:.0f} MB/s"
            )
    return [
        Measured("backend_cold", f"cold {bench.mib} MiB blob, filesystem backend", "s", cold),
        Measured("backend_warm", f"warm {bench.mib} MiB blob, filesystem backend", "B/s", warm),
    ]


@contextlib.contextmanager
def _fresh_s3_proxy(bench: Bench, seaweed: SeaweedS3, n: int) -> Iterator[ProxyServer]:
    """The proxy on a new bucket of the SeaweedFS, with an empty root; both removed afterwards."""
    workdir = bench.work / f"backend-s3-{n}"
    bucket = "bench-" + secrets.token_hex(4)
    storage = f'backend = "s3"\nendpoint = "{seaweed.endpoint}"\nbucket = "{bucket}"\n'
    try:
        with ProxyServer(
            workdir,
            bench.upstream.registry.url,
            extra_storage=storage,
            env=seaweed.environ(),
            server_config=PROXY_SERVER,
        ) as proxy:
            yield proxy
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
