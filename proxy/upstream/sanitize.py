"""What of an upstream's own words may reach a client: a registry error code and a short, printable message."""

from __future__ import annotations

import json
import re

__all__ = ["MAX_MESSAGE", "printable", "retry_after", "upstream_error"]

# Long enough for Docker Hub's rate-limit message (about 130 characters), short enough to be one log line.
MAX_MESSAGE = 200
_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
# RFC 9110 10.2.3: delay-seconds or an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT").
_RETRY_AFTER = re.compile(r"[0-9]{1,10}|[A-Z][a-z]{2}, [0-9]{2} [A-Z][a-z]{2} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT")


def printable(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` as one line of printable ASCII, at most ``limit`` characters: no escape sequences, no newlines that
    could forge a log line, nothing a terminal would interpret."""
    cleaned = " ".join("".join(c if " " <= c <= "~" else " " for c in text).split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def upstream_error(body: bytes) -> tuple[str | None, str | None]:
    """The code and message of the first error in a registry error body, sanitised; (None, None) if it has none.

    A code is kept only if it looks like one (``TOOMANYREQUESTS``, ``DENIED``); anything else is dropped, not cleaned.
    """
    try:
        error = json.loads(body)["errors"][0]
        code, message = error.get("code"), error.get("message")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None, None
    code = code if isinstance(code, str) and _CODE.fullmatch(code) else None
    message = printable(message) if isinstance(message, str) else None
    return code, message or None


def retry_after(value: str | None) -> str | None:
    """An upstream's Retry-After, if it is one; anything else is dropped rather than passed on to clients."""
    value = value.strip() if value else None
    return value if value and _RETRY_AFTER.fullmatch(value) else None
