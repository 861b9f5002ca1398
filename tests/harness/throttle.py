"""A TCP relay that caps the bandwidth from a server back to its clients, as a WAN link to a registry would.

On loopback an "upstream" answers at memory speed, which no real registry does: Docker Hub's CDN gives a CI
runner tens of MB/s. Benchmarks put this relay between the proxy and its upstream to see the proxy as it runs
in production, where the upstream link, not the proxy's CPU, sets the pace of a cold pull.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import TracebackType

__all__ = ["ThrottledRelay"]

_CHUNK = 64 * 1024


class _Bucket:
    """A token bucket shared by every connection: the cap is for the whole link."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self._rate * 0.05, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            self._tokens -= n
            if self._tokens < 0:
                await asyncio.sleep(-self._tokens / self._rate)


class ThrottledRelay:
    def __init__(self, target_host: str, target_port: int, bytes_per_second: float) -> None:
        self._target = (target_host, target_port)
        self._rate = bytes_per_second
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="throttled-relay", daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThrottledRelay:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        # Relayed connections still open: cancelling their pumps closes their sockets.
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _start(self) -> asyncio.Server:
        bucket = _Bucket(self._rate)

        async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
            try:
                target_reader, target_writer = await asyncio.open_connection(*self._target)
            except OSError:
                client_writer.close()
                return
            await asyncio.gather(
                _pump(client_reader, target_writer, None),
                _pump(target_reader, client_writer, bucket),
                return_exceptions=True,
            )

        return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, bucket: _Bucket | None) -> None:
    try:
        while data := await reader.read(_CHUNK):
            if bucket is not None:
                await bucket.take(len(data))
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
