"""Pushing blobs and manifests with the registry HTTP API, as ``docker push`` does, but without Docker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import httpx

from tests.harness.blobstore import BlobStore
from tests.harness.challenge import Challenge, basic_authorization, fetch_token
from tests.harness.oci import CHUNK, Descriptor, sha256_digest

USER_AGENT = "test-harness-pusher"


class PushError(RuntimeError):
    pass


class Pusher:
    """Pushes to one registry with the given credentials, whatever auth it uses (bearer token, Basic or none).

    It asks for ``pull,push`` on each repository once, up front, like docker does, so that no request has to be
    retried after a 401: a retry would need to replay a streamed blob body.
    """

    def __init__(self, registry_url: str, store: BlobStore, credentials: tuple[str, str] | None) -> None:
        self.registry_url = registry_url.rstrip("/")
        self.store = store
        self.credentials = credentials
        # Generous: a 200 MiB monolithic upload on a busy 2-core machine, hashed by the registry as it arrives.
        self._client = httpx.Client(timeout=httpx.Timeout(120.0), headers={"User-Agent": USER_AGENT})
        self._auth: dict[str, dict[str, str]] = {}
        self.uploaded: list[tuple[str, str]] = []
        """(repository, digest) of every blob actually uploaded, i.e. not already there."""

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Pusher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def push_blob(self, repository: str, blob: Descriptor) -> bool:
        """Upload a blob from the store unless the repository has it; True if it was uploaded.

        One POST to open the upload, then one monolithic PUT with the digest, streamed from the file.
        """
        headers = self._headers(repository)
        existing = self._client.head(f"{self.registry_url}/v2/{repository}/blobs/{blob.digest}", headers=headers)
        if existing.status_code == 200:
            return False
        started = self._client.post(f"{self.registry_url}/v2/{repository}/blobs/uploads/", headers=headers)
        _expect(started, 202, f"start upload of {blob.digest} to {repository}")
        # The Location may be relative; it carries the upload's state in its query, to which the digest is added.
        location = (
            httpx.URL(self.registry_url).join(started.headers["Location"]).copy_merge_params({"digest": blob.digest})
        )
        path = self.store.path(blob.digest)
        finished = self._client.put(
            location,
            content=_chunks(path),
            headers={
                **headers,
                "Content-Type": "application/octet-stream",
                # With a length, httpx sends the generator as a plain body rather than chunked.
                "Content-Length": str(blob.size),
            },
        )
        _expect(finished, 201, f"upload of {blob.digest} to {repository}")
        self.uploaded.append((repository, blob.digest))
        return True

    def push_manifest(self, repository: str, reference: str, manifest: bytes, media_type: str) -> str:
        """PUT a manifest under a tag or its digest; return the digest, checked against the registry's."""
        response = self._client.put(
            f"{self.registry_url}/v2/{repository}/manifests/{reference}",
            content=manifest,
            headers={**self._headers(repository), "Content-Type": media_type},
        )
        _expect(response, 201, f"manifest {repository}:{reference}")
        digest = sha256_digest(manifest)
        if response.headers.get("Docker-Content-Digest") != digest:
            raise PushError(f"registry says {response.headers.get('Docker-Content-Digest')}, we computed {digest}")
        return digest

    def _headers(self, repository: str) -> dict[str, str]:
        if repository not in self._auth:
            self._auth[repository] = self._authorize(repository)
        return self._auth[repository]

    def _authorize(self, repository: str) -> dict[str, str]:
        probe = self._client.get(f"{self.registry_url}/v2/")
        if probe.status_code == 200:
            return {}
        _expect(probe, 401, "GET /v2/")
        challenge = Challenge.parse(probe.headers.get("WWW-Authenticate", ""))
        if challenge.scheme.lower() == "basic":
            if self.credentials is None:
                raise PushError("registry wants Basic credentials and the pusher has none")
            return {"Authorization": basic_authorization(*self.credentials)}
        token = fetch_token(self._client, challenge, [f"repository:{repository}:pull,push"], self.credentials)
        return {"Authorization": f"Bearer {token}"}


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _expect(response: httpx.Response, status: int, what: str) -> None:
    if response.status_code != status:
        raise PushError(f"{what}: expected {status}, got {response.status_code}: {response.text[:500]}")


def push_image(
    registry_url: str,
    credentials: tuple[str, str] | None,
    store: BlobStore,
    blobs: list[Descriptor],
    repository: str,
    tag: str,
    manifest: bytes,
    media_type: str,
) -> str:
    """Push an already built image (its blobs are in ``store``) under another registry or repository."""
    with Pusher(registry_url, store, credentials) as pusher:
        for blob in blobs:
            pusher.push_blob(repository, blob)
        return pusher.push_manifest(repository, tag, manifest, media_type)
