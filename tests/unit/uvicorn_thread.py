"""A real uvicorn server in a thread with its own event loop, for tests that talk to it over blocking sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
import uvloop


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """ "asyncio", "uvloop", or either with "-eager" (Python 3.12+): tasks start running inside create_task."""
    loop = asyncio.new_event_loop() if kind.startswith("asyncio") else uvloop.new_event_loop()
    if kind.endswith("-eager"):
        loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined,unused-ignore]
    return loop


@contextmanager
def serving(app: Any, loop_kind: str = "uvloop", http: Any = "httptools", **config: Any) -> Iterator[int]:
    """Serve ``app`` on a loopback port (yielded) until the block ends."""
    sock = socket.create_server(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    settings = {"lifespan": "off", "log_level": "warning", "timeout_graceful_shutdown": 1, **config}
    server = uvicorn.Server(uvicorn.Config(app, http=http, **settings))
    runner = asyncio.Runner(loop_factory=lambda: new_loop(loop_kind))
    thread = threading.Thread(target=lambda: runner.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    try:
        for _ in range(500):  # bounded: 500 x 10 ms
            if server.started:
                break
            time.sleep(0.01)
        assert server.started
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        runner.close()
        sock.close()


def read_for(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """What arrives within ``seconds``, and whether the server closed the connection by then."""
    received = bytearray()
    deadline = time.monotonic() + seconds
    for _ in range(100_000):  # bounded by count and by the deadline
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            break
        except ConnectionError:
            return bytes(received), True
        if not data:
            return bytes(received), True
        received += data
    return bytes(received), False
