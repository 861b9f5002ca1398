"""The status page's figures, read from the same samples ``/metrics`` shows (all workers' with several)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import Metric

from proxy.config import DOCKER_HUB
from proxy.observability.metrics import PREFIX
from proxy.observability.upstreams import RecentError, UpstreamStatus

__all__ = ["Summary", "UpstreamRow", "summarize"]

_SERVED_FROM_CACHE = ("hit", "stale")
_ANSWERED = ("hit", "stale", "miss", "relayed")
TOP_IMAGES = 10


@dataclass(frozen=True)
class UpstreamRow:
    registry: str
    breaker_open: bool
    reachable: bool | None
    last_error: str | None
    requests: int
    errors: int  # failed requests and 5xx/429 answers
    pulls_saved: int  # manifest GETs answered from the cache: pulls the upstream did not count
    limit: int | None
    remaining: int | None
    window: int | None

    @property
    def headroom(self) -> float | None:
        return self.remaining / self.limit if self.limit and self.remaining is not None else None


@dataclass(frozen=True)
class Summary:
    answers: dict[str, int]  # manifest and blob requests by cache result
    hit_ratio: float | None  # served from the cache, of those answered (errors aside)
    bytes_saved: int  # body bytes served from the cache
    bytes_fetched: int  # body bytes received from upstreams
    hub_pulls_saved: int | None  # None when Docker Hub is not an upstream
    fills_in_flight: int
    joins: int
    cache_bytes: int | None
    cache_objects: int | None
    cache_budget: int | None
    evictions: int
    top_images: list[tuple[str, str, int]]  # (upstream, repository, pulls), most pulled first
    upstreams: list[UpstreamRow]
    recent_errors: list[RecentError]

    @property
    def cache_use(self) -> float | None:
        return self.cache_bytes / self.cache_budget if self.cache_bytes is not None and self.cache_budget else None


Labels = dict[str, str]


def summarize(families: Iterable[Metric], status: UpstreamStatus) -> Summary:
    samples: dict[str, list[tuple[Labels, float]]] = defaultdict(list)
    for family in families:
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))

    def total(name: str, **match: str | tuple[str, ...]) -> int:
        return int(sum(value for labels, value in samples[name] if _matches(labels, match)))

    def gauge(name: str, **match: str) -> int | None:
        found = [value for labels, value in samples[name] if _matches(labels, match)]
        return int(max(found)) if found else None

    requests = f"{PREFIX}_requests_total"
    answers = {
        cache: total(requests, endpoint=("manifest", "blob"), cache=cache)
        for cache in ("hit", "stale", "miss", "relayed", "error")
    }
    answered = sum(answers[cache] for cache in _ANSWERED)
    pulls: dict[tuple[str, str], int] = defaultdict(int)
    for labels, value in samples[f"{PREFIX}_image_pulls_total"]:
        pulls[(labels["upstream"], labels["repository"])] += int(value)
    top = sorted(((upstream, repo, n) for (upstream, repo), n in pulls.items()), key=lambda row: (-row[2], row[1]))
    rows = []
    for registry, state in status.states.items():
        upstream_requests = f"{PREFIX}_upstream_requests_total"
        errors = sum(
            int(value)
            for labels, value in samples[upstream_requests]
            if labels["upstream"] == registry and _is_error(labels["status"])
        )
        rows.append(
            UpstreamRow(
                registry=registry,
                breaker_open=bool(gauge(f"{PREFIX}_upstream_breaker_open", upstream=registry)),
                reachable=state.reachable,
                last_error=state.failure,
                requests=total(upstream_requests, upstream=registry),
                errors=errors,
                pulls_saved=total(
                    requests, endpoint="manifest", method="GET", cache=_SERVED_FROM_CACHE, upstream=registry
                ),
                limit=gauge(f"{PREFIX}_upstream_ratelimit_limit", upstream=registry),
                remaining=gauge(f"{PREFIX}_upstream_ratelimit_remaining", upstream=registry),
                window=gauge(f"{PREFIX}_upstream_ratelimit_window_seconds", upstream=registry),
            )
        )
    hub = next((row for row in rows if row.registry == DOCKER_HUB), None)
    return Summary(
        answers=answers,
        hit_ratio=(answers["hit"] + answers["stale"]) / answered if answered else None,
        bytes_saved=total(f"{PREFIX}_response_bytes_total", cache=_SERVED_FROM_CACHE),
        bytes_fetched=total(f"{PREFIX}_upstream_bytes_total"),
        hub_pulls_saved=hub.pulls_saved if hub is not None else None,
        fills_in_flight=total(f"{PREFIX}_fills_in_flight"),
        joins=total(f"{PREFIX}_singleflight_joins_total"),
        cache_bytes=gauge(f"{PREFIX}_cache_bytes"),
        cache_objects=gauge(f"{PREFIX}_cache_objects"),
        cache_budget=gauge(f"{PREFIX}_cache_budget_bytes"),
        evictions=total(f"{PREFIX}_evictions_total"),
        top_images=top[:TOP_IMAGES],
        upstreams=rows,
        recent_errors=list(status.recent),
    )


def _is_error(status: str) -> bool:
    # A failure kind (dns, refused, timeout, tls, network), a server error, or a rate limit.
    return not status.isdigit() or int(status) >= 500 or status == "429"


def _matches(labels: Labels, match: Mapping[str, str | tuple[str, ...]]) -> bool:
    for key, wanted in match.items():
        value = labels.get(key)
        if value != wanted and not (isinstance(wanted, tuple) and value in wanted):
            return False
    return True
