"""prometheus-client's multiprocess mode, for ``[server] workers`` > 1.

Each worker writes its values to files in one directory and a scrape sums them (``MultiProcessCollector``). The
library decides whether to write those files once, when it is first imported, from ``PROMETHEUS_MULTIPROC_DIR``;
the proxy learns how many workers it runs only from its configuration, after that import. :func:`enable` sets the
variable and asks the library to decide again (its own ``get_value_class``), in the parent, before any worker is
forked or any metric exists. The self-check there is the fallback's trigger: if a future release decides
differently, the proxy says so and each worker reports its own numbers.

The directory is made fresh at start-up and removed at exit: values of an earlier run must not count again.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry, multiprocess, values

__all__ = ["MULTIPROC_ENV", "collecting_registry", "enable", "remove"]

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def enable() -> Path | None:
    """A fresh directory for every worker's metrics, in force for metrics made from now on; None if the library
    cannot be switched (then each worker reports its own)."""
    directory = Path(tempfile.mkdtemp(prefix="registry-proxy-metrics-"))
    os.environ[MULTIPROC_ENV] = str(directory)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    if values.ValueClass is values.MutexValue:
        log.warning("prometheus-client did not switch to multiprocess mode: /metrics shows one worker's numbers")
        remove(directory)
        return None
    return directory


def remove(directory: Path) -> None:
    os.environ.pop(MULTIPROC_ENV, None)
    shutil.rmtree(directory, ignore_errors=True)


def collecting_registry(directory: Path) -> CollectorRegistry:
    """A registry that reads every worker's files, the files of workers that died left out of the "live" gauges."""
    _forget_dead(directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return registry


def _forget_dead(directory: Path) -> None:
    # The supervisor restarts a worker that died without telling anyone its pid: its "live" gauges (fills in
    # flight, breaker state) would count forever. Their files are named gauge_live<mode>_<pid>.db.
    for path in directory.glob("gauge_live*_*.db"):
        pid = path.stem.rpartition("_")[2]
        if pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(directory))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
