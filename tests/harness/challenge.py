"""The registry's ``WWW-Authenticate`` challenge, and the token dance a Docker client does in answer to it."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

import httpx

_PARAM = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Challenge:
    scheme: str
    """``Bearer`` or ``Basic``, as the registry spelled it."""
    params: dict[str, str]

    @classmethod
    def parse(cls, header: str) -> Challenge:
        """Parse ``Bearer realm="...",service="...",scope="..."``; scopes hold commas, so match quotes, not commas."""
        scheme, _, rest = header.strip().partition(" ")
        return cls(scheme, {key: value for key, value in _PARAM.findall(rest)})


def fetch_token(
    client: httpx.Client,
    challenge: Challenge,
    scopes: list[str],
    credentials: tuple[str, str] | None = None,
) -> str:
    """GET the challenge's realm for ``scopes``, the way docker and skopeo do, and return the bearer token."""
    params: dict[str, str | list[str]] = {"service": challenge.params.get("service", ""), "scope": scopes}
    if credentials is not None:
        params["account"] = credentials[0]
    response = client.get(challenge.params["realm"], params=params, auth=credentials)
    response.raise_for_status()
    body = response.json()
    token = body.get("token") or body.get("access_token")
    if not isinstance(token, str):
        raise ValueError(f"token response without a token: {body!r}")
    return token


def basic_authorization(username: str, password: str) -> str:
    """The value of an ``Authorization: Basic ...`` header."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
