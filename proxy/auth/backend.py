"""Who a request comes from: ``Authorization`` read for Starlette's ``AuthenticationMiddleware``.

- ``Basic user:password``: an htpasswd user, or the name and value of a static token.
- ``Bearer <token>``: a token the proxy's token service issued (an anonymous one counts as no login), or a static
  token's value.
- No header: anonymous. Anything else, or credentials that do not check out: 401 (the middleware's error
  handler adds the challenge). After repeated failures from one address: 429 for the rest of the minute.
"""

from __future__ import annotations

import base64
import binascii
import math

from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    BaseUser,
    UnauthenticatedUser,
)
from starlette.requests import HTTPConnection

from proxy.auth.limiter import FailedLogins
from proxy.auth.passwords import Htpasswd, constant_time_equal
from proxy.auth.principal import Principal
from proxy.auth.tokens import TokenService
from proxy.errors import RegistryError

__all__ = ["ANONYMOUS_TOKEN", "AuthFailed", "ClientAuthBackend"]

ANONYMOUS_TOKEN = "anonymous-token"

# Longer Authorization values are refused unread: no registry client sends one.
_MAX_CREDENTIALS = 8192


class AuthFailed(AuthenticationError):
    def __init__(self, error: RegistryError) -> None:
        super().__init__(error.message)
        self.error = error


class ClientAuthBackend(AuthenticationBackend):
    def __init__(
        self,
        tokens: TokenService,
        htpasswd: Htpasswd | None = None,
        static_tokens: dict[str, str] | None = None,
        groups: dict[str, frozenset[str]] | None = None,
        limiter: FailedLogins | None = None,
    ) -> None:
        self._tokens = tokens
        self._htpasswd = htpasswd
        self._static = static_tokens or {}
        self._groups = groups or {}
        self._limiter = limiter or FailedLogins()

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        header = conn.headers.get("authorization")
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        value = value.strip()
        address = conn.client.host if conn.client is not None else "unknown"
        if wait := self._limiter.blocked_for(address):
            raise AuthFailed(
                RegistryError.too_many_requests("too many failed logins from this address", str(math.ceil(wait)))
            )
        principal: Principal | None
        if scheme.lower() == "basic" and len(value) <= _MAX_CREDENTIALS:
            principal = await self._basic(value)
        elif scheme.lower() == "bearer" and len(value) <= _MAX_CREDENTIALS:
            verified = self._tokens.verify(value)
            if verified is None:
                # An anonymous token: the client followed the challenge without credentials. It is no login, but
                # it shows the client speaks the token protocol (``/v2/`` answers 200 to it, as Distribution does).
                return AuthCredentials([ANONYMOUS_TOKEN]), UnauthenticatedUser()
            principal = verified if isinstance(verified, Principal) else self._static_token(value)
        else:
            raise AuthFailed(RegistryError.unauthorized("unsupported authorization"))
        if principal is None:
            self._limiter.failed(address)
            raise AuthFailed(RegistryError.unauthorized("invalid credentials"))
        return AuthCredentials(["pull"]), Principal(principal.name, self._groups.get(principal.name, frozenset()))

    async def _basic(self, value: str) -> Principal | None:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        user, sep, password = decoded.partition(":")
        if not sep or not user:
            return None
        if self._htpasswd is not None and await self._htpasswd.verify(user, password):
            return Principal(user)
        expected = self._static.get(user)
        if expected is not None and constant_time_equal(password, expected):
            return Principal(user)
        return None

    def _static_token(self, value: str) -> Principal | None:
        # Every token is compared (in constant time each), so the time taken says nothing of which one was close.
        found = [name for name, token in self._static.items() if constant_time_equal(value, token)]
        return Principal(found[0]) if found else None
