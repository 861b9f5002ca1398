"""One process of several sharing a cache directory does a job: whichever holds an ``flock`` on a lock file.

An :class:`~proxy.lifecycle.shared.Election` (its methods are async for that, though a flock never waits).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["ProcessLock"]


class ProcessLock:
    """A non-blocking exclusive ``flock``, held until :meth:`release` or the process ends.

    The kernel drops the lock with the process, so a worker that dies (and is restarted by the supervisor) frees
    the job for another one at its next :meth:`acquire`. Each worker opens the file itself after the fork, so each
    has its own open file description: flock locks are per description, and a lock taken before a fork would be
    shared by every child.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    async def acquire(self) -> bool:
        """Whether this process holds the lock now; never waits. OSError if the file cannot be opened."""
        if self._fd is not None:
            return True
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    async def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor of the description releases the lock
