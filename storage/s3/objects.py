"""The few S3 requests the backend makes, over aiobotocore; the only module that imports it.

Every call names keys relative to the bucket (the caller adds the prefix). Answers that are not errors for the
cache come back as values: a missing object is None, a failed precondition is :class:`PreconditionFailed`; every
other failure (the endpoint unreachable, denied, a 5xx after botocore's retries) is a :class:`StorageError`,
so the proxy relays uncached as it does when a disk fails. Credentials are given explicitly and the instance
metadata service is never asked (``AWS_EC2_METADATA_DISABLED`` is set for botocore's credential chain, which
explicit keys make unused anyway).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from storage.interfaces import StorageError

__all__ = [
    "ObjectClient",
    "check_bucket",
    "ObjectInfo",
    "ObjectStream",
    "PreconditionFailed",
    "S3Settings",
    "Upload",
    "UploadedPart",
]

_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}
_PRECONDITION = {"412", "PreconditionFailed", "ConditionalRequestConflict"}


class PreconditionFailed(Exception):
    """An ``If-Match`` / ``If-None-Match`` did not hold: someone else wrote (or removed) the object first."""


@dataclass(frozen=True)
class S3Settings:
    endpoint: str
    bucket: str
    region: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    size: int
    etag: str
    modified: datetime  # the server's clock, second resolution
    server_now: datetime | None  # the answer's Date header: the server's clock when it answered


@dataclass(frozen=True, slots=True)
class Upload:
    key: str
    upload_id: str
    initiated: datetime


@dataclass(frozen=True, slots=True)
class UploadedPart:
    number: int
    etag: str


class ObjectStream:
    """The body of a GET, read in pieces; must be closed."""

    def __init__(self, body: Any, size: int) -> None:
        self._body = body
        self.size = size  # bytes in this answer (the range asked for, or the whole object)

    async def read(self, length: int) -> bytes:
        """Exactly ``length`` bytes, fewer only at the end of the answer."""
        pieces: list[bytes] = []
        missing = length
        try:
            while missing > 0:
                piece = await self._body.read(missing)
                if not piece:
                    break
                pieces.append(piece)
                missing -= len(piece)
        except Exception as exc:
            raise StorageError(f"reading from the bucket failed: {exc}") from exc
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def close(self) -> None:
        self._body.close()


class ObjectClient:
    """One aiobotocore client (its own connection pool) for one bucket; an async context manager."""

    def __init__(self, settings: S3Settings, *, max_connections: int = 64) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self._max_connections = max_connections
        self._stack = AsyncExitStack()
        self._client: Any = None

    async def __aenter__(self) -> ObjectClient:
        # Imported here: botocore takes a third of a second to import, which only an S3 cache should pay.
        from aiobotocore.session import get_session
        from botocore.config import Config

        os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
        session = get_session()
        config = Config(
            s3={"addressing_style": "path"},
            max_pool_connections=self._max_connections,
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            # Checksums only where S3 requires them: some S3-compatible stores reject the trailing ones.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client = await self._stack.enter_async_context(
            session.create_client(
                "s3",
                endpoint_url=self.settings.endpoint,
                region_name=self.settings.region,
                aws_access_key_id=self.settings.access_key,
                aws_secret_access_key=self.settings.secret_key,
                config=config,
            )
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def ensure_bucket(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
            return
        except Exception as exc:
            if _code(exc) not in _NOT_FOUND and _code(exc) != "NoSuchBucket":
                raise _storage_error(f"cannot reach bucket {self.bucket}", exc) from exc
        try:
            await self._client.create_bucket(Bucket=self.bucket)
        except Exception as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise _storage_error(f"cannot create bucket {self.bucket}", exc) from exc

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            answer = await self._client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            raise _storage_error(f"cannot look up {key}", exc) from exc
        return _info(answer)

    async def get(self, key: str) -> tuple[bytes, ObjectInfo] | None:
        """A small object whole, with what HEAD would say of it; None if it does not exist."""
        try:
            answer = await self._client.get_object(Bucket=self.bucket, Key=key)
            async with answer["Body"] as body:
                data: bytes = await body.read()
        except Exception as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            raise _storage_error(f"cannot read {key}", exc) from exc
        return data, _info(answer)

    async def open(self, key: str, offset: int = 0) -> ObjectStream | None:
        """A stream of the object from ``offset``; None if it does not exist."""
        extra = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            answer = await self._client.get_object(Bucket=self.bucket, Key=key, **extra)
        except Exception as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            if _code(exc) in ("416", "InvalidRange"):
                return ObjectStream(_EmptyBody(), 0)
            raise _storage_error(f"cannot read {key}", exc) from exc
        return ObjectStream(answer["Body"], int(answer["ContentLength"]))

    async def put(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        """Write ``data`` whole; the new ETag. ``if_none_match``: only if absent; ``if_match``: only over that
        version. Raises PreconditionFailed when the condition does not hold."""
        extra: dict[str, str] = {}
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        if if_match is not None:
            extra["IfMatch"] = if_match
        try:
            answer = await self._client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)
        except Exception as exc:
            if _code(exc) in _PRECONDITION or (if_match is not None and _code(exc) in _NOT_FOUND):
                raise PreconditionFailed(key) from exc
            raise _storage_error(f"cannot write {key}", exc) from exc
        return str(answer["ETag"])

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Remove ``key`` (absent is fine); with ``if_match`` only that version (else PreconditionFailed)."""
        extra = {"IfMatch": if_match} if if_match is not None else {}
        try:
            await self._client.delete_object(Bucket=self.bucket, Key=key, **extra)
        except Exception as exc:
            if _code(exc) in _NOT_FOUND:
                return
            if _code(exc) in _PRECONDITION:
                raise PreconditionFailed(key) from exc
            raise _storage_error(f"cannot delete {key}", exc) from exc

    async def list_objects(self, prefix: str) -> AsyncIterator[tuple[str, int, datetime]]:
        """(key, size, last modified) of every object under ``prefix``."""
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for entry in page.get("Contents", []):
                    yield entry["Key"], int(entry["Size"]), entry["LastModified"]
        except Exception as exc:
            raise _storage_error(f"cannot list {prefix}", exc) from exc

    async def list_directories(self, prefix: str) -> list[str]:
        """The names one level below ``prefix`` (which ends in ``/``) that have keys under them: the
        "subdirectories" of a delimiter listing, without the prefix or the trailing ``/``."""
        found: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                for entry in page.get("CommonPrefixes", []):
                    found.append(str(entry["Prefix"])[len(prefix) :].rstrip("/"))
        except Exception as exc:
            raise _storage_error(f"cannot list {prefix}", exc) from exc
        return found

    async def start_upload(self, key: str) -> str:
        try:
            answer = await self._client.create_multipart_upload(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise _storage_error(f"cannot start an upload of {key}", exc) from exc
        return str(answer["UploadId"])

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> UploadedPart:
        try:
            answer = await self._client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            )
        except Exception as exc:
            raise _storage_error(f"cannot upload part {number} of {key}", exc) from exc
        return UploadedPart(number, str(answer["ETag"]))

    async def complete_upload(
        self, key: str, upload_id: str, parts: list[UploadedPart], *, if_none_match: bool = False
    ) -> None:
        """Publish the upload under ``key``; PreconditionFailed if ``if_none_match`` and the key exists."""
        extra = {"IfNoneMatch": "*"} if if_none_match else {}
        manifest = {"Parts": [{"PartNumber": part.number, "ETag": part.etag} for part in parts]}
        try:
            await self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload=manifest, **extra
            )
        except Exception as exc:
            if _code(exc) in _PRECONDITION:
                raise PreconditionFailed(key) from exc
            raise _storage_error(f"cannot complete the upload of {key}", exc) from exc

    async def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:
            if _code(exc) in _NOT_FOUND:
                return
            raise _storage_error(f"cannot abort the upload of {key}", exc) from exc

    async def list_uploads(self, prefix: str) -> list[Upload]:
        """Multipart uploads begun under ``prefix`` and neither completed nor aborted."""
        found: list[Upload] = []
        paginator = self._client.get_paginator("list_multipart_uploads")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for entry in page.get("Uploads", []):
                    found.append(Upload(entry["Key"], entry["UploadId"], entry["Initiated"]))
        except Exception as exc:
            raise _storage_error(f"cannot list the uploads under {prefix}", exc) from exc
        return found


async def check_bucket(settings: S3Settings) -> str | None:
    """None if the bucket exists (or could be created) and takes an object; else what is wrong, in a few words."""
    probe = f"{settings.prefix}.probe.{os.urandom(8).hex()}"
    try:
        async with ObjectClient(settings) as client:
            await client.ensure_bucket()
            await client.put(probe, b"\0")
            await client.delete(probe)
    except StorageError as exc:
        return str(exc)
    return None


class _EmptyBody:
    async def read(self, amount: int) -> bytes:
        return b""

    def close(self) -> None:
        pass


def _info(answer: dict[str, Any]) -> ObjectInfo:
    headers = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    date = headers.get("date")
    size = answer.get("ContentLength", 0)
    if "ContentRange" in answer:  # a ranged answer: the whole object's size is after the slash
        size = int(str(answer["ContentRange"]).rpartition("/")[2])
    return ObjectInfo(
        size=int(size),
        etag=str(answer.get("ETag", "")),
        modified=answer["LastModified"],
        server_now=parsedate_to_datetime(date) if date else None,
    )


def _code(exc: Exception) -> str:
    """The S3 error code of a botocore error ("NoSuchKey", "PreconditionFailed"), else its HTTP status ("404")."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    code = str(response.get("Error", {}).get("Code", ""))
    status = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    if code in _NOT_FOUND or code in _PRECONDITION or not code:
        return code or status
    # A code we do not map (such as "NoSuchBucket"): its status says the rest (HEAD answers have no code at all).
    return status if status in ("404", "412") and code not in ("NoSuchBucket",) else code


def _storage_error(what: str, exc: Exception) -> StorageError:
    # botocore's messages name the operation and the server's error; never the credentials.
    return StorageError(f"{what}: {exc}")
