"""Registry errors, rendered as the distribution spec's ``{"errors": [{"code", "message", "detail"}]}``.

Every failure a client can see is one of these; the HTTP layer turns it into a JSON response, so no
request ever ends in a bare 500 or a traceback.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["RegistryError", "render"]


class RegistryError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    # One constructor per situation, so that codes and statuses stay consistent across the code base.
    @classmethod
    def name_invalid(cls, name: str) -> RegistryError:
        return cls(400, "NAME_INVALID", "invalid repository name", {"name": name[:300]})

    @classmethod
    def name_unknown(cls, name: str, why: str = "repository name not known to registry") -> RegistryError:
        return cls(404, "NAME_UNKNOWN", why, {"name": name[:300]})

    @classmethod
    def digest_invalid(cls, why: str) -> RegistryError:
        return cls(400, "DIGEST_INVALID", "provided digest did not match uploaded content", why)

    @classmethod
    def manifest_unknown(cls, reference: str, why: str = "manifest unknown") -> RegistryError:
        return cls(404, "MANIFEST_UNKNOWN", why, {"reference": reference[:300]})

    @classmethod
    def blob_unknown(cls, digest: str) -> RegistryError:
        return cls(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest[:300]})

    @classmethod
    def range_invalid(cls, size: int | None) -> RegistryError:
        headers = {"Content-Range": f"bytes */{size}"} if size is not None else {}
        return cls(416, "RANGE_INVALID", "requested range not satisfiable", None, headers)

    @classmethod
    def unsupported(cls, why: str = "the operation is unsupported") -> RegistryError:
        return cls(405, "UNSUPPORTED", why)

    @classmethod
    def unauthorized(cls, why: str) -> RegistryError:
        return cls(401, "UNAUTHORIZED", why)

    @classmethod
    def denied(cls, why: str) -> RegistryError:
        return cls(403, "DENIED", why)

    @classmethod
    def too_many_requests(cls, why: str, retry_after: str | None) -> RegistryError:
        headers = {"Retry-After": retry_after} if retry_after else {}
        return cls(429, "TOOMANYREQUESTS", why, None, headers)

    @classmethod
    def bad_gateway(cls, why: str) -> RegistryError:
        return cls(502, "UPSTREAM_ERROR", why)

    @classmethod
    def unavailable(cls, why: str) -> RegistryError:
        return cls(503, "UPSTREAM_UNAVAILABLE", why)

    @classmethod
    def gateway_timeout(cls, why: str) -> RegistryError:
        return cls(504, "UPSTREAM_TIMEOUT", why)

    @property
    def is_outage(self) -> bool:
        """The upstream is not answering properly (as opposed to answering no), so a cached copy may stand in."""
        return self.status in (429, 500, 502, 503, 504)

    def body(self) -> bytes:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        error["detail"] = self.detail if self.detail is not None else {}
        return json.dumps({"errors": [error]}).encode()


def render(error: RegistryError) -> tuple[int, dict[str, str], bytes]:
    return error.status, error.headers, error.body()
