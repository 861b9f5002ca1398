"""The access log: one line per request on the logger ``proxy.access``, text or JSON (``[log] format``).

A line costs one log record with a dict, and nothing at all when INFO is off: the text is made by the handler's
formatter, only if the record is emitted. The path is the one the client asked for, percent-decoded (a
digest reads ``sha256:...``), with whatever could break a line or a field escaped; query parameters that look like
credentials are blanked. No header is ever logged.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote

from proxy.upstream.sanitize import printable

__all__ = ["ACCESS_FORMAT", "ACCESS_LOGGER", "AccessLog"]

ACCESS_LOGGER = "proxy.access"
ACCESS_FORMAT = (
    '%(client)s %(user)s "%(method)s %(path)s HTTP/%(http)s" %(status)d %(bytes)d %(duration_ms).1fms '
    "cache=%(cache)s upstream=%(upstream)s"
)
# Printable ASCII except space, '"' and '\': everything else in a path is percent-encoded in the log (and '%'
# itself, which in a decoded path stands for itself; a query is logged as sent, so its escapes stay).
_SAFE_QUERY = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"\\')
_SAFE_PATH = _SAFE_QUERY.replace("%", "")
_PLAIN_PATH = re.compile(r"[!#$&-\[\]-~]*")  # _SAFE_PATH as a character class: such a path is logged as it is
# Matched against each parameter's name only: linear in the query, whatever a hostile client sends.
_SECRET_NAME = re.compile(r"(?i)token|passw|secret|key|signature|credential|auth")
# No registry request comes near these; a longer path or query is logged cut (with "..." at the end).
_MAX_PATH = 2048
_MAX_QUERY = 1024
# Method names that need no cleaning (anything else a client sends is made printable).
_PLAIN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ACCESS = {"access": True}


class AccessLog:
    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(ACCESS_LOGGER)

    def enabled(self) -> bool:
        return self._log.isEnabledFor(logging.INFO)

    def write(
        self,
        *,
        client: str,
        user: str,
        method: str,
        path: str,
        query: bytes,
        http: str,
        status: int,
        sent: int,
        seconds: float,
        cache: str,
        upstream: str,
    ) -> None:
        if not self.enabled():
            return
        if len(path) > _MAX_PATH:
            path = path[:_MAX_PATH] + "..."
        shown = path if _PLAIN_PATH.fullmatch(path) else _quoted(path, _SAFE_PATH)
        if query:
            shown += "?" + _quoted(_redacted(query), _SAFE_QUERY)
        fields = {
            "client": client,
            "user": user,
            "method": method if method in _PLAIN_METHODS else printable(method, 20).replace(" ", "_") or "-",
            "path": shown,
            "http": http,
            "status": status,
            "bytes": sent,
            "duration_ms": round(seconds * 1000, 1),
            "cache": cache,
            "upstream": upstream or "-",
        }
        # `access` marks the record for the JSON formatter: its fields become the line's. Made here rather than by
        # Logger.info, which would walk the stack to find its caller on every request (a third of a line's cost);
        # the line names no caller, so this is the same record, handled the same way (filters, handlers, levels).
        log = self._log
        log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, ACCESS_FORMAT, (fields,), None, None, _ACCESS))


def _redacted(query: bytes) -> str:
    text = query[:_MAX_QUERY].decode("latin-1") + ("..." if len(query) > _MAX_QUERY else "")
    parameters = text.split("&")
    for i, parameter in enumerate(parameters):
        name, equals, _ = parameter.partition("=")
        if equals and _SECRET_NAME.search(name):
            parameters[i] = f"{name}=REDACTED"
    return "&".join(parameters)


def _quoted(text: str, safe: str) -> str:
    return quote(text, safe=safe, encoding="utf-8", errors="backslashreplace")
