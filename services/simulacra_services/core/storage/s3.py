"""Object storage in an S3 bucket (MinIO, SeaweedFS, AWS), through the ``minio`` client.

The SHA-256 of each object travels as user metadata (``x-amz-meta-sha256``),
set in the same PUT as the data, and is checked against the bytes on every
read. S3 needs that metadata before the first byte is sent, so ``put_stream``
first spools the source to a temporary file (in memory while small) while
hashing it, then uploads. That also makes a source that fails half-way leave
nothing: the upload has not started yet. A single PUT or a completed
multipart upload replaces an object atomically, by S3 semantics.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import BinaryIO

import certifi
import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from simulacra_services.core import errors
from simulacra_services.core.storage.base import DEFAULT_CONTENT_TYPE, ObjectInfo, ObjectStore, copy_hashing, object_not_found, validate_content_type
from simulacra_services.core.storage.keys import is_valid_key, validate_key

SHA256_METADATA = "sha256"
"""User-metadata name; S3 sends it as the header ``x-amz-meta-sha256``."""

PART_SIZE = 5 * 1024 * 1024
"""Multipart part size, S3's minimum: each part is held in memory while it is sent."""

SPOOL_MEMORY_BYTES = 4 * 1024 * 1024
"""A streamed upload larger than this is spooled to a temporary file, not to memory."""

_ACCESS_DENIED = {"AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken"}


class S3ObjectStore(ObjectStore):
    """Objects in one bucket of an S3 service; the bucket is created if missing."""

    prefers_parallel_reads = True

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        region: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        # minio's default pool waits 5 minutes to connect and retries 5 times:
        # an unreachable service must fail fast and say so.
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=10, read=120),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        try:
            self._client = Minio(
                endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region or None, http_client=self._http
            )
        except ValueError as exc:
            raise errors.InvalidArgument(
                "INVALID_S3_ENDPOINT", f"S3 endpoint must be host:port without a scheme: {exc}", {"endpoint": endpoint}
            ) from None
        self._ensure_bucket(region or None)

    def __repr__(self) -> str:
        return f"S3ObjectStore({self.endpoint!r}, bucket={self.bucket!r})"

    def _ensure_bucket(self, region: str | None) -> None:
        try:
            with self._translate_errors():
                if self._client.bucket_exists(self.bucket):
                    return
                try:
                    self._client.make_bucket(self.bucket, location=region)
                except S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):  # lost a creation race
                        raise
        except ValueError as exc:  # minio checks bucket names locally
            raise errors.InvalidArgument("INVALID_BUCKET_NAME", f"invalid S3 bucket name: {exc}", {"bucket": self.bucket}) from None

    # ---- writes -----------------------------------------------------------------
    def put(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        validate_key(key)
        validate_content_type(content_type)
        return self._upload(key, io.BytesIO(data), len(data), hashlib.sha256(data).hexdigest(), content_type)

    def _write(self, key: str, fileobj: BinaryIO, content_type: str) -> ObjectInfo:
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES) as spool:
            sha256 = copy_hashing(fileobj, spool)  # type: ignore[arg-type]
            size = spool.tell()
            spool.seek(0)
            return self._upload(key, spool, size, sha256, content_type)

    def _upload(self, key: str, data: BinaryIO, size: int, sha256: str, content_type: str) -> ObjectInfo:
        with self._translate_errors(key):
            result = self._client.put_object(
                self.bucket, key, data, size, content_type=content_type, metadata={SHA256_METADATA: sha256},
                part_size=PART_SIZE, num_parallel_uploads=1,
            )
            stat = self._client.stat_object(self.bucket, key)
        # Describe what this call wrote even if another writer replaced it since.
        modified = stat.last_modified if stat.etag == result.etag and stat.last_modified else _now()
        return ObjectInfo(key=key, size=size, sha256=sha256, content_type=content_type, modified=modified)

    def delete(self, key: str) -> None:
        self.head(key)  # S3 deletes of absent keys succeed; the contract says NotFound
        with self._translate_errors(key):
            self._client.remove_object(self.bucket, key)

    # ---- reads ------------------------------------------------------------------
    def head(self, key: str) -> ObjectInfo:
        validate_key(key)
        with self._translate_errors(key):
            stat = self._client.stat_object(self.bucket, key)
        return ObjectInfo(
            key=key,
            size=int(stat.size or 0),
            sha256=_stored_sha256(key, stat.metadata or {}),
            content_type=stat.content_type or DEFAULT_CONTENT_TYPE,
            modified=stat.last_modified or _now(),
        )

    def _read(self, key: str, chunk_size: int) -> tuple[Iterator[bytes], str]:
        with self._translate_errors(key):
            response = self._client.get_object(self.bucket, key)
        try:
            # The checksum from this very response: a stat beforehand could describe another version.
            sha256 = _stored_sha256(key, response.headers)
        except BaseException:
            _release(response)
            raise
        return self._stream(key, response, chunk_size), sha256

    def _stream(self, key: str, response: urllib3.BaseHTTPResponse, chunk_size: int) -> Iterator[bytes]:
        try:
            with self._translate_errors(key):
                yield from response.stream(chunk_size)
        finally:
            _release(response)

    def _list_level(self, level_prefix: str) -> Iterator[tuple[str, bool]]:
        with self._translate_errors():
            for entry in self._client.list_objects(self.bucket, prefix=level_prefix or None, recursive=False):
                name = entry.object_name or ""
                if entry.is_dir and name == level_prefix:
                    continue  # SeaweedFS lists an emptied directory as a child of itself
                # Skip what was not written through this interface (such as 'a//b'): no key names it.
                if is_valid_key(name[:-1] if entry.is_dir else name):
                    yield name, bool(entry.is_dir)

    def close(self) -> None:
        self._http.clear()  # the connection pool is the only resource the client holds

    # ---- errors -----------------------------------------------------------------
    @contextmanager
    def _translate_errors(self, key: str | None = None) -> Iterator[None]:
        """S3 and network failures as domain errors that say what to do."""
        try:
            yield
        except S3Error as exc:
            if key is not None and exc.code in ("NoSuchKey", "NoSuchObject"):
                raise object_not_found(key) from None
            meta = {"endpoint": self.endpoint, "bucket": self.bucket, "s3_code": exc.code}
            if exc.code in _ACCESS_DENIED:
                raise errors.Unavailable(
                    "STORAGE_ACCESS_DENIED",
                    f"S3 service at {self.endpoint} refused access to bucket {self.bucket!r} ({exc.code}): "
                    "check the access key and secret key (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
                    meta,
                ) from None
            raise errors.Unavailable(
                "STORAGE_UNAVAILABLE", f"S3 service at {self.endpoint} failed on bucket {self.bucket!r}: {exc.code}: {exc.message}", meta
            ) from None
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise errors.Unavailable(
                "STORAGE_UNAVAILABLE",
                f"cannot reach the S3 service at {self.endpoint} (is it running, and is SIMULACRA_S3_ENDPOINT right?): {exc}",
                {"endpoint": self.endpoint, "bucket": self.bucket},
            ) from None


def _stored_sha256(key: str, headers: Mapping[str, str]) -> str:
    # Header lookup is case-insensitive in urllib3's HTTPHeaderDict; S3 services differ in case.
    sha256 = headers.get(f"x-amz-meta-{SHA256_METADATA}")
    if not sha256:
        raise errors.DataLoss(
            "CHECKSUM_MISSING", f"object {key!r} has no stored SHA-256, so its bytes cannot be verified", {"key": key}
        )
    return sha256


def _release(response: urllib3.BaseHTTPResponse) -> None:
    response.close()
    response.release_conn()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
