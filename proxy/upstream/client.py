"""One upstream registry's read API: manifests, blobs and tags, with errors mapped to registry errors.

Blob redirects are followed here, not by httpx, so that each hop is checked before it is made: a target must be
the upstream's own host or one of its configured ``redirect_hosts``, gets a fresh request with no credentials, and
whatever it answers is a failed download at worst, never a challenge the upstream's auth learns from.

Every request is admitted by the upstream's :class:`~proxy.upstream.pool.RequestPool` first and holds its place
(a :class:`~proxy.upstream.pool.Lease`) until its response is closed; a blob download holds it while it streams.
Waiting for that turn, or for a pooled connection, is the proxy's congestion: it never counts against the upstream's
circuit breaker.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx

from proxy.errors import RegistryError
from proxy.media_types import Accept, base_media_type
from proxy.upstream.body import raw_body
from proxy.upstream.breaker import CircuitBreaker
from proxy.upstream.events import NO_EVENTS, UpstreamEvents
from proxy.upstream.failures import FailureLog, describe
from proxy.upstream.hosts import AllowedHosts, HostRefused, host_of
from proxy.upstream.limiter import Limiter
from proxy.upstream.pool import Congested, Lease, RequestPool
from proxy.upstream.ratelimit import rate_limit
from proxy.upstream.sanitize import retry_after, upstream_error
from storage.digest import Digest, InvalidDigest

__all__ = [
    "BlobDownload",
    "DownloadInterrupted",
    "FetchedManifest",
    "ManifestHead",
    "TagPage",
    "UpstreamRegistry",
    "MAX_MANIFEST_SIZE",
    "embedded_media_type",
    "MAX_REDIRECTS",
]

log = logging.getLogger(__name__)

# containerd refuses manifests over ~4.4 MB; no real manifest comes near. Bounding it keeps a hostile or
# broken upstream from making us buffer an arbitrary amount of memory.
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
# Docker Hub redirects a blob once (to its CDN); a chain longer than this is a loop or a misbehaving upstream.
MAX_REDIRECTS = 5
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class ManifestHead:
    digest: Digest | None
    media_type: str
    size: int | None


@dataclass(frozen=True)
class FetchedManifest:
    digest: Digest
    media_type: str
    body: bytes


@dataclass(frozen=True)
class TagPage:
    body: bytes
    link: str | None


@dataclass(frozen=True)
class ReferrersPage:
    body: bytes
    media_type: str
    link: str | None


class DownloadInterrupted(Exception):
    """The upstream connection broke while a blob was being read."""


class BlobDownload:
    """An open upstream blob response; iterate the raw (undecoded) bytes, then close: closing gives its connection and
    its place among the upstream's requests back."""

    def __init__(
        self, lease: Lease, size: int | None, offset: int, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        self._lease = lease
        self.size = size  # of the whole blob, when the upstream said
        self.offset = offset
        self._on_bytes = on_bytes
        # A download dropped unclosed would hold its connection and its slot for good: close it when collected.
        self._finalizer = weakref.finalize(self, _dropped, lease)
        self._finalizer.atexit = False  # at exit there is no event loop, and nothing left to give back

    async def chunks(self) -> AsyncIterator[bytes | memoryview]:
        """The body's bytes as they come: views of memory that is not reused, so they may be kept."""
        try:
            async for chunk in raw_body(self._lease.response):
                if self._on_bytes is not None:
                    self._on_bytes(len(chunk))
                yield chunk
        except httpx.HTTPError as exc:
            raise DownloadInterrupted(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc

    async def aclose(self) -> None:
        self._finalizer.detach()
        await self._lease.aclose()


def _dropped(lease: Lease) -> None:
    try:
        lease.abandon()
    except RuntimeError:
        return  # no event loop left (the process is exiting): nothing to give back
    log.warning("an upstream blob download was dropped without being closed; closed it")


class UpstreamRegistry:
    def __init__(
        self,
        registry: str,
        client: httpx.AsyncClient,
        token_client: httpx.AsyncClient,
        breaker: CircuitBreaker | None = None,
        allowed: AllowedHosts | None = None,
        pool: RequestPool | None = None,
        events: UpstreamEvents = NO_EVENTS,
    ) -> None:
        """``client`` has the upstream as base URL, its auth and its timeouts, and must not follow redirects itself;
        ``allowed``: where blob downloads may be redirected besides the upstream's own host (nowhere if not given);
        ``pool``: admits requests, and must not admit more than ``client``'s pool has connections (httpx's default,
        100, if not given); ``events``: told about requests, bytes and failures (metrics)."""
        self.registry = registry
        self._client = client
        self._token_client = token_client
        self._breaker = breaker or CircuitBreaker(registry)
        self._allowed = allowed or AllowedHosts(registry, host_of(client.base_url))
        self._pool = pool or RequestPool(registry, Limiter(100), queue_timeout=60.0)
        self._events = events
        self._failures = FailureLog(log)
        self._last_failure = ""  # said again while the breaker is open: why it opened

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._token_client.aclose()

    async def head_manifest(self, repository: str, reference: str, accept: Accept) -> ManifestHead:
        lease = await self._send("HEAD", f"/v2/{repository}/manifests/{reference}", _accept(accept), what=reference)
        await lease.aclose()
        response = lease.response
        digest = _header_digest(response)
        size = _content_length(response)
        return ManifestHead(digest, base_media_type(response.headers.get("content-type", "")), size)

    async def get_manifest(self, repository: str, reference: str, accept: Accept) -> FetchedManifest:
        path = f"/v2/{repository}/manifests/{reference}"
        lease = await self._send("GET", path, _accept(accept), what=reference)
        response = lease.response
        body = await self._read(lease, MAX_MANIFEST_SIZE, f"manifest {repository}:{reference}", raw=True)
        computed = Digest.of(body)
        announced = _header_digest(response)
        if announced is not None and announced.algorithm == "sha256" and announced != computed:
            raise RegistryError.bad_gateway(f"upstream manifest {repository}:{reference} does not match its digest")
        media_type = base_media_type(response.headers.get("content-type", "")) or embedded_media_type(body)
        if not media_type:
            raise RegistryError.bad_gateway(f"upstream manifest {repository}:{reference} has no media type")
        return FetchedManifest(computed, media_type, body)

    async def head_blob(self, repository: str, digest: Digest) -> int | None:
        lease = await self._send("HEAD", f"/v2/{repository}/blobs/{digest}", {}, what=str(digest), redirects=True)
        await lease.aclose()
        return _content_length(lease.response)

    async def open_blob(self, repository: str, digest: Digest, offset: int = 0) -> BlobDownload:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        path = f"/v2/{repository}/blobs/{digest}"
        # A stream: it keeps its slot (and its connection) until the blob is read and closed.
        lease = await self._send("GET", path, headers, what=str(digest), redirects=True, streaming=True)
        response = lease.response
        if offset and response.status_code != 206:
            await lease.aclose()
            raise RegistryError.bad_gateway(f"upstream ignored a range request for {digest}")
        size = _total_size(response) if offset else _content_length(response)
        return BlobDownload(lease, size, offset, lambda count: self._events.upstream_bytes(self.registry, count))

    async def get_tags(self, repository: str, n: int | None, last: str | None) -> TagPage:
        params: dict[str, str] = {}
        if n is not None:
            params["n"] = str(n)
        if last is not None:
            params["last"] = last
        path = f"/v2/{repository}/tags/list"
        headers = {"Accept": "application/json"}
        lease = await self._send("GET", path, headers, what=repository, params=params)
        body = await self._read(lease, MAX_MANIFEST_SIZE, f"tag list of {repository}")
        return TagPage(body, lease.response.headers.get("link"))

    async def get_referrers(
        self, repository: str, subject: Digest, params: dict[str, str] | None = None
    ) -> ReferrersPage:
        """The first page of referrers, or the page that ``params`` (the query of the upstream's Link) names."""
        path = f"/v2/{repository}/referrers/{subject}"
        headers = {"Accept": "application/vnd.oci.image.index.v1+json"}
        lease = await self._send("GET", path, headers, what=str(subject), params=params)
        response = lease.response
        body = await self._read(lease, MAX_MANIFEST_SIZE, f"referrers of {repository}@{subject}")
        media_type = (
            base_media_type(response.headers.get("content-type", "")) or "application/vnd.oci.image.index.v1+json"
        )
        return ReferrersPage(body, media_type, response.headers.get("link"))

    async def _send(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        *,
        what: str,
        params: dict[str, str] | None = None,
        redirects: bool = False,
        streaming: bool = False,
    ) -> Lease:
        """A successful response, still open on its lease (the caller reads it and closes the lease), or a raised
        RegistryError."""
        self._check_breaker()
        lease = await self._pool.lease(streaming=streaming)
        try:
            # Again: the upstream may have been found failing while this request waited for its turn.
            self._check_breaker()
            request = self._client.build_request(method, path, headers=headers, params=params)
            response = await self._exchange(lease, request, f"upstream {self.registry}", upstream=True)
            if response.status_code >= 500:
                self._breaker.failure()
            else:
                self._breaker.success()
            if (limit := rate_limit(response.headers)) is not None:
                self._events.rate_limit(self.registry, limit)
            if redirects and response.status_code in _REDIRECT_STATUSES and "location" in response.headers:
                await self._follow(lease, method, headers, what)
                return lease
            if 200 <= response.status_code < 300:
                return lease
            body = b""
            try:
                body = await lease.run(_read_bounded(response, 64 * 1024, "error body"))
            except (RegistryError, httpx.HTTPError):
                pass  # the status alone is enough to report the error
            error = _error_for(self.registry, path, what, response.status_code, response.headers, body)
            if error.is_outage:
                self._failed(error.message + _retry_note(error))
            raise error
        except BaseException:
            await lease.aclose()
            raise

    def _check_breaker(self) -> None:
        if wait := self._breaker.open_for():
            why = f" ({self._last_failure})" if self._last_failure else ""
            raise RegistryError.unavailable(f"upstream {self.registry} is failing{why}; next attempt in {wait:.0f} s")

    async def _follow(self, lease: Lease, method: str, headers: dict[str, str], what: str) -> None:
        """Follow the upstream's redirect of a blob request, on the same lease: its final response is a success."""
        for _ in range(MAX_REDIRECTS):
            response = lease.response
            try:
                url = response.url.join(response.headers["location"])
            except httpx.InvalidURL:
                why = f"upstream {self.registry} redirected {what} to an invalid URL"
                raise RegistryError.bad_gateway(why) from None
            self._allowed.check_redirect(url)
            # Built afresh: only the headers we chose (Range) plus the client's defaults, the timeouts, and no
            # credentials (auth=None), whatever host it is. Sending it first closes the redirect, whose connection
            # goes back to the pool: there is nothing to read from it.
            hop = self._client.build_request(method, url, headers=headers)
            target = f"redirect target {host_of(url)} of upstream {self.registry}"
            response = await self._exchange(lease, hop, target, upstream=False)
            if 200 <= response.status_code < 300:
                return
            if response.status_code not in _REDIRECT_STATUSES or "location" not in response.headers:
                # Its status only: a redirect target's words never reach a client, nor its challenges our auth.
                raise RegistryError.bad_gateway(f"download of {what} failed: {target} answered {response.status_code}")
        raise RegistryError.bad_gateway(f"upstream {self.registry} redirected {what} more than {MAX_REDIRECTS} times")

    async def _exchange(self, lease: Lease, request: httpx.Request, peer: str, *, upstream: bool) -> httpx.Response:
        """Send one request; transport failures become registry errors (counted by the breaker if ``upstream``) whose
        message says what failed: a DNS lookup, a refused connection, a timeout, TLS."""
        started = time.monotonic()
        try:
            if upstream:
                response = await lease.send(self._client, request)
            else:
                response = await lease.send(self._client, request, auth=None)
            self._events.upstream_request(
                self.registry, request.method, str(response.status_code), time.monotonic() - started
            )
            return response
        except httpx.PoolTimeout:
            # Cannot happen while the pool has a connection for every slot: if it does, connections are being lost
            # (see proxy.upstream.pool). Our trouble either way, not the upstream failing.
            log.error("no pooled connection to %s within the pool timeout, though the request had its turn", peer)
            raise Congested(f"too many requests to upstream {self.registry} in flight") from None
        except httpx.HTTPError as exc:
            self._failure(upstream)
            failure = describe(exc, _failed_request(exc, request))
            self._events.upstream_request(self.registry, request.method, failure.kind, time.monotonic() - started)
            message = self._failed(f"{peer} {failure.words}")
            if isinstance(exc, httpx.TimeoutException):
                raise RegistryError.gateway_timeout(message) from None
            if isinstance(exc, httpx.ConnectError | httpx.NetworkError):
                raise RegistryError.unavailable(message) from None
            raise RegistryError.bad_gateway(message) from None
        except (HostRefused, Congested):
            # A configuration matter, or the proxy's own congestion (the token service's pool): not an outage of
            # the upstream, and the breaker would only hide the message.
            raise
        except RegistryError as exc:
            # Raised by the token flow: its service being down is the upstream being down.
            if exc.status >= 500:
                self._failure(upstream)
            raise

    def _failure(self, upstream: bool) -> None:
        # Only the upstream's own failures open its breaker; a redirect target's cost one download, no more.
        if upstream:
            self._breaker.failure()

    def _failed(self, message: str) -> str:
        """Say that the upstream failed: in the log (once, then now and then), to metrics, and to the caller."""
        self._last_failure = message
        self._failures.warning(message)
        self._events.upstream_failure(self.registry, message)
        return message

    async def _read(self, lease: Lease, limit: int, what: str, raw: bool = False) -> bytes:
        body = await _read(lease, limit, what, raw)
        self._events.upstream_bytes(self.registry, len(body))
        return body


def _error_for(registry: str, path: str, what: str, status: int, headers: httpx.Headers, body: bytes) -> RegistryError:
    upstream_code, upstream_message = upstream_error(body)
    if status == 404 or (status == 400 and upstream_code in ("NAME_INVALID", "TAG_INVALID", "MANIFEST_INVALID")):
        if "/blobs/" in path:
            return RegistryError.blob_unknown(what)
        if "/manifests/" in path and upstream_code != "NAME_UNKNOWN":
            return RegistryError.manifest_unknown(what)
        return RegistryError.name_unknown(_repository_of(path), "repository not found upstream")
    if status == 401:
        return RegistryError.name_unknown(
            _repository_of(path),
            f"upstream {registry} denied access: the repository does not exist or needs credentials "
            "that the proxy is not configured with",
        )
    suffix = _suffix(upstream_code, upstream_message)
    if status == 403:
        return RegistryError.denied(f"upstream {registry} denied access{suffix}")
    if status == 429:
        # Docker Hub says here which limit was hit and how to raise it: worth passing on, sanitised.
        message = f"upstream {registry} is rate limiting the proxy{suffix}"
        return RegistryError.too_many_requests(message, retry_after(headers.get("retry-after")))
    if status in (502, 503, 504):
        return RegistryError.unavailable(f"upstream {registry} answered {status}")
    return RegistryError.bad_gateway(f"upstream {registry} answered {status}{suffix}")


def _failed_request(exc: httpx.HTTPError, sent: httpx.Request) -> httpx.Request:
    # The request that failed may be one the auth flow made (its /v2/ ping): same host, same timeouts.
    try:
        return exc.request
    except RuntimeError:
        return sent


def _retry_note(error: RegistryError) -> str:
    after = error.headers.get("Retry-After")
    return f" (Retry-After: {after})" if after else ""


def _suffix(code: str | None, message: str | None) -> str:
    # Both already sanitised (proxy.upstream.sanitize): a known-shape code, a short line of printable ASCII.
    parts = [part for part in (code, message) if part]
    return ": " + ": ".join(parts) if parts else ""


def _repository_of(path: str) -> str:
    # "/v2/<repository>/<kind>/<ref>" → "<repository>"
    return path.removeprefix("/v2/").rsplit("/", 2)[0]


async def _read(lease: Lease, limit: int, what: str, raw: bool = False) -> bytes:
    """The body of the lease's response, bounded; the lease is closed either way."""
    try:
        return await lease.run(_read_bounded(lease.response, limit, what, raw))
    finally:
        await lease.aclose()


async def _read_bounded(response: httpx.Response, limit: int, what: str, raw: bool = False) -> bytes:
    """The body, up to ``limit`` bytes; ``raw`` for content whose exact bytes matter (a digest covers them)."""
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_raw() if raw else response.aiter_bytes():
        total += len(chunk)
        if total > limit:
            raise RegistryError.bad_gateway(f"upstream {what} is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _accept(accept: Accept) -> dict[str, str]:
    return {"Accept": ", ".join(accept.upstream())}


def _header_digest(response: httpx.Response) -> Digest | None:
    value = response.headers.get("docker-content-digest")
    if not value:
        return None
    try:
        return Digest.parse(value.strip())
    except InvalidDigest:
        return None


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


def _total_size(response: httpx.Response) -> int | None:
    # "Content-Range: bytes 100-199/200" → 200
    total = response.headers.get("content-range", "").rpartition("/")[2]
    return int(total) if total.isdigit() else None


def embedded_media_type(body: bytes) -> str:
    try:
        value = json.loads(body).get("mediaType", "")
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""
