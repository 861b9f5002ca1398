"""Who may read ``/metrics`` and the status page (``[metrics] access``): they name repositories and upstreams."""

from __future__ import annotations

import ipaddress

from starlette.requests import Request

from proxy.errors import RegistryError

__all__ = ["check_access"]


def check_access(request: Request, mode: str) -> None:
    """Raise the registry error that refuses ``request`` under ``mode`` (anyone, loopback, authenticated)."""
    if mode == "anyone":
        return
    if mode == "loopback":
        if not _loopback(request.client.host if request.client else ""):
            raise RegistryError.denied("this page is served to clients on the proxy's own machine only")
        return
    if not request.user.is_authenticated:
        error = RegistryError.unauthorized("authentication required")
        # Basic: a browser asks for the login, and Prometheus sends its basic_auth.
        error.headers["WWW-Authenticate"] = 'Basic realm="registry-proxy", charset="UTF-8"'
        raise error


def _loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # "::ffff:127.0.0.1" on a dual-stack socket
    return address.is_loopback
