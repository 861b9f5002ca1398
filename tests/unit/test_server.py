"""The zero-copy send extension on a real uvicorn server (proxy.server)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from proxy.extensions import ZEROCOPY_SEND
from proxy.server import zero_copy_protocol

DATA = os.urandom(3 * 1024 * 1024 + 17)


def file_app(path: Path, sizes: list[int]) -> Any:
    """Sends ``path`` as zero-copy segments of ``sizes`` bytes (when offered), else as plain bodies."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-length", str(len(DATA)).encode())]
        zero_copy = ZEROCOPY_SEND in scope.get("extensions", {})
        headers.append((b"x-zero-copy", b"yes" if zero_copy else b"no"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        with open(path, "rb") as f:
            offset = 0
            for size in sizes:
                if zero_copy:
                    await send({"type": ZEROCOPY_SEND, "file": f, "offset": offset, "count": size, "more_body": True})
                else:
                    await send({"type": "http.response.body", "body": DATA[offset : offset + size], "more_body": True})
                offset += size
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    executor = ThreadPoolExecutor(max_workers=4)
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, http=zero_copy_protocol(executor), lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(200):  # bounded: 200 x 10 ms
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)
        executor.shutdown(wait=True)
        sock.close()


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    path = tmp_path / "blob"
    path.write_bytes(DATA)
    return path


async def test_segments_are_sent_in_order_and_complete(blob: Path) -> None:
    sizes = [1, 1024 * 1024, 2 * 1024 * 1024, 16]
    async with serving(file_app(blob, sizes)) as url:
        async with httpx.AsyncClient() as client:
            for _ in range(3):  # keep-alive: the connection stays usable after zero-copy responses
                response = await client.get(url, timeout=30)
                assert response.headers["x-zero-copy"] == "yes"
                assert response.content == DATA


async def test_a_client_that_leaves_does_not_break_the_server(blob: Path) -> None:
    async with serving(file_app(blob, [len(DATA)])) as url:
        host, port = url.removeprefix("http://").split(":")

        def leave_early() -> bytes:
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                return sock.recv(1024)  # the head and some of the body, then hang up

        # In a thread: the server runs on this test's event loop.
        assert await asyncio.to_thread(leave_early)
        async with httpx.AsyncClient() as client:
            assert (await client.get(url, timeout=30)).content == DATA
