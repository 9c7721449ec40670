"""Blob calls of ``AnnotationClient``: content-addressed uploads, verified downloads.

``BlobCalls`` is a mixin of ``simulacra_client.annotation.AnnotationClient``
(which supplies ``_call`` and ``stub``); use it through that class.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import grpc

from simulacra_client.annotation_types import (
    FIND_MISSING_LIMIT,
    BlobSource,
    ProgressCallback,
    ProgressEvent,
    _notify,
    _read_chunks,
    check_relative_path,
    sha256_of,
)
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as rpc
from simulacra_client.errors import SimulacraRpcError, from_rpc_error


class BlobCalls:
    """FindMissingBlobs, UploadBlobs and ReadBlob, and manifest downloads built on them."""

    stub: Any
    _call: Callable[..., Any]

    def find_missing_blobs(self, digests: Sequence[str]) -> list[str]:
        missing: list[str] = []
        for start in range(0, len(digests), FIND_MISSING_LIMIT):
            chunk = list(digests[start : start + FIND_MISSING_LIMIT])
            missing.extend(self._call("FindMissingBlobs", rpc.FindMissingBlobsRequest(sha256s=chunk)).missing_sha256s)
        return missing

    def upload_blobs(self, sources: Sequence[BlobSource], *, progress: ProgressCallback | None = None) -> list[str]:
        """Store files or bytes as blobs; returns their sha256 in order.

        Blobs the server already has are not sent again (``FindMissingBlobs``).
        """
        hashed: list[tuple[str, int]] = []
        for index, source in enumerate(sources):
            hashed.append(sha256_of(source))
            _notify(progress, ProgressEvent("hashing", index + 1, len(sources), "files"))
        digests = [digest for digest, _ in hashed]
        missing = set(self.find_missing_blobs(sorted(set(digests))))
        todo: dict[str, tuple[BlobSource, int]] = {}
        for source, (digest, size) in zip(sources, hashed):
            if digest in missing and digest not in todo:
                todo[digest] = (source, size)
        total = sum(size for _, size in todo.values())
        _notify(progress, ProgressEvent("uploading", 0, total, "bytes", f"{len(todo)} of {len(set(digests))} files to send"))
        if todo:
            sent = [0]

            def chunks() -> Iterator[rpc.UploadBlobsRequest]:
                for digest, (source, size) in todo.items():
                    for offset, data in _read_chunks(source, size):
                        yield rpc.UploadBlobsRequest(sha256=digest, size_bytes=size, offset=offset, data=data)
                        sent[0] += len(data)
                        _notify(progress, ProgressEvent("uploading", sent[0], total, "bytes"))

            try:
                self.stub.UploadBlobs(chunks(), timeout=None)
            except grpc.RpcError as error:
                raise from_rpc_error(error) from None
        return digests

    def read_blob(self, sha256: str, *, offset: int = 0, limit: int = 0) -> Iterator[bytes]:
        """The bytes of a blob in chunks (no verification: see ``download_blob``)."""
        try:
            for response in self.stub.ReadBlob(rpc.ReadBlobRequest(sha256=sha256, offset=offset, limit=limit)):
                yield response.data
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def download_blob(self, sha256: str, destination: str | os.PathLike[str], *, progress: Callable[[int], None] | None = None) -> int:
        """Write a blob to ``destination`` atomically, verifying its sha256; returns its size.

        A file already there with the right content is kept as it is.
        """
        target = Path(destination)
        if target.is_file() and sha256_of(target)[0] == sha256:
            size = target.stat().st_size
            if progress:
                progress(size)
            return size
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(handle, "wb") as file:
                for data in self.read_blob(sha256):
                    file.write(data)
                    digest.update(data)
                    size += len(data)
                    if progress:
                        progress(len(data))
            if digest.hexdigest() != sha256:
                raise SimulacraRpcError(
                    grpc.StatusCode.DATA_LOSS,
                    f"downloaded bytes of blob {sha256} hash to {digest.hexdigest()}",
                    "CHECKSUM_MISMATCH",
                    "",
                    {"sha256": sha256, "actual": digest.hexdigest()},
                )
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return size

    def download_files(self, files: Sequence[pb.ManifestFile], out_dir: str | os.PathLike[str], *, progress: ProgressCallback | None = None) -> None:
        """Download manifest files under ``out_dir``, each verified; paths that would leave ``out_dir`` are refused."""
        root = Path(out_dir)
        targets = [root.joinpath(*PurePosixPath(check_relative_path(f.path)).parts) for f in files]
        total = sum(f.size_bytes for f in files)
        done = [0]

        def advance(count: int) -> None:
            done[0] += count
            _notify(progress, ProgressEvent("downloading", done[0], total, "bytes"))

        _notify(progress, ProgressEvent("downloading", 0, total, "bytes", f"{len(files)} files"))
        for file, target in zip(files, targets):
            self.download_blob(file.sha256, target, progress=advance)
