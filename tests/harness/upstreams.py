"""How tests configure the proxy for the second upstream, the ghcr.io stand-in (fixture ``ghcr_registry``)."""

from __future__ import annotations

from tests.harness.registry import DistributionRegistry

GHCR_CREDENTIALS = ("ghcr-user", "ghcr-pass")
GHCR_PASSWORD_ENV = "GHCR_PASSWORD"


def ghcr_upstream_config(registry: DistributionRegistry) -> str:
    """The ``[[upstreams]]`` table that makes a proxy serve ``registry`` as ghcr.io.

    Use as ``ProxyServer(..., extra_config=ghcr_upstream_config(r), env=ghcr_env())``.
    """
    return (
        "[[upstreams]]\n"
        'registry = "ghcr.io"\n'
        f'url = "{registry.url}"\n'
        f'username = "{GHCR_CREDENTIALS[0]}"\n'
        f'password_env = "{GHCR_PASSWORD_ENV}"\n'
    )


def ghcr_env() -> dict[str, str]:
    return {GHCR_PASSWORD_ENV: GHCR_CREDENTIALS[1]}
