"""HTTPS: the certificate and key checked before start, and reloaded without a restart.

Certificates are renewed (ACME, an internal CA) far more often than a cache should restart, so the chain is loaded
again into the same SSL context on SIGHUP and when either file changes (checked every ``interval`` seconds). New
connections get the new certificate; open ones keep theirs. A reload that fails keeps the old certificate and logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["TlsReloader", "check_tls_files"]

log = logging.getLogger(__name__)


def check_tls_files(cert: Path, key: Path) -> str | None:
    """None if the pair loads; else what is wrong, in a few words (never the key's content)."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        return f"{exc.filename} not found"
    except OSError as exc:
        return f"cannot read {exc.filename or cert}: {exc.strerror}"
    except ssl.SSLError as exc:
        return f"not a matching PEM certificate chain and key ({exc.reason or exc})"
    return None


class TlsReloader:
    """ASGI wrapper: on the app's start-up, watches the files and reloads ``context()`` on change or SIGHUP."""

    def __init__(
        self, app: Any, cert: Path, key: Path, context: Callable[[], ssl.SSLContext | None], interval: float = 30.0
    ) -> None:
        self.app = app
        self._cert = cert
        self._key = key
        self._context = context
        self._interval = interval
        self._stamp = self._files_stamp()
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan" and self._task is None:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGHUP, self.reload)
            self._task = loop.create_task(self._watch(), name="tls reload")
        await self.app(scope, receive, send)

    def reload(self) -> None:
        context = self._context()
        if context is None:
            return
        try:
            context.load_cert_chain(self._cert, self._key)
        except (OSError, ssl.SSLError) as exc:
            log.error("keeping the current TLS certificate: cannot load %s / %s: %s", self._cert, self._key, exc)
            return
        self._stamp = self._files_stamp()
        log.info("reloaded the TLS certificate from %s", self._cert)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if self._files_stamp() != self._stamp:
                self.reload()

    def _files_stamp(self) -> tuple[int, ...]:
        stamp: list[int] = []
        for path in (self._cert, self._key):
            try:
                stat = os.stat(path)
                stamp += [stat.st_mtime_ns, stat.st_size, stat.st_ino]
            except OSError:
                stamp += [0, 0, 0]
        return tuple(stamp)
