"""Starting a file's writeback early, so that its ``fsync`` finds little left to write."""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import cast

__all__ = ["start_writeback"]

_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    # Not in the os module; glibc and musl have it on Linux. Called through ctypes, which releases the GIL.
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_SYNC_FILE_RANGE = _sync_file_range() if sys.platform == "linux" else None


def start_writeback(fd: int, end: int) -> None:
    """Start writing the file's first ``end`` bytes to disk, without waiting for it: a hint, never an error.

    The kernel keeps a new file's pages dirty for up to 30 s, so the ``fsync`` of a commit would write the whole
    blob while the client waits for its last byte (~60 ms for 200 MiB here). Started as the blob arrives, the disk
    writes it meanwhile and the fsync has only the last blocks left (~10 ms). Durability still comes from that
    fsync alone: this only moves the work earlier.
    """
    if _SYNC_FILE_RANGE is not None and end > 0:
        _SYNC_FILE_RANGE(fd, 0, end, _SYNC_FILE_RANGE_WRITE)
