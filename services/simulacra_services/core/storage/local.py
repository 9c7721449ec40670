"""Object storage in a local directory: the embedded default.

Layout: key ``a/b/c.png`` lives in file ``ROOT/a/b/c.png.simulacra-object``.
The suffix keeps object files apart from directories, so that keys ``a`` and
``a/b`` can coexist as they can in S3.

Each file starts with a fixed-size header (magic line, then JSON with the
SHA-256 and content type, padded with spaces to HEADER_SIZE bytes), followed
by the object's bytes. Keeping the checksum inside the same file as the data
means one ``os.replace`` publishes both at once: a reader never sees data
without its checksum, nor a checksum of other data. A write goes to a
temporary file in the target directory (same file system, so the rename is
atomic), the header is filled in once the data is written and hashed, then
the file is fsynced and renamed over the key.

Empty directories are left in place after a delete: removing them would race
with a writer that has just created one.

A writer holds an exclusive ``flock`` on its temporary file until the rename.
A process killed mid-write (kill -9, power loss) leaves its temporary file
behind, unlocked: opening the store sweeps those away (``sweep_temporary_files``).
A temporary file someone still holds a lock on belongs to a live writer, maybe
of another process sharing the directory, and stays.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, sweep by age only
    fcntl = None  # type: ignore[assignment]

from simulacra_services.core import errors
from simulacra_services.core.storage.base import ObjectInfo, ObjectStore, copy_hashing, object_not_found
from simulacra_services.core.storage.keys import OBJECT_SUFFIX, TEMP_PREFIX, is_valid_key, validate_key

HEADER_SIZE = 1024
MAGIC = b"SIMULACRA-OBJECT 1\n"
SWEEP_GRACE_SECONDS = 5.0
"""A temporary file younger than this is never swept: its writer may not have locked it yet."""
UNLOCKED_SWEEP_AGE_SECONDS = 24 * 3600.0
"""Without advisory locks (Windows), only temporary files this old are swept."""


class LocalObjectStore(ObjectStore):
    """Objects as files under ``root`` (created if missing)."""

    def __init__(self, root: Path, *, sweep: bool = True, sweep_grace_seconds: float = SWEEP_GRACE_SECONDS) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.swept = self.sweep_temporary_files(sweep_grace_seconds) if sweep else 0

    def sweep_temporary_files(self, grace_seconds: float = SWEEP_GRACE_SECONDS) -> int:
        """Remove temporary files of writers that died; how many were removed (see the module doc)."""
        removed = 0
        now = time.time()
        for directory, _, files in os.walk(self.root):
            for name in files:
                if name.startswith(TEMP_PREFIX) and _abandoned(os.path.join(directory, name), now, grace_seconds):
                    removed += 1
        return removed

    def __repr__(self) -> str:
        return f"LocalObjectStore({str(self.root)!r})"

    def _write(self, key: str, fileobj: BinaryIO, content_type: str) -> ObjectInfo:
        path = self._valid_path(key)  # the base validated the key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)  # "a live writer": released by the kernel if this process dies
            with os.fdopen(fd, "r+b") as file:
                file.seek(HEADER_SIZE)  # the header needs the checksum, known only at the end
                sha256 = copy_hashing(fileobj, file)
                file.seek(0)
                file.write(_encode_header(sha256, content_type))
                file.flush()
                os.fsync(file.fileno())
                file.seek(0)
                info = _info(key, file)  # from this file: another writer may replace the key at once
            os.replace(temp_name, path)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(temp_name)
            raise
        _fsync_directory(path.parent)  # makes the rename itself durable
        return info

    def _read(self, key: str, chunk_size: int) -> tuple[Iterator[bytes], str]:
        path = self._valid_path(key)  # the base validated the key
        file = self._open(key, path)  # opened now, so that NotFound is raised by this call
        try:
            sha256, _ = _read_header(key, file)
        except BaseException:
            file.close()
            raise
        return _read_chunks(file, chunk_size), sha256

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        with self._open(key, path) as file:
            return _info(key, file)

    def _list_level(self, level_prefix: str) -> Iterator[tuple[str, bool]]:
        directory, _, partial = level_prefix.rpartition("/")
        path = self.root.joinpath(*directory.split("/")) if directory else self.root
        key_prefix = directory + "/" if directory else ""
        try:
            with os.scandir(path) as scan:
                entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in scan]
        except (FileNotFoundError, NotADirectoryError):
            return
        for name, is_directory in entries:
            if not name.startswith(partial):
                continue
            # Anything that no valid key names (temporary files above all) is no object.
            if is_directory and is_valid_key(key_prefix + name):
                yield key_prefix + name + "/", True
            elif name.endswith(OBJECT_SUFFIX) and is_valid_key(key := key_prefix + name[: -len(OBJECT_SUFFIX)]):
                yield key, False

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            raise object_not_found(key) from None

    # ---- helpers ------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self._valid_path(validate_key(key))

    def _valid_path(self, key: str) -> Path:
        # A valid key has no '', '.' or '..' segments, so the path stays under root.
        return self.root / (key + OBJECT_SUFFIX)

    @staticmethod
    def _open(key: str, path: Path) -> BinaryIO:
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise object_not_found(key) from None


def _abandoned(path: str, now: float, grace_seconds: float) -> bool:
    """Remove the temporary file at ``path`` when no live writer holds it; whether it was removed."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False  # renamed or removed meanwhile
    try:
        if now - os.fstat(fd).st_mtime < (grace_seconds if fcntl is not None else UNLOCKED_SWEEP_AGE_SECONDS):
            return False
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a live writer holds it
        with suppress(FileNotFoundError):
            os.unlink(path)
            return True
        return False
    finally:
        os.close(fd)


def _encode_header(sha256: str, content_type: str) -> bytes:
    header = MAGIC + json.dumps({"sha256": sha256, "content_type": content_type}).encode("ascii") + b"\n"
    assert len(header) <= HEADER_SIZE, "content types are bounded so that the header fits"
    return header.ljust(HEADER_SIZE, b" ")


def _read_header(key: str, file: BinaryIO) -> tuple[str, str]:
    """(sha256, content_type) from the header; leaves ``file`` at the first data byte."""
    raw = file.read(HEADER_SIZE)
    try:
        if len(raw) != HEADER_SIZE or not raw.startswith(MAGIC):
            raise ValueError("bad magic or short header")
        fields = json.loads(raw[len(MAGIC):])
        return str(fields["sha256"]), str(fields["content_type"])
    except (ValueError, KeyError, TypeError):
        raise errors.DataLoss(
            "OBJECT_HEADER_CORRUPT", f"object {key!r} is corrupt: its header cannot be read", {"key": key}
        ) from None


def _info(key: str, file: BinaryIO) -> ObjectInfo:
    sha256, content_type = _read_header(key, file)
    stat = os.fstat(file.fileno())
    modified = datetime.datetime.fromtimestamp(stat.st_mtime, tz=datetime.timezone.utc)
    return ObjectInfo(key=key, size=stat.st_size - HEADER_SIZE, sha256=sha256, content_type=content_type, modified=modified)


def _read_chunks(file: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    with file:
        while chunk := file.read(chunk_size):
            yield chunk


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
