"""Who a request comes from, as Starlette's ``request.user``."""

from __future__ import annotations

from starlette.authentication import BaseUser

__all__ = ["Principal"]


class Principal(BaseUser):
    """An authenticated client: a user of the htpasswd file or the name of a static token, and its groups."""

    def __init__(self, name: str, groups: frozenset[str] = frozenset()) -> None:
        self.name = name
        self.groups = groups

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.name

    @property
    def identity(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Principal({self.name!r})"
