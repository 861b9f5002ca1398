"""The hosts one upstream may send the proxy to besides its own: blob redirect targets and token realms.

A registry names other hosts in two places: ``Location`` on a blob redirect (Docker Hub's CDN) and ``realm`` in a
Bearer challenge (auth.docker.io). Both come from the network, so each is checked against the upstream's
configuration before any connection is made; anything else is refused with :class:`HostRefused`.

Redirect hosts are names (``production.cloudflare.docker.com``) or ``*.domain`` (any host under it). Token realms are
URLs (``https://auth.docker.io/token``: that scheme, host, port and path exactly) or host names (any realm on it);
never wildcards, because a realm receives the upstream's credentials. The upstream's own host name is always allowed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx

from proxy.errors import RegistryError
from proxy.upstream.sanitize import printable

__all__ = ["AllowedHosts", "HostRefused"]

log = logging.getLogger(__name__)

_DEFAULT_PORTS = {"http": 80, "https": 443}


class HostRefused(RegistryError):
    """The upstream named a host the proxy will not go to (outside its configuration, or not safely); no connection
    was made to it."""

    def __init__(self, why: str) -> None:
        super().__init__(502, "UPSTREAM_ERROR", why)


@dataclass(frozen=True)
class AllowedHosts:
    registry: str  # for messages
    own_host: str  # the upstream's host name, lower-case
    redirect_hosts: tuple[str, ...] = ()
    token_realms: tuple[str, ...] = ()

    @classmethod
    def for_url(
        cls, registry: str, url: str, redirect_hosts: tuple[str, ...] = (), token_realms: tuple[str, ...] = ()
    ) -> AllowedHosts:
        return cls(registry, host_of(httpx.URL(url)), redirect_hosts, token_realms)

    def check_redirect(self, url: httpx.URL) -> None:
        """Raise HostRefused unless a blob download may follow a redirect to ``url``."""
        host = host_of(url)
        if url.scheme not in _DEFAULT_PORTS or not host or url.userinfo:
            raise self._refuse("redirected to an unusable URL on", host or "no host", "redirect_hosts")
        if host != self.own_host and not any(_host_matches(pattern, host) for pattern in self.redirect_hosts):
            raise self._refuse("redirected to", host, "redirect_hosts")

    def check_realm(self, url: httpx.URL) -> None:
        """Raise HostRefused unless tokens (and so the upstream's credentials) may be asked of realm ``url``."""
        host = host_of(url)
        if url.scheme not in _DEFAULT_PORTS or not host or url.userinfo:
            raise self._refuse("named an unusable token realm on", host or "no host", "token_realms")
        if host != self.own_host and not any(_realm_matches(entry, url) for entry in self.token_realms):
            raise self._refuse("named the token realm", host, "token_realms")

    def _refuse(self, what: str, host: str, key: str) -> HostRefused:
        # The host only, never the rest of the URL: a signed query string is a credential of sorts.
        why = f"upstream {self.registry} {what} {printable(host)}, which is not in its {key}: the proxy did not connect"
        refused = HostRefused(why)
        # The operator's cue: either the upstream misbehaves, or the configuration lacks a host it really uses.
        log.warning("%s", refused.message)
        return refused


def host_of(url: httpx.URL) -> str:
    # raw_host is the ASCII (IDNA) form, which is what the configuration holds; a trailing dot names the same host.
    return url.raw_host.decode("ascii", "replace").lower().rstrip(".")


def _host_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def _realm_matches(entry: str, url: httpx.URL) -> bool:
    if "://" not in entry:
        return host_of(url) == entry
    allowed = httpx.URL(entry)
    return (
        allowed.scheme == url.scheme
        and host_of(allowed) == host_of(url)
        and _port(allowed) == _port(url)
        and (allowed.path or "/") == (url.path or "/")
    )


def _port(url: httpx.URL) -> int | None:
    return url.port or _DEFAULT_PORTS.get(url.scheme)
