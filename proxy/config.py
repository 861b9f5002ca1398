"""Settings, read once from a TOML file (or embedded defaults) and then immutable.

Nothing here touches the environment at import time: :func:`load` is called by the CLI, and tests build
:class:`Settings` directly.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from storage.digest import Digest, InvalidDigest
from storage.references import is_registry, is_repository, is_tag

__all__ = [
    "AccessSettings",
    "AuthSettings",
    "ConfigError",
    "PrefetchSettings",
    "LogSettings",
    "MetricsSettings",
    "S3StorageSettings",
    "ServerSettings",
    "Settings",
    "StaticToken",
    "StorageSettings",
    "UpstreamSettings",
    "image_key",
    "load",
    "parse_duration",
    "parse_size",
]

DOCKER_HUB = "docker.io"


class ConfigError(Exception):
    """A configuration problem, with a message that names the file and the key."""


@dataclass(frozen=True)
class ServerSettings:
    host: str = "0.0.0.0"
    port: int = 5000
    # A request's header section must be complete this long after the connection opened or the request began.
    header_timeout: float = 20.0
    # An idle keep-alive connection is closed after this long; above Docker's 30 s so its client closes first.
    keep_alive: float = 75.0
    # A client that takes no byte of a response for this long is cut.
    send_timeout: float = 60.0
    max_header_bytes: int = 64 * 1024
    # None: sized from the open-files limit at start-up.
    max_connections: int | None = None
    # Worker processes serving on the one socket; None: one per CPU (they share fills through the cache directory).
    workers: int | None = None
    # Serve HTTPS with this certificate chain and key (PEM); re-read on SIGHUP and when the files change.
    tls_cert: Path | None = None
    tls_key: Path | None = None


@dataclass(frozen=True)
class StorageSettings:
    root: Path = Path("registry-proxy-cache")
    # Refuse to start when the root is unusable; False relays every pull uncached instead.
    required: bool = True
    # Bytes the blobs may take; past it the least recently used unpinned ones are evicted. None: no budget.
    max_size: int | None = None
    # Eviction goes down to this many bytes; None: 90 % of max_size.
    low_watermark: int | None = None
    # Where blobs and the index live: "filesystem" (under root) or "s3" (a bucket; root then holds scratch files
    # and the inventory). The rest is for "s3" only.
    backend: str = "filesystem"
    s3: S3StorageSettings | None = None


@dataclass(frozen=True)
class S3StorageSettings:
    endpoint: str  # http(s)://host[:port]; requests are path-style (http://host/bucket/key)
    bucket: str  # created if missing
    region: str = "us-east-1"
    prefix: str = ""  # empty, or ending in "/"
    # The secrets themselves, from the AWS_* variables or the key files at load time; never from the config file.
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)


@dataclass(frozen=True)
class UpstreamSettings:
    registry: str = DOCKER_HUB
    url: str = "https://registry-1.docker.io"
    tag_ttl: float = 300.0
    # The upstream's 404s are remembered this long (capped at tag_ttl), so a looping job cannot flood it.
    negative_ttl: float = 5.0
    username: str | None = None
    # The secret itself, resolved from password_env / password_file at load time; never from the file.
    password: str | None = field(default=None, repr=False)
    connect_timeout: float = 3.0
    read_timeout: float = 60.0
    # Besides the upstream's own host (always allowed): hosts blob downloads may be redirected to ("host" or
    # "*.domain"), and token realms it may name ("https://host/path", or "host" for any realm there). Nothing else
    # is ever connected to. The defaults are Docker Hub's, from Docker's firewall allowlist
    # (docs.docker.com/desktop/setup/allow-list, 2025-2026): its CDNs (which one serves a pull depends on the plan
    # and the route) and auth.docker.io. The reader gives other registries none.
    redirect_hosts: tuple[str, ...] = (
        "production.cloudflare.docker.com",
        "production.cloudfront.docker.com",
        "docker-images-prod.6aa30f8b08e16409b46e0173d6de2f56.r2.cloudflarestorage.com",
    )
    token_realms: tuple[str, ...] = ("https://auth.docker.io/token",)
    # Requests to this upstream at once, blob downloads included for as long as they stream (at most three quarters
    # of these; the rest stay free for manifests, tags and HEADs); the others wait their turn, in order, for up to
    # read_timeout. The connection pool holds as many. 100 is httpx's own pool size, what the proxy always used.
    max_concurrent_requests: int = 100


@dataclass(frozen=True)
class StaticToken:
    name: str  # who presents it
    # The secret itself, read from its file at load time; never from the config file.
    token: str = field(repr=False)


@dataclass(frozen=True)
class AuthSettings:
    """Client authentication; on when an htpasswd file or static tokens are configured."""

    htpasswd: Path | None = None
    tokens: tuple[StaticToken, ...] = ()
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (group, members)
    # The key signing the proxy's own tokens; default: a file under the cache root, created on first start.
    token_key_file: Path | None = None
    token_lifetime: float = 300.0
    service: str = "registry-proxy"

    @property
    def enabled(self) -> bool:
        return self.htpasswd is not None or bool(self.tokens)


@dataclass(frozen=True)
class AccessSettings:
    registry: str  # a configured upstream's registry name, or "*"
    repository: str  # glob over repository names
    pull: str | tuple[str, ...]  # "anonymous", "authenticated", or user names and "group:<name>"


@dataclass(frozen=True)
class PrefetchSettings:
    """One ``[[prefetch]]`` table: an image warmed after start-up and kept fresh (proxy.lifecycle.prefetch)."""

    image: str  # as Docker reads it: "hashicorp/vault:1.15" is docker.io/hashicorp/vault:1.15
    platforms: tuple[str, ...] = ()  # "os/architecture[/variant]"; empty: every platform of an index
    # Opt-in: a pin takes budget that eviction can never reclaim, so it should be a choice, not a side effect.
    pin: bool = False
    # How often the tag is checked upstream (one HEAD); 0: only at start-up.
    refresh: float = 6 * 3600.0


@dataclass(frozen=True)
class LogSettings:
    format: str = "text"  # or "json": one JSON object per line, for log shippers
    level: str = "info"  # debug, info, warning, error; `serve --log-level` overrides it
    access: bool = True  # one line per request, on the logger "proxy.access"


@dataclass(frozen=True)
class MetricsSettings:
    # Who may read /metrics and the status page /: "anyone", "loopback" (clients on this machine), or
    # "authenticated" (a login, as for pulls; needs [auth]). None: "authenticated" with [auth], else "anyone".
    access: str | None = None


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    upstreams: tuple[UpstreamSettings, ...] = (UpstreamSettings(),)
    auth: AuthSettings = field(default_factory=AuthSettings)
    access: tuple[AccessSettings, ...] = ()
    prefetch: tuple[PrefetchSettings, ...] = ()
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)


# Each request to an upstream may hold a connection (a file descriptor) and a token fetch another.
_MAX_CONCURRENCY = 10_000
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
# A prefetched tag is checked upstream at most this often: more would be a flood of HEADs, not freshness.
_MIN_REFRESH = 60.0
_DOCKER_HUB_ALIASES = frozenset({"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as ``"30s"``, ``"5m"``, ``"1h"``."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as 30, "30s", "5m" or "1h"')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f'expected a duration such as 30, "30s", "5m" or "1h", got {value!r}')
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1, "b": 1,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
}  # fmt: skip


def parse_size(value: object) -> int:
    """Bytes from an integer or a string such as ``"300MiB"``, ``"50GiB"``, ``"2GB"``."""
    expected = 'expected a size such as 1073741824, "300MiB" or "50GiB"'
    if isinstance(value, bool):
        raise ValueError(expected)
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2) and match.group(2).lower()])
    else:
        raise ValueError(f"{expected}, got {value!r}")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


def image_key(text: str) -> tuple[str, str, str]:
    """(registry, repository, tag or digest) of an image reference, read as Docker reads it; ValueError if it is not
    one. The same rules as ``proxy.warm.references.parse_reference`` (which the server uses), kept here because this
    module imports nothing from the proxy; tests/unit/test_config_prefetch.py holds the two to the same answers."""
    text = text.strip()
    name, at, digest = text.partition("@")
    if not name or "://" in text:
        raise ValueError(f"not an image reference: {text[:100]!r}")
    if at:
        try:
            Digest.parse(digest)
        except InvalidDigest as exc:
            raise ValueError(f"{text[:100]!r}: {exc}") from None
    tag = "latest"
    colon, slash = name.rfind(":"), name.rfind("/")
    if colon > slash:  # a colon before the last slash is a registry's port
        name, tag = name[:colon], name[colon + 1 :]
        if not is_tag(tag):
            raise ValueError(f"{text[:100]!r}: invalid tag {tag[:130]!r}")
    first, slash_found, rest = name.partition("/")
    if slash_found and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        registry, repository = first.lower(), rest
        registry = DOCKER_HUB if registry in _DOCKER_HUB_ALIASES else registry
    else:
        registry, repository = DOCKER_HUB, name
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not is_registry(registry):
        raise ValueError(f"{text[:100]!r}: invalid registry name {registry[:100]!r}")
    if not is_repository(repository):
        raise ValueError(f"{text[:100]!r}: {repository[:100]!r} is not a valid (lower-case) repository name")
    return registry, repository, digest if at else tag


def load(path: Path | None, environ: dict[str, str] | None = None) -> Settings:
    """Settings from ``path``, or the embedded defaults (Docker Hub, cache in ./registry-proxy-cache)."""
    if path is None:
        return Settings()
    env = dict(os.environ) if environ is None else environ
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return _Reader(str(path), env).settings(raw)


class _Reader:
    """Turns the parsed TOML into Settings, naming the file and key in every error."""

    def __init__(self, source: str, env: dict[str, str]) -> None:
        self._source = source
        self._env = env

    def _fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self._source}: {key}: {message}")

    def _table(self, raw: dict[str, Any], key: str, allowed: set[str]) -> dict[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            raise self._fail(key, "expected a table")
        for name in value:
            if name not in allowed:
                raise self._fail(f"{key}.{name}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return value

    def _get(self, table: dict[str, Any], prefix: str, name: str, kind: type, default: Any) -> Any:
        value = table.get(name, default)
        if value is default:
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise self._fail(f"{prefix}.{name}", f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    def _duration(self, table: dict[str, Any], prefix: str, name: str, default: float) -> float:
        if name not in table:
            return default
        try:
            return parse_duration(table[name])
        except ValueError as exc:
            raise self._fail(f"{prefix}.{name}", str(exc)) from None

    def settings(self, raw: dict[str, Any]) -> Settings:
        sections = ("server", "storage", "upstreams", "auth", "access", "prefetch", "log", "metrics")
        for name in raw:
            if name not in sections:
                raise self._fail(name, f"unknown key (allowed: {', '.join(sections)})")
        server = self._table(
            raw,
            "server",
            {
                "host", "port", "header_timeout", "keep_alive", "send_timeout", "max_header_bytes", "max_connections",
                "tls_cert", "tls_key", "workers",
            },
        )  # fmt: skip
        tls = {name: self._get(server, "server", name, str, None) for name in ("tls_cert", "tls_key")}
        workers_raw = server.get("workers", "auto")
        if workers_raw == "auto":
            workers = None
        elif isinstance(workers_raw, int) and not isinstance(workers_raw, bool) and 1 <= workers_raw <= 256:
            workers = workers_raw
        else:
            raise self._fail("server.workers", f'expected a number from 1 to 256 or "auto", got {workers_raw!r}')
        if (tls["tls_cert"] is None) != (tls["tls_key"] is None):
            raise self._fail("server.tls_cert", "set tls_cert and tls_key together")
        port = self._get(server, "server", "port", int, ServerSettings.port)
        if not 0 < port < 65536:
            raise self._fail("server.port", f"must be between 1 and 65535, got {port}")
        max_header_bytes = self._get(server, "server", "max_header_bytes", int, ServerSettings.max_header_bytes)
        if not 1024 <= max_header_bytes <= 16 * 1024 * 1024:
            raise self._fail("server.max_header_bytes", f"must be between 1024 and 16777216, got {max_header_bytes}")
        max_connections = self._get(server, "server", "max_connections", int, None)
        if max_connections is not None and max_connections < 1:
            raise self._fail("server.max_connections", f"must be at least 1, got {max_connections}")
        timeouts = {
            name: self._duration(server, "server", name, getattr(ServerSettings, name))
            for name in ("header_timeout", "keep_alive", "send_timeout")
        }
        for name, seconds in timeouts.items():
            if seconds <= 0:
                raise self._fail(f"server.{name}", "must be more than 0")
        storage = self._table(
            raw,
            "storage",
            {
                "root", "required", "max_size", "low_watermark", "backend", "endpoint", "bucket", "region", "prefix",
                "access_key_file", "secret_key_file",
            },
        )  # fmt: skip
        root = self._get(storage, "storage", "root", str, None)
        if root is not None and (not root.strip() or "\0" in root):
            raise self._fail("storage.root", "expected a directory path")
        max_size, low_watermark = self._budget(storage)
        upstreams_raw = raw.get("upstreams", [{}])
        if not isinstance(upstreams_raw, list) or not upstreams_raw:
            raise self._fail("upstreams", "expected one or more [[upstreams]] tables")
        upstreams = tuple(self._upstream(entry, i) for i, entry in enumerate(upstreams_raw))
        seen: set[str] = set()
        for i, upstream in enumerate(upstreams):
            if upstream.registry in seen:
                raise self._fail(f"upstreams[{i}].registry", f"{upstream.registry!r} is configured twice")
            seen.add(upstream.registry)
        return Settings(
            server=ServerSettings(
                host=self._get(server, "server", "host", str, ServerSettings.host),
                port=port,
                max_header_bytes=max_header_bytes,
                max_connections=max_connections,
                workers=workers,
                tls_cert=Path(tls["tls_cert"]) if tls["tls_cert"] else None,
                tls_key=Path(tls["tls_key"]) if tls["tls_key"] else None,
                **timeouts,
            ),
            storage=StorageSettings(
                root=Path(root) if root is not None else StorageSettings.root,
                required=self._get(storage, "storage", "required", bool, StorageSettings.required),
                max_size=max_size,
                low_watermark=low_watermark,
                **self._backend(storage),
            ),
            upstreams=upstreams,
            auth=(auth := self._auth(raw)),
            access=self._access(raw, auth, {u.registry for u in upstreams}),
            prefetch=self._prefetch(raw, {u.registry for u in upstreams}),
            log=self._log(raw),
            metrics=self._metrics(raw, auth),
        )

    def _log(self, raw: dict[str, Any]) -> LogSettings:
        table = self._table(raw, "log", {"format", "level", "access"})
        settings = LogSettings(
            format=self._get(table, "log", "format", str, LogSettings.format),
            level=self._get(table, "log", "level", str, LogSettings.level),
            access=self._get(table, "log", "access", bool, LogSettings.access),
        )
        if settings.format not in ("text", "json"):
            raise self._fail("log.format", f'expected "text" or "json", got {settings.format!r}')
        if settings.level not in ("debug", "info", "warning", "error"):
            raise self._fail("log.level", f'expected "debug", "info", "warning" or "error", got {settings.level!r}')
        return settings

    def _metrics(self, raw: dict[str, Any], auth: AuthSettings) -> MetricsSettings:
        table = self._table(raw, "metrics", {"access"})
        access = self._get(table, "metrics", "access", str, None)
        if access is not None and access not in ("anyone", "loopback", "authenticated"):
            raise self._fail("metrics.access", f'expected "anyone", "loopback" or "authenticated", got {access!r}')
        if access == "authenticated" and not auth.enabled:
            raise self._fail("metrics.access", "needs client authentication: configure [auth] htpasswd or tokens")
        return MetricsSettings(access)

    def _auth(self, raw: dict[str, Any]) -> AuthSettings:
        table = self._table(
            raw, "auth", {"htpasswd", "tokens", "groups", "token_key_file", "token_lifetime", "service"}
        )
        # The htpasswd file itself is checked when the server starts (proxy.server.runner), where bcrypt is at hand.
        htpasswd = self._get(table, "auth", "htpasswd", str, None)
        tokens_raw = table.get("tokens", [])
        if not isinstance(tokens_raw, list):
            raise self._fail("auth.tokens", "expected [[auth.tokens]] tables")
        tokens = []
        for i, entry in enumerate(tokens_raw):
            prefix = f"auth.tokens[{i}]"
            entry = self._table({prefix: entry}, prefix, {"name", "file"})
            name, file = self._get(entry, prefix, "name", str, None), self._get(entry, prefix, "file", str, None)
            if not name or not file:
                raise self._fail(prefix, "needs a name and a file (the token itself never goes in this file)")
            try:
                value = Path(file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise self._fail(f"{prefix}.file", f"cannot read {file}: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise self._fail(f"{prefix}.file", f"{file} is not UTF-8 text") from None
            if len(value) < 16:
                raise self._fail(f"{prefix}.file", f"{file} holds fewer than 16 characters: too easy to guess")
            tokens.append(StaticToken(name, value))
        groups_raw = self._table(
            table, "groups", set(table.get("groups", {}) if isinstance(table.get("groups"), dict) else ())
        )
        groups = []
        for group, members in groups_raw.items():
            if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
                raise self._fail(f"auth.groups.{group}", "expected a list of user names")
            groups.append((group, tuple(members)))
        key_file = self._get(table, "auth", "token_key_file", str, None)
        lifetime = self._duration(table, "auth", "token_lifetime", AuthSettings.token_lifetime)
        if not 60 <= lifetime <= 86400:
            raise self._fail("auth.token_lifetime", "must be between 1 minute and 1 day")
        return AuthSettings(
            htpasswd=Path(htpasswd) if htpasswd else None,
            tokens=tuple(tokens),
            groups=tuple(groups),
            token_key_file=Path(key_file) if key_file else None,
            token_lifetime=lifetime,
            service=self._get(table, "auth", "service", str, AuthSettings.service),
        )

    def _access(self, raw: dict[str, Any], auth: AuthSettings, registries: set[str]) -> tuple[AccessSettings, ...]:
        entries = raw.get("access", [])
        if not isinstance(entries, list):
            raise self._fail("access", "expected [[access]] tables")
        groups = {group for group, _ in auth.groups}
        rules = []
        for i, entry in enumerate(entries):
            prefix = f"access[{i}]"
            table = self._table({prefix: entry}, prefix, {"registry", "repository", "pull"})
            registry = self._get(table, prefix, "registry", str, "*").lower()
            if registry != "*" and registry not in registries:
                raise self._fail(f"{prefix}.registry", f'{registry!r} is not a configured upstream (or "*")')
            repository = self._get(table, prefix, "repository", str, "*")
            pull = table.get("pull")
            if pull in ("anonymous", "authenticated"):
                pass
            elif isinstance(pull, list) and pull and all(isinstance(p, str) and p for p in pull):
                unknown = [p for p in pull if p.startswith("group:") and p[6:] not in groups]
                if unknown:
                    raise self._fail(f"{prefix}.pull", f"unknown group {unknown[0][6:]!r} (define it in [auth.groups])")
                pull = tuple(pull)
            else:
                raise self._fail(f"{prefix}.pull", 'expected "anonymous", "authenticated" or a list of users/"group:x"')
            if pull != "anonymous" and not auth.enabled:
                raise self._fail(f"{prefix}.pull", "needs client authentication: configure [auth] htpasswd or tokens")
            rules.append(AccessSettings(registry, repository, pull))
        return tuple(rules)

    def _prefetch(self, raw: dict[str, Any], registries: set[str]) -> tuple[PrefetchSettings, ...]:
        entries = raw.get("prefetch", [])
        if not isinstance(entries, list):
            raise self._fail("prefetch", "expected [[prefetch]] tables")
        seen: dict[tuple[str, str, str], int] = {}
        result = []
        for i, entry in enumerate(entries):
            prefix = f"prefetch[{i}]"
            table = self._table({prefix: entry}, prefix, {"image", "platforms", "pin", "refresh"})
            image = self._get(table, prefix, "image", str, None)
            if image is None:
                raise self._fail(f"{prefix}.image", 'required: an image reference such as "hashicorp/vault:1.15"')
            try:
                key = image_key(image)
            except ValueError as exc:
                raise self._fail(f"{prefix}.image", str(exc)) from None
            if key[0] not in registries:
                why = f"{image!r} is not served by this proxy (no [[upstreams]] entry for {key[0]})"
                raise self._fail(f"{prefix}.image", why)
            if key in seen:
                raise self._fail(f"{prefix}.image", f"{image!r} is the same image as prefetch[{seen[key]}]")
            seen[key] = i
            platforms = self._strings(table, prefix, "platforms") or []
            for n, platform in enumerate(platforms):
                # Platform.parse's grammar (proxy.warm.platforms), which this module does not import.
                parts = platform.split("/")
                if not 2 <= len(parts) <= 3 or not all(parts):
                    why = f"expected os/architecture[/variant] such as linux/amd64, got {platform!r}"
                    raise self._fail(f"{prefix}.platforms[{n}]", why)
            refresh = self._duration(table, prefix, "refresh", PrefetchSettings.refresh)
            if 0 < refresh < _MIN_REFRESH:
                raise self._fail(f"{prefix}.refresh", "must be 0 (only at start-up) or at least 1 minute")
            pin = self._get(table, prefix, "pin", bool, PrefetchSettings.pin)
            result.append(PrefetchSettings(image.strip(), tuple(platforms), pin, refresh))
        return tuple(result)

    def _backend(self, storage: dict[str, Any]) -> dict[str, Any]:
        backend = self._get(storage, "storage", "backend", str, StorageSettings.backend)
        s3_keys = ("endpoint", "bucket", "region", "prefix", "access_key_file", "secret_key_file")
        if backend == "filesystem":
            for name in s3_keys:
                if name in storage:
                    raise self._fail(f"storage.{name}", 'only with backend = "s3"')
            return {}
        if backend != "s3":
            raise self._fail("storage.backend", f'expected "filesystem" or "s3", got {backend!r}')
        endpoint = self._get(storage, "storage", "endpoint", str, None)
        if endpoint is None:
            raise self._fail("storage.endpoint", 'required with backend = "s3" (such as "http://127.0.0.1:8333")')
        parts = urlsplit(endpoint)
        try:
            _ = parts.port
        except ValueError:
            parts = urlsplit("")  # a port that is not a number: refused below
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.username:
            raise self._fail("storage.endpoint", f"expected http(s)://host[:port], got {endpoint!r}")
        if parts.path not in ("", "/"):
            raise self._fail("storage.endpoint", "no path: the bucket goes in storage.bucket (path-style requests)")
        bucket = self._get(storage, "storage", "bucket", str, None)
        if bucket is None:
            raise self._fail("storage.bucket", 'required with backend = "s3"')
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket) or ".." in bucket:
            raise self._fail("storage.bucket", f"not an S3 bucket name (3-63 of a-z 0-9 . -): {bucket!r}")
        region = self._get(storage, "storage", "region", str, S3StorageSettings.region)
        if not re.fullmatch(r"[a-z0-9-]{1,32}", region):
            raise self._fail("storage.region", f"expected a region name such as us-east-1, got {region!r}")
        prefix = self._get(storage, "storage", "prefix", str, "")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if prefix.startswith("/") or "//" in prefix or any(p in (".", "..") for p in prefix.split("/")[:-1]):
            raise self._fail("storage.prefix", f'expected a relative key prefix such as "cache/", got {prefix!r}')
        access_key, secret_key = self._s3_credentials(storage)
        s3 = S3StorageSettings(endpoint.rstrip("/"), bucket, region, prefix, access_key, secret_key)
        return {"backend": backend, "s3": s3}

    def _s3_credentials(self, storage: dict[str, Any]) -> tuple[str, str]:
        names = ("access_key_file", "secret_key_file")
        files = {name: self._get(storage, "storage", name, str, None) for name in names}
        if (files["access_key_file"] is None) != (files["secret_key_file"] is None):
            raise self._fail("storage.access_key_file", "set access_key_file and secret_key_file together")
        if files["access_key_file"] is None:
            access, secret = self._env.get("AWS_ACCESS_KEY_ID"), self._env.get("AWS_SECRET_ACCESS_KEY")
            if not access or not secret:
                why = "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or access_key_file and"
                raise self._fail("storage.access_key_file", why + " secret_key_file")
            return access, secret
        values = []
        for name, file_name in files.items():
            assert file_name is not None
            try:
                value = Path(file_name).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise self._fail(f"storage.{name}", f"cannot read {file_name}: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise self._fail(f"storage.{name}", f"{file_name} is not UTF-8 text") from None
            if not value:
                raise self._fail(f"storage.{name}", f"{file_name} is empty")
            values.append(value)
        return values[0], values[1]

    def _budget(self, storage: dict[str, Any]) -> tuple[int | None, int | None]:
        max_size = low = None
        if "max_size" in storage:
            try:
                max_size = parse_size(storage["max_size"])
            except ValueError as exc:
                raise self._fail("storage.max_size", str(exc)) from None
            if max_size == 0:
                raise self._fail("storage.max_size", "must be more than 0 (leave it out for no budget)")
        if "low_watermark" in storage:
            if max_size is None:
                raise self._fail("storage.low_watermark", "needs storage.max_size")
            low = self._watermark(storage["low_watermark"], max_size)
            if not 0 < low <= max_size:
                raise self._fail("storage.low_watermark", f"must be more than 0 and at most max_size ({max_size})")
        return max_size, low

    def _watermark(self, value: object, max_size: int) -> int:
        """A size, or a share of ``max_size`` such as ``"90%"``."""
        expected = f'expected a size such as "45GiB" or a share of max_size such as "90%", got {value!r}'
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                percent = float(value.strip()[:-1])
            except ValueError:
                raise self._fail("storage.low_watermark", expected) from None
            return int(max_size * percent / 100)
        try:
            return parse_size(value)
        except ValueError:
            raise self._fail("storage.low_watermark", expected) from None

    def _upstream(self, entry: Any, index: int) -> UpstreamSettings:
        prefix = f"upstreams[{index}]"
        allowed = {
            "registry", "url", "tag_ttl", "negative_ttl", "username", "password_env", "password_file",
            "connect_timeout", "read_timeout", "redirect_hosts", "token_realms", "max_concurrent_requests",
        }  # fmt: skip
        table = self._table({prefix: entry}, prefix, allowed)
        defaults = UpstreamSettings()
        registry = self._get(table, prefix, "registry", str, defaults.registry).lower()
        if not is_registry(registry):
            raise self._fail(f"{prefix}.registry", f"not a registry host name: {registry!r}")
        url = self._get(table, prefix, "url", str, defaults.url if registry == DOCKER_HUB else None)
        if url is None:
            raise self._fail(f"{prefix}.url", f"required for registry {registry!r}")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.username:
            raise self._fail(f"{prefix}.url", f"expected http(s)://host[:port], got {url!r}")
        username = self._get(table, prefix, "username", str, None)
        password = self._password(table, prefix)
        if password is not None and username is None:
            raise self._fail(f"{prefix}.username", "a password is configured but no username")
        hub = registry == DOCKER_HUB  # Docker Hub's redirect hosts and realm are built in; other registries have none
        concurrency = self._get(table, prefix, "max_concurrent_requests", int, defaults.max_concurrent_requests)
        if not 1 <= concurrency <= _MAX_CONCURRENCY:
            why = f"must be between 1 and {_MAX_CONCURRENCY}, got {concurrency}"
            raise self._fail(f"{prefix}.max_concurrent_requests", why)
        return UpstreamSettings(
            registry=registry,
            url=url.rstrip("/"),
            tag_ttl=self._duration(table, prefix, "tag_ttl", defaults.tag_ttl),
            negative_ttl=self._duration(table, prefix, "negative_ttl", defaults.negative_ttl),
            username=username,
            password=password,
            connect_timeout=self._duration(table, prefix, "connect_timeout", defaults.connect_timeout),
            read_timeout=self._duration(table, prefix, "read_timeout", defaults.read_timeout),
            redirect_hosts=self._hosts(table, prefix, "redirect_hosts", defaults.redirect_hosts if hub else ()),
            token_realms=self._realms(table, prefix, "token_realms", defaults.token_realms if hub else ()),
            max_concurrent_requests=concurrency,
        )

    def _strings(self, table: dict[str, Any], prefix: str, name: str) -> list[str] | None:
        value = table.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self._fail(f"{prefix}.{name}", "expected a list of strings")
        return [item.strip() for item in value]

    def _hosts(self, table: dict[str, Any], prefix: str, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        entries = self._strings(table, prefix, name)
        if entries is None:
            return default
        hosts: list[str] = []
        for i, entry in enumerate(entries):
            wildcard = entry.startswith("*.")
            host = self._host_name(entry.removeprefix("*."))
            if host is None:
                raise self._fail(f"{prefix}.{name}[{i}]", f'expected a host name or "*.domain", got {entry!r}')
            if wildcard and "." not in host:
                raise self._fail(f"{prefix}.{name}[{i}]", f"{entry!r} would allow a whole top-level domain")
            hosts.append("*." + host if wildcard else host)
        return tuple(hosts)

    def _realms(self, table: dict[str, Any], prefix: str, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        entries = self._strings(table, prefix, name)
        if entries is None:
            return default
        realms: list[str] = []
        for i, entry in enumerate(entries):
            # A realm receives the upstream's credentials, so no wildcards: one exact URL or one exact host each.
            realm = self._realm(entry)
            if realm is None:
                expected = 'a token realm URL such as "https://auth.example.com/token", or a host name'
                raise self._fail(f"{prefix}.{name}[{i}]", f"expected {expected}, got {entry!r}")
            realms.append(realm)
        return tuple(realms)

    @staticmethod
    def _host_name(text: str) -> str | None:
        """``text`` as the proxy compares host names (lower-case, no brackets or trailing dot), or None."""
        text = text.lower().rstrip(".")
        if re.fullmatch(r"\[[0-9a-f:.]+\]|[0-9a-f:.]*:[0-9a-f:.]*", text):  # an IPv6 address
            return text.strip("[]")
        labels = text.split(".")
        if len(text) > 253 or not all(re.fullmatch(r"(?!-)[a-z0-9-]{1,63}(?<!-)", label) for label in labels):
            return None
        return text

    @classmethod
    def _realm(cls, entry: str) -> str | None:
        if "://" not in entry:
            return cls._host_name(entry)
        parts = urlsplit(entry)
        try:
            port = parts.port
        except ValueError:
            return None
        host = cls._host_name(parts.hostname or "")
        if parts.scheme not in ("http", "https") or host is None or parts.username or parts.query or parts.fragment:
            return None
        netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port is not None else "")
        return f"{parts.scheme}://{netloc}{parts.path or '/'}"

    def _password(self, table: dict[str, Any], prefix: str) -> str | None:
        env_name = self._get(table, prefix, "password_env", str, None)
        file_name = self._get(table, prefix, "password_file", str, None)
        if env_name is not None and file_name is not None:
            raise self._fail(f"{prefix}.password_env", "set password_env or password_file, not both")
        if env_name is not None:
            if env_name not in self._env:
                raise self._fail(f"{prefix}.password_env", f"environment variable {env_name} is not set")
            return self._env[env_name]
        if file_name is not None:
            try:
                return Path(file_name).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise self._fail(f"{prefix}.password_file", f"cannot read {file_name}: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise self._fail(f"{prefix}.password_file", f"{file_name} is not UTF-8 text") from None
        return None
