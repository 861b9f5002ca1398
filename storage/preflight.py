"""Whether a cache root can be used at all, checked once before the server starts."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from storage.paths import PARTIAL_SUFFIX

__all__ = ["check_root"]


def check_root(root: Path) -> str | None:
    """None if ``root`` exists (or can be made) and takes a file; else what is wrong, in a few words.

    A mistyped volume path must stop the server at start rather than let it relay every pull uncached and
    spend the upstream's rate limit without anyone noticing.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        # Named like any unfinished write, so that a crash right here leaves nothing a sweep would not remove.
        probe = root / f".probe.{secrets.token_hex(8)}{PARTIAL_SUFFIX}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"\0")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None
