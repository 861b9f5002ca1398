"""Hostile raw HTTP requests for the proxy, and a socket client that sends them byte for byte.

The requests are bytes exactly as they go on the wire: no client library gets a chance to normalise ``..``,
re-encode ``%2f`` or refuse a NUL. Each carries the set of statuses the proxy may answer with; none allows a 5xx,
and a reply that never comes (a socket timeout) is always a failure.

The proxy's contract: names, tags and digests are validated against the spec grammars before any path is built;
traversal, absurd lengths, bad ranges, unknown digest algorithms and oversize requests get a 4xx with the registry
JSON envelope ``{"errors":[{"code","message","detail"}]}``, or uvicorn's own plain-text 400 for requests it cannot
parse; write methods get 405 UNSUPPORTED.

:func:`hostile_requests` builds the list for a proxy whose cache holds :class:`Target`; :func:`fuzzed_requests` adds
seeded random paths; :func:`send_raw` sends one; :func:`problems` judges the reply.
"""

from __future__ import annotations

import json
import random
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

__all__ = [
    "ANY_NON_5XX",
    "DIGEST_ZERO",
    "MAX_REPLY_BYTES",
    "PASSWD_MARKER",
    "UVICORN_BAD_REQUEST",
    "HostileRequest",
    "RawReply",
    "Target",
    "envelope_problem",
    "from_uvicorn",
    "fuzzed_requests",
    "hostile_requests",
    "problems",
    "send_raw",
]

# What uvicorn (httptools) answers, before the app sees anything, to a request it cannot parse.
UVICORN_BAD_REQUEST = b"Invalid HTTP request received."
API_VERSION_HEADER = "docker-distribution-api-version"

# The cap on what send_raw reads: the blobs the tests cache are a few KiB; anything near this is itself a finding.
MAX_REPLY_BYTES = 4 * 1024 * 1024
_MAX_HEAD_BYTES = 64 * 1024
_MAX_INTERIM_REPLIES = 3

ANY_NON_5XX = frozenset(range(100, 500))
_OK = frozenset({200})
_PARTIAL = frozenset({206})
_RANGE_REFUSED = frozenset({416})
_BAD_NAME = frozenset({400, 404})
_BAD_DIGEST = frozenset({400, 404})
_BAD_TAG = frozenset({400, 404})
_NO_ROUTE = frozenset({400, 404})
_UNSUPPORTED = frozenset({405})
_UNPARSEABLE = frozenset({400})
_TOO_LONG = frozenset({400, 404, 414})
_HEADERS_TOO_LARGE = frozenset({400, 431})
_BAD_QUERY = frozenset({400})
_UNKNOWN_REGISTRY = frozenset({404})

# Must never appear in a reply: it starts /etc/passwd. Callers add the content of a sentinel file of their own.
PASSWD_MARKER = b"root:x:0:0:"

DIGEST_ZERO = "sha256:" + "0" * 64


@dataclass(frozen=True)
class Target:
    """What the proxy has cached: hostile requests aim at it so that they reach the deepest code paths."""

    repository: str  # "library/oci-image"
    tag: str
    manifest_digest: str
    blob_digest: str  # a layer or config blob, cached before the hostile requests are sent


@dataclass(frozen=True)
class HostileRequest:
    label: str
    raw: bytes
    allowed: frozenset[int]

    @property
    def method(self) -> str:
        return self.raw.split(b" ", 1)[0].decode("latin-1")

    @property
    def path(self) -> str:
        """The request target's path, as sent (still percent-encoded); "" if the request line is not HTTP."""
        parts = self.raw.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) < 2:
            return ""
        target = parts[1].decode("latin-1")
        if "://" in target:  # absolute-form: the path is what the server routes on
            return urlsplit(target).path
        return target.split("?", 1)[0]

    @property
    def under_v2(self) -> bool:
        return self.path == "/v2" or self.path.startswith("/v2/")


@dataclass(frozen=True)
class RawReply:
    status: int | None
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    error: str | None  # why no complete reply was read (None when one was)
    elapsed: float

    @property
    def hung(self) -> bool:
        return self.error is not None and "timed out" in self.error


# -- building requests ---------------------------------------------------------------------------------------------


def _request(
    method: str,
    target: bytes | str,
    host: str,
    headers: Iterable[tuple[bytes | str, bytes | str]] = (),
    body: bytes = b"",
    *,
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """One request; always ``Connection: close`` so that a reply's end is the connection's end."""
    line = method.encode() + b" " + _bytes(target) + b" " + version + b"\r\n"
    fields = [(b"Host", host.encode()), (b"Connection", b"close"), *((_bytes(k), _bytes(v)) for k, v in headers)]
    head = b"".join(k + b": " + v + b"\r\n" for k, v in fields)
    return line + head + b"\r\n" + body


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def hostile_requests(host: str, target: Target) -> list[HostileRequest]:
    """Every hostile request, in a fixed order; ``host`` is the proxy's ``127.0.0.1:port`` for the Host header."""
    repo, tag = target.repository, target.tag
    blob, manifest = target.blob_digest, target.manifest_digest
    hex64 = blob.removeprefix("sha256:")
    blob_url = f"/v2/{repo}/blobs/{blob}"
    out: list[HostileRequest] = []

    def add(
        label: str,
        request_target: bytes | str,
        allowed: frozenset[int],
        *,
        method: str = "GET",
        headers: Sequence[tuple[bytes | str, bytes | str]] = (),
    ) -> None:
        out.append(HostileRequest(label, _request(method, request_target, host, headers), allowed))

    def raw(label: str, request: bytes, allowed: frozenset[int]) -> None:
        out.append(HostileRequest(label, request, allowed))

    # Path traversal with raw "..": uvicorn passes these through unnormalised.
    add("raw dotdot above /v2", "/v2/../../../etc/passwd", _NO_ROUTE)
    add("raw dotdot in manifest name", "/v2/library/../../../etc/manifests/passwd", _BAD_NAME)
    add("raw dotdot in blob name", f"/v2/library/alpine/../../../../etc/blobs/{blob}", _BAD_NAME)
    add("raw dotdot in tags name", "/v2/../../../../sentinel.txt/tags/list", _BAD_NAME)
    add("raw dotdot as whole name", "/v2/../manifests/latest", _BAD_NAME)
    add("raw dot as whole name", "/v2/./manifests/latest", _BAD_NAME)
    add("raw dotdot as tag", f"/v2/{repo}/manifests/..", _BAD_TAG)
    add("raw dot as tag", f"/v2/{repo}/manifests/.", _BAD_TAG)
    add("raw dotdot as digest", f"/v2/{repo}/blobs/..", _BAD_DIGEST)
    add("absolute-form target with dotdot", "http://evil.example/v2/../../etc/passwd", _NO_ROUTE)
    # The same, percent-encoded: the app sees the decoded path.
    add("%2e%2e in manifest name", "/v2/%2e%2e/%2e%2e/manifests/latest", _BAD_NAME)
    add("%2E%2E%2F in blob name", f"/v2/library/%2E%2E%2F%2E%2E%2Fetc/blobs/{blob}", _BAD_NAME)
    add("%2e%2e%2f in tags name", "/v2/%2e%2e%2f%2e%2e%2fetc/tags/list", _BAD_NAME)
    add("..%2f in blob name", f"/v2/..%2f..%2f..%2f..%2fsentinel.txt/blobs/{DIGEST_ZERO}", _BAD_NAME)
    add("%2e%2e as tag", f"/v2/{repo}/manifests/%2e%2e", _BAD_TAG)
    add("%2e%2e%2f in tag", f"/v2/{repo}/manifests/%2e%2e%2f%2e%2e%2fetc%2fpasswd", _BAD_TAG | _NO_ROUTE)
    add("double-encoded %252e%252e", "/v2/%252e%252e/%252e%252e/manifests/latest", _BAD_NAME)
    add("overlong utf-8 dot %c0%ae", "/v2/%c0%ae%c0%ae/%c0%ae%c0%ae/manifests/latest", _BAD_NAME)
    # %2f decodes to "/": a valid name split differently, or traversal.
    add("%2f inside a valid name", f"/v2/{repo.replace('/', '%2f')}/manifests/{tag}", _OK | _BAD_NAME)
    add("%2f leading the name", "/v2/%2fetc%2fpasswd/manifests/latest", _BAD_NAME)
    add("%2f in digest", f"/v2/{repo}/blobs/sha256%2f..%2f..%2f..%2f..%2fsentinel.txt", _BAD_DIGEST)
    add("%2f after digest algorithm", f"/v2/{repo}/blobs/sha256:%2e%2e%2f%2e%2e%2f{hex64[:10]}", _BAD_DIGEST)
    add("%3a for the digest colon", f"/v2/{repo}/blobs/sha256%3A{hex64}", _OK | _BAD_DIGEST)
    add("%2f in manifest digest", f"/v2/{repo}/manifests/sha256%2f{hex64}", _BAD_DIGEST | _NO_ROUTE)
    # NUL, encoded and raw (a raw NUL cannot get past the HTTP parser).
    add("%00 in name", "/v2/library/alpine%00/manifests/latest", _BAD_NAME)
    add("%00 then dotdot in name", "/v2/library%00/../../etc/manifests/latest", _BAD_NAME)
    add("%00 in tag", f"/v2/{repo}/manifests/{tag}%00", _BAD_TAG)
    add("%00 in digest", f"/v2/{repo}/blobs/{blob}%00", _BAD_DIGEST)
    add("%00 in digest algorithm", f"/v2/{repo}/blobs/sha256%00:{hex64}", _BAD_DIGEST)
    add("raw NUL in path", b"/v2/library/alpine\x00/manifests/latest", _UNPARSEABLE)
    # Backslashes and names that look absolute or like other platforms' paths.
    add("raw backslash traversal", "/v2/library\\..\\..\\etc/manifests/latest", _BAD_NAME)
    add("%5c backslash traversal", "/v2/library%5c..%5c..%5cetc/manifests/latest", _BAD_NAME)
    add("backslash in tag", f"/v2/{repo}/manifests/..%5c..%5cpasswd", _BAD_TAG)
    add("absolute name via //", "/v2//etc/passwd/manifests/latest", _BAD_NAME)
    add("windows drive name", "/v2/C:%5cWindows%5cwin.ini/manifests/latest", _BAD_NAME)
    add("file url as name", "/v2/file:%2f%2f%2fetc%2fpasswd/blobs/" + DIGEST_ZERO, _BAD_NAME)
    add("tilde name", "/v2/~root/.ssh/manifests/latest", _BAD_NAME)
    add("upper-case name", "/v2/Library/Alpine/manifests/latest", _BAD_NAME)
    add("empty path component", f"/v2/{repo.replace('/', '//')}/manifests/{tag}", _BAD_NAME)
    add("name component starting with _", "/v2/library/_tags/manifests/latest", _BAD_NAME)
    add("unicode name", "/v2/%C3%A9t%C3%A9/manifests/latest", _BAD_NAME)
    add("%ff in name", "/v2/%ff%fe/manifests/latest", _BAD_NAME)
    add("raw utf-8 bytes in path", "/v2/été/manifests/latest".encode(), _UNPARSEABLE)
    # Absurd lengths. A one-segment name gets "library/" in front (Docker Hub); 248+ characters then exceed 255.
    add("name of 256 chars", f"/v2/{'a' * 256}/manifests/latest", _BAD_NAME)
    add("name of 300 chars in segments", "/v2/" + "/".join(["abcdefghi"] * 30) + "/manifests/latest", _BAD_NAME)
    add("name of 1000 chars", f"/v2/library/{'b' * 1000}/blobs/{blob}", _BAD_NAME)
    add("one-segment name of 247 chars", f"/v2/{'a' * 247}/manifests/latest", _BAD_NAME)
    add("one-segment name of 255 chars, manifest by tag", f"/v2/{'a' * 255}/manifests/latest", _BAD_NAME)
    add("one-segment name of 250 chars, manifest by digest", f"/v2/{'a' * 250}/manifests/{manifest}", _BAD_NAME)
    add("one-segment name of 255 chars, blob", f"/v2/{'a' * 255}/blobs/{DIGEST_ZERO}", _BAD_NAME)
    add("one-segment name of 255 chars, tags", f"/v2/{'a' * 255}/tags/list", _BAD_NAME)
    add("tag of 129 chars", f"/v2/{repo}/manifests/{'t' * 129}", _BAD_TAG)
    add("tag of 5000 chars", f"/v2/{repo}/manifests/{'t' * 5000}", _BAD_TAG | _TOO_LONG)
    add("tag starting with a dot", f"/v2/{repo}/manifests/.hidden", _BAD_TAG)
    add("tag starting with a dash", f"/v2/{repo}/manifests/-rm", _BAD_TAG)
    add("tag with a space", f"/v2/{repo}/manifests/la%20test", _BAD_TAG)
    add("tag with unicode", f"/v2/{repo}/manifests/%E2%80%AE{tag}", _BAD_TAG)
    add("tag with CRLF header injection", f"/v2/{repo}/manifests/{tag}%0d%0aX-Injected:%20yes", _BAD_TAG)
    add("tag of only a plus", f"/v2/{repo}/manifests/+", _BAD_TAG)
    # Digests: unknown algorithms, upper-case hex, wrong lengths, absurd lengths.
    add("md5 digest", f"/v2/{repo}/blobs/md5:{'0' * 32}", _BAD_DIGEST)
    add(
        "unregistered algorithm",
        f"/v2/{repo}/blobs/sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
        _BAD_DIGEST,
    )
    add("blake3 digest", f"/v2/{repo}/blobs/blake3:{hex64}", _BAD_DIGEST)
    add("upper-case hex", f"/v2/{repo}/blobs/sha256:{hex64.upper()}", _BAD_DIGEST)
    add("upper-case algorithm", f"/v2/{repo}/blobs/SHA256:{hex64}", _BAD_DIGEST)
    add("sha256 of 63 hex", f"/v2/{repo}/blobs/sha256:{hex64[:63]}", _BAD_DIGEST)
    add("sha256 of 65 hex", f"/v2/{repo}/blobs/sha256:{hex64}0", _BAD_DIGEST)
    add("sha512 of 64 hex", f"/v2/{repo}/blobs/sha512:{hex64}", _BAD_DIGEST)
    add("non-hex digest", f"/v2/{repo}/blobs/sha256:{'g' * 64}", _BAD_DIGEST)
    add("digest of 10 KB", f"/v2/{repo}/blobs/sha256:{'a' * 10240}", _BAD_DIGEST | _TOO_LONG)
    add("digest with two colons", f"/v2/{repo}/blobs/sha256::{hex64}", _BAD_DIGEST)
    add("bare colon digest", f"/v2/{repo}/blobs/:", _BAD_DIGEST)
    add("upper-case manifest digest", f"/v2/{repo}/manifests/sha256:{hex64.upper()}", _BAD_DIGEST)
    add("md5 manifest digest", f"/v2/{repo}/manifests/md5:{'0' * 32}", _BAD_DIGEST)
    add("sha512 blob digest, unknown", f"/v2/{repo}/blobs/sha512:{'a' * 128}", _BAD_DIGEST)
    add("sha512 manifest digest, unknown", f"/v2/{repo}/manifests/sha512:{'a' * 128}", _BAD_DIGEST)
    add("manifest digest of 10 KB", f"/v2/{repo}/manifests/sha512:{'a' * 10240}", _BAD_DIGEST | _TOO_LONG)
    # Range on the cached blob. The proxy serves one range and refuses (416) anything else.
    ranges: list[tuple[str, bytes | str, frozenset[int]]] = [
        ("malformed", "bytes=abc", _RANGE_REFUSED),
        ("multi-part", "bytes=0-1,5-6", _RANGE_REFUSED),
        ("multi-part with spaces", "bytes=0-1, 3-4, 6-", _RANGE_REFUSED),
        ("reversed", "bytes=5-1", _RANGE_REFUSED),
        ("20-digit end", "bytes=0-99999999999999999999", _RANGE_REFUSED | _PARTIAL),
        ("start past the end", "bytes=99999999999-", _RANGE_REFUSED),
        ("100-digit start", "bytes=" + "9" * 100 + "-", _RANGE_REFUSED),
        ("huge suffix", "bytes=-9999999999999999999", _RANGE_REFUSED | _PARTIAL),
        ("bytes=-0", "bytes=-0", _RANGE_REFUSED),
        ("bytes=-", "bytes=-", _RANGE_REFUSED),
        ("double dash", "bytes=--1", _RANGE_REFUSED),
        ("negative start", "bytes=-5-10", _RANGE_REFUSED),
        ("non-bytes unit", "items=0-1", _RANGE_REFUSED | _OK),
        ("no unit", "0-1", _RANGE_REFUSED | _OK),
        ("unicode digits", "bytes=\u0661-\u0662".encode(), _RANGE_REFUSED | _PARTIAL | _UNPARSEABLE),
        ("1000 ranges", "bytes=" + ",".join(f"{i}-{i}" for i in range(1000)), _RANGE_REFUSED),
        ("NUL in range", "bytes=0-\x00", _RANGE_REFUSED | _UNPARSEABLE),
    ]
    for label, value, allowed in ranges:
        add(f"Range {label}", blob_url, allowed, headers=[("Range", value)])
    add("two Range headers", blob_url, _RANGE_REFUSED | _PARTIAL, headers=[("Range", "bytes=0-0"), ("Range", "x")])
    add("Range on HEAD", blob_url, _OK | _PARTIAL | _RANGE_REFUSED, method="HEAD", headers=[("Range", "bytes=5-1")])
    add(
        "Range on a manifest",
        f"/v2/{repo}/manifests/{tag}",
        _OK | _PARTIAL | _RANGE_REFUSED,
        headers=[("Range", "bytes=0-0,1-1")],
    )
    # Oversize requests: refused by uvicorn (400) or by the app (414/431).
    add("100 KB header", "/v2/", _HEADERS_TOO_LARGE, headers=[("X-Big", "a" * 100_000)])
    add("5000 headers", "/v2/", _HEADERS_TOO_LARGE | _OK, headers=[(f"X-H{i}", "v") for i in range(5000)])
    add(
        "5000 Accept headers",
        f"/v2/{repo}/manifests/{tag}",
        _HEADERS_TOO_LARGE | _OK | _BAD_TAG,
        headers=[("Accept", "a/b")] * 5000,
    )
    add(
        "60 KB Accept header",
        f"/v2/{repo}/manifests/{tag}",
        _HEADERS_TOO_LARGE | _OK,
        headers=[("Accept", "," * 60_000)],
    )
    add("100 KB URL", "/v2/" + "a" * 100_000 + "/manifests/latest", _TOO_LONG)
    add("10 KB URL", f"/v2/{repo}/manifests/{tag}?x=" + "a" * 10_000, _TOO_LONG)
    add("100 KB query", f"/v2/{repo}/tags/list?last=" + "z" * 100_000, _TOO_LONG)
    raw("10 KB Host", b"GET /v2/ HTTP/1.1\r\nHost: " + b"h" * 10_000 + b"\r\nConnection: close\r\n\r\n", _OK)
    # Requests the HTTP parser itself may refuse.
    raw("garbage request line", b"GARBAGE\r\n\r\n", _UNPARSEABLE)
    raw("binary garbage", bytes(range(256)) + b"\r\n\r\n", _UNPARSEABLE)
    raw("TLS ClientHello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64), _UNPARSEABLE)
    raw("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", _UNPARSEABLE)
    raw("lower-case method", _request("get", "/v2/", host), _UNPARSEABLE)
    raw("unknown method", _request("FROBNICATE", "/v2/", host), _UNPARSEABLE | _UNSUPPORTED)
    raw("relative target", _request("GET", "v2/", host), _UNPARSEABLE)
    raw("LF-only line endings", f"GET /v2/ HTTP/1.1\nHost: {host}\nConnection: close\n\n".encode(), _UNPARSEABLE | _OK)
    raw("obsolete header folding", _request("GET", "/v2/", host, [("X-A", "a\r\n folded")]), _UNPARSEABLE)
    raw("NUL in a header value", _request("GET", "/v2/", host, [("X-A", b"a\x00b")]), _UNPARSEABLE)
    raw("no Host header", b"GET /v2/ HTTP/1.1\r\nConnection: close\r\n\r\n", _OK | _UNPARSEABLE)
    raw("two Host headers", b"GET /v2/ HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n", _OK | _UNPARSEABLE)
    raw("traversal in Host", b"GET /v2/ HTTP/1.1\r\nHost: ../../etc\r\nConnection: close\r\n\r\n", _OK | _UNPARSEABLE)
    raw("HTTP/1.0", b"GET /v2/ HTTP/1.0\r\n\r\n", _OK)
    raw("HTTP/1.0 manifest HEAD", f"HEAD /v2/{repo}/manifests/{tag} HTTP/1.0\r\n\r\n".encode(), _OK)
    raw("HTTP/0.9-style request", b"GET /v2/\r\n\r\n", _OK | _UNPARSEABLE)
    raw("HTTP/2.0 version on HTTP/1 wire", _request("GET", "/v2/", host, version=b"HTTP/2.0"), _OK | _UNPARSEABLE)
    raw("HTTP/9.9", _request("GET", "/v2/", host, version=b"HTTP/9.9"), _OK | _UNPARSEABLE)
    raw("asterisk target", _request("GET", "*", host), _NO_ROUTE)
    raw("OPTIONS *", _request("OPTIONS", "*", host), _NO_ROUTE | _UNSUPPORTED)
    raw("absolute-form target", _request("GET", "http://evil.example/v2/", host), _OK)
    # Bodies where none belongs, and the framing tricks that go with them.
    raw("body on GET", _request("GET", "/v2/", host, [("Content-Length", "5")], b"hello"), _OK)
    raw(
        "chunked body on GET",
        _request(
            "GET", f"/v2/{repo}/manifests/{tag}", host, [("Transfer-Encoding", "chunked")], b"5\r\nhello\r\n0\r\n\r\n"
        ),
        _OK,
    )
    raw(
        "Content-Length and chunked",
        _request("GET", "/v2/", host, [("Content-Length", "5"), ("Transfer-Encoding", "chunked")], b"0\r\n\r\n"),
        _UNPARSEABLE,
    )
    raw("negative Content-Length", _request("GET", "/v2/", host, [("Content-Length", "-1")]), _UNPARSEABLE)
    raw(
        "two Content-Lengths",
        _request("GET", "/v2/", host, [("Content-Length", "5"), ("Content-Length", "6")], b"hello"),
        _UNPARSEABLE,
    )
    raw("body shorter than Content-Length", _request("GET", blob_url, host, [("Content-Length", "100")], b"short"), _OK)
    # Write methods: a read-only cache answers 405 UNSUPPORTED to all of them, on every kind of path.
    write_paths = {
        "manifest": f"/v2/{repo}/manifests/{tag}",
        "manifest digest": f"/v2/{repo}/manifests/{manifest}",
        "blob": blob_url,
        "uploads": f"/v2/{repo}/blobs/uploads/",
        "upload session": f"/v2/{repo}/blobs/uploads/5f2a3c1e-0000-4000-8000-000000000000?_state=x",
        "mount": f"/v2/{repo}/blobs/uploads/?mount={blob}&from=library/other",
        "tags": f"/v2/{repo}/tags/list",
        "base": "/v2/",
        "catalog": "/v2/_catalog",
    }
    for method in ("PUT", "POST", "PATCH", "DELETE"):
        for what, path in write_paths.items():
            body = b'{"schemaVersion":2}' if method in ("PUT", "PATCH", "POST") else b""
            headers = [
                ("Content-Length", str(len(body))),
                ("Content-Type", "application/vnd.oci.image.manifest.v1+json"),
            ]
            raw(f"{method} {what}", _request(method, path, host, headers, body), _UNSUPPORTED)
    # An encoded newline: Starlette's "{path:path}" is ".*", which does not match "\n".
    raw("PUT with %0a in path", _request("PUT", "/v2/%0a/", host, [("Content-Length", "0")]), _UNSUPPORTED)
    raw(
        "DELETE manifest with %0a in name",
        _request("DELETE", f"/v2/{repo}%0a/manifests/{tag}", host, [("Content-Length", "0")]),
        _UNSUPPORTED,
    )
    raw(
        "POST claiming 10 GB, sending nothing",
        _request("POST", f"/v2/{repo}/blobs/uploads/", host, [("Content-Length", str(10 * 2**30))]),
        _UNSUPPORTED,
    )
    raw(
        "PUT with Expect: 100-continue",
        _request("PUT", f"/v2/{repo}/manifests/{tag}", host, [("Expect", "100-continue"), ("Content-Length", "100")]),
        _UNSUPPORTED | frozenset({417}),
    )
    raw(
        "chunked PATCH to upload",
        _request(
            "PATCH", f"/v2/{repo}/blobs/uploads/x", host, [("Transfer-Encoding", "chunked")], b"3\r\nabc\r\n0\r\n\r\n"
        ),
        _UNSUPPORTED,
    )
    for method in ("OPTIONS", "TRACE", "CONNECT", "PROPFIND"):
        for what, path in (("manifest", f"/v2/{repo}/manifests/{tag}"), ("blob", blob_url), ("base", "/v2/")):
            raw(f"{method} {what}", _request(method, path, host), _UNSUPPORTED)
    # Endpoints that do not exist here, and odd spellings of the ones that do.
    add("catalog", "/v2/_catalog", frozenset({200, 404}))
    add("catalog with junk paging", "/v2/_catalog?n=99999999999&last=%00", frozenset({200, 400, 404}))
    add("/v2/..", "/v2/..", _NO_ROUTE)
    add("/v2/.", "/v2/.", _NO_ROUTE)
    add("/v2/%2e%2e", "/v2/%2e%2e", _NO_ROUTE)
    add("//v2//", "//v2//", _NO_ROUTE)
    add("/v2 without slash", "/v2", _NO_ROUTE | frozenset({200, 301, 307, 308}))
    add("/v2//", "/v2//", _NO_ROUTE)
    add("many slashes", "/" * 2000, _NO_ROUTE | _TOO_LONG)
    add("referrers", f"/v2/{repo}/referrers/{manifest}", _NO_ROUTE | _OK)
    add("uploads GET", f"/v2/{repo}/blobs/uploads/", _NO_ROUTE | _UNSUPPORTED)
    add("uploads without slash", f"/v2/{repo}/blobs/uploads", _BAD_DIGEST | _UNSUPPORTED)
    add("trailing slash after tag", f"/v2/{repo}/manifests/{tag}/", _NO_ROUTE)
    add("manifests with no reference", f"/v2/{repo}/manifests/", _NO_ROUTE)
    add("tags/list with trailing junk", f"/v2/{repo}/tags/list/..", _NO_ROUTE)
    add("root", "/", _OK)  # the status page
    add("favicon", "/favicon.ico", _NO_ROUTE)
    # Query strings with junk.
    # An ns naming no configured registry is NAME_UNKNOWN, and never a connection anywhere.
    add("ns traversal", f"/v2/{repo}/manifests/{tag}?ns=../../etc", _UNKNOWN_REGISTRY)
    add("ns NUL", f"/v2/{repo}/manifests/{tag}?ns=%00&ns=..%2f..", _UNKNOWN_REGISTRY)
    add("ns of an unconfigured registry", f"/v2/{repo}/manifests/{tag}?ns=evil.example.com", _UNKNOWN_REGISTRY)
    add("prefix of an unconfigured registry", f"/v2/evil.example.com/{repo}/manifests/{tag}", _UNKNOWN_REGISTRY)
    add("prefix with a port", f"/v2/127.0.0.1:1/{repo}/manifests/{tag}", _UNKNOWN_REGISTRY)
    add("n=-1", f"/v2/{repo}/tags/list?n=-1", _BAD_QUERY)
    add("n=99999999999", f"/v2/{repo}/tags/list?n=99999999999", _BAD_QUERY)
    add("n of 4000 digits", f"/v2/{repo}/tags/list?n={'9' * 4000}", _BAD_QUERY | _TOO_LONG)
    add("n=1e3", f"/v2/{repo}/tags/list?n=1e3", _BAD_QUERY)
    add("n=0x10", f"/v2/{repo}/tags/list?n=0x10", _BAD_QUERY)
    add("n empty", f"/v2/{repo}/tags/list?n=", _BAD_QUERY | _OK)
    add("n superscript two", f"/v2/{repo}/tags/list?n=%C2%B2", _BAD_QUERY)
    add("n arabic-indic digit", f"/v2/{repo}/tags/list?n=%D9%A3", _BAD_QUERY | _OK)
    add("n twice, second negative", f"/v2/{repo}/tags/list?n=10&n=-1", _BAD_QUERY | _OK)
    add("n=0", f"/v2/{repo}/tags/list?n=0", _OK)
    add("last=%00", f"/v2/{repo}/tags/list?last=%00", _OK | _BAD_QUERY)
    add("last traversal", f"/v2/{repo}/tags/list?last=..%2f..%2fetc%2fpasswd", _OK | _BAD_QUERY)
    add("last invalid utf-8", f"/v2/{repo}/tags/list?last=%ff%fe", _OK | _BAD_QUERY)
    add("query of only junk", f"/v2/{repo}/tags/list?%%%&&&===", _OK | _BAD_QUERY)
    add("query on a blob", f"{blob_url}?digest=sha256:..%2f..", _OK)
    # HEAD: the same validation, no body.
    add("HEAD cached manifest", f"/v2/{repo}/manifests/{tag}", _OK, method="HEAD")
    add("HEAD cached blob", blob_url, _OK, method="HEAD")
    add("HEAD dotdot name", "/v2/library/../../etc/manifests/passwd", _BAD_NAME, method="HEAD")
    add("HEAD %2e%2e blob name", f"/v2/%2e%2e/%2e%2e/blobs/{blob}", _BAD_NAME, method="HEAD")
    add("HEAD upper-case digest", f"/v2/{repo}/blobs/sha256:{hex64.upper()}", _BAD_DIGEST, method="HEAD")
    add("HEAD md5 manifest", f"/v2/{repo}/manifests/md5:{'0' * 32}", _BAD_DIGEST, method="HEAD")
    add("HEAD tag of 129 chars", f"/v2/{repo}/manifests/{'t' * 129}", _BAD_TAG, method="HEAD")
    add("HEAD name of 256 chars", f"/v2/{'a' * 256}/blobs/{blob}", _BAD_NAME, method="HEAD")
    add("HEAD one-segment name of 255 chars", f"/v2/{'a' * 255}/manifests/latest", _BAD_NAME, method="HEAD")
    add("HEAD catalog", "/v2/_catalog", frozenset({200, 404}), method="HEAD")
    add("HEAD uploads", f"/v2/{repo}/blobs/uploads/", _NO_ROUTE | _UNSUPPORTED, method="HEAD")
    add("HEAD 100 KB header", "/v2/", _HEADERS_TOO_LARGE, method="HEAD", headers=[("X-Big", "a" * 100_000)])
    add("HEAD 10 KB URL", f"/v2/{repo}/blobs/sha256:{'a' * 10240}", _TOO_LONG | _BAD_DIGEST, method="HEAD")
    # Conditional and content-negotiation headers with junk in them.
    add("If-None-Match junk", f"/v2/{repo}/manifests/{tag}", _OK, headers=[("If-None-Match", '"../../etc"')])
    add("Accept junk", f"/v2/{repo}/manifests/{tag}", _OK | _BAD_TAG, headers=[("Accept", ";;;,,*/*;q=../..")])
    # Bytes 0x80-0xff are legal in header values (obs-text); uvicorn passes them on, decoded as Latin-1.
    add("Accept with a non-ASCII byte", f"/v2/{repo}/manifests/{tag}", _OK | _BAD_TAG, headers=[("Accept", b"\x80")])
    add(
        "Accept with a Latin-1 media type",
        f"/v2/{repo}/manifests/{tag}",
        _OK | _BAD_TAG,
        headers=[("Accept", b"application/vnd.oci.image.manifest.v1+json\xe9")],
    )
    add(
        "Accept NUL-ish", f"/v2/{repo}/manifests/{tag}", _OK | _BAD_TAG | _UNPARSEABLE, headers=[("Accept", "\x7f\x01")]
    )
    labels = [request.label for request in out]
    assert len(labels) == len(set(labels)), "hostile request labels must be unique"
    return out


# -- fuzzing -------------------------------------------------------------------------------------------------------

_FUZZ_PIECES = [
    *"/.:%\\-_+~@?&=#;\t aZ0é\u202e😀",
    *["..", "//", "__", "%2e", "%2E%2e", "%2f", "%2F", "%00", "%5c", "%3a", "%%", "%zz", "%ff"],
    *["sha256:", "sha512:", "md5:", "manifests", "blobs", "tags", "list", "uploads", "_catalog", "library", "alpine"],
]


def fuzzed_requests(host: str, target: Target, count: int, rng: random.Random) -> list[HostileRequest]:
    """``count`` random GET/HEAD requests for /v2/<name>/<kind>/<ref>, built from pieces that stress the parsers.

    Most pieces are percent-encoded (the app then sees them decoded); some go raw, which the HTTP parser may refuse.
    Any status below 500 is acceptable: these check for crashes and hangs, not for particular answers.
    """
    hex64 = target.blob_digest.removeprefix("sha256:")
    malformed = [f"sha256:{hex64.upper()}", f"sha256:{hex64[:-1]}", "x:y", DIGEST_ZERO.replace("0", "O")]
    out = []
    for i in range(count):
        name = rng.choice([target.repository, "library/alpine", "alpine", _junk(rng), _junk(rng) + "/" + _junk(rng)])
        if rng.random() < 0.05:
            name = "a" * rng.randint(200, 300)
        kind = rng.choice(["manifests", "blobs", "tags", "referrers", _junk(rng)])
        # Not the layer's digest as a manifest reference: Distribution (the upstream in tests) answers that with a
        # 500 of its own, which the proxy rightly reports as 502; Docker Hub says 404.
        digests = [target.manifest_digest, DIGEST_ZERO, *malformed]
        if kind != "manifests":
            digests.append(target.blob_digest)
        ref = rng.choice([target.tag, *digests, _junk(rng), _junk(rng) + rng.choice(digests)])
        path = f"/v2/{name}/{kind}/" + ("list" if kind == "tags" and rng.random() < 0.7 else ref)
        if rng.random() < 0.3:
            path = "/v2/" + _junk(rng) + path[3:]
        encoded = _encode(path, rng)
        if rng.random() < 0.2:
            encoded += b"?" + _encode(_junk(rng), rng).replace(b" ", b"%20")
        method = "HEAD" if rng.random() < 0.2 else "GET"
        headers: list[tuple[bytes | str, bytes | str]] = []
        if rng.random() < 0.2:
            headers.append(("Range", rng.choice(["bytes=0-0", "bytes=-1", "bytes=" + _junk(rng)]).encode()))
        out.append(HostileRequest(f"fuzz {i}", _request(method, encoded, host, headers), ANY_NON_5XX))
    return out


def _junk(rng: random.Random) -> str:
    return "".join(rng.choice(_FUZZ_PIECES) for _ in range(rng.randint(1, 8)))


def _encode(path: str, rng: random.Random) -> bytes:
    """Percent-encode the characters an HTTP request line cannot carry, usually; now and then send one raw."""
    out = bytearray()
    for char in path:
        if char.isascii() and (char.isalnum() or char in "/.-_~:%@+=;&"):
            out += char.encode()
        elif rng.random() < 0.05:
            out += char.encode("utf-8")
        else:
            out += quote(char, safe="").encode()
    return bytes(out)


# -- sending -------------------------------------------------------------------------------------------------------


def send_raw(host: str, port: int, request: bytes, timeout: float, max_bytes: int = MAX_REPLY_BYTES) -> RawReply:
    """Send ``request`` as is and read one reply (skipping interim 1xx), within ``timeout`` seconds in all.

    Never raises for network trouble: a reply that could not be read has ``status=None`` and says why in ``error``
    ("timed out" for a hang). A server that answers and closes before taking the whole request (oversize requests)
    is fine as long as the reply arrives.
    """
    started = time.monotonic()
    deadline = started + timeout
    reader = _Reader(deadline, max_bytes)
    head_request = request.split(b" ", 1)[0] == b"HEAD"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            reader.sock = sock
            send_error: str | None = None
            try:
                sock.sendall(request)
            except OSError as exc:
                # The server may refuse before reading everything; its reply can still be waiting.
                send_error = f"send failed: {exc!r}"
            for _ in range(_MAX_INTERIM_REPLIES + 1):
                status, headers = reader.read_head()
                if status is None:
                    return RawReply(None, {}, b"", send_error or "connection closed without a reply", _since(started))
                if status >= 200 or status == 101:
                    break
            else:
                return RawReply(status, headers, b"", "too many interim replies", _since(started))
            body, body_error = reader.read_body(status, headers, head_request)
            return RawReply(status, headers, body, body_error, _since(started))
    except TimeoutError:
        return RawReply(reader.status, reader.headers, b"", f"timed out after {timeout:.1f}s", _since(started))
    except OSError as exc:
        return RawReply(reader.status, reader.headers, b"", f"socket error: {exc!r}", _since(started))


def _since(started: float) -> float:
    return time.monotonic() - started


class _Reader:
    """Buffered reads from one socket, each bounded by the overall deadline and the byte cap."""

    def __init__(self, deadline: float, max_bytes: int) -> None:
        self.sock: socket.socket | None = None
        self.deadline = deadline
        self.max_bytes = max_bytes
        self.buffer = b""
        self.total = 0
        self.eof = False
        self.status: int | None = None
        self.headers: dict[str, str] = {}

    def _fill(self) -> bool:
        """Read more into the buffer; False at EOF or at the cap."""
        assert self.sock is not None
        if self.eof or self.total >= self.max_bytes:
            return False
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(min(65536, self.max_bytes - self.total))
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        self.total += len(chunk)
        return True

    def _bounded_rounds(self) -> range:
        # Every successful _fill() adds at least one byte, so this many rounds can never be exhausted early.
        return range(self.max_bytes + 2)

    def read_head(self) -> tuple[int | None, dict[str, str]]:
        for _ in self._bounded_rounds():
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0 or len(self.buffer) > _MAX_HEAD_BYTES or not self._fill():
                break
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None, {}
        head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return None, {}
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        self.status, self.headers = int(parts[1]), headers
        return self.status, headers

    def read_body(self, status: int, headers: dict[str, str], head_request: bool) -> tuple[bytes, str | None]:
        # uvicorn's refusal of an unparseable request has a body even for HEAD (it never learnt the method);
        # only replies from the app (which carry the API version header) follow HEAD's no-body rule.
        if (head_request and API_VERSION_HEADER in headers) or status in (204, 304):
            return b"", None
        length = headers.get("content-length")
        if length is not None and length.isdigit():
            wanted = int(length)
            for _ in self._bounded_rounds():
                if len(self.buffer) >= wanted or not self._fill():
                    break
            body = self.buffer[:wanted]
            return body, None if len(body) == wanted else f"body ended after {len(body)} of {wanted} bytes"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._read_chunked()
        for _ in self._bounded_rounds():
            if not self._fill():
                break
        return self.buffer, None if self.eof else "body exceeds the byte cap"

    def _read_chunked(self) -> tuple[bytes, str | None]:
        body = bytearray()
        pos = 0
        for _ in self._bounded_rounds():
            line_end = self.buffer.find(b"\r\n", pos)
            if line_end >= 0:
                size_text = self.buffer[pos:line_end].split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    return bytes(body), f"bad chunk size {size_text[:20]!r}"
                if size == 0:
                    return bytes(body), None
                if len(self.buffer) >= line_end + 2 + size + 2:
                    body += self.buffer[line_end + 2 : line_end + 2 + size]
                    pos = line_end + 2 + size + 2
                    continue
            if not self._fill():
                return bytes(body), "chunked body ended early"
        return bytes(body), "chunked body exceeds the byte cap"


# -- judging -------------------------------------------------------------------------------------------------------


def from_uvicorn(reply: RawReply) -> bool:
    """uvicorn's own refusal of a request it could not parse: the app (which adds the API version header) never ran."""
    return reply.status == 400 and API_VERSION_HEADER not in reply.headers and reply.body == UVICORN_BAD_REQUEST


def envelope_problem(request: HostileRequest, reply: RawReply) -> str | None:
    """Why a 4xx from the app is not a registry error envelope (None if it is, or if it is not such a reply)."""
    if reply.status is None or not 400 <= reply.status < 500 or from_uvicorn(reply):
        return None
    if API_VERSION_HEADER not in reply.headers:
        return f"a {reply.status} from neither the app nor uvicorn's parser: {reply.body[:200]!r}"
    content_type = reply.headers.get("content-type", "")
    if not content_type.startswith("application/json"):
        return f"a {reply.status} with Content-Type {content_type!r}"
    if request.method == "HEAD":
        return None  # no body to check
    try:
        errors = json.loads(reply.body)["errors"]
        ok = (
            isinstance(errors, list)
            and len(errors) >= 1
            and all(isinstance(e, dict) and {"code", "message", "detail"} <= e.keys() for e in errors)
            and all(isinstance(e["code"], str) and isinstance(e["message"], str) for e in errors)
        )
    except (ValueError, KeyError, TypeError):
        ok = False
    return None if ok else f"a {reply.status} whose body is not the error envelope: {reply.body[:200]!r}"


def problems(request: HostileRequest, reply: RawReply, forbidden: Iterable[bytes] = (PASSWD_MARKER,)) -> list[str]:
    """Everything wrong with ``reply`` to ``request``; empty when the proxy kept its contract."""
    found: list[str] = []
    if reply.status is None:
        found.append(f"no reply: {reply.error}")
        return found
    if reply.hung:
        found.append(f"hang: {reply.error} (status {reply.status})")
    if reply.status >= 500:
        found.append(f"server error {reply.status}: {reply.body[:300]!r}")
    elif reply.status not in request.allowed:
        found.append(f"status {reply.status} not in {sorted(request.allowed)}: {reply.body[:200]!r}")
    if request.under_v2 and (problem := envelope_problem(request, reply)) is not None:
        found.append(problem)
    for text in forbidden:
        if text and text in reply.body:
            found.append(f"the reply contains {text[:20]!r}, from a file outside the cache")
    injected = [name for name in reply.headers if name in ("x-injected", "set-cookie")]
    if injected:
        found.append(f"header injection: {injected}")
    return found
