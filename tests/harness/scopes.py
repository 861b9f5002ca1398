"""Token scopes (``repository:library/alpine:pull,push``) and the Docker Hub-like policy that grants them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Scope:
    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        """Parse ``type:name:actions``; None when malformed (Hub ignores those rather than failing the request).

        The name sits between the first and the last colon, so a name with a registry host and port
        (``localhost:5000/foo``) still parses.
        """
        resource_type, sep1, rest = text.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not (sep1 and sep2 and resource_type and name):
            return None
        return cls(resource_type, name, tuple(a for a in actions.split(",") if a))

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def split_scope_params(values: Iterable[str]) -> list[str]:
    """Flatten repeated ``scope`` parameters; one parameter may also hold several scopes separated by spaces
    (the OAuth2 form)."""
    return [part for value in values for part in value.split()]


@dataclass(frozen=True)
class HubPolicy:
    """Who may do what, the way Docker Hub answers for public and private repositories.

    Anonymous clients may pull every repository except those under a private prefix; authenticated clients get
    every action they ask for. A scope that is not allowed is left out of the token rather than refused, as Hub
    does: the registry then answers the request made with that token 401 ``insufficient_scope``.
    """

    private_prefixes: tuple[str, ...] = ("private/",)

    def allowed(self, scope: Scope, *, authenticated: bool) -> tuple[str, ...]:
        if authenticated:
            return scope.actions
        if scope.type != "repository" or scope.name.startswith(self.private_prefixes):
            return ()
        return tuple(a for a in scope.actions if a == "pull")

    def access(self, scopes: Sequence[str], *, authenticated: bool) -> list[dict[str, Any]]:
        """The ``access`` claim: one entry per resource, actions merged across repeated scopes, empty ones dropped."""
        merged: dict[tuple[str, str], list[str]] = {}
        for text in scopes:
            scope = Scope.parse(text)
            if scope is None:
                continue
            actions = merged.setdefault((scope.type, scope.name), [])
            actions.extend(a for a in self.allowed(scope, authenticated=authenticated) if a not in actions)
        return [
            {"type": resource_type, "name": name, "actions": actions}
            for (resource_type, name), actions in merged.items()
            if actions
        ]
