"""The proxy's own token service: short-lived signed tokens for the Bearer realm it announces.

docker, containerd, podman and skopeo all follow a Bearer challenge the same way: ask the realm for a token (with
Basic credentials if they have them, anonymously otherwise), then send ``Authorization: Bearer <token>``. The token
names who logged in; what they may pull is decided per request by the access rules, so a token never outlives a
rule change by more than the request it is used on.

Tokens are HS256 JWTs (PyJWT) signed with a key kept in a file, so every worker process sharing the cache root
(and every replica given the same file) accepts every other's tokens.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from proxy.auth.principal import Principal

__all__ = ["IssuedToken", "TokenService", "load_or_create_key"]

_ISSUER = "registry-proxy"
_ALGORITHM = "HS256"
# Clocks of the processes sharing a key may differ a little.
_LEEWAY = 5


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_in: int
    issued_at: str


class TokenService:
    def __init__(self, key: bytes, service: str, lifetime: float = 300.0) -> None:
        # Imported by the first service built (only with [auth]): PyJWT loads the cryptography package where it is
        # installed, ~9 MB in every worker process of a proxy that never issues a token otherwise.
        import jwt

        self._jwt = jwt
        self._key = key
        self.service = service
        self._lifetime = int(lifetime)

    def issue(self, principal: Principal | None, scopes: list[str]) -> IssuedToken:
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": _ISSUER,
            "aud": self.service,
            "sub": principal.name if principal is not None else "",
            "iat": now,
            "nbf": now - _LEEWAY,
            "exp": now + self._lifetime,
            "jti": secrets.token_hex(8),
            # Informative, as Distribution's tokens carry it; the rules decide each request.
            "access": [_access(scope) for scope in scopes if _access(scope)],
        }
        token = self._jwt.encode(claims, self._key, algorithm=_ALGORITHM)
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return IssuedToken(token, self._lifetime, issued)

    def verify(self, token: str) -> Principal | None | bool:
        """The principal a valid token names (None: an anonymous token); False if the token is not valid."""
        try:
            claims = self._jwt.decode(
                token,
                self._key,
                algorithms=[_ALGORITHM],
                audience=self.service,
                issuer=_ISSUER,
                leeway=_LEEWAY,
                options={"require": ["exp", "iat", "sub"]},
            )
        except self._jwt.PyJWTError:
            return False
        name = claims.get("sub")
        if not isinstance(name, str):
            return False
        if not name:
            return None
        # Groups come from the current configuration (the backend), not from the token: a removal takes effect at once.
        return Principal(name)


def _access(scope: str) -> dict[str, object] | None:
    # "repository:library/alpine:pull" → {"type": "repository", "name": "library/alpine", "actions": ["pull"]}
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name:
        return None
    return {"type": kind, "name": name[:300], "actions": [a for a in actions.split(",") if a == "pull"]}


def load_or_create_key(path: Path) -> bytes:
    """The signing key in ``path``, created (32 random bytes, mode 0600) by whichever process gets there first."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    else:
        try:
            os.write(fd, secrets.token_bytes(32))
            os.fsync(fd)
        finally:
            os.close(fd)
    for _ in range(100):  # bounded: another process may be between its create and its write
        key = path.read_bytes()
        if len(key) >= 32:
            return key
        time.sleep(0.01)
    raise OSError(f"{path} holds no usable key (fewer than 32 bytes)")
