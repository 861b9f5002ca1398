"""Several worker processes on one listening socket: all cores serve, one process supervises.

The parent binds the socket and checks the configuration, then forks; each child builds the app and serves on the
inherited socket (the kernel hands each new connection to whichever worker accepts first, so a busy worker takes
fewer). Children share the cache directory; what must happen once across them (one upstream download per blob)
is coordinated on disk, not in memory.

The parent forwards SIGTERM/SIGINT (stop) and SIGHUP (reload TLS) to every child, restarts a child that dies
unexpectedly, and gives up (stopping the rest) if children keep dying right after they start. Forking happens
before any thread or event loop exists in the parent.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from types import FrameType

__all__ = ["supervise"]

log = logging.getLogger(__name__)

# A child that dies within this long of starting counts as failing to start; this many in a row stop everything.
_EARLY_DEATH = 5.0
_MAX_EARLY_DEATHS = 5
_STOP_TIMEOUT = 30.0


def supervise(count: int, run_worker: Callable[[int], int]) -> int:
    """Run ``run_worker(number)`` in ``count`` forked processes until told to stop; the exit status for the parent.

    ``run_worker`` serves until its server stops and returns the worker's exit status.
    """
    children: dict[int, tuple[int, float]] = {}  # pid → (worker number, started at)
    stopping = False
    early_deaths = 0

    def start(number: int) -> None:
        pid = os.fork()
        if pid == 0:
            # The child: default signal handling (uvicorn installs its own), serve, and never return into the parent's
            # code (a return would run the parent's loop in the child).
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the TLS reloader (if any) takes it
            status = 1
            try:
                status = run_worker(number)
            except BaseException:
                log.exception("worker %d failed", number)
            finally:
                logging.shutdown()
                os._exit(status)
        children[pid] = (number, time.monotonic())

    def forward(sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM if sig == signal.SIGINT else sig)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for number in range(count):
        start(number)
    log.info("started %d worker processes", count)
    status = 0
    stop_deadline: float | None = None
    while children:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            if stopping and stop_deadline is None:
                stop_deadline = time.monotonic() + _STOP_TIMEOUT
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                log.warning("workers did not stop within %.0f s; killing them", _STOP_TIMEOUT)
                for child in children:
                    _kill(child)
                stop_deadline = time.monotonic() + _STOP_TIMEOUT
            time.sleep(0.1)
            continue
        number, started = children.pop(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if stopping:
            status = max(status, code if code > 0 else 0)
            continue
        log.error("worker %d (pid %d) exited with %d; starting another", number, pid, code)
        early_deaths = early_deaths + 1 if time.monotonic() - started < _EARLY_DEATH else 0
        if early_deaths >= _MAX_EARLY_DEATHS:
            log.error("workers keep dying right after they start; stopping")
            stopping = True
            status = 1
            forward(signal.SIGTERM, None)
            continue
        start(number)
    return status


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
