"""Hostile and fuzzed requests against a real proxy: how many, what it answered, and whether anything broke.

    .venv/bin/python -m bench.hostile [--fuzz 2000] [--seed 1] [--timeout 5]

Starts a local token issuer and Distribution (seeded as in the tests, with a 1 MiB big layer), a proxy in front of
them, and warms the proxy's cache with the "oci" image. Then sends every request of tests.harness.hostile, and
``--fuzz`` random paths from a ``random.Random(--seed)``, each raw on its own connection. Prints the total, the
count by status, the 5xx, the hangs, the 4xx from the app without the JSON error envelope, the files that appeared
outside the cache, and whether the cached manifest and blob are still served byte for byte.

Exits 1 if any request got a 5xx, hung, got a 4xx without the envelope or a reply with bytes from outside the
cache, or if the cache was damaged or a file appeared outside it. Other unexpected statuses are listed only.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.harness.hostile import (
    PASSWD_MARKER,
    HostileRequest,
    RawReply,
    Target,
    envelope_problem,
    fuzzed_requests,
    hostile_requests,
    problems,
    send_raw,
)
from tests.harness.images import seed
from tests.harness.ports import LOOPBACK
from tests.harness.proxy_server import ProxyServer
from tests.harness.registry import DistributionRegistry
from tests.harness.tokens import TokenIssuer

MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
# However bad things get, the run ends: past this, the remaining requests are counted as not sent.
TOTAL_BUDGET = 600.0


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def warm(proxy: ProxyServer, target: Target, blob_digests: list[str]) -> dict[str, bytes]:
    """Pull the manifest and every blob through the proxy; digest → bytes as first served."""
    served: dict[str, bytes] = {}
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        manifest = client.get(f"/v2/{target.repository}/manifests/{target.tag}", headers={"Accept": MANIFEST_TYPES})
        manifest.raise_for_status()
        served[target.manifest_digest] = manifest.content
        for digest in blob_digests:
            response = client.get(f"/v2/{target.repository}/blobs/{digest}")
            response.raise_for_status()
            served[digest] = response.content
    bad = [digest for digest, data in served.items() if sha256(data) != digest]
    if bad:
        raise SystemExit(f"warming the cache served wrong bytes for {bad}")
    return served


def still_served(proxy: ProxyServer, target: Target, served: dict[str, bytes]) -> list[str]:
    """What the proxy no longer serves as before; empty if everything is intact."""
    wrong = []
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        for digest, data in served.items():
            kind = "manifests" if digest == target.manifest_digest else "blobs"
            response = client.get(f"/v2/{target.repository}/{kind}/{digest}", headers={"Accept": MANIFEST_TYPES})
            if response.status_code != 200 or response.content != data:
                wrong.append(f"{kind}/{digest}: {response.status_code}, {len(response.content)} bytes")
    return wrong


def stray_files(proxy: ProxyServer, sentinel: Path, content: bytes) -> list[str]:
    """Files the proxy has no business writing: anything in its workdir but config, log and cache, anything in the
    cache but blobs/ and repositories/, and any change to the sentinel next to the workdir."""
    stray = [p.name for p in proxy.workdir.iterdir() if p.name not in ("config.toml", "proxy.log", "cache")]
    stray += [f"cache/{p.name}" for p in proxy.cache_dir.iterdir() if p.name not in ("blobs", "repositories")]
    stray += [p.name for p in proxy.workdir.parent.iterdir() if p not in (proxy.workdir, sentinel)]
    if sentinel.read_bytes() != content:
        stray.append(f"{sentinel} was modified")
    return stray


def run(
    proxy: ProxyServer, requests: list[HostileRequest], timeout: float, forbidden: tuple[bytes, ...]
) -> dict[str, tuple[HostileRequest, RawReply | None, list[str]]]:
    results: dict[str, tuple[HostileRequest, RawReply | None, list[str]]] = {}
    started = time.monotonic()
    for request in requests:
        if time.monotonic() - started > TOTAL_BUDGET:
            results[request.label] = (request, None, ["not sent: the time budget ran out"])
            continue
        reply = send_raw(LOOPBACK, proxy.port, request.raw, timeout)
        results[request.label] = (request, reply, problems(request, reply, forbidden))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fuzz", type=int, default=2000, help="number of random paths to send")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random paths")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request before it counts as a hang")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        work = Path(tmp)
        with TokenIssuer(work / "issuer") as issuer, DistributionRegistry(work / "upstream", issuer) as upstream:
            image = seed(upstream, work / "images", big_layer_mib=1)["oci"]
            assert image.tag is not None
            target = Target(image.repository, image.tag, image.digest, image.layers[0].digest)
            base = work / "hostile"
            base.mkdir()
            sentinel, content = base / "sentinel.txt", b"sentinel-" + secrets.token_hex(16).encode()
            sentinel.write_bytes(content)
            with ProxyServer(base / "proxy", upstream.url) as proxy:
                served = warm(proxy, target, [blob.digest for blob in image.blobs])
                requests = hostile_requests(proxy.host, target)
                requests += fuzzed_requests(proxy.host, target, args.fuzz, random.Random(args.seed))
                started = time.monotonic()
                results = run(proxy, requests, args.timeout, (PASSWD_MARKER, content))
                elapsed = time.monotonic() - started
                damaged = still_served(proxy, target, served)
                stray = stray_files(proxy, sentinel, content)
                log_tail = proxy.log_tail(5)
    return report(results, elapsed, damaged, stray, log_tail)


def report(
    results: dict[str, tuple[HostileRequest, RawReply | None, list[str]]],
    elapsed: float,
    damaged: list[str],
    stray: list[str],
    log_tail: str,
) -> int:
    replies = [(request, reply) for request, reply, _ in results.values()]
    statuses = Counter(str(reply.status) if reply and reply.status else "no reply" for _, reply in replies)
    server_errors = [label for label, (_, reply, _) in results.items() if reply and (reply.status or 0) >= 500]
    hangs = [label for label, (_, reply, _) in results.items() if reply is None or reply.hung]
    no_envelope = [
        label
        for label, (request, reply, _) in results.items()
        if reply is not None and request.under_v2 and envelope_problem(request, reply) is not None
    ]
    leaks = [label for label, (_, _, found) in results.items() if any("outside the cache" in f for f in found)]
    failed = {label: found for label, (_, _, found) in results.items() if found}

    print(f"requests: {len(results)} in {elapsed:.1f} s")
    print("by status: " + ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items())))
    print(f"5xx: {len(server_errors)}")
    print(f"hangs/timeouts: {len(hangs)}")
    print(f"4xx from the app without the JSON error envelope: {len(no_envelope)}")
    print(
        f"cached manifest and blobs still served byte for byte: {'yes' if not damaged else 'NO: ' + '; '.join(damaged)}"
    )
    print(f"replies with bytes from outside the cache: {len(leaks)}")
    print(f"files outside the cache: {', '.join(stray) if stray else 'none'}")
    if failed:
        # Including statuses outside a request's allowed set, which alone do not fail the run.
        print(f"\n{len(failed)} requests broke the contract:")
        for label, found in list(failed.items())[:50]:
            request = results[label][0]
            print(f"  {label}: {'; '.join(found)[:300]}\n    sent: {request.raw[:200]!r}")
        if len(failed) > 50:
            print(f"  ... and {len(failed) - 50} more")
        print(f"\nproxy log, last lines:\n{log_tail}")
    ok = not (server_errors or hangs or no_envelope or leaks or damaged or stray)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
