"""Many clients asking at once for one uncached big blob: upstream GETs, wall time, proxy memory.

    .venv/bin/python -m bench.concurrent [--clients 8] [--mib 200] [--rounds 3]

Each round starts a fresh proxy (empty cache) in front of a local token-auth Distribution, pulls the blob
once with one client (the baseline), then starts another fresh proxy and has N clients pull it at the
same time. Prints the upstream GETs of the blob (from Distribution's access log), whether every body
hashed to the digest, both wall times and their ratio, and the proxy's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.harness.images import seed
from tests.harness.proxy_server import ProxyServer
from tests.harness.registry import DistributionRegistry
from tests.harness.throttle import ThrottledRelay
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


def fetch_socket(url: str, results: list[str], errors: list[str], token: str | None = None) -> None:
    """The leanest client: one socket, recv_into a reused buffer, hashlib (SHA extensions, GIL released)."""
    parts = urlsplit(url)
    headers = f"Authorization: Bearer {token}\r\n" if token else ""
    try:
        with socket.create_connection((parts.hostname, parts.port or 80), timeout=300) as sock:
            request = f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{headers}Connection: close\r\n\r\n"
            sock.sendall(request.encode())
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                head += chunk
            head, _, body = head.partition(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            if status != b"200":
                errors.append(f"status {status.decode()}")
                return
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            hasher = hashlib.sha256(body)
            received = len(body)
            buffer = bytearray(1 << 20)
            view = memoryview(buffer)
            while received < length:
                n = sock.recv_into(view)
                if n == 0:
                    break
                hasher.update(view[:n])
                received += n
            if received != length:
                errors.append(f"short body: {received} of {length}")
                return
        results.append("sha256:" + hasher.hexdigest())
    except (OSError, StopIteration, IndexError, ValueError) as exc:
        errors.append(repr(exc))


def pull_together(
    url: str, clients: int, token: str | None = None, client: str = "curl"
) -> tuple[float, list[str], list[str]]:
    results: list[str] = []
    errors: list[str] = []
    target = fetch_socket if client == "socket" else fetch
    threads = [threading.Thread(target=target, args=(url, results, errors, token)) for _ in range(clients)]
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
            direct, _, direct_errors = pull_together(upstream.url + path, args.clients, token, args.client)
            assert not direct_errors, direct_errors
            print(f"reference: {args.clients} clients straight from Distribution (Go, no cache): {direct:.2f} s")
            with contextlib.ExitStack() as stack:
                upstream_url = upstream.url
                if args.upstream_mbps:
                    assert upstream.port is not None
                    rate = args.upstream_mbps * 1e6 / 8
                    relay = stack.enter_context(ThrottledRelay("127.0.0.1", upstream.port, rate))
                    upstream_url = relay.url
                    print(f"the proxy reaches the upstream through a {args.upstream_mbps:.0f} Mbit/s link")
                rounds = [
                    one_round(args, work, number, upstream, upstream_url, path, layer.digest)
                    for number in range(args.rounds)
                ]
            print(
                f"median: one client {statistics.median(r.single for r in rounds):.2f} s, {args.clients} clients "
                f"{statistics.median(r.crowd for r in rounds):.2f} s, "
                f"ratio x{statistics.median(r.crowd / r.single for r in rounds):.2f}, "
                f"peak RSS max {max(r.peak_rss_mib for r in rounds):.0f} MiB ({layer.size / 2**20:.0f} MiB blob)"
            )


@dataclass(frozen=True)
class Round:
    single: float  # seconds for one client on a cold cache
    crowd: float  # seconds for all clients at once on a cold cache
    peak_rss_mib: float


def one_round(
    args: argparse.Namespace, work: Path, number: int, upstream: DistributionRegistry, upstream_url: str, path: str,
    digest: str,
) -> Round:  # fmt: skip
    with ProxyServer(work / f"single-{number}", upstream_url) as proxy:
        single, ok, errors = pull_together(proxy.url + path, 1, client=args.client)
        assert ok == [digest] and not errors, errors
    with ProxyServer(work / f"crowd-{number}", upstream_url) as proxy:
        upstream.wait_quiet()
        mark = upstream.mark()
        crowd, hashes, errors = pull_together(proxy.url + path, args.clients, client=args.client)
        upstream.wait_quiet()
        gets = [r for r in upstream.requests_since(mark) if r.method == "GET" and r.path == path]
        assert proxy._process is not None
        rss = peak_rss_mib(proxy._process.pid)
    good = sum(1 for h in hashes if h == digest)
    print(
        f"round {number + 1}: {args.clients} clients: upstream GETs of the blob: {len(gets)} "
        f"(statuses {[r.status for r in gets]}); bodies hashing to the digest: {good}/{args.clients}; "
        f"errors: {len(errors)}; one client {single:.2f} s, {args.clients} clients {crowd:.2f} s "
        f"(x{crowd / single:.2f}); proxy peak RSS {rss:.0f} MiB"
    )
    return Round(single, crowd, rss)


if __name__ == "__main__":
    main()
