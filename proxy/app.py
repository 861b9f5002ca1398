"""The composition root: the only place that builds concrete objects and wires them together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
from starlette.applications import Starlette
from starlette.authentication import AuthenticationError
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import Route

from proxy import __version__
from proxy.auth.access import AccessControl
from proxy.auth.backend import AuthFailed, ClientAuthBackend
from proxy.auth.challenge import TOKEN_PATH
from proxy.auth.passwords import Htpasswd
from proxy.auth.rules import ANONYMOUS, AUTHENTICATED, AccessPolicy, AccessRule
from proxy.auth.tokens import TokenService, load_or_create_key
from proxy.config import S3StorageSettings, Settings, UpstreamSettings
from proxy.endpoints.base import api_base
from proxy.endpoints.blobs import get_blob
from proxy.endpoints.catalog import catalog
from proxy.endpoints.fallback import not_found_or_unsupported
from proxy.endpoints.manifests import get_manifest
from proxy.endpoints.referrers import list_referrers
from proxy.endpoints.tags import list_tags
from proxy.endpoints.token import issue_token
from proxy.errors import RegistryError
from proxy.lifecycle.budget import Budget
from proxy.lifecycle.prefetch import Prefetcher, targets
from proxy.lifecycle.pulls import UncountedPulls
from proxy.lifecycle.service import Lifecycle
from proxy.lifecycle.shared import LocalState, SharedLifecycle
from proxy.middleware import ApiVersionHeaderMiddleware, RequestLimitsMiddleware
from proxy.observability.access_log import AccessLog
from proxy.observability.cache_usage import report_cache_usage
from proxy.observability.exposition import MetricsEndpoint
from proxy.observability.health import Health
from proxy.observability.metrics import Metrics
from proxy.observability.requests import RequestObserver
from proxy.observability.status_page import StatusPage
from proxy.pullthrough.blobs import BlobService
from proxy.pullthrough.catalog import CatalogService
from proxy.pullthrough.manifests import ManifestService
from proxy.pullthrough.memo import DEFAULT_MAX_BYTES as MEMO_MAX_BYTES, ManifestMemo
from proxy.pullthrough.negative import NegativeCache
from proxy.pullthrough.referrers import ReferrersService
from proxy.pullthrough.tags import TagService
from proxy.responses import error_response
from proxy.routing import Origin, Router
from proxy.services import Services
from proxy.upstream.auth import RegistryAuth
from proxy.upstream.breaker import CircuitBreaker
from proxy.upstream.client import UpstreamRegistry
from proxy.upstream.hosts import AllowedHosts
from proxy.upstream.limiter import Limiter
from proxy.upstream.pool import RequestPool, pool_limits
from proxy.upstream.transport import upstream_transport
from storage.accounting import AccountedBlobStore
from storage.blobs import FilesystemBlobStore
from storage.index import FilesystemIndex
from storage.interfaces import StorageError
from storage.locks import FilesystemFetchLocks
from storage.s3 import ObjectClient, S3BlobStore, S3FetchLocks, S3RepositoryIndex, S3Settings
from storage.s3.lifecycle import BucketLifecycle

__all__ = ["create_app", "upstream_registry"]

log = logging.getLogger(__name__)

# Partial files untouched this long have no writer left: a fill waits at most its read timeout for the upstream.
_SHARED_SWEEP_GRACE = 600.0

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def create_app(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None, metrics_dir: Path | None = None
) -> Starlette:
    """The ASGI app. ``transport`` replaces the network for every upstream request (tests); ``metrics_dir``: where
    every worker process's metrics are, when there are several (:mod:`proxy.observability.multiprocess`)."""
    client_auth = _client_auth(settings) if settings.auth.enabled else None
    prefetch_targets = targets(settings.prefetch)
    metrics = Metrics([upstream.registry for upstream in settings.upstreams], metrics_dir)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Services]]:
        async with AsyncExitStack() as stack:
            root = settings.storage.root.resolve()
            blobs: FilesystemBlobStore | S3BlobStore
            index: FilesystemIndex | S3RepositoryIndex
            locks: FilesystemFetchLocks | S3FetchLocks
            shared_state: SharedLifecycle
            if settings.storage.s3 is not None:
                # Blobs, the repository index and fetch locks in the bucket, which every replica shares; root keeps
                # the fills' scratch files and the inventory, this replica's working copy of the reads and pins in
                # the bucket. One client, one connection pool, for all.
                bucket = await stack.enter_async_context(ObjectClient(_s3_settings(settings.storage.s3)))
                await bucket.ensure_bucket()
                blobs = S3BlobStore(bucket, root)
                index = S3RepositoryIndex(bucket)
                locks = S3FetchLocks(bucket)
                await _sweep_locks(locks)
                shared_state = BucketLifecycle.for_root(bucket, root)
            else:
                blobs = FilesystemBlobStore(root)
                index = FilesystemIndex(root)
                locks = FilesystemFetchLocks(root)
                shared_state = LocalState(root)
            # With several worker processes on this cache (or replicas on the bucket), another may be filling now.
            shared = settings.server.workers != 1 or settings.storage.s3 is not None
            try:
                root.mkdir(parents=True, exist_ok=True)
                removed = await blobs.sweep(_SHARED_SWEEP_GRACE if shared else 0.0)
                if removed:
                    log.info("removed %d unfinished cache files left by an earlier run", removed)
            except OSError as exc:
                # Still serve: pulls are relayed uncached, which beats failing every CI job.
                log.error("cache root %s is not usable (%s); serving without caching", root, exc.strerror)
            # httpcore's pool and starlette's streaming responses use anyio, which loads its backend for the running
            # loop on first use: ~20 ms here, paid by the first pull after every start. Loaded now instead.
            await anyio.sleep(0)
            origins = []
            for upstream in settings.upstreams:
                remote = upstream_registry(upstream, transport, metrics)
                stack.push_async_callback(remote.aclose)
                origins.append(Origin(upstream.registry, remote, upstream.tag_ttl, upstream.negative_ttl))
            # The inventory, the budget and pins: every read, fill and manifest goes through its ledger.
            budget = Budget.of(settings.storage)
            lifecycle = Lifecycle(root, blobs, index, budget, on_evicted=metrics.evicted, shared=shared_state)
            await lifecycle.start()
            stack.push_async_callback(lifecycle.stop)
            usage = asyncio.create_task(
                report_cache_usage(lifecycle.totals, budget.max_size if budget else None, metrics), name="cache usage"
            )
            stack.push_async_callback(_cancel, usage)  # before the lifecycle stops (the stack unwinds in reverse)
            cache = AccountedBlobStore(blobs, lifecycle.ledger)
            router = Router(origins)
            # One bounded table of the upstreams' recent 404s, for blobs and manifests alike.
            negative = NegativeCache()
            # Pulls the prefetcher makes are not counted as pulls of the image.
            pulls = UncountedPulls(lifecycle.ledger)
            services = Services(
                router=router,
                blobs=BlobService(cache, index, negative, events=metrics),
                manifests=ManifestService(
                    cache,
                    index,
                    negative=negative,
                    images=pulls,
                    events=metrics,
                    # Hits of small manifests and fresh tags from memory; each counts as a read for the budget's LRU.
                    memo=ManifestMemo(MEMO_MAX_BYTES),
                    accessed=lifecycle.ledger.opened,
                    # Processes (workers, replicas, `warm`) on this storage ask the upstream for a manifest in turn.
                    locks=locks,
                ),
                tags=TagService(index),
                referrers=ReferrersService(cache, index),
                catalog=CatalogService(index, router.default_registry),
                access=client_auth.access if client_auth else None,
                tokens=client_auth.tokens if client_auth else None,
            )
            # [[prefetch]] in the background, through these services; also with no entries, to drop stale pins.
            election = shared_state.prefetch_election()
            prefetcher = Prefetcher(
                prefetch_targets, router, services.manifests, services.blobs, lifecycle, pulls, election
            )
            prefetcher.start()
            stack.push_async_callback(prefetcher.stop)
            s3 = settings.storage.s3
            where = f"bucket {s3.bucket} at {s3.endpoint} (scratch in {root})" if s3 else root
            log.info("cache at %s; upstreams: %s", where, ", ".join(f"{o.registry}" for o in origins))
            yield {"services": services}

    routes = [
        # First: the most frequent request (the router tries routes in order); no other route's path can match it.
        Route("/v2/{name:path}/manifests/{reference}", get_manifest, methods=["GET"]),
        Route("/v2/", api_base, methods=["GET"]),
        Route("/v2/_catalog", catalog, methods=["GET"]),
        Route("/v2/{name:path}/blobs/{digest}", get_blob, methods=["GET"]),
        Route("/v2/{name:path}/tags/list", list_tags, methods=["GET"]),
        Route("/v2/{name:path}/referrers/{digest}", list_referrers, methods=["GET"]),
        Route("/v2/{path:path}", not_found_or_unsupported, methods=_ALL_METHODS),
        Route(TOKEN_PATH, issue_token, methods=["GET"]),
    ]
    # Outside /v2/: health never needs a login; /metrics and the status page as [metrics] access says.
    observed = settings.metrics.access or ("authenticated" if client_auth is not None else "anyone")
    health = Health(settings.storage.root.resolve(), metrics.upstreams)
    exposition = MetricsEndpoint(metrics, observed)
    page = StatusPage(metrics, observed)
    routes += [
        Route("/healthz", health.alive, methods=["GET"]),
        Route("/readyz", health.ready, methods=["GET"]),
        Route("/metrics", exposition.serve, methods=["GET"]),
        Route("/", page.serve, methods=["GET"]),
    ]
    # The names requests are counted under (the metrics' endpoint label).
    endpoints: dict[Any, str] = {
        api_base: "base", catalog: "catalog", get_manifest: "manifest", get_blob: "blob", list_tags: "tags",
        list_referrers: "referrers", not_found_or_unsupported: "fallback", issue_token: "token",
        health.alive: "healthz", health.ready: "readyz", exposition.serve: "metrics", page.serve: "status",
    }  # fmt: skip
    access_log = AccessLog() if settings.log.access else None
    middleware = [
        # Outermost: it sees every answer, the refusals of the middleware below included, and the login.
        Middleware(RequestObserver, metrics=metrics, endpoints=endpoints, access_log=access_log),
        Middleware(ApiVersionHeaderMiddleware),
        Middleware(RequestLimitsMiddleware),
    ]
    if client_auth is not None:
        access = client_auth.access

        def login_failed(conn: HTTPConnection, exc: AuthenticationError) -> Response:
            error = exc.error if isinstance(exc, AuthFailed) else RegistryError.unauthorized("invalid credentials")
            return error_response(access.login_error(conn, error), head=conn.scope.get("method") == "HEAD")

        middleware.append(Middleware(AuthenticationMiddleware, backend=client_auth.backend, on_error=login_failed))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            RegistryError: _registry_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        lifespan=lifespan,
    )
    # "/v2/x/blobs/uploads/" must reach the fallback (405), not be redirected to a path without the slash.
    app.router.redirect_slashes = False
    return app


@dataclass(frozen=True)
class _ClientAuth:
    backend: ClientAuthBackend
    access: AccessControl
    tokens: TokenService


def _s3_settings(s3: S3StorageSettings) -> S3Settings:
    return S3Settings(s3.endpoint, s3.bucket, s3.region, s3.access_key, s3.secret_key, s3.prefix)


async def _sweep_locks(locks: S3FetchLocks) -> None:
    # Locks left by replicas that died holding them; each would also be taken over by the next fetch of its key.
    try:
        removed = await locks.sweep()
    except StorageError as exc:
        log.warning("cannot sweep leftover fetch locks: %s", exc)
        return
    if removed:
        log.info("removed %d fetch locks left by replicas that stopped", removed)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _client_auth(settings: Settings) -> _ClientAuth:
    auth = settings.auth
    key_file = auth.token_key_file or settings.storage.root.resolve() / ".auth" / "token.key"
    tokens = TokenService(load_or_create_key(key_file), auth.service, auth.token_lifetime)
    members: dict[str, set[str]] = {}
    for group, users in auth.groups:
        for user in users:
            members.setdefault(user, set()).add(group)
    backend = ClientAuthBackend(
        tokens,
        htpasswd=Htpasswd(auth.htpasswd) if auth.htpasswd is not None else None,
        static_tokens={token.name: token.token for token in auth.tokens},
        groups={user: frozenset(groups) for user, groups in members.items()},
    )
    rules = [
        AccessRule(rule.registry, rule.repository, rule.pull if isinstance(rule.pull, str) else frozenset(rule.pull))
        for rule in settings.access
    ]
    # Public content stays public; what the proxy's own upstream credentials can see needs a login.
    defaults = {u.registry: AUTHENTICATED if u.username else ANONYMOUS for u in settings.upstreams}
    return _ClientAuth(backend, AccessControl(AccessPolicy(rules, defaults), auth.service), tokens)


def upstream_registry(
    upstream: UpstreamSettings, transport: httpx.AsyncBaseTransport | None, metrics: Metrics | None = None
) -> UpstreamRegistry:
    """The client for one configured upstream, as the server uses it (also for CLI commands that ask upstreams);
    ``metrics`` is told what it does (a throwaway set of its own if not given)."""
    metrics = metrics or Metrics([upstream.registry])
    # Every request to the upstream, its token service and its redirect targets is built by these two clients, so
    # carries these timeouts. A request waits its turn in the RequestPool (up to read_timeout), and every request
    # with a turn has a pooled connection ready (the pools hold one per turn; token fetches happen within a turn),
    # so httpx's own wait for a pooled connection is never more than a moment: bounded like a connect.
    timeout = httpx.Timeout(upstream.read_timeout, connect=upstream.connect_timeout, pool=upstream.connect_timeout)
    limits = pool_limits(upstream.max_concurrent_requests)
    headers = {"User-Agent": f"registry-proxy/{__version__}"}
    allowed = AllowedHosts.for_url(upstream.registry, upstream.url, upstream.redirect_hosts, upstream.token_realms)
    # Unless a test gives its own, each client gets a pool whose connections read in large pieces (see
    # proxy.upstream.network): a cold blob is read at link speed rather than one 64 KiB chunk at a time.
    token_client = httpx.AsyncClient(
        timeout=timeout, limits=limits, headers=headers, transport=transport or upstream_transport(limits)
    )
    registry = upstream.registry
    auth = RegistryAuth(
        upstream.url,
        token_client,
        upstream.username,
        upstream.password,
        allowed=allowed,
        on_fetch=lambda ok: metrics.token_fetch(registry, ok),
    )
    client = httpx.AsyncClient(
        base_url=upstream.url,
        auth=auth,
        timeout=timeout,
        limits=limits,
        # The bytes we hash and store must be the bytes the registry holds, so never let anything decode.
        headers={**headers, "Accept-Encoding": "identity"},
        transport=transport or upstream_transport(limits),
    )
    pool = RequestPool(registry, Limiter(upstream.max_concurrent_requests), upstream.read_timeout)
    breaker = CircuitBreaker(registry, on_change=lambda open: metrics.breaker(registry, open))
    return UpstreamRegistry(registry, client, token_client, breaker, allowed=allowed, pool=pool, events=metrics)


async def _registry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RegistryError)
    return error_response(exc, head=request.method == "HEAD")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405 or request.method not in ("GET", "HEAD"):
        # Also for paths no route matched (such as one with an encoded newline): a write is never supported.
        error = RegistryError.unsupported()
    else:
        error = RegistryError(exc.status_code, "NOT_FOUND" if exc.status_code == 404 else "UNKNOWN", str(exc.detail))
    return error_response(error, head=request.method == "HEAD")


async def _internal_error(request: Request, exc: Exception) -> Response:
    # A bug, not a client error: the client still gets the registry envelope, the log gets the traceback.
    return error_response(RegistryError(500, "UNKNOWN", "internal error"), head=request.method == "HEAD")
