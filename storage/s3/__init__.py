"""The S3 backend: blobs, fill leases, the repository index and fetch locks in an S3-compatible bucket (layout:
:mod:`storage.s3.layout`)."""

from __future__ import annotations

from storage.s3.blobs import S3BlobReader, S3BlobStore, S3BlobWriter, S3ForeignFill
from storage.s3.index import S3RepositoryIndex
from storage.s3.locks import S3FetchLocks
from storage.s3.objects import ObjectClient, S3Settings

__all__ = [
    "ObjectClient",
    "S3BlobReader",
    "S3BlobStore",
    "S3BlobWriter",
    "S3FetchLocks",
    "S3ForeignFill",
    "S3RepositoryIndex",
    "S3Settings",
]
