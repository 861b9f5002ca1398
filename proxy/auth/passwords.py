"""Users and their bcrypt password hashes, from an htpasswd file as ``htpasswd -B`` writes it.

The file is re-read when it changes, so adding a user needs no restart. bcrypt is slow on purpose (tens of
milliseconds a check), so checks run in a worker thread, and a successful check is remembered for a minute:
clients that send Basic credentials with every request do not cost a bcrypt each.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections import OrderedDict
from pathlib import Path

import bcrypt

__all__ = ["Htpasswd", "HtpasswdError"]

_BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")
_REMEMBER_SECONDS = 60.0
_REMEMBER_MAX = 10_000


class HtpasswdError(Exception):
    """The file cannot be used; the message names the file and line, never a hash."""


def load_htpasswd(path: Path) -> dict[str, bytes]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HtpasswdError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise HtpasswdError(f"{path} is not UTF-8 text") from None
    users: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise HtpasswdError(f"{path}:{number}: expected user:hash")
        if not hashed.startswith(_BCRYPT_PREFIXES):
            # MD5-crypt, SHA1 and crypt(3) entries are too weak to accept; htpasswd -B writes bcrypt.
            raise HtpasswdError(f"{path}:{number}: user {user!r} is not a bcrypt entry (use htpasswd -B)")
        users[user] = hashed.encode("ascii", "replace")
    return users


class Htpasswd:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, bytes] = {}
        self._verified: OrderedDict[bytes, float] = OrderedDict()
        self._reload()

    def _reload(self) -> None:
        stat = os.stat(self._path)
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._users = load_htpasswd(self._path)
            self._stamp = stamp
            self._verified.clear()  # a changed file may have changed a password

    async def verify(self, user: str, password: str) -> bool:
        try:
            self._reload()
        except (OSError, HtpasswdError):
            pass  # keep the users we had: a file being rewritten must not lock everyone out
        hashed = self._users.get(user)
        if hashed is None:
            return False
        key = hashlib.sha256(user.encode() + b"\0" + password.encode() + b"\0" + hashed).digest()
        remembered = self._verified.get(key)
        if remembered is not None and remembered > time.monotonic():
            return True
        ok = await asyncio.to_thread(_check, password, hashed)
        if ok:
            self._verified[key] = time.monotonic() + _REMEMBER_SECONDS
            self._verified.move_to_end(key)
            while len(self._verified) > _REMEMBER_MAX:
                self._verified.popitem(last=False)
        return ok


def _check(password: str, hashed: bytes) -> bool:
    try:
        # bcrypt reads at most 72 bytes of the password; longer ones are refused rather than silently cut.
        encoded = password.encode()
        return len(encoded) <= 72 and bcrypt.checkpw(encoded, hashed)
    except ValueError:
        return False


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
