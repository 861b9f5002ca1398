"""Registry token auth (Docker Hub style) and plain Basic auth, as an ``httpx.Auth`` flow.

Tokens are cached per (realm, service, scope) until they expire and are shared by every request and
client of the upstream; concurrent requests for the same scope wait for one token fetch. Both are bounded, however
many repositories are pulled: the cache keeps the most recently used tokens (expired ones go first), and a fetch is
forgotten once it is done.

Only the upstream's own responses teach it how to authenticate, and only the upstream's own host and the token
realms in its configuration (:class:`AllowedHosts`) ever see its credentials: a request to any other origin (a blob
redirect target) passes through untouched, and a challenge naming a realm outside the configuration is refused
before any connection is made to it. Nor do credentials for an https upstream ever travel in clear text: a realm on
plain http is refused too, when there are credentials to send.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import datetime

import httpx

from proxy.errors import RegistryError
from proxy.upstream.challenge import Challenge, parse_challenges
from proxy.upstream.failures import describe
from proxy.upstream.hosts import AllowedHosts, HostRefused
from proxy.upstream.pool import Congested
from proxy.upstream.sanitize import printable

__all__ = ["RegistryAuth", "scope_for_path"]

log = logging.getLogger(__name__)

_REPOSITORY_PATH = re.compile(r"/v2/(.+)/(?:manifests|blobs|tags|referrers)/[^/]+")

# Docker's own client treats shorter lifetimes as 60 s; the token spec's default is 60 s too.
_MIN_TOKEN_LIFETIME = 60.0
# Renew a little early so that a token never expires between being picked and being checked upstream.
_RENEW_MARGIN = 0.1
# Tokens kept, one per repository pulled: enough for every repository a busy CI pulls within a token's lifetime
# (Docker Hub's: 5 minutes), a few MB at most (a token is a JWT of one to a few KB).
MAX_CACHED_TOKENS = 1024


def scope_for_path(path: str) -> str | None:
    match = _REPOSITORY_PATH.fullmatch(path)
    return f"repository:{match.group(1)}:pull" if match else None


_Key = tuple[str, str, str]  # realm, service, scope


@dataclass(frozen=True)
class _Token:
    value: str
    expires: float  # on the monotonic clock


class RegistryAuth(httpx.Auth):
    def __init__(
        self,
        upstream_url: str,
        token_client: httpx.AsyncClient,
        username: str | None = None,
        password: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        allowed: AllowedHosts | None = None,
        on_fetch: Callable[[bool], None] | None = None,
    ) -> None:
        """``token_client`` must carry the upstream's timeouts (it fetches tokens); ``allowed``: the token realms the
        upstream may name besides its own host (none if not given); ``on_fetch``: told of each token fetch, and
        whether it got a token (metrics)."""
        self._origin = _origin(httpx.URL(upstream_url))
        self._allowed = allowed or AllowedHosts.for_url(httpx.URL(upstream_url).host, upstream_url)
        self._host = self._allowed.own_host
        self._token_client = token_client
        self._username = username
        self._basic = _basic_header(username, password) if username is not None and password is not None else None
        self._clock = clock
        self._bearer: Challenge | None = None  # the upstream's Bearer challenge, once seen
        self._basic_only = False
        self._pinged = False
        self._tokens: OrderedDict[_Key, _Token] = OrderedDict()  # least recently used first
        self._fetches: dict[_Key, asyncio.Task[_Token]] = {}  # in progress only
        self.token_fetches = 0
        self._on_fetch = on_fetch or (lambda ok: None)

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if _origin(request.url) != self._origin:
            # Not the upstream (a redirect target, however it was reached): no credentials, and nothing it answers
            # may change how the upstream is authenticated.
            yield request
            return
        scope = scope_for_path(request.url.path)
        sent: _Token | None = None
        if not self._pinged and scope is not None:
            # Like Docker's client, learn how the upstream authenticates from /v2/ first: the real request
            # (a blob GET the upstream may count, or bill) is then sent once, already authorized.
            self._pinged = True
            # Built here, so it lacks what the client put on the request: carry the User-Agent over, and the
            # extensions, which hold the timeouts (without them a silent upstream holds the ping forever).
            headers = {k: v for k, v in request.headers.items() if k.lower() in ("user-agent", "accept-encoding")}
            url = request.url.copy_with(path="/v2/", query=None)
            ping = yield httpx.Request("GET", url, headers=headers, extensions=dict(request.extensions))
            self._learn(ping)
        if self._basic_only and self._basic is not None:
            request.headers["Authorization"] = self._basic
        elif self._bearer is not None and scope is not None:
            # Known upstream: authorize up front instead of paying a 401 round trip on every request.
            sent = await self._token(self._bearer, scope)
            request.headers["Authorization"] = f"Bearer {sent.value}"
        response = yield request
        if response.status_code != 401:
            return
        was_basic_only = self._basic_only
        bearer = self._learn(response)
        if bearer is not None and self._bearer is not None:
            scope = bearer.params.get("scope") or scope or ""
            if sent is not None:
                # The upstream refused a token we thought valid (revoked, clock skew): fetch a new one once.
                self._forget(self._bearer, scope, sent)
            token = await self._token(self._bearer, scope)
            request.headers["Authorization"] = f"Bearer {token.value}"
            yield request
        elif self._basic_only and not was_basic_only and self._basic is not None:
            request.headers["Authorization"] = self._basic
            yield request

    def _learn(self, response: httpx.Response) -> Challenge | None:
        """Remember how the upstream wants to be authenticated, from a 401; the Bearer challenge, if any."""
        if response.status_code != 401 or _origin(response.url) != self._origin:
            return None
        challenges = parse_challenges(response.headers.get_list("www-authenticate"))
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.params.get("realm")), None)
        if bearer is not None:
            self._bearer = Challenge("bearer", {k: v for k, v in bearer.params.items() if k != "scope"})
        elif any(c.scheme == "basic" for c in challenges) and self._basic is not None:
            self._basic_only = True
        return bearer

    def _key(self, challenge: Challenge, scope: str) -> _Key:
        return challenge.params["realm"], challenge.params.get("service", ""), scope

    def _forget(self, challenge: Challenge, scope: str, token: _Token) -> None:
        key = self._key(challenge, scope)
        if self._tokens.get(key) is token:
            del self._tokens[key]

    async def _token(self, challenge: Challenge, scope: str) -> _Token:
        key = self._key(challenge, scope)
        cached = self._tokens.get(key)
        if cached is not None:
            if cached.expires > self._clock():
                self._tokens.move_to_end(key)
                return cached
            del self._tokens[key]
        fetch = self._fetches.get(key)
        if fetch is None:
            # Its own task: one fetch for everyone who wants this scope now, which none of them can cancel for the
            # others; it fails them all alike (a token service that is down is asked once, not once per waiter).
            fetch = asyncio.create_task(self._fetch_and_keep(key, challenge, scope))
            self._fetches[key] = fetch
            fetch.add_done_callback(lambda done: self._fetched(key, done))
        return await asyncio.shield(fetch)

    async def _fetch_and_keep(self, key: _Key, challenge: Challenge, scope: str) -> _Token:
        token = await self._fetch(challenge, scope)
        self._tokens[key] = token
        self._tokens.move_to_end(key)
        now = self._clock()
        while self._tokens and next(iter(self._tokens.values())).expires <= now:
            self._tokens.popitem(last=False)
        while len(self._tokens) > MAX_CACHED_TOKENS:
            self._tokens.popitem(last=False)
        return token

    def _fetched(self, key: _Key, fetch: asyncio.Task[_Token]) -> None:
        if self._fetches.get(key) is fetch:
            del self._fetches[key]
        if not fetch.cancelled():
            fetch.exception()  # retrieved here, so a failure nobody is left to await is not logged as lost

    async def _fetch(self, challenge: Challenge, scope: str) -> _Token:
        try:
            realm = httpx.URL(challenge.params["realm"])
        except httpx.InvalidURL:
            raise RegistryError.bad_gateway(f"upstream {self._host} sent an unusable token realm") from None
        # Before any connection: a realm outside the configuration gets neither a request nor the credentials.
        self._allowed.check_realm(realm)
        if self._basic is not None and self._origin[0] == "https" and realm.scheme != "https":
            # The configuration trusts the host, not clear text: credentials for an https upstream stay encrypted.
            host = printable(realm.host)
            why = (
                f"upstream {self._host} named a token realm on plain http ({host}); the proxy sends the credentials"
                " of an https upstream over https only: it did not connect"
            )
            log.warning("%s", why)
            raise HostRefused(why)
        params: dict[str, str] = {}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        if scope:
            params["scope"] = scope
        headers: dict[str, str] = {}
        if self._basic is not None:
            headers["Authorization"] = self._basic
            if self._username:
                params["account"] = self._username
        started = self._clock()
        try:
            response = await self._token_client.get(realm, params=params, headers=headers)
        except httpx.PoolTimeout:
            # Waiting for a pooled connection is our congestion, not the token service (or the upstream) failing.
            raise Congested(f"too many token requests for {self._host} in flight") from None
        except httpx.TransportError as exc:
            self._on_fetch(False)
            why = f"token service of {self._host} {describe(exc, exc.request).words}"
            if isinstance(exc, httpx.TimeoutException):
                raise RegistryError.gateway_timeout(why) from None
            raise RegistryError.unavailable(why) from None
        self.token_fetches += 1
        self._on_fetch(response.status_code == 200)
        if response.status_code in (401, 403):
            raise RegistryError.unauthorized(f"token service of {self._host} rejected the configured credentials")
        if response.status_code != 200:
            raise RegistryError.bad_gateway(f"token service of {self._host} answered {response.status_code}")
        try:
            body = response.json()
            value = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            value = None
        if not isinstance(value, str) or not value:
            raise RegistryError.bad_gateway(f"token service of {self._host} sent no token")
        return _Token(value, started + _lifetime(body) * (1 - _RENEW_MARGIN))


def _lifetime(body: dict[str, object]) -> float:
    expires_in = body.get("expires_in")
    lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 0.0
    lifetime = max(lifetime, _MIN_TOKEN_LIFETIME)
    issued_at = body.get("issued_at")
    if isinstance(issued_at, str):
        # A token handed out from a cache may be older than its response; trust issued_at only when it is
        # plausible, since the two clocks may disagree.
        try:
            age = time.time() - datetime.fromisoformat(issued_at.replace("Z", "+00:00")).timestamp()
        except ValueError:
            age = 0.0
        if 0.0 < age < lifetime:
            lifetime -= age
    return lifetime


def _origin(url: httpx.URL) -> tuple[str, bytes, int | None]:
    return url.scheme, url.raw_host.lower(), url.port or {"http": 80, "https": 443}.get(url.scheme)


def _basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
