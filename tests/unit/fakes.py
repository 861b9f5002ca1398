"""An in-memory upstream registry for httpx.MockTransport: token auth like Docker Hub, counting every request."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import httpx

REGISTRY = "https://registry.example.com"
REALM = "https://auth.example.com/token"
CDN = "cdn.example.net"
# What an upstream setting must allow for this fake, as Docker Hub's defaults allow its CDN and auth.docker.io.
FAKE_REDIRECT_HOSTS = (CDN,)
FAKE_TOKEN_REALMS = (REALM,)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class FakeRegistry:
    """Callable for httpx.MockTransport. Set ``fail`` to make every registry request answer that status."""

    manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)  # (repo, ref) → (type, body)
    blobs: dict[str, bytes] = field(default_factory=dict)
    # digest → the repositories that have it, for blobs that only some have (any repository has the others)
    blob_repositories: dict[str, set[str]] = field(default_factory=dict)
    tags: dict[str, list[str]] = field(default_factory=dict)
    token_lifetime: int = 300
    require_auth: bool = True
    credentials: tuple[str, str] | None = None  # if set, the token endpoint requires them
    fail: int | None = None
    fail_headers: dict[str, str] = field(default_factory=dict)
    manifest_headers: dict[str, str] = field(default_factory=dict)  # on manifest answers (ratelimit-*, say)
    corrupt_blobs: bool = False
    hits: Counter[str] = field(default_factory=Counter)  # "GET /v2/..." → count, for authorized requests
    token_requests: list[httpx.Request] = field(default_factory=list)
    challenges: int = 0  # 401s sent for a missing or invalid token
    requests: list[httpx.Request] = field(default_factory=list)
    issued: dict[str, tuple[str, float]] = field(default_factory=dict)  # token → (scope, expiry)

    def add_manifest(self, repo: str, tag: str | None, media_type: str, body: bytes) -> str:
        digest = sha256(body)
        self.manifests[(repo, digest)] = (media_type, body)
        if tag is not None:
            self.manifests[(repo, tag)] = (media_type, body)
            self.tags.setdefault(repo, []).append(tag)
        return digest

    def add_blob(self, data: bytes) -> str:
        digest = sha256(data)
        self.blobs[digest] = data
        return digest

    def count(self, method: str, path_part: str = "") -> int:
        return sum(n for key, n in self.hits.items() if key.startswith(method + " ") and path_part in key)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.host == "auth.example.com":
            return self._token(request)
        if url.host == "cdn.example.net":
            return self._cdn(request)
        self.requests.append(request)
        if self.fail is not None:
            error = json.dumps({"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]})
            return httpx.Response(self.fail, headers=self.fail_headers, content=error.encode())
        path = url.path
        if path == "/v2/":
            return httpx.Response(200, json={})
        repo, kind, ref = _split(path)
        scope = f"repository:{repo}:pull"
        if self.require_auth and not self._authorized(request, scope):
            self.challenges += 1
            challenge = f'Bearer realm="{REALM}",service="registry.example",scope="{scope}"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge}, json=_error("UNAUTHORIZED"))
        # Counted once past auth, so that counts are of requests the registry served (or refused).
        self.hits[f"{request.method} {url.path}"] += 1
        if kind == "manifests":
            found = self.manifests.get((repo, ref))
            if found is None:
                return httpx.Response(404, json=_error("MANIFEST_UNKNOWN"))
            media_type, content = found
            accept = request.headers.get("accept", "")
            if media_type == DOCKER_LIST and DOCKER_LIST not in accept and not ref.startswith("sha256:"):
                # Distribution's answer to a client that takes no manifest list: the list's linux/amd64 image.
                media_type, content = self.manifests.get((repo, _amd64_entry(content)), (media_type, content))
            if media_type not in accept:
                return httpx.Response(404, json=_error("MANIFEST_UNKNOWN"))
            headers = {"Content-Type": media_type, "Docker-Content-Digest": sha256(content), **self.manifest_headers}
            if request.method == "HEAD":
                headers["Content-Length"] = str(len(content))
                return httpx.Response(200, headers=headers)
            return _streamed(200, headers, content)
        if kind == "blobs":
            if ref not in self.blobs or repo not in self.blob_repositories.get(ref, {repo}):
                return httpx.Response(404, json=_error("BLOB_UNKNOWN"))
            # Like Docker Hub: blobs live on a CDN on another host.
            return httpx.Response(307, headers={"Location": f"https://cdn.example.net/blobs/{ref}?verify=1"})
        if kind == "referrers" and hasattr(self, "referrers_handler"):
            response: httpx.Response = self.referrers_handler(request)
            return response
        if kind == "tags" and hasattr(self, "tags_handler"):
            response = self.tags_handler(request)
            return response
        if kind == "tags":
            tags = sorted(self.tags.get(repo, []))
            if repo not in self.tags:
                return httpx.Response(404, json=_error("NAME_UNKNOWN"))
            return httpx.Response(200, json={"name": repo, "tags": tags})
        return httpx.Response(404)

    def _cdn(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.hits[f"{request.method} cdn{request.url.path}"] += 1
        data = self.blobs[request.url.path.rsplit("/", 1)[1]]
        if self.corrupt_blobs:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        headers = {"Content-Length": str(len(data)), "Accept-Ranges": "bytes"}
        range_header = request.headers.get("range")
        if range_header:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            headers["Content-Length"] = str(len(data) - start)
            return _streamed(206, headers, data[start:] if request.method == "GET" else b"")
        return _streamed(200, headers, data if request.method == "GET" else b"")

    def _authorized(self, request: httpx.Request, scope: str) -> bool:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return False
        granted = self.issued.get(header.removeprefix("Bearer "))
        return granted is not None and granted[0] == scope and granted[1] > time.monotonic()

    def _token(self, request: httpx.Request) -> httpx.Response:
        self.token_requests.append(request)
        if self.credentials is not None:
            expected = httpx.BasicAuth(*self.credentials)._auth_header
            if request.headers.get("authorization") != expected:
                return httpx.Response(401, json=_error("UNAUTHORIZED"))
        query = parse_qs(urlsplit(str(request.url)).query)
        scope = query.get("scope", [""])[0]
        token = f"token-{len(self.token_requests)}"
        self.issued[token] = (scope, time.monotonic() + self.token_lifetime)
        return httpx.Response(200, json={"token": token, "expires_in": self.token_lifetime})


def _streamed(status: int, headers: dict[str, str], content: bytes) -> httpx.Response:
    # A body passed as content= arrives already read, and then aiter_raw() refuses it; a real transport
    # streams, so the fake does too.
    return httpx.Response(status, headers=headers, stream=httpx.ByteStream(content))


def _split(path: str) -> tuple[str, str, str]:
    rest = path.removeprefix("/v2/")
    if rest.endswith("/tags/list"):
        return rest.removesuffix("/tags/list"), "tags", "list"
    repo, kind, ref = rest.rsplit("/", 2)
    return repo, kind, ref


def _amd64_entry(manifest_list: bytes) -> str:
    for entry in json.loads(manifest_list)["manifests"]:
        if entry.get("platform", {}) == {"os": "linux", "architecture": "amd64"}:
            return str(entry["digest"])
    return ""


def _error(code: str) -> dict[str, object]:
    return {"errors": [{"code": code, "message": code.lower(), "detail": {}}]}
