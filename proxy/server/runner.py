"""Running the app under uvicorn: the listening socket, the zero-copy self-check, and start-up failures.

Start-up refusals (a config that cannot work, an address that cannot be listened on, an unusable cache root,
an htpasswd file or TLS certificate that cannot be used)
are one line on stderr naming the key, and exit status 2, never a traceback; see ``EXIT_*``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.config import Settings
from proxy.observability import logs, multiprocess
from proxy.server.workers import supervise
from storage.preflight import check_root

if TYPE_CHECKING:
    import uvicorn

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_REFUSED", "build_server", "serve"]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1  # the server stopped on an unexpected error (the log says which)
EXIT_REFUSED = 2  # refused to start: config, listen address or cache root (one line says which key)


class StartupRefused(Exception):
    """The server cannot start as configured; the message is the one line the operator sees."""


def serve(settings: Settings, log_level: str) -> int:
    try:
        _check_storage(settings)
        _check_auth(settings)
        _check_tls(settings)
        listener = _listen(settings)
    except StartupRefused as exc:
        print(f"registry-proxy: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    # SIGHUP means "reload the certificate" (proxy.server.tls takes it over when TLS is on); never "hang up".
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    workers = settings.server.workers or os.cpu_count() or 1
    scheme = "https" if settings.server.tls_cert is not None else "http"
    address = f"{scheme}://{settings.server.host}:{settings.server.port}"
    with listener:
        if workers == 1:
            log.info("serving on %s (pid %d)", address, os.getpid())
            return _run(settings, log_level, listener)
        log.info("serving on %s with %d worker processes", address, workers)
        # Before forking: every worker's metrics go to files there, and any worker answers /metrics with all.
        metrics_dir = multiprocess.enable()
        try:
            return supervise(workers, lambda _number: _run(settings, log_level, listener, metrics_dir))
        finally:
            if metrics_dir is not None:
                multiprocess.remove(metrics_dir)


def _run(settings: Settings, log_level: str, listener: socket.socket, metrics_dir: Path | None = None) -> int:
    server = build_server(settings, log_level, metrics_dir)
    server.run(sockets=[listener])
    return EXIT_OK if server.started else EXIT_FAILURE


def build_server(settings: Settings, log_level: str, metrics_dir: Path | None = None) -> uvicorn.Server:
    """The app under uvicorn with this module's wiring, not yet running: :func:`serve` runs it on the configured
    address, ``registry-proxy warm`` on a loopback port of its own."""
    # Imported here, in the worker: the parent of several workers only supervises them, and stays small (every
    # worker's resident memory counts, and it would be ~30 MB more per parent with the app imported before the fork).
    import uvicorn

    from proxy.app import create_app
    from proxy.server.connections import (
        ConnectionLimits,
        auto_max_connections,
        guarded_protocol,
        raise_descriptor_limit,
    )
    from proxy.server.tls import TlsReloader
    from proxy.server.uvicorn_internals import unsupported
    from proxy.server.zerocopy import ZeroCopyMiddleware

    server_settings = settings.server
    descriptors = raise_descriptor_limit()
    limits = ConnectionLimits(
        header_timeout=server_settings.header_timeout,
        max_header_bytes=server_settings.max_header_bytes,
        max_connections=server_settings.max_connections or auto_max_connections(descriptors),
    )
    app: Any = create_app(settings, metrics_dir=metrics_dir)
    cert, key = server_settings.tls_cert, server_settings.tls_key
    tls = (cert, key) if cert is not None and key is not None else None
    http: Any = "httptools"
    limit_concurrency = None
    reason = unsupported()
    if reason is None:
        if tls is None:  # sendfile beneath TLS would send plaintext; the scheme check inside is a second guard
            app = ZeroCopyMiddleware(app, stall_timeout=server_settings.send_timeout)
        http = guarded_protocol(limits)
    else:
        # Plain uvicorn: no zero-copy sends, no header deadline or cap; its own connection limit (a bare 503).
        log.warning("running on plain uvicorn, without zero-copy sends or header limits: %s", reason)
        limit_concurrency = limits.max_connections
    log.info("accepting up to %d connections (open-files limit %d)", limits.max_connections, descriptors)
    config: uvicorn.Config | None = None
    if tls is not None:
        app = TlsReloader(app, tls[0], tls[1], lambda: config.ssl if config is not None else None)
    config = uvicorn.Config(
        app,
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
        loop="uvloop",
        http=http,
        timeout_keep_alive=int(server_settings.keep_alive) or 1,
        limit_concurrency=limit_concurrency,
        # Logging is ours (proxy.observability.logs): uvicorn neither configures it nor sets levels, and its
        # access log (a formatted line per request, ~11 % of a cached manifest's time) gives way to ours.
        log_level=None,
        log_config=None,
        access_log=False,
        server_header=False,
    )
    logs.quiet_uvicorn(log_level)
    return uvicorn.Server(config)


def _listen(settings: Settings) -> socket.socket:
    host, port = settings.server.host, settings.server.port
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family, backlog=2048)
    except socket.gaierror as exc:
        raise StartupRefused(f"server.host: cannot resolve {host!r}: {exc.strerror}") from None
    except OSError as exc:
        raise StartupRefused(f"server.host/server.port: cannot listen on {host}:{port}: {exc.strerror}") from None


def _check_auth(settings: Settings) -> None:
    htpasswd = settings.auth.htpasswd
    if htpasswd is not None:
        from proxy.auth.passwords import HtpasswdError, load_htpasswd  # only with [auth]; see build_server

        try:
            load_htpasswd(htpasswd)
        except HtpasswdError as exc:
            raise StartupRefused(f"auth.htpasswd: {exc}") from None


def _check_tls(settings: Settings) -> None:
    cert, key = settings.server.tls_cert, settings.server.tls_key
    if cert is None or key is None:
        return
    from proxy.server.tls import check_tls_files  # only with TLS; see build_server

    if problem := check_tls_files(cert, key):
        raise StartupRefused(f"server.tls_cert/server.tls_key: {problem}")


def _check_storage(settings: Settings) -> None:
    s3 = settings.storage.s3
    if s3 is not None:
        # The bucket holds the blobs: one that cannot take an object is refused like an unusable root. (Imported
        # here: the supervising parent of the workers stays lean.)
        from storage.s3.objects import S3Settings, check_bucket

        location = S3Settings(s3.endpoint, s3.bucket, s3.region, s3.access_key, s3.secret_key, s3.prefix)
        problem = asyncio.run(check_bucket(location))
        if problem is not None:
            raise StartupRefused(f"storage.endpoint: {problem}")
    root = settings.storage.root
    problem = check_root(root)
    if problem is None:
        return
    if settings.storage.required:
        raise StartupRefused(
            f"storage.root: {root} is not usable ({problem}); fix the path or permissions, or set "
            "[storage] required = false to relay pulls uncached"
        )
    log.error("cache root %s is not usable (%s); relaying every pull uncached (storage.required = false)",
              root, problem)  # fmt: skip
