"""An upstream failure in words a CI operator understands, and a log that says it once rather than on every pull.

httpx reports "ConnectError" for a DNS failure, a refused connection and a TLS handshake alike; the cause it wraps
(``socket.gaierror``, ``ConnectionRefusedError``, ``ssl.SSLError``) says which, and the request's timeouts say how
long was waited.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx

from proxy.upstream.sanitize import printable

__all__ = ["Failure", "FailureLog", "describe"]


@dataclass(frozen=True)
class Failure:
    kind: str  # dns, refused, timeout, tls, network: the metrics label
    words: str  # what happened, to follow the peer's name: "unreachable: DNS lookup of ... failed (...)"


def describe(exc: httpx.HTTPError, request: httpx.Request) -> Failure:
    host = printable(request.url.host, 100)
    port = request.url.port or (443 if request.url.scheme == "https" else 80)
    if isinstance(exc, httpx.TimeoutException):
        timeouts = request.extensions.get("timeout", {})
        if isinstance(exc, httpx.ConnectTimeout):
            connect = _seconds(timeouts.get("connect"))
            return Failure("timeout", f"timed out after {connect} connecting to {host}:{port}")
        if isinstance(exc, httpx.WriteTimeout):
            return Failure("timeout", f"timed out after {_seconds(timeouts.get('write'))} sending to {host}")
        return Failure("timeout", f"timed out after {_seconds(timeouts.get('read'))} waiting for {host} to answer")
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror):
            why = printable(cause.strerror or str(cause))
            return Failure("dns", f"unreachable: DNS lookup of {host} failed ({why})")
        if isinstance(cause, ConnectionRefusedError):
            return Failure("refused", f"unreachable: connection to {host}:{port} refused")
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = printable(cause.verify_message or cause.reason or "certificate verify failed")
            return Failure("tls", f"unreachable: TLS error with {host}: its certificate is not trusted ({why})")
        if isinstance(cause, ssl.SSLError):
            why = printable(cause.reason.lower().replace("_", " ") if cause.reason else str(cause))
            if cause.reason == "WRONG_VERSION_NUMBER":
                why += " (it may speak plain HTTP: check the scheme of the upstream's url)"
            return Failure("tls", f"unreachable: TLS error with {host}: {why}")
        if isinstance(cause, ConnectionResetError):
            return Failure("network", f"failed: connection to {host} reset")
    if isinstance(exc, httpx.RemoteProtocolError):
        return Failure("network", f"failed: {host} broke off the exchange ({printable(str(exc)) or 'protocol error'})")
    detail = printable(str(exc)) or type(exc).__name__
    return Failure("network", f"unreachable: {host}:{port} ({detail})")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:  # bounded: a cycle of causes is possible in principle
        yield current
        seen += 1
        current = current.__cause__ or current.__context__


def _seconds(value: object) -> str:
    return f"{value:g} s" if isinstance(value, int | float) else "the timeout"


class FailureLog:
    """Logs a failure at WARNING the first time, then the same failure at most once per ``interval``, with how many
    times it happened in between: an outage under a busy CI fleet is a few lines, not one per pull."""

    def __init__(
        self, logger: logging.Logger, interval: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}  # message → (logged at, repeats since)

    def warning(self, message: str) -> None:
        now = self._clock()
        logged = self._last.get(message)
        if logged is not None and now - logged[0] < self._interval:
            self._last[message] = (logged[0], logged[1] + 1)
            return
        if len(self._last) >= 256:  # bounded: messages name hosts and timeouts, but keep it small whatever happens
            self._last.clear()
        repeats = logged[1] if logged is not None else 0
        self._last[message] = (now, 0)
        if repeats:
            self._log.warning("%s (and %d times more since the last report)", message, repeats)
        else:
            self._log.warning("%s", message)
