"""A token issuer that stands in for auth.docker.io.

It serves ``GET /token?service=...&scope=...&account=...`` on 127.0.0.1 in a background thread, answers with the JSON
Docker Hub sends, and signs the tokens so that a real Distribution configured with ``auth.token`` accepts them.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import secrets
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, cast
from urllib.parse import parse_qs, urlsplit

from tests.harness.jwt import SigningKey
from tests.harness.ports import LOOPBACK
from tests.harness.scopes import HubPolicy, split_scope_params

DEFAULT_SERVICE = "registry.docker.io"


class TokenRequest(NamedTuple):
    """One request that reached ``/token``: the scopes asked for, and the authenticated user (None if anonymous)."""

    scopes: list[str]
    account: str | None


class BadCredentials(Exception):
    """An Authorization header was sent, and it is not the configured Basic user and password."""


class TokenIssuer:
    """auth.docker.io on 127.0.0.1: a running HTTP server plus the key that Distribution trusts."""

    def __init__(
        self,
        workdir: Path,
        *,
        issuer: str = "test-issuer",
        service: str = DEFAULT_SERVICE,
        username: str = "pusher",
        password: str = "s3cret",
        expires_in: int = 300,
        policy: HubPolicy | None = None,
    ) -> None:
        self.issuer = issuer
        self.service = service
        self.username = username
        self.password = password
        self.expires_in = expires_in
        self.policy = policy or HubPolicy()
        # Every token handed out, so that the suite can check no log line ever holds one.
        self.issued_tokens: list[str] = []
        self.key = SigningKey()
        workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path = self.key.write_cert(workdir / "token-issuer.crt")
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._server: _IssuerServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> TokenIssuer:
        if self._server is not None:
            return self
        # Port 0: the kernel picks a free port while we hold it, so there is no race with other processes.
        server = _IssuerServer((LOOPBACK, 0), _TokenHandler, self)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="token-issuer", daemon=True
        )
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is None:
            return
        server.shutdown()  # returns within one poll_interval
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> TokenIssuer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("token issuer is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def realm(self) -> str:
        """What goes into Distribution's ``auth.token.realm`` and so into its ``WWW-Authenticate`` challenges."""
        return f"{self.url}/token"

    # -- accounting --------------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[TokenRequest]:
        """A snapshot of every request to ``/token`` so far, oldest first (failed ones included)."""
        with self._lock:
            return list(self._requests)

    def mark(self) -> int:
        """A position in :attr:`requests`, for :meth:`requests_since`."""
        with self._lock:
            return len(self._requests)

    def requests_since(self, mark: int) -> list[TokenRequest]:
        with self._lock:
            return self._requests[mark:]

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self._requests.append(request)

    # -- tokens ------------------------------------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> str | None:
        """The user named by a Basic Authorization header; None when there is no header (anonymous).

        Raises BadCredentials for any other header, as auth.docker.io answers 401 rather than falling back to
        anonymous access.
        """
        if authorization is None:
            return None
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            raise BadCredentials(f"unsupported authorization scheme {scheme!r}")
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise BadCredentials("malformed Basic credentials") from exc
        # Compare both in constant time and without short-circuiting, out of habit more than need.
        user_ok = secrets.compare_digest(user.encode(), self.username.encode())
        password_ok = secrets.compare_digest(password.encode(), self.password.encode())
        if not (sep and user_ok and password_ok):
            raise BadCredentials("incorrect username or password")
        return user

    def issue(
        self,
        scopes: list[str],
        *,
        user: str | None = None,
        service: str | None = None,
        expires_in: int | None = None,
        now: float | None = None,
    ) -> str:
        """Mint a token directly (no HTTP, not recorded): e.g. an already expired one, with ``now`` in the past.

        ``user`` is trusted here: a user means authenticated, and gets whatever the policy gives authenticated users.
        """
        issued = int(time.time() if now is None else now)
        lifetime = self.expires_in if expires_in is None else expires_in
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": service or self.service,
            # Distribution 2.8 unmarshals these into int64: they must be JSON integers, never floats.
            "exp": issued + lifetime,
            "nbf": issued,
            "iat": issued,
            "jti": secrets.token_hex(16),
            "access": self.policy.access(scopes, authenticated=user is not None),
        }
        return self.key.sign(claims)

    def token_response(self, query: str, authorization: str | None) -> tuple[HTTPStatus, dict[str, Any]]:
        """Answer one ``/token`` request: status and JSON body. Records it whatever the outcome."""
        params = parse_qs(query, keep_blank_values=True)
        scopes = split_scope_params(params.get("scope", []))
        try:
            user = self.authenticate(authorization)
        except BadCredentials as exc:
            self._record(TokenRequest(scopes, None))
            return HTTPStatus.UNAUTHORIZED, {"details": str(exc)}
        self._record(TokenRequest(scopes, user))
        service = params.get("service", [self.service])[0]
        now = time.time()
        token = self.issue(scopes, user=user, service=service, now=now)
        self.issued_tokens.append(token)
        issued_at = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return HTTPStatus.OK, {
            "token": token,
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": issued_at,
        }


class _IssuerServer(ThreadingHTTPServer):
    # Handler threads must not keep the test process alive, nor make server_close() wait for them.
    daemon_threads = True
    # http.server listens with a backlog of 5: a proxy asking for a hundred tokens at once (one per repository)
    # would see connections time out in the SYN queue, which auth.docker.io never does.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], issuer: TokenIssuer) -> None:
        self.issuer = issuer
        super().__init__(address, handler)


class _TokenHandler(BaseHTTPRequestHandler):
    server_version = "test-token-issuer"

    def do_GET(self) -> None:
        issuer = cast(_IssuerServer, self.server).issuer
        url = urlsplit(self.path)
        if url.path != "/token":
            self._send_json(HTTPStatus.NOT_FOUND, {"details": "not found"})
            return
        status, body = issuer.token_response(url.query, self.headers.get("Authorization"))
        self._send_json(status, body)

    def _send_json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Basic realm="test-token-issuer"')
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        # Silence the per-request line on stderr; tests read TokenIssuer.requests instead.
        pass
