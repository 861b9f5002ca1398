"""A loopback TCP server in a thread whose every connection is handed to a function: for peers that misbehave in
ways a real HTTP server will not (cut a body short, reset, stall)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["raw_server", "read_request"]


@contextmanager
def raw_server(handle: Callable[[socket.socket], object]) -> Iterator[int]:
    """Serve on a loopback port (yielded): each connection runs ``handle`` in a thread, then is closed."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()
    handlers: list[threading.Thread] = []

    def run(conn: socket.socket) -> None:
        with conn:
            try:
                handle(conn)
            except OSError:
                pass  # the client went away first

    def accept() -> None:
        for _ in range(2400):  # bounded: 2400 x 50 ms
            if stop.is_set():
                return
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            thread = threading.Thread(target=run, args=(conn,), daemon=True)
            thread.start()
            handlers.append(thread)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        acceptor.join(timeout=5)
        listener.close()
        for thread in handlers:
            thread.join(timeout=5)


def read_request(conn: socket.socket) -> bytes:
    """One request's head (the tests' clients send no bodies); b"" if the client closed first."""
    received = b""
    for _ in range(1000):  # bounded: a request head is far smaller than 1000 reads
        if b"\r\n\r\n" in received:
            return received
        data = conn.recv(65536)
        if not data:
            return b""
        received += data
    raise AssertionError("no end of the request head")
