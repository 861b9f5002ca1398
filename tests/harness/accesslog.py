"""Parsing the access log that Distribution writes to stdout, one line per HTTP request.

Distribution 2.8 writes two logs. Its JSON log (stderr) has a "response completed" entry only for 2xx/3xx
responses and a "response completed with error" entry for errors raised by a handler, but requests refused by the
auth layer (every anonymous 401) appear only as an "error authorizing context" warning without a status. The access
log on stdout (gorilla's CombinedLoggingHandler, Apache combined format) has every request, with its status and the
number of body bytes written, so that is the one we count.

Both are written when the handler returns, i.e. after the whole body was handed to Go's net/http, but before
net/http flushes the last buffered bytes to the socket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


# 127.0.0.1 - - [28/Nov/2026:00:17:29 +0000] "GET /v2/ HTTP/1.1" 401 87 "" "curl/7.88.1"
def _quoted(name: str) -> str:
    return rf'"(?P<{name}>(?:[^"\\]|\\.)*)"'


_LINE = re.compile(
    r"^(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "
    rf"{_quoted('request')} (?P<status>\d{{3}}) (?P<size>\d+|-) {_quoted('referer')} {_quoted('agent')}$"
)
_REQUEST_LINE = re.compile(r"^(?P<method>\S+) (?P<uri>\S+) (?P<proto>\S+)$")
# /v2/<name>/<kind>/<rest>: the name may contain slashes (even "blobs"), but the rest never does, so anchoring on the
# end finds the same split as Distribution's router.
_API_PATH = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>blobs/uploads|blobs|manifests|tags)(?:/(?P<rest>[^/]*))?$")


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the registry logged it. Equality looks at method, path and status only."""

    method: str
    path: str
    status: int
    size: int = field(default=0, compare=False)
    """Response body bytes the registry wrote (for a client that went away early: how far it got)."""
    uri: str = field(default="", compare=False)
    """The request URI with its query string."""
    user_agent: str = field(default="", compare=False)

    @property
    def kind(self) -> str:
        """What the request was about: base (/v2/), blob, upload, manifest, tags, catalog or other."""
        if self.path in ("/v2", "/v2/"):
            return "base"
        if self.path == "/v2/_catalog":
            return "catalog"
        match = _API_PATH.match(self.path)
        if match is None:
            return "other"
        return {"blobs": "blob", "blobs/uploads": "upload", "manifests": "manifest", "tags": "tags"}[match["kind"]]

    @property
    def repository(self) -> str | None:
        match = _API_PATH.match(self.path)
        return match["name"] if match else None

    @property
    def reference(self) -> str | None:
        """The tag or digest of a manifest or blob request; None for anything else."""
        match = _API_PATH.match(self.path)
        if match is None or match["kind"] not in ("blobs", "manifests"):
            return None
        return match["rest"] or None


def parse_line(line: str) -> LoggedRequest:
    match = _LINE.match(line)
    request = _REQUEST_LINE.match(_unescape(match["request"])) if match else None
    if match is None or request is None:
        raise ValueError(f"not an access log line: {line!r}")
    size = match["size"]
    return LoggedRequest(
        method=request["method"],
        path=request["uri"].partition("?")[0],
        status=int(match["status"]),
        size=0 if size == "-" else int(size),
        uri=request["uri"],
        user_agent=_unescape(match["agent"]),
    )


def read_log(path: Path) -> list[LoggedRequest]:
    """Every complete line of the log, in order. A last line still being written (no newline yet) is left out."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = text.split("\n")[:-1]  # whatever follows the last newline is incomplete
    return [parse_line(line) for line in lines if line]


def _unescape(value: str) -> str:
    # Go quotes with backslash escapes; the only ones that matter for URIs and user agents are \" and \\.
    return re.sub(r"\\(.)", r"\1", value)
