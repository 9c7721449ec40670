"""core/api/blobs.py: chunked uploads (offsets, size limit, sha256 check, spooling past 8 MiB,
blobs already stored) and ranged reads, on a real local object store."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from simulacra_services.core import errors
from simulacra_services.core.api import blobs as blob_api
from simulacra_services.core.storage import LocalObjectStore
from simulacra_services.core.storage.blobs import BlobStore, blob_key


@dataclasses.dataclass
class Chunk:
    sha256: str = ""
    size_bytes: int = 0
    offset: int = 0
    data: bytes = b""


def chunks_of(data: bytes, size: int = 1000, sha256: str | None = None) -> list[Chunk]:
    digest = hashlib.sha256(data).hexdigest() if sha256 is None else sha256
    pieces = [Chunk(digest, len(data), offset, data[offset : offset + size]) for offset in range(0, len(data), size)]
    return pieces or [Chunk(digest, 0, 0, b"")]


async def _stream(chunks: Iterable[Chunk]) -> AsyncIterator[Chunk]:
    for chunk in chunks:
        yield chunk


def receive(blobs: BlobStore, chunks: Iterable[Chunk], **kwargs: int) -> list[tuple[str, int]]:
    return asyncio.run(blob_api.receive_blobs(_stream(chunks), blobs, **kwargs))


def read(blobs: BlobStore, sha256: str, offset: int = 0, limit: int = 0, chunk_bytes: int = 1000) -> list[tuple[int, bytes, int]]:
    async def collect() -> list[tuple[int, bytes, int]]:
        return [piece async for piece in blob_api.read_blob(blobs, sha256, offset, limit, chunk_bytes=chunk_bytes)]

    return asyncio.run(collect())


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(LocalObjectStore(tmp_path / "objects"))


def test_blobs_of_one_stream_are_stored_in_order_and_read_back_by_range(blobs: BlobStore) -> None:
    first, second, empty = bytes(range(256)) * 40, b"second blob", b""
    stream = chunks_of(first, 999) + chunks_of(second) + chunks_of(empty)
    done = receive(blobs, stream, chunk_bytes=1000)
    assert done == [(hashlib.sha256(b).hexdigest(), len(b)) for b in (first, second, empty)]
    sha = done[0][0]
    assert blobs.read(sha) == first
    pieces = read(blobs, sha, offset=1500, limit=2100)
    assert b"".join(p[1] for p in pieces) == first[1500:3600]
    assert [p[0] for p in pieces] == [1500, 2500, 3500] and {p[2] for p in pieces} == {len(first)}
    assert read(blobs, sha, offset=len(first)) == [(len(first), b"", len(first))]
    assert asyncio.run(blob_api.find_missing(blobs, [sha, "0" * 64])) == ["0" * 64]


def test_a_blob_larger_than_the_spool_is_stored_whole(blobs: BlobStore) -> None:
    data = hashlib.sha256(b"seed").digest() * (blob_api.SPOOL_BYTES // 32 + 1000)
    assert receive(blobs, chunks_of(data, 1024 * 1024)) == [(hashlib.sha256(data).hexdigest(), len(data))]
    assert blobs.read(hashlib.sha256(data).hexdigest()) == data


def test_bytes_that_hash_otherwise_are_data_loss_and_nothing_is_stored(blobs: BlobStore) -> None:
    claimed = hashlib.sha256(b"what the client meant").hexdigest()
    with pytest.raises(errors.DataLoss) as caught:
        receive(blobs, chunks_of(b"what arrived", sha256=claimed))
    assert caught.value.reason == "SHA256_MISMATCH" and caught.value.metadata["actual"] == hashlib.sha256(b"what arrived").hexdigest()
    assert not blobs.objects.exists(blob_key(claimed))


def test_a_blob_already_stored_is_not_written_again(blobs: BlobStore) -> None:
    sha = blobs.put(b"kept")
    before = blobs.objects.head(blob_key(sha))
    assert receive(blobs, chunks_of(b"kept")) == [(sha, 4)]
    assert blobs.objects.head(blob_key(sha)) == before


@pytest.mark.parametrize(
    ("chunks", "reason"),
    [
        ([Chunk("a" * 64, 10, 5, b"x")], "INVALID_CHUNK"),  # first chunk not at 0
        ([Chunk("A" * 64, 1, 0, b"x")], "INVALID_SHA256"),
        ([Chunk("a" * 64, 2001, 0, b"")], "BLOB_TOO_LARGE"),
        ([Chunk("a" * 64, -1, 0, b"")], "BLOB_TOO_LARGE"),
        ([Chunk("a" * 64, 10, 0, b"12345"), Chunk("a" * 64, 10, 4, b"67890")], "INVALID_CHUNK"),  # gap/overlap
        ([Chunk("a" * 64, 10, 0, b"12345"), Chunk("b" * 64, 10, 5, b"67890")], "INVALID_CHUNK"),  # another blob mid-way
        ([Chunk("a" * 64, 4, 0, b"12345")], "INVALID_CHUNK"),  # past size_bytes
        ([Chunk("a" * 64, 2000, 0, b"x" * 1001)], "INVALID_CHUNK"),  # chunk too large
        ([Chunk("a" * 64, 10, 0, b"12345")], "INCOMPLETE_BLOB"),
    ],
)
def test_malformed_uploads_are_invalid_argument(blobs: BlobStore, chunks: list[Chunk], reason: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        receive(blobs, chunks, max_blob_bytes=2000, chunk_bytes=1000)
    assert caught.value.reason == reason
    assert list(blobs.objects.list("blobs/")) == []


def test_bad_reads_have_precise_reasons(blobs: BlobStore) -> None:
    sha = blobs.put(b"0123456789")
    for kwargs, error, reason in [
        ({"offset": -1}, errors.InvalidArgument, "INVALID_RANGE"),
        ({"limit": -1}, errors.InvalidArgument, "INVALID_RANGE"),
        ({"offset": 11}, errors.OutOfRange, "OFFSET_BEYOND_END"),
    ]:
        with pytest.raises(error) as caught:
            read(blobs, sha, **kwargs)
        assert caught.value.reason == reason
    with pytest.raises(errors.NotFound) as missing:
        read(blobs, "f" * 64)
    assert missing.value.reason == "BLOB_NOT_FOUND"
    with pytest.raises(errors.InvalidArgument) as too_many:
        asyncio.run(blob_api.find_missing(blobs, ["0" * 64] * 3, limit=2))
    assert too_many.value.reason == "TOO_MANY_BLOBS"
