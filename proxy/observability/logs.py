"""The process's logging: our format (text or JSON lines) on stderr, under our own logger names.

uvicorn's access log is off (the proxy writes its own, :mod:`proxy.observability.access_log`) and its
``uvicorn.error`` logger, which says routine things like "Application startup complete.", is kept to warnings.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime

from proxy.config import LogSettings

__all__ = ["TEXT_FORMAT", "JsonFormatter", "configure", "quiet_uvicorn"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger and message; an access line's fields instead of a message."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        if isinstance(record.args, Mapping) and getattr(record, "access", False):
            entry.update(record.args)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(settings: LogSettings, level: str | None = None) -> None:
    """Our handler on the root logger; ``level`` (the command line's) overrides the config's."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or settings.level).upper())
    # httpx logs every request at INFO; our own log lines (and the access log) say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    quiet_uvicorn(level or settings.level)


def quiet_uvicorn(level: str) -> None:
    # Its warnings and errors (a malformed request, an exception in the app) stay; its start-up chatter does not
    # need a logger name that reads like an error. Our own lines say where the proxy serves.
    logging.getLogger("uvicorn.error").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
