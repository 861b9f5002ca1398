"""Clients downloading one blob through proxies at once, each in a thread, each hashing what it received."""

from __future__ import annotations

import hashlib
import threading
import time

import httpx

from tests.harness.proxy_server import ProxyServer

__all__ = ["Pulls"]

TIMEOUT = 120.0


class Pulls:
    """Clients downloading one blob in threads; each records the sha256 and length of what it received."""

    def __init__(self, digest: str) -> None:
        self.digest = digest
        self.results: list[tuple[str, int] | BaseException] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, proxy: ProxyServer, repository: str) -> None:
        thread = threading.Thread(target=self._pull, args=(f"{proxy.url}/v2/{repository}/blobs/{self.digest}",))
        thread.start()
        self._threads.append(thread)

    def _pull(self, url: str) -> None:
        try:
            hasher = hashlib.sha256()
            size = 0
            with httpx.stream("GET", url, timeout=TIMEOUT) as response:
                response.raise_for_status()
                for chunk in response.iter_raw():
                    hasher.update(chunk)
                    size += len(chunk)
            result: tuple[str, int] | BaseException = (f"sha256:{hasher.hexdigest()}", size)
        except BaseException as exc:  # reported by the test; a thread must not die silently
            result = exc
        with self._lock:
            self.results.append(result)

    def join(self) -> list[tuple[str, int] | BaseException]:
        deadline = time.monotonic() + TIMEOUT
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        assert not any(thread.is_alive() for thread in self._threads), "a client is still downloading"
        return self.results
