"""The access check made where a request's target is resolved: the rules, plus the challenge for a 401."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from proxy.auth.challenge import challenge
from proxy.auth.rules import AccessPolicy, Decision
from proxy.errors import RegistryError

__all__ = ["AccessControl"]


class AccessControl:
    def __init__(self, policy: AccessPolicy, service: str) -> None:
        self._policy = policy
        self.service = service

    def check(self, conn: HTTPConnection, registry: str, repository: str, name: str) -> None:
        """Raise 401 (with a challenge naming the repository) or 403 unless the client may pull from it.

        ``name`` is the repository as the client wrote it (the scope it will ask a token for).
        """
        decision = self._policy.decide(registry, repository, conn.user)
        if decision is Decision.ALLOW:
            return
        if decision is Decision.LOGIN:
            error = RegistryError.unauthorized("authentication required")
            error.headers["WWW-Authenticate"] = challenge(conn, self.service, f"repository:{name}:pull")
            raise error
        raise RegistryError.denied(f"{conn.user.display_name} may not pull from this repository")

    def allows(self, conn: HTTPConnection, registry: str, repository: str) -> bool:
        return self._policy.decide(registry, repository, conn.user) is Decision.ALLOW

    def login_error(self, conn: HTTPConnection, error: RegistryError) -> RegistryError:
        """``error`` (a failed login) with the challenge a client needs to try again."""
        if error.status == 401:
            error.headers["WWW-Authenticate"] = challenge(conn, self.service)
        return error
