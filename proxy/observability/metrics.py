"""The proxy's Prometheus metrics, in a registry of their own (never prometheus-client's global one).

One :class:`Metrics` per app. It is what the upstream clients and pull-through services report to (it implements
:class:`~proxy.upstream.events.UpstreamEvents` and :class:`~proxy.pullthrough.events.PullEvents`), and what
``/metrics`` and the status page read. With several worker processes each worker writes its values to files in the
multiprocess directory and any worker answers a scrape with the sum over all of them
(:mod:`proxy.observability.multiprocess`); each gauge says how its values combine across workers.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric

from proxy.observability.multiprocess import collecting_registry
from proxy.observability.upstreams import UpstreamStatus
from proxy.upstream.events import RateLimit

__all__ = ["CACHE_RESULTS", "Metrics"]

PREFIX = "registry_proxy"
# X-Cache, lower-cased, plus what a request without one ended in.
CACHE_RESULTS = ("hit", "miss", "stale", "relayed", "error", "none")
# Requests take from a millisecond (a cached manifest) to minutes (a big layer on a slow link).
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30, 120, 600)
_UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Repositories counted by name in image_pulls; pulls of any further one count as "(other)", so that a client
# asking for ever new names cannot grow /metrics without bound.
MAX_PULLED_REPOSITORIES = 100
OTHER_REPOSITORIES = "(other)"


class Metrics:
    def __init__(
        self,
        registries: Iterable[str],
        multiprocess_dir: Path | None = None,
        max_repositories: int = MAX_PULLED_REPOSITORIES,
    ) -> None:
        """``registries``: the configured upstreams; ``multiprocess_dir``: where every worker's values are, when
        there are several workers (the directory the parent enabled before forking)."""
        self._multiprocess_dir = multiprocess_dir
        self._max_repositories = max_repositories
        self.upstreams = UpstreamStatus(list(registries))
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests answered, by endpoint, method, status, cache result (hit, miss, stale, relayed, error, none) "
            "and upstream",
            ["endpoint", "method", "status", "cache", "upstream"],
            registry=r,
        )
        self.request_seconds = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from a request's arrival to the last byte of its answer",
            ["endpoint"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.response_bytes = Counter(
            f"{PREFIX}_response_bytes",
            "Body bytes sent to clients, by cache result (hit: served from the cache)",
            ["cache"],
            registry=r,
        )
        self.image_pulls = Counter(
            f"{PREFIX}_image_pulls",
            f"Manifest requests by tag answered 200 or 304, by upstream and repository (the first "
            f"{max_repositories} repositories by name, the rest as {OTHER_REPOSITORIES!r})",
            ["upstream", "repository"],
            registry=r,
        )
        self.upstream_requests = Counter(
            f"{PREFIX}_upstream_requests",
            "Requests to upstreams and their redirect targets, by status code, or by failure: dns, refused, "
            "timeout, tls, network",
            ["upstream", "method", "status"],
            registry=r,
        )
        self.upstream_seconds = Histogram(
            f"{PREFIX}_upstream_request_duration_seconds",
            "Time to an upstream's response headers (or failure)",
            ["upstream", "method"],
            buckets=_UPSTREAM_BUCKETS,
            registry=r,
        )
        self.upstream_bytes_total = Counter(
            f"{PREFIX}_upstream_bytes", "Body bytes received from upstreams", ["upstream"], registry=r
        )
        self.token_fetches = Counter(
            f"{PREFIX}_token_fetches",
            "Token fetches from upstreams' token services, by result (ok, error)",
            ["upstream", "result"],
            registry=r,
        )
        self.breaker_open = Gauge(
            f"{PREFIX}_upstream_breaker_open",
            "1 while an upstream's circuit breaker is open (from its opening until the upstream answers again)",
            ["upstream"],
            multiprocess_mode="livemax",  # open in any worker
            registry=r,
        )
        rate_limit = ("upstream_ratelimit_limit", "upstream_ratelimit_remaining", "upstream_ratelimit_window_seconds")
        helps = (
            "Pulls allowed per window, as the upstream last said (Docker Hub's ratelimit-limit header)",
            "Pulls left in the window, as the upstream last said (Docker Hub's ratelimit-remaining header)",
            "The rate-limit window in seconds (the w= of Docker Hub's ratelimit headers)",
        )
        # The upstream's latest word, whichever worker heard it.
        self.ratelimit_limit, self.ratelimit_remaining, self.ratelimit_window = (
            Gauge(f"{PREFIX}_{name}", text, ["upstream"], multiprocess_mode="mostrecent", registry=r)
            for name, text in zip(rate_limit, helps, strict=True)
        )
        self.fills = Gauge(
            f"{PREFIX}_fills_in_flight",
            "Blob downloads into the cache in progress",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.joins = Counter(
            f"{PREFIX}_singleflight_joins",
            "Requests answered by work another request started: a blob fill (blob) or a manifest lookup (manifest)",
            ["kind"],
            registry=r,
        )
        # The cache's size against its budget: made when the cache lifecycle first reports it (absent without one,
        # rather than a misleading 0).
        self._cache_gauges: tuple[Gauge, Gauge, Gauge] | None = None
        self.evictions = Counter(f"{PREFIX}_evictions", "Blobs evicted to keep the cache in budget", registry=r)
        self.evicted_bytes = Counter(f"{PREFIX}_evicted_bytes", "Bytes evicted to keep the cache in budget", registry=r)
        for registry in self.upstreams.states:
            self.breaker_open.labels(registry).set(0)
        # The request path's label sets, looked up once each: labels() takes a lock and builds a key every call.
        self._request_children: dict[tuple[str, str, int, str, str], tuple[Counter, Histogram, Counter]] = {}
        self._pulled: set[tuple[str, str]] = set()

    # -- requests (proxy.observability.requests) ----------------------------------------------------------------

    def request(
        self, endpoint: str, method: str, status: int, cache: str, upstream: str, sent: int, seconds: float
    ) -> None:
        key = (endpoint, method, status, cache, upstream)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(endpoint, method, str(status), cache, upstream),
                self.request_seconds.labels(endpoint),
                self.response_bytes.labels(cache),
            )
            self._request_children[key] = children
        count, duration, sent_bytes = children
        count.inc()
        duration.observe(seconds)
        if sent:
            sent_bytes.inc(sent)

    def image_pulled(self, upstream: str, repository: str) -> None:
        key = (upstream, repository)
        if key not in self._pulled:
            if len(self._pulled) >= self._max_repositories:
                key = (upstream, OTHER_REPOSITORIES)
            else:
                self._pulled.add(key)
        self.image_pulls.labels(*key).inc()

    # -- UpstreamEvents ------------------------------------------------------------------------------------------

    def upstream_request(self, registry: str, method: str, status: str, seconds: float) -> None:
        self.upstream_requests.labels(registry, method, status).inc()
        self.upstream_seconds.labels(registry, method).observe(seconds)
        if status.isdigit() and int(status) < 500:
            self.upstreams.answered(registry)

    def upstream_bytes(self, registry: str, count: int) -> None:
        self.upstream_bytes_total.labels(registry).inc(count)

    def upstream_failure(self, registry: str, message: str) -> None:
        self.upstreams.failed(registry, message)

    def rate_limit(self, registry: str, limit: RateLimit) -> None:
        self.ratelimit_limit.labels(registry).set(limit.limit)
        self.ratelimit_remaining.labels(registry).set(limit.remaining)
        self.ratelimit_window.labels(registry).set(limit.window)

    def token_fetch(self, registry: str, ok: bool) -> None:
        self.token_fetches.labels(registry, "ok" if ok else "error").inc()

    def breaker(self, registry: str, open: bool) -> None:
        self.breaker_open.labels(registry).set(1 if open else 0)
        self.upstreams.breaker(registry, open)

    # -- PullEvents ----------------------------------------------------------------------------------------------

    def fill_started(self) -> None:
        self.fills.inc()

    def fill_finished(self) -> None:
        self.fills.dec()

    def joined(self, kind: str) -> None:
        self.joins.labels(kind).inc()

    # -- the cache lifecycle -------------------------------------------------------------------------------------

    def cache_usage(self, size: int, objects: int, budget: int | None) -> None:
        if self._cache_gauges is None:
            # The latest word of whichever worker's lifecycle counted last: they all count the one shared cache.
            self._cache_gauges = (
                Gauge(f"{PREFIX}_cache_bytes", "Bytes of blobs in the cache", multiprocess_mode="mostrecent",
                      registry=self.registry),
                Gauge(f"{PREFIX}_cache_objects", "Blobs in the cache", multiprocess_mode="mostrecent",
                      registry=self.registry),
                Gauge(f"{PREFIX}_cache_budget_bytes", "The cache's size budget ([storage] max_size); 0 without one",
                      multiprocess_mode="mostrecent", registry=self.registry),
            )  # fmt: skip
        cache_bytes, cache_objects, cache_budget = self._cache_gauges
        cache_bytes.set(size)
        cache_objects.set(objects)
        cache_budget.set(budget or 0)

    def evicted(self, blobs: int, size: int) -> None:
        self.evictions.inc(blobs)
        self.evicted_bytes.inc(size)

    # -- reading -------------------------------------------------------------------------------------------------

    def exposition_registry(self) -> CollectorRegistry:
        """What /metrics shows: this registry, or with several workers the sum over every worker's files."""
        if self._multiprocess_dir is None:
            return self.registry
        return collecting_registry(self._multiprocess_dir)

    def collect(self) -> list[Metric]:
        return list(self.exposition_registry().collect())
