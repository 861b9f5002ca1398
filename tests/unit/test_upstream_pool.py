"""The upstream's connection pool under cancellation, on real sockets (issue 8, item 1).

httpcore 1.0.9 loses a pooled connection for good when a request is cancelled at the wrong moment
(encode/httpcore#1093; encode/httpx#3782): see proxy.upstream.pool. MockTransport has no pool, so these tests talk
to a small HTTP/1.1 server on a loopback socket, in the test's own event loop, and cancel callers exactly where
httpcore loses connections. Each then checks that the upstream still gets answered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from proxy.app import upstream_registry
from proxy.config import UpstreamSettings
from proxy.errors import RegistryError
from proxy.media_types import Accept
from proxy.upstream.client import UpstreamRegistry
from storage.digest import Digest
from tests.unit.fakes import OCI_MANIFEST, sha256

SMALL = Digest.parse(sha256(b"{}"))  # HEAD answers its size, 2
BIG = Digest.parse(sha256(b"big"))  # GET sends the head of a 10 MB body and then nothing: the reader stops early
MANIFEST = b'{"schemaVersion":2,"mediaType":"' + OCI_MANIFEST.encode() + b'","layers":[]}'
SLOW_BODY_PAUSE = 0.3  # "slow" manifests send half their body, pause this long, then the rest
ROUND_TIMEOUT = 20.0  # every test's whole run; a wedged pool fails it rather than hanging it


class Upstream:
    """A registry's few answers these tests need, over keep-alive HTTP/1.1; counts connections and requests."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[tuple[str, str]] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Upstream]:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield self
        finally:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            for _ in range(1000):  # requests on one connection, at most
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, target = head.decode("latin-1").split(" ", 2)[:2]
                self.requests.append((method, target))
                if not await self._answer(method, target, reader, writer):
                    return
        except ConnectionError:
            pass  # the client hung up: what these tests do to downloads
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _answer(
        self, method: str, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False once the connection is to be closed."""
        if target.endswith(f"/blobs/{SMALL}"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n" + (b"{}" if method == "GET" else b""))
        elif target.endswith(f"/blobs/{BIG}"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 65536)
            await writer.drain()
            await reader.read()  # until the client hangs up
            return False
        elif target.endswith("/manifests/slow"):
            head = f"HTTP/1.1 200 OK\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {len(MANIFEST)}\r\n\r\n"
            half = len(MANIFEST) // 2
            writer.write(head.encode() + MANIFEST[:half])
            await writer.drain()
            await asyncio.sleep(SLOW_BODY_PAUSE)
            writer.write(MANIFEST[half:])
        elif target == "/v2/":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        else:
            body = b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}'
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        return True


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with Upstream().running() as running:
        yield running


def small_pool_registry(url: str, connections: int) -> UpstreamRegistry:
    """An UpstreamRegistry on an httpx pool of ``connections``, smaller than the cap of the registry's own turns:
    requests do wait inside httpcore's pool here, so cancellation must be kept from reaching it."""
    timeout = httpx.Timeout(2.0)
    client = httpx.AsyncClient(base_url=url, timeout=timeout, limits=httpx.Limits(max_connections=connections))
    return UpstreamRegistry("docker.io", client, httpx.AsyncClient(timeout=timeout))


async def settle(tasks: list[asyncio.Task[int | None]], queued: int) -> None:
    """Let ``tasks`` start and reach their wait (for a turn or a pooled connection): bounded in count and time."""
    for _ in range(100):
        await asyncio.sleep(0.01)
        if sum(not t.done() for t in tasks) == queued:
            return


async def test_callers_cancelled_while_waiting_for_a_pooled_connection_leave_the_pool_whole(
    upstream: Upstream,
) -> None:
    # encode/httpcore#1093: two downloads hold both connections; two HEADs wait for one. Each download is dropped
    # unread, which closes its connection, and the pool at once opens a new one for a waiting HEAD, whose caller is
    # cancelled right then, before it ran. httpcore keeps such a connection as CONNECTING, for good.
    remote = small_pool_registry(upstream.url, connections=2)
    try:
        async with asyncio.timeout(ROUND_TIMEOUT):
            downloads = [await remote.open_blob("library/a", BIG) for _ in range(2)]
            heads = [asyncio.create_task(remote.head_blob("library/a", SMALL)) for _ in range(2)]
            await settle(heads, queued=2)
            for download, head in zip(downloads, heads, strict=True):
                await download.aclose()
                head.cancel()
            results = await asyncio.gather(*heads, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results)
            # Both connections still serve: on the unfixed code this waits out the pool timeout and fails.
            assert await asyncio.gather(*(remote.head_blob("library/a", SMALL) for _ in range(2))) == [2, 2]
    finally:
        await remote.aclose()


async def test_callers_cancelled_twice_while_reading_leave_the_pool_whole(upstream: Upstream) -> None:
    # encode/httpx#3782: a second cancellation while httpcore releases a response (Task.cancel() goes through its
    # anyio shield) leaves the connection ACTIVE with no request on it, for good.
    remote = small_pool_registry(upstream.url, connections=2)
    accept = Accept.parse([OCI_MANIFEST])
    try:
        async with asyncio.timeout(ROUND_TIMEOUT):
            for _ in range(2):
                reader = asyncio.create_task(remote.get_manifest("library/a", "slow", accept))
                for _ in range(100):  # until the body is half read, bounded
                    await asyncio.sleep(0.01)
                    if ("GET", "/v2/library/a/manifests/slow") in upstream.requests[-1:]:
                        break
                await asyncio.sleep(0.05)
                reader.cancel()
                await asyncio.sleep(0)
                reader.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await reader
            fetched = await asyncio.gather(*(remote.get_manifest("library/a", "slow", accept) for _ in range(2)))
            assert [f.body for f in fetched] == [MANIFEST, MANIFEST]
    finally:
        await remote.aclose()


async def test_requests_beyond_the_cap_wait_their_turn_outside_the_pool(upstream: Upstream) -> None:
    settings = UpstreamSettings(
        registry="docker.io", url=upstream.url, connect_timeout=2.0, read_timeout=5.0, max_concurrent_requests=2
    )
    remote = upstream_registry(settings, None)
    try:
        async with asyncio.timeout(ROUND_TIMEOUT):
            downloads = [await remote.open_blob("library/a", BIG) for _ in range(2)]
            sent = len(upstream.requests)
            heads = [asyncio.create_task(remote.head_blob("library/a", SMALL)) for _ in range(5)]
            await settle(heads, queued=5)
            assert len(upstream.requests) == sent  # they wait for a turn, not in httpx: nothing was sent
            heads[0].cancel()  # gives up its place: the others keep theirs, in order
            for download in downloads:
                await download.aclose()
            results = await asyncio.gather(*heads, return_exceptions=True)
            assert isinstance(results[0], asyncio.CancelledError)
            assert results[1:] == [2, 2, 2, 2]
            # Two connections (one per turn), however many requests: the dropped downloads' two, then two more.
            assert upstream.connections <= 4
    finally:
        await remote.aclose()


async def test_a_request_that_waits_too_long_for_its_turn_is_refused_and_the_upstream_is_not_blamed(
    upstream: Upstream,
) -> None:
    settings = UpstreamSettings(
        registry="docker.io", url=upstream.url, connect_timeout=2.0, read_timeout=0.2, max_concurrent_requests=1
    )
    remote = upstream_registry(settings, None)
    try:
        async with asyncio.timeout(ROUND_TIMEOUT):
            download = await remote.open_blob("library/a", BIG)
            for _ in range(5):  # more than the breaker's threshold of failures in a row
                with pytest.raises(RegistryError) as info:
                    await remote.head_blob("library/a", SMALL)
                assert (info.value.status, info.value.code) == (503, "UPSTREAM_UNAVAILABLE")
                assert info.value.headers == {"Retry-After": "1"}
                assert "too many requests" in info.value.message
            await download.aclose()
            # The breaker stayed closed: the next request goes to the upstream.
            assert await remote.head_blob("library/a", SMALL) == 2
    finally:
        await remote.aclose()


async def test_a_download_dropped_unclosed_gives_its_turn_back(upstream: Upstream) -> None:
    settings = UpstreamSettings(
        registry="docker.io", url=upstream.url, connect_timeout=2.0, read_timeout=5.0, max_concurrent_requests=1
    )
    remote = upstream_registry(settings, None)
    try:
        async with asyncio.timeout(ROUND_TIMEOUT):
            download = await remote.open_blob("library/a", BIG)
            del download  # a caller's bug: never closed
            assert await remote.head_blob("library/a", SMALL) == 2
    finally:
        await remote.aclose()
