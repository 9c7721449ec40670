"""Content-addressed blobs on an ``ObjectStore``: the same bytes are stored once, at
``blobs/sha256/<first two hex>/<hex>``, whoever uploads them and however often.

Writes are idempotent (a blob already there is not written again). The gRPC
side (chunked uploads, ranged reads) is ``core.api.blobs``.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from simulacra_services.core import errors
from simulacra_services.core.storage.base import ObjectStore

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
MAX_BLOB_BYTES = 1024 * 1024 * 1024
"""The largest blob an upload may announce."""
READ_CHUNK_BYTES = 1024 * 1024
"""Chunks of uploads and reads."""


def check_sha256(value: str, field: str = "sha256") -> str:
    if not SHA256_HEX.fullmatch(value):
        raise errors.InvalidArgument(
            "INVALID_SHA256",
            f"{field}: {errors.shown(value, 80)!r} is not a lower-case hex sha256 (64 characters of 0-9 a-f)",
            {"field": field},
        )
    return value


def blob_key(sha256: str) -> str:
    check_sha256(sha256)
    return f"blobs/sha256/{sha256[:2]}/{sha256}"


def _not_found(sha256: str, field: str) -> errors.SimulacraError:
    return errors.NotFound(
        "BLOB_NOT_FOUND",
        f"{field}: no blob with sha256 {sha256}; upload it with UploadBlobs first",
        {"field": field, "sha256": sha256},
    )


class BlobStore:
    """Content-addressed bytes on an ``ObjectStore``. Synchronous: call through ``asyncio.to_thread``."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    def put(self, data: bytes) -> str:
        """Store ``data`` (once) and return its sha256."""
        sha256 = hashlib.sha256(data).hexdigest()
        key = blob_key(sha256)
        if not self.objects.exists(key):
            self.objects.put(key, data)
        return sha256

    def put_file(self, fileobj: BinaryIO, sha256: str, field: str = "sha256") -> int:
        """Store a file whose content must hash to ``sha256`` (DATA_LOSS otherwise); its size."""
        key = blob_key(check_sha256(sha256, field))
        if self.objects.exists(key):
            fileobj.seek(0, io.SEEK_END)
            return fileobj.tell()
        digest = hashlib.sha256()
        fileobj.seek(0)
        for chunk in iter(lambda: fileobj.read(READ_CHUNK_BYTES), b""):
            digest.update(chunk)
        if digest.hexdigest() != sha256:
            raise errors.DataLoss(
                "SHA256_MISMATCH",
                f"{field}: the uploaded bytes hash to {digest.hexdigest()}, not to the announced {sha256}",
                {"field": field, "expected": sha256, "actual": digest.hexdigest()},
            )
        fileobj.seek(0)
        return self.objects.put_stream(key, fileobj).size

    def exists(self, sha256: str) -> bool:
        return self.objects.exists(blob_key(sha256))

    def missing(self, sha256s: Iterable[str]) -> list[str]:
        return [sha256 for sha256 in sha256s if not self.exists(sha256)]

    def size(self, sha256: str, field: str = "sha256") -> int:
        try:
            return self.objects.head(blob_key(sha256)).size
        except errors.NotFound:
            raise _not_found(sha256, field) from None

    def read(self, sha256: str, field: str = "sha256") -> bytes:
        try:
            return self.objects.get(blob_key(sha256))
        except errors.NotFound:
            raise _not_found(sha256, field) from None

    def iter_chunks(self, sha256: str, offset: int = 0, limit: int = 0, chunk_size: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
        """Bytes ``[offset, offset + limit)`` (``limit`` 0: to the end) in chunks of at most ``chunk_size``.

        The store verifies the whole blob's checksum once it is read to the end,
        so the blob is always read to its end, also when ``limit`` stops early.
        """
        end = None if limit <= 0 else offset + limit
        position = 0
        buffer = b""
        try:
            chunks = self.objects.iter_chunks(blob_key(sha256), chunk_size)
            for chunk in chunks:
                start, stop = position, position + len(chunk)
                position = stop
                lo = max(offset, start) - start
                hi = (min(stop, end) if end is not None else stop) - start
                if hi > lo:
                    buffer += chunk[lo:hi]
                    while len(buffer) >= chunk_size:
                        yield buffer[:chunk_size]
                        buffer = buffer[chunk_size:]
        except errors.NotFound:
            raise _not_found(sha256, "sha256") from None
        if buffer:
            yield buffer
