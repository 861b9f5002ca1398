"""The ``WWW-Authenticate`` challenge that sends clients to the proxy's own token service."""

from __future__ import annotations

from starlette.requests import HTTPConnection

__all__ = ["TOKEN_PATH", "challenge"]

TOKEN_PATH = "/auth/token"


def challenge(conn: HTTPConnection, service: str, scope: str | None = None) -> str:
    # The realm is on the address the client used to reach us (a mirror URL, a name in /etc/hosts, a load
    # balancer's name): the Host header, and https when the connection came over TLS.
    host = conn.headers.get("host") or f"{conn.url.hostname}:{conn.url.port}"
    realm = f"{conn.url.scheme}://{_quoted(host)}{TOKEN_PATH}"
    parts = [f'realm="{realm}"', f'service="{_quoted(service)}"']
    if scope:
        parts.append(f'scope="{_quoted(scope)}"')
    return "Bearer " + ",".join(parts)


def _quoted(value: str) -> str:
    # Header values are printable ASCII here: a hostile Host header cannot break out of the quoted string.
    return "".join(c for c in value if " " <= c <= "~" and c not in '"\\')
