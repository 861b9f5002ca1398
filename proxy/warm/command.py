"""``registry-proxy warm``: the arguments, choosing between a running proxy and a stopped cache, the run.

Running proxy: warmed through its HTTP API (``--proxy URL``, else the address in the config's ``[server]``).
Stopped cache: with ``--stopped``, or when a config file was given and nothing listens at its address, the cache is
served by this process on a loopback port while it is warmed (see :mod:`proxy.warm.inprocess`).

With client authentication on (``[auth]``), warm logs in like any client (``--username`` and a password from the
environment or a file, never the command line); the in-process server keeps the same access rules.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from rich.console import Console

from proxy import __version__
from proxy.config import Settings
from proxy.warm.cifiles import FORMATS
from proxy.warm.client import BlobOutcome, ImageResult, Observer, Warmer
from proxy.warm.display import ProgressDisplay, image_line, not_warmed_line, summary
from proxy.warm.inprocess import ServeFailed, serving
from proxy.warm.platforms import Platform
from proxy.warm.targets import Plan, Target, plan
from storage.digest import Digest
from storage.preflight import check_root

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "add_arguments", "run"]

EXIT_OK = 0  # every image warmed (references skipped for unresolved variables do not count against it)
EXIT_FAILED = 1  # some image, blob or file failed; the others were still warmed
EXIT_USAGE = 2  # bad arguments or config, no proxy to warm through, an unusable cache root
_INTERRUPTED = 130

_PROBE_TIMEOUT = 3.0


class _Refused(Exception):
    """A usage or configuration problem: one line, exit status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image references: alpine:3.20, ghcr.io/org/app:1")
    parser.add_argument(
        "--from",
        dest="files",
        nargs="+",
        action="extend",
        type=Path,
        default=[],
        metavar="FILE",
        help="CI files to find images in: GitHub Actions workflows, .gitlab-ci.yml, compose files, Dockerfiles, "
        "Kubernetes manifests",
    )
    parser.add_argument("--format", choices=FORMATS, help="the kind of every --from file (default: from its name)")
    parser.add_argument(
        "--platform",
        action="append",
        default=[],
        metavar="OS/ARCH[/VARIANT]",
        help="warm only these platforms of multi-platform images (repeatable, or comma-separated; default: all)",
    )
    parser.add_argument("--proxy", metavar="URL", help="the running proxy (default: the config's [server] address)")
    parser.add_argument(
        "--stopped",
        action="store_true",
        help="warm the cache of --config directly, with no proxy running (it is served in-process meanwhile)",
    )
    parser.add_argument("--config", type=Path, default=None, help="as for serve")
    parser.add_argument("--username", help="log in to the proxy as this user (or static token name)")
    parser.add_argument("--password-env", metavar="VAR", help="environment variable holding the password")
    parser.add_argument("--password-file", type=Path, metavar="FILE", help="file holding the password")
    parser.add_argument("--cacert", type=Path, metavar="FILE", help="CA certificate(s) to trust for an https proxy")
    parser.add_argument("--jobs", type=int, default=4, metavar="N", help="blobs fetched at a time (default 4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress display, only the result lines")


def run(args: argparse.Namespace, settings: Settings, *, configured: bool) -> int:
    """``configured``: a config file was named (``--config`` or ``$REGISTRY_PROXY_CONFIG``), not the defaults."""
    try:
        platforms = _platforms(args.platform)
        if not args.images and not args.files:
            raise _Refused("nothing to warm: name images, or CI files with --from")
        if args.proxy is not None and args.stopped:
            raise _Refused("--proxy and --stopped exclude each other")
        if not 1 <= args.jobs <= 64:
            raise _Refused("--jobs must be between 1 and 64")
        # The registries the proxy serves are known when its configuration is; otherwise the proxy answers.
        knows_config = args.stopped or (configured and args.proxy is None)
        served = frozenset(u.registry for u in settings.upstreams) if knows_config else None
        access = _Access(_credentials(args), _verify(args.cacert))
        work = plan(args.images, args.files, kind=args.format, platforms=platforms, served=served)
        for line in work.file_errors:
            print(f"registry-proxy: warm: {line}", file=sys.stderr)
        for item in work.not_warmed:
            print(not_warmed_line(item))
        if not work.targets:
            return _finish(work, [], [])
        url, stopped = _where(args, settings, configured, access)
    except _Refused as exc:
        print(f"registry-proxy: warm: {exc}", file=sys.stderr)
        return EXIT_USAGE
    console = Console(stderr=True)
    progress = not args.no_progress and console.is_terminal
    try:
        if stopped:
            with serving(settings) as url:
                return _warm(url, access, work, args.jobs, console if progress else None)
        return _warm(url, access, work, args.jobs, console if progress else None)
    except ServeFailed as exc:
        print(f"registry-proxy: warm: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("registry-proxy: warm: interrupted", file=sys.stderr)
        return _INTERRUPTED


def _warm(url: str, access: _Access, work: Plan, jobs: int, console: Console | None) -> int:
    def report(result: ImageResult, target: Target) -> None:
        print(image_line(result, target), flush=True)

    if console is None:
        results, blobs = asyncio.run(_warm_all(url, access, work.targets, jobs, None, report))
    else:
        with ProgressDisplay(console, len(work.targets)) as display:
            results, blobs = asyncio.run(_warm_all(url, access, work.targets, jobs, display, report))
    return _finish(work, results, blobs)


async def _warm_all(
    url: str,
    access: _Access,
    targets: list[Target],
    jobs: int,
    observer: Observer | None,
    report: Callable[[ImageResult, Target], None],
) -> tuple[list[ImageResult], list[tuple[int, BlobOutcome]]]:
    results = []
    async with _client(url, access, jobs) as client:
        warmer = Warmer(client, observer, jobs=jobs)
        for target in targets:
            result = await warmer.warm(target.reference, target.platforms)
            report(result, target)
            results.append(result)
    blobs: dict[Digest, tuple[int, BlobOutcome]] = warmer.blobs
    return results, list(blobs.values())


def _finish(work: Plan, results: list[ImageResult], blobs: list[tuple[int, BlobOutcome]]) -> int:
    for line in summary(results, work.not_warmed, blobs):
        print(line)
    if work.file_errors:
        print(f"files: {len(work.file_errors)} could not be read")
    failed = work.failures + sum(1 for r in results if r.outcome is BlobOutcome.FAILED)
    return EXIT_FAILED if failed else EXIT_OK


def _client(url: str, access: _Access, jobs: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url,
        auth=access.auth,
        verify=access.verify,
        # Between two reads of a cold blob the proxy waits on its upstream; its own read timeout is 60 s by default.
        timeout=httpx.Timeout(120.0, connect=5.0),
        limits=httpx.Limits(max_connections=jobs + 2),
        headers={"User-Agent": f"registry-proxy-warm/{__version__}"},
        # The proxy is next to the CI runners: never through an outbound HTTP proxy from the environment.
        trust_env=False,
    )


def _platforms(values: list[str]) -> tuple[Platform, ...]:
    try:
        return tuple(Platform.parse(p) for value in values for p in value.split(",") if p.strip())
    except ValueError as exc:
        raise _Refused(f"--platform: {exc}") from None


def _where(args: argparse.Namespace, settings: Settings, configured: bool, access: _Access) -> tuple[str, bool]:
    """The URL to warm through, and whether the cache is stopped (to be served in-process)."""
    if args.proxy is not None:
        url = args.proxy.rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
            raise _Refused(f"--proxy: expected http(s)://host[:port], got {args.proxy!r}")
        if (problem := _probe(url, access)[1]) is not None:
            raise _Refused(f"--proxy: {problem}")
        return url, False
    url = _server_url(settings)
    listening, problem = _probe(url, access)
    if problem is None and not args.stopped:
        return url, False
    if args.stopped and listening:
        # Serving the cache here would run the start-up clean-up, which removes the partial files of a running
        # proxy's fills.
        raise _Refused(f"something listens at {url}: warm through the running proxy (leave out --stopped)")
    if not args.stopped and (listening or not configured):
        hint = "" if configured else "; start it, or name its config with --config (and --stopped if it is stopped)"
        raise _Refused(f"{problem}{hint}")
    root = settings.storage.root
    if (unusable := check_root(root)) is not None:
        raise _Refused(f"storage.root: {root} is not usable ({unusable})")
    if not args.stopped:
        print(f"registry-proxy: warm: nothing listens at {url}; warming the cache at {root} directly", file=sys.stderr)
    return url, True


def _probe(url: str, access: _Access) -> tuple[bool, str | None]:
    """Whether anything listens at ``url``, and what is wrong (None: a registry answers there).

    Listening is asked of TCP itself: a TLS or HTTP failure must never pass for a stopped proxy, whose cache would
    then be served a second time from here.
    """
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=_PROBE_TIMEOUT).close()
    except OSError:
        return False, f"nothing listens at {url}"
    try:
        response = httpx.get(f"{url}/v2/", timeout=_PROBE_TIMEOUT, auth=access.auth, verify=access.verify,
                             trust_env=False)  # fmt: skip
    except httpx.HTTPError as exc:
        return True, f"{url} does not answer properly: {exc or type(exc).__name__}"
    if "docker-distribution-api-version" not in response.headers:
        return True, f"{url} answers, but not as a registry (HTTP {response.status_code} to GET /v2/)"
    if response.status_code in (401, 403):
        login = "--username and --password-env/--password-file" if access.auth is None else "other credentials"
        return True, f"{url} wants a login (HTTP {response.status_code}): give {login}"
    return True, None


def _server_url(settings: Settings) -> str:
    host = settings.server.host
    # The proxy listens on every address: this machine reaches it on loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    scheme = "https" if settings.server.tls_cert is not None else "http"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{settings.server.port}"


class _Access:
    """How to reach the proxy: the login (Basic, which the proxy accepts beside its token flow) and TLS trust."""

    def __init__(self, auth: httpx.BasicAuth | None, verify: ssl.SSLContext | bool) -> None:
        self.auth = auth
        self.verify = verify


def _credentials(args: argparse.Namespace) -> httpx.BasicAuth | None:
    if args.password_env is not None and args.password_file is not None:
        raise _Refused("give --password-env or --password-file, not both")
    given = args.password_env is not None or args.password_file is not None
    if args.username is None:
        if given:
            raise _Refused("a password is given but no --username")
        return None
    if args.password_env is not None:
        password = os.environ.get(args.password_env)
        if password is None:
            raise _Refused(f"--password-env: environment variable {args.password_env} is not set")
    elif args.password_file is not None:
        try:
            password = args.password_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise _Refused(f"--password-file: cannot read {args.password_file}: {exc}") from None
    else:
        raise _Refused("--username needs --password-env or --password-file (never a password on the command line)")
    return httpx.BasicAuth(args.username, password)


def _verify(cacert: Path | None) -> ssl.SSLContext | bool:
    if cacert is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(cacert))
    except (OSError, ssl.SSLError) as exc:
        raise _Refused(f"--cacert: cannot use {cacert}: {exc}") from None
