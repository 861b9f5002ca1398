"""Read leases on blob files: a blob that anyone is reading is never deleted under them.

Every reader holds a shared ``flock`` on its open file for as long as it reads; deletion takes the exclusive
lock without waiting and gives up if a reader holds the file. ``flock`` locks belong to the open file (not the
process or the path), so this holds between processes sharing one cache directory, and a lock taken on a
partial file stays with it when the commit renames it into place.

A reader that opens a file just as it is being deleted still reads the right bytes (an unlinked file stays
readable while open); the lease is what keeps the blob *in the cache*, and its disk space counted, while it
is being read.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

__all__ = [
    "claim_is_held",
    "is_leased",
    "lock_if_free",
    "release_lock_file",
    "lock_file",
    "remove_free_claim",
    "same_file",
    "take_read_lease",
    "unlink_unless_leased",
]


def take_read_lease(fd: int) -> bool:
    """Take the shared lock on ``fd`` (released when its file is closed); False if it could not be taken.

    Never waits: the only exclusive holder is a deletion, which holds it for one ``unlink``, and reading on
    without the lease is correct (see the module docstring).
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        # Being deleted right now, or a filesystem without flock (some network mounts): read without a lease.
        return False
    return True


def unlink_unless_leased(path: Path) -> bool:
    """Delete ``path`` unless a reader holds it; True if it is gone (or never was), False if it is being read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            current = os.stat(path)
        except FileNotFoundError:
            return True
        opened = os.fstat(fd)
        if (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
            # Replaced since we opened it (a fill of the same digest committed): that file is not the one we hold.
            return False
        os.unlink(path)
        return True
    finally:
        os.close(fd)


def is_leased(path: Path) -> bool:
    """Whether a reader holds ``path`` right now (for reports; the answer may change at once)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def lock_if_free(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` without waiting; False if someone holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def claim_is_held(lock_path: Path) -> bool:
    """Whether a running fill holds the claim lock file ``lock_path`` (:mod:`storage.claims`); False if none."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not lock_if_free(fd):
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def remove_free_claim(lock_path: Path) -> bool:
    """Remove a claim's or fetch lock's file that no one holds (its holder died); True if removed."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        # Under the lock, and only the file we locked: a claimer that opened it meanwhile finds it gone and retries.
        if not lock_if_free(fd) or not same_file(fd, lock_path):
            return False
        os.unlink(lock_path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


# Opening a lock file again after it was replaced under us: each retry means its holder just finished.
_LOCK_RETRIES = 8


def lock_file(path: Path) -> tuple[int, bool]:
    """Open (creating it) the lock file ``path`` and try to lock it exclusively, without waiting.

    Returns the descriptor and whether we hold the lock; the caller closes the descriptor (which releases it). A
    holder removes its lock file before it unlocks (so that lock files do not pile up): a lock taken on a file no
    longer at ``path`` means nothing, and the file is opened again.
    """
    for _ in range(_LOCK_RETRIES):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if not lock_if_free(fd):
                return fd, False
            if same_file(fd, path):
                return fd, True
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise OSError(errno.EAGAIN, f"the lock file {path.name} keeps changing")


def release_lock_file(path: Path, fd: int) -> None:
    """Remove, then unlock, a lock file taken with :func:`lock_file`."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)
