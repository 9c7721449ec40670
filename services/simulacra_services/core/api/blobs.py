"""The blob RPCs every service with content-addressed bytes answers the same way.

``receive_blobs`` takes a stream of upload chunks (anything with ``sha256``,
``size_bytes``, ``offset`` and ``data``: a service's ``UploadBlobsRequest``):
each blob's chunks in order, its first one naming the sha256 and size. Offsets
and the size limit are checked, the bytes hashed and spooled (to disk past
8 MiB) in worker threads, and the blob stored once its last byte arrived and
its hash matched (SHA256_MISMATCH, DATA_LOSS, otherwise: nothing stored). A
blob the store has already is received but not written again.

``read_blob`` gives ``(offset, data, size)`` pieces of a byte range, each read
in a worker thread; ``find_missing`` answers FindMissingBlobs. None of it
touches protobuf: the servicer builds its own messages from the results.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from simulacra_services.core import errors
from simulacra_services.core.storage.blobs import MAX_BLOB_BYTES, READ_CHUNK_BYTES, BlobStore, check_sha256

SPOOL_BYTES = 8 * 1024 * 1024
"""Bytes of an upload kept in memory before it spills to a temporary file."""
MAX_FIND_BLOBS = 10_000


class UploadChunk(Protocol):
    sha256: str
    size_bytes: int
    offset: int
    data: bytes


async def find_missing(blobs: BlobStore, sha256s: Sequence[str], *, limit: int = MAX_FIND_BLOBS) -> list[str]:
    """The digests of ``sha256s`` that the store does not hold (TOO_MANY_BLOBS past ``limit``)."""
    if len(sha256s) > limit:
        raise errors.InvalidArgument(
            "TOO_MANY_BLOBS",
            f"sha256s: {len(sha256s)} digests, at most {limit} per request",
            {"field": "sha256s", "limit": limit},
        )
    wanted = [check_sha256(s, f"sha256s[{i}]") for i, s in enumerate(sha256s)]
    return await asyncio.to_thread(blobs.missing, wanted)


async def receive_blobs(
    chunks: AsyncIterator[UploadChunk],
    blobs: BlobStore,
    *,
    max_blob_bytes: int = MAX_BLOB_BYTES,
    chunk_bytes: int = READ_CHUNK_BYTES,
) -> list[tuple[str, int]]:
    """Store every blob of an upload stream; ``[(sha256, size_bytes)]`` in the order they came."""
    done: list[tuple[str, int]] = []
    upload: BlobUpload | None = None
    try:
        async for chunk in chunks:
            if upload is None:
                upload = BlobUpload.start(chunk, len(done), max_blob_bytes=max_blob_bytes, chunk_bytes=chunk_bytes)
                upload.known = await asyncio.to_thread(blobs.exists, upload.sha256)
            await asyncio.to_thread(upload.add, chunk)  # hashing and spooling off the loop
            if upload.complete:
                size = await asyncio.to_thread(upload.finish, blobs)
                done.append((upload.sha256, size))
                upload = None
        if upload is not None:
            raise errors.InvalidArgument(
                "INCOMPLETE_BLOB",
                f"the stream ended after {upload.received} of the {upload.size} bytes of blob {upload.sha256}; "
                "nothing of it was stored: upload it again",
                {"sha256": upload.sha256, "received": upload.received, "size_bytes": upload.size},
            )
    finally:
        if upload is not None:
            upload.close()
    return done


async def read_blob(
    blobs: BlobStore, sha256: str, offset: int = 0, limit: int = 0, *, chunk_bytes: int = READ_CHUNK_BYTES
) -> AsyncIterator[tuple[int, bytes, int]]:
    """``(offset, data, size of the blob)`` pieces of bytes ``[offset, offset + limit)`` (``limit`` 0: to
    the end); one empty piece when the range is empty. INVALID_RANGE, OFFSET_BEYOND_END, BLOB_NOT_FOUND."""
    sha256 = check_sha256(sha256)
    if offset < 0 or limit < 0:
        raise errors.InvalidArgument(
            "INVALID_RANGE", "offset and limit must be >= 0", {"field": "offset" if offset < 0 else "limit"}
        )
    size = await asyncio.to_thread(blobs.size, sha256)
    if offset > size:
        raise errors.OutOfRange(
            "OFFSET_BEYOND_END", f"offset {offset} lies beyond the blob's {size} bytes", {"size_bytes": size, "offset": offset}
        )
    pieces = blobs.iter_chunks(sha256, offset, limit, chunk_bytes)
    sent = False
    try:
        while True:
            data = await asyncio.to_thread(next, pieces, None)
            if data is None:
                break
            yield offset, data, size
            offset += len(data)
            sent = True
    finally:
        pieces.close()
    if not sent:
        yield offset, b"", size


class BlobUpload:
    """One blob arriving in chunks: offsets checked, bytes hashed and spooled, stored when complete.
    Blocking (hashing, file writes): call ``add`` and ``finish`` in a worker thread."""

    def __init__(self, sha256: str, size: int, *, chunk_bytes: int = READ_CHUNK_BYTES) -> None:
        self.sha256 = sha256
        self.size = size
        self.chunk_bytes = chunk_bytes
        self.received = 0
        self.known = False
        self.digest = hashlib.sha256()
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)

    @classmethod
    def start(
        cls, chunk: UploadChunk, index: int, *, max_blob_bytes: int = MAX_BLOB_BYTES, chunk_bytes: int = READ_CHUNK_BYTES
    ) -> BlobUpload:
        field = f"blobs[{index}]"
        if chunk.offset != 0:
            raise errors.InvalidArgument(
                "INVALID_CHUNK", f"{field}: a blob's first chunk has offset 0, got {chunk.offset}", {"field": f"{field}.offset"}
            )
        check_sha256(chunk.sha256, f"{field}.sha256")
        if not 0 <= chunk.size_bytes <= max_blob_bytes:
            raise errors.InvalidArgument(
                "BLOB_TOO_LARGE",
                f"{field}.size_bytes: {chunk.size_bytes}; blobs hold 0 to {max_blob_bytes} bytes",
                {"field": f"{field}.size_bytes", "limit": max_blob_bytes},
            )
        return cls(chunk.sha256, chunk.size_bytes, chunk_bytes=chunk_bytes)

    @property
    def complete(self) -> bool:
        return self.received == self.size

    def add(self, chunk: UploadChunk) -> None:
        if (chunk.sha256 and chunk.sha256 != self.sha256) or chunk.offset != self.received:
            raise errors.InvalidArgument(
                "INVALID_CHUNK",
                f"expected the chunk of blob {self.sha256} at offset {self.received}, "
                f"got {errors.shown(chunk.sha256, 80) or self.sha256} at {chunk.offset}",
                {"sha256": self.sha256, "expected_offset": self.received, "offset": chunk.offset},
            )
        if len(chunk.data) > self.chunk_bytes or self.received + len(chunk.data) > self.size:
            raise errors.InvalidArgument(
                "INVALID_CHUNK",
                f"chunks hold at most {self.chunk_bytes} bytes and may not run past size_bytes {self.size}",
                {"sha256": self.sha256, "limit": self.chunk_bytes},
            )
        self.received += len(chunk.data)
        if not self.known:
            self.digest.update(chunk.data)
            self.file.write(chunk.data)

    def finish(self, blobs: BlobStore) -> int:
        """Store the blob (DATA_LOSS SHA256_MISMATCH when its bytes hash otherwise); its size."""
        try:
            if self.known:
                return self.size
            if self.digest.hexdigest() != self.sha256:
                raise errors.DataLoss(
                    "SHA256_MISMATCH",
                    f"blob {self.sha256}: the uploaded bytes hash to {self.digest.hexdigest()}; nothing was stored",
                    {"sha256": self.sha256, "actual": self.digest.hexdigest()},
                )
            return blobs.put_file(self.file, self.sha256)
        finally:
            self.close()

    def close(self) -> None:
        self.file.close()
