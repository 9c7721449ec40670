"""The object-storage interface every backend implements, and what it returns.

Calls are synchronous (the backends do blocking I/O); async services call
them through ``asyncio.to_thread``. Every object carries the SHA-256 of its
bytes, stored by the backend beside the data and checked on every read, so
that silent corruption surfaces as ``DataLoss`` instead of bad training data.
"""

from __future__ import annotations

import abc
import datetime
import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from simulacra_services.core import errors
from simulacra_services.core.storage.keys import validate_key, validate_prefix

DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_CONTENT_TYPE_CHARS = 255
CHUNK_SIZE = 1024 * 1024
"""Bytes read or written at a time when streaming."""


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one object."""

    key: str
    size: int
    sha256: str
    """Hex SHA-256 of the object's bytes."""
    content_type: str
    modified: datetime.datetime
    """Time of the last write, in UTC."""


class ObjectStore(abc.ABC):
    """Keyed blobs with checksums; see ``LocalObjectStore`` and ``S3ObjectStore``.

    Writes are atomic: an object is either there whole (with its checksum) or
    not at all, and a write that fails leaves nothing behind. Writing to an
    existing key replaces the object.
    """

    #: Whether reading many objects from several threads is faster than one after another:
    #: true where a read waits on the network (S3 round trips overlap), false for local files,
    #: which one thread reads faster than thread hand-offs cost.
    prefers_parallel_reads: bool = False

    def put_stream(self, key: str, fileobj: BinaryIO, *, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        """Store everything ``fileobj.read()`` returns until EOF, without holding it all in memory.

        An exception raised by ``fileobj`` propagates unchanged and leaves no object.
        """
        validate_key(key)
        validate_content_type(content_type)
        return self._write(key, fileobj, content_type)

    @abc.abstractmethod
    def _write(self, key: str, fileobj: BinaryIO, content_type: str) -> ObjectInfo:
        """``put_stream`` of a valid key and content type: the backend's own write (``copy_hashing`` gives the checksum)."""

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Yield the object's bytes in chunks of at most ``chunk_size``.

        The checksum is verified when the last chunk has been read: a mismatch
        raises ``DataLoss("CHECKSUM_MISMATCH")`` then, so a consumer must not
        act on the data before the iterator is exhausted.
        """
        validate_key(key)
        check_chunk_size(chunk_size)
        chunks, sha256 = self._read(key, chunk_size)
        return verified(key, chunks, sha256)

    @abc.abstractmethod
    def _read(self, key: str, chunk_size: int) -> tuple[Iterator[bytes], str]:
        """The object's chunks and the SHA-256 stored with it; ``NotFound`` is raised by this call, not later."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Describe an object without reading it; ``NotFound`` if absent."""

    @abc.abstractmethod
    def _list_level(self, level_prefix: str) -> Iterable[tuple[str, bool]]:
        """One level of the key hierarchy: every key that starts with ``level_prefix`` and has
        no '/' after it, as ``(key, False)``, and every deeper key cut after its next '/', as
        ``(key_prefix, True)`` (once each). ``level_prefix`` is '' or ends with '/', except
        at the first level of a listing, where it is the caller's prefix. Any order."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; ``NotFound`` if absent."""

    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""

    # ---- built on the primitives above ----------------------------------------
    def list(self, prefix: str = "", *, start_after: str = "", limit: int | None = None) -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix`` and sorts after ``start_after``, in key order
        (by UTF-8 bytes, as S3 specifies), at most ``limit`` of them.

        To page, pass the last key of one page as ``start_after`` of the next.
        The store walks the hierarchy level by level and sorts each level itself,
        because some S3 services (SeaweedFS) list depth-first by directory and
        would put 'a/b' before 'a-c'. One level's keys are held in memory at a time.
        """
        validate_prefix(prefix)
        if not isinstance(start_after, str):
            raise errors.InvalidArgument("INVALID_START_AFTER", "start_after must be a string", {"start_after": repr(start_after)})
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise errors.InvalidArgument("INVALID_LIST_LIMIT", "limit must be None or an integer >= 0", {"limit": repr(limit)})
        return self._list(prefix, start_after, limit)

    def _list(self, prefix: str, start_after: str, limit: int | None) -> Iterator[ObjectInfo]:
        count = 0
        for key in self._keys_in_order(prefix, start_after):
            if limit is not None and count >= limit:
                return
            try:
                info = self.head(key)
            except errors.NotFound:
                continue  # deleted while we listed
            yield info
            count += 1

    def _keys_in_order(self, level_prefix: str, start_after: str) -> Iterator[str]:
        # A key inside a subtree 'd/' always sorts after the string 'd/' itself, and
        # before or after any sibling exactly as 'd/' does; so sorting one level's keys
        # and subtree prefixes together, and descending into each subtree in turn,
        # yields every key in order.
        for entry, is_subtree in sorted(self._list_level(level_prefix)):
            if not is_subtree:
                if entry > start_after:
                    yield entry
            elif start_after < entry or start_after.startswith(entry):
                # otherwise start_after sorts after the whole subtree
                yield from self._keys_in_order(entry, start_after)

    # ---- conveniences ---------------------------------------------------------
    def list_children(self, prefix: str) -> list[str]:
        """The names directly below ``prefix`` (which ends with '/') that hold objects deeper down,
        sorted: ``list_children("models/")`` is ``["a", "b"]`` for keys ``models/a/x`` and ``models/b/y``.
        One listing of one level, however many objects lie below."""
        validate_prefix(prefix)
        if not prefix.endswith("/"):
            raise errors.InvalidArgument("INVALID_OBJECT_PREFIX", "list_children needs a prefix that ends with '/'", {"prefix": errors.shown(prefix)})
        return sorted(entry[len(prefix) : -1] for entry, is_subtree in self._list_level(prefix) if is_subtree)

    def put(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        """Store ``data`` under ``key``, replacing any object there."""
        return self.put_stream(key, io.BytesIO(data), content_type=content_type)

    def get(self, key: str) -> bytes:
        """The whole object, checksum verified; ``NotFound`` if absent."""
        return b"".join(self.iter_chunks(key))

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except errors.NotFound:
            return False
        return True

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def validate_content_type(content_type: str) -> str:
    """A content type is stored in HTTP headers and file headers: printable ASCII, bounded."""
    if (
        not isinstance(content_type, str)
        or not content_type
        or len(content_type) > MAX_CONTENT_TYPE_CHARS
        or not all(0x20 <= ord(c) < 0x7F for c in content_type)
    ):
        raise errors.InvalidArgument(
            "INVALID_CONTENT_TYPE",
            f"a content type must be 1 to {MAX_CONTENT_TYPE_CHARS} printable ASCII characters, such as 'image/png'",
            {"content_type": repr(content_type)[:300]},
        )
    return content_type


def checksum_mismatch(key: str, expected: str, actual: str) -> errors.SimulacraError:
    return errors.DataLoss(
        "CHECKSUM_MISMATCH",
        f"object {key!r} is corrupt: its bytes do not match the SHA-256 stored with it",
        {"key": key, "expected": expected, "actual": actual},
    )


def object_not_found(key: str) -> errors.SimulacraError:
    return errors.NotFound("OBJECT_NOT_FOUND", f"no object with key {key!r}", {"key": key})


def verified(key: str, chunks: Iterator[bytes], expected_sha256: str) -> Iterator[bytes]:
    """Pass ``chunks`` through, then raise CHECKSUM_MISMATCH if they do not hash to ``expected_sha256``."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
        yield chunk
    if digest.hexdigest() != expected_sha256:
        raise checksum_mismatch(key, expected_sha256, digest.hexdigest())


def copy_hashing(source: BinaryIO, sink: BinaryIO) -> str:
    """Copy ``source`` to ``sink`` ``CHUNK_SIZE`` bytes at a time; the SHA-256 (hex) of what was copied."""
    digest = hashlib.sha256()
    while chunk := source.read(CHUNK_SIZE):
        digest.update(chunk)
        sink.write(chunk)
    return digest.hexdigest()


def check_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise errors.InvalidArgument("INVALID_CHUNK_SIZE", "chunk_size must be a positive integer", {"chunk_size": repr(chunk_size)})
