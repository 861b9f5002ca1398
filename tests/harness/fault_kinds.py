"""The faults a FaultyUpstream (:mod:`tests.harness.faults`) can inject, as frozen values that say what to do to
which requests, checked when they are made: a bad pattern or a negative offset fails in the test that wrote it,
not later in the proxy's thread.

``Delay`` waits before forwarding; ``CutAfter`` and ``StallAfter`` break a response body off; ``FlipByte``
corrupts one body byte; ``Respond`` (or :func:`registry_error`) answers without asking the target.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

MAX_FAULT_SECONDS: Final = 120.0
"""No Delay or StallAfter may wait longer: a typo must not hang a test run."""


@dataclass(frozen=True, kw_only=True)
class Fault:
    """What every kind of fault matches on: ``method`` (any if None) and ``path``, a regular expression searched in
    the raw path (percent-encoding intact, without the query string). A fault applies to the next ``times``
    matching requests, or to every one when ``times`` is None, until it is removed.

    Each request gets at most one fault: the first active one, in the order they were added, that matches it.
    Matching requests count even where the fault has nothing to act on (a HEAD for a CutAfter, say): pass
    ``method="GET"`` to aim at bodies.
    """

    path: str = ""
    method: str | None = None
    times: int | None = None

    def __post_init__(self) -> None:
        if self.times is not None and self.times < 1:
            raise ValueError(f"times must be at least 1, or None for every request; got {self.times}")
        re.compile(self.path)  # a bad pattern fails here, in the test, not later in the proxy's thread

    @property
    def kind(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class Delay(Fault):
    """Wait ``seconds`` before forwarding the request."""

    seconds: float

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_seconds(self.seconds)


@dataclass(frozen=True)
class CutAfter(Fault):
    """Forward status, headers and the first ``n_bytes`` of the body, then end the connection.

    By default the connection ends with a FIN once those bytes are sent: the client reads exactly ``n_bytes`` and
    then an end of stream before the body is complete (httpx: RemoteProtocolError). ``reset=True`` waits (bounded)
    until the client's kernel has acknowledged the bytes and then sends an RST (SO_LINGER 0): the client reads them
    and then gets ECONNRESET (httpx: ReadError). A body of ``n_bytes`` or fewer passes untouched.
    """

    n_bytes: int
    reset: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_bytes(self.n_bytes)


@dataclass(frozen=True)
class FlipByte(Fault):
    """Forward everything, with the body byte at ``offset`` XORed with 0xFF (a body too short passes untouched)."""

    offset: int

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_bytes(self.offset)


@dataclass(frozen=True)
class Respond(Fault):
    """Answer without contacting the target. Content-Length is added unless ``headers`` has one (the connection is
    then closed after the response if it disagrees with ``body``)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 200 <= self.status <= 999:
            raise ValueError(f"Respond needs a final status (200-999); got {self.status}")


@dataclass(frozen=True)
class StallAfter(Fault):
    """Forward status, headers and the first ``n_bytes`` of the body, go silent for ``seconds``, then end the
    connection as CutAfter does. For read timeouts. A body of ``n_bytes`` or fewer passes untouched."""

    n_bytes: int
    seconds: float

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_bytes(self.n_bytes)
        _check_seconds(self.seconds)


AnyFault = Delay | CutAfter | FlipByte | Respond | StallAfter


def registry_error(
    status: int,
    code: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    path: str = "",
    method: str | None = None,
    times: int | None = None,
) -> Respond:
    """A Respond with a registry API error body, e.g. ``registry_error(429, "TOOMANYREQUESTS", "slow down",
    headers={"Retry-After": "7"})``."""
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": {}}]}).encode("utf-8")
    return Respond(
        status,
        {"Content-Type": "application/json", **(headers or {})},
        body,
        path=path,
        method=method,
        times=times,
    )


def _check_seconds(seconds: float) -> None:
    if not 0 <= seconds <= MAX_FAULT_SECONDS:
        raise ValueError(f"seconds must be between 0 and {MAX_FAULT_SECONDS}; got {seconds}")


def _check_bytes(n: int) -> None:
    if n < 0:
        raise ValueError(f"a byte count or offset cannot be negative; got {n}")
