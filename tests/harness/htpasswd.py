"""bcrypt htpasswd entries for Distribution's ``auth.htpasswd``, which accepts bcrypt and nothing else.

There is no bcrypt in the test dependencies; the system's libcrypt (libxcrypt, on every Debian) implements it, so we
call it through ctypes. Python's own ``crypt`` module would do the same but is deprecated and gone in 3.13.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from pathlib import Path


class BcryptUnavailable(RuntimeError):
    """The system has no libcrypt that can make bcrypt hashes."""


@cache
def _libcrypt() -> ctypes.CDLL:
    name = ctypes.util.find_library("crypt")
    if name is None:
        raise BcryptUnavailable("libcrypt not found")
    lib = ctypes.CDLL(name)
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    return lib


def bcrypt_hash(password: str, *, cost: int = 5) -> str:
    """A ``$2y$`` bcrypt hash. Cost 5 (the minimum is 4) keeps each login to the registry around a millisecond."""
    lib = _libcrypt()
    # A NULL random source makes libcrypt draw the salt from the kernel itself.
    setting = lib.crypt_gensalt(b"$2y$", cost, None, 0)
    hashed = lib.crypt(password.encode("utf-8"), setting) if setting else None
    if not hashed or not hashed.startswith(b"$2"):
        raise BcryptUnavailable("libcrypt cannot make bcrypt hashes")
    return str(hashed.decode("ascii"))


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    path.write_text("".join(f"{user}:{bcrypt_hash(password)}\n" for user, password in users.items()))
    return path
