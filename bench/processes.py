"""Memory and CPU time of a server and all its descendants, from /proc (Linux).

The proxy may run several worker processes (``[server] workers``): its footprint is the sum over the whole
tree. Each process's peak (``VmHWM``) is summed, which overstates the footprint a little: the peaks need not
have coincided, and forked workers share pages that each one counts.
"""

from __future__ import annotations

import resource
import subprocess
import time
from pathlib import Path
from typing import Protocol

__all__ = [
    "children_cpu_seconds",
    "cpu_seconds",
    "descendants",
    "peak_rss_bytes",
    "server_pid",
    "settled_cpu_seconds",
]

PROC = Path("/proc")
# A bound on the walk, far above any server's process count, so a /proc oddity cannot make it run away.
MAX_PROCESSES = 4096


class _RunsAProcess(Protocol):
    _process: subprocess.Popen[bytes] | None


def server_pid(server: _RunsAProcess) -> int:
    """The pid of a running ``ProxyServer`` or ``DistributionRegistry`` (the harness keeps it private)."""
    process = server._process
    if process is None or process.poll() is not None:
        raise RuntimeError("the server is not running")
    return process.pid


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it that is alive now, parents first."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            parent = _parent(entry)
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    tree = [pid]
    for parent in tree:  # tree grows while we walk it: breadth first, bounded below
        tree.extend(children.get(parent, ()))
        if len(tree) > MAX_PROCESSES:
            raise RuntimeError(f"more than {MAX_PROCESSES} processes below {pid}")
    return tree


def peak_rss_bytes(pid: int) -> int:
    """The sum of the peak resident set sizes (VmHWM) of ``pid`` and its descendants."""
    total = 0
    for member in descendants(pid):
        total += _status_kib(PROC / str(member) / "status", "VmHWM") * 1024
    return total


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its descendants, every thread alive now, in nanoseconds' resolution (the scheduler's
    own count, /proc/<pid>/task/<tid>/schedstat: utime and stime tick only every 10 ms). Threads that ended are not
    in it."""
    nanoseconds = 0
    for member in descendants(pid):
        try:
            tasks = list((PROC / str(member) / "task").iterdir())
        except OSError:
            continue  # exited meanwhile
        for task in tasks:
            try:
                nanoseconds += int((task / "schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue
    return nanoseconds / 1e9


def children_cpu_seconds() -> float:
    """CPU time of every child this process started and waited for (the benchmark's clients: curl, openssl)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def settled_cpu_seconds(pid: int, *, quiet: float = 0.2, limit: float = 3.0) -> float:
    """:func:`cpu_seconds` once the tree stopped using CPU for ``quiet`` seconds (or after ``limit``): a server may
    still be writing its cache after the client has its bytes, and that counts too."""
    last = cpu_seconds(pid)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = cpu_seconds(pid)
        if now == last:
            break
        last = now
    return last


def _parent(entry: Path) -> int | None:
    try:
        stat = (entry / "stat").read_text()
    except OSError:  # gone since we listed it
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
    fields = stat.rpartition(")")[2].split()
    return int(fields[1]) if len(fields) > 1 else None


def _status_kib(path: Path, field: str) -> int:
    try:
        lines = path.read_text().splitlines()
    except OSError:  # exited meanwhile: its memory is no longer anyone's
        return 0
    for line in lines:
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    return 0
