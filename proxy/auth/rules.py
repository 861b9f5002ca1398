"""Who may pull what: rules per upstream registry and repository pattern, first match wins.

A rule's ``pull`` is ``anonymous`` (anyone, logged in or not), ``authenticated`` (any client that logged in), or a
list of user names and ``group:<name>`` entries. Where no rule matches, the default is anonymous for an upstream
the proxy reaches without credentials (public content stays public) and authenticated for one it reaches with
credentials (the proxy must not hand out what its own credentials can see to anyone who can reach its port).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from fnmatch import fnmatchcase

from starlette.authentication import BaseUser

from proxy.auth.principal import Principal

__all__ = ["ANONYMOUS", "AUTHENTICATED", "AccessPolicy", "AccessRule", "Decision"]

ANONYMOUS = "anonymous"
AUTHENTICATED = "authenticated"


class Decision(enum.Enum):
    ALLOW = "allow"
    LOGIN = "login"  # not allowed anonymously: 401 with a challenge, so the client logs in
    DENY = "deny"  # logged in, but not as someone this repository is for: 403


@dataclass(frozen=True)
class AccessRule:
    registry: str  # an upstream's registry name, or "*"
    repository: str  # a glob over the repository name on that upstream ("library/*")
    pull: str | frozenset[str]  # ANONYMOUS, AUTHENTICATED, or user names and "group:<name>" entries

    def matches(self, registry: str, repository: str) -> bool:
        return (self.registry == "*" or self.registry == registry) and fnmatchcase(repository, self.repository)


class AccessPolicy:
    def __init__(self, rules: list[AccessRule], defaults: dict[str, str]) -> None:
        """``defaults``: per registry, ANONYMOUS or AUTHENTICATED, for repositories no rule matches."""
        self._rules = rules
        self._defaults = defaults

    def decide(self, registry: str, repository: str, user: BaseUser) -> Decision:
        pull = next(
            (rule.pull for rule in self._rules if rule.matches(registry, repository)),
            self._defaults.get(registry, AUTHENTICATED),
        )
        if pull == ANONYMOUS:
            return Decision.ALLOW
        if not user.is_authenticated:
            return Decision.LOGIN
        if pull == AUTHENTICATED:
            return Decision.ALLOW
        assert isinstance(pull, frozenset)
        names = {user.display_name}
        if isinstance(user, Principal):
            names |= {f"group:{group}" for group in user.groups}
        return Decision.ALLOW if names & pull else Decision.DENY
