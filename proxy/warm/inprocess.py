"""A stopped cache, served by this process on a loopback port while it is warmed.

The app and server wiring are those of ``registry-proxy serve`` (:func:`proxy.server.runner.build_server`), so
warming goes through exactly the code a pull goes through, client authentication and access rules included; only
the address differs: an ephemeral port on 127.0.0.1 that nothing else is told about, in plain HTTP (the bytes
never leave the machine, and the configured certificate names the proxy's host, not 127.0.0.1). uvicorn runs in a
thread with its own event loop: the warmer keeps the main thread, where Ctrl-C lands, and uvicorn installs no
signal handlers off the main thread.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from proxy.config import Settings
from proxy.server.runner import build_server

__all__ = ["ServeFailed", "serving"]

_LOOPBACK = "127.0.0.1"


class ServeFailed(Exception):
    """The cache could not be served in-process; the proxy's own log lines (on stderr) say why."""


@contextmanager
def serving(settings: Settings, *, start_timeout: float = 30.0, stop_timeout: float = 30.0) -> Iterator[str]:
    """The cache of ``settings`` served on a loopback port until the block ends; yields the base URL."""
    plain = replace(settings, server=replace(settings.server, tls_cert=None, tls_key=None))
    server = build_server(plain, "warning")
    listener = socket.create_server((_LOOPBACK, 0))
    port = listener.getsockname()[1]
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listener]}, name="registry-proxy warm server", daemon=True
    )
    with listener:
        thread.start()
        try:
            deadline = time.monotonic() + start_timeout
            while not server.started:
                if not thread.is_alive():
                    raise ServeFailed("the cache could not be served (see the messages above)")
                if time.monotonic() > deadline:
                    raise ServeFailed(f"the in-process server did not start within {start_timeout:.0f} s")
                time.sleep(0.02)
            yield f"http://{_LOOPBACK}:{port}"
        finally:
            server.should_exit = True
            thread.join(stop_timeout)
