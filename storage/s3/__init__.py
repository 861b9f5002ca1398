"""The S3 backend: blobs and fill leases in an S3-compatible bucket (layout: :mod:`storage.s3.layout`)."""

from __future__ import annotations

from storage.s3.blobs import S3BlobReader, S3BlobStore, S3BlobWriter, S3ForeignFill
from storage.s3.objects import S3Settings

__all__ = ["S3BlobReader", "S3BlobStore", "S3BlobWriter", "S3ForeignFill", "S3Settings"]
