"""The annotation-store SDK's value types and the plumbing both clients share.

Names (``dataset_name``, ``version_name``, ``read_name``), progress events, job
errors, streamed items and their cursors, request builders, blob hashing and
chunking, IDX files of ``import_mnist`` and job outcomes. ``AnnotationClient``
(``simulacra_client.annotation``) and ``AsyncAnnotationClient``
(``simulacra_client.annotation_async``) are written on top of them; every public
name here is importable from ``simulacra_client.annotation`` too.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

import grpc
import numpy as np

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as rpc
from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.errors import SimulacraRpcError

CHUNK_BYTES = 1024 * 1024
"""Blob chunk size: the contract's largest UploadBlobs/ReadBlob chunk."""
FIND_MISSING_LIMIT = 10_000
MAX_BATCH_ITEMS = 256
TERMINAL_STATES = (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED)
_WATCH_RETRIES = 5


@dataclass(frozen=True)
class JobKind:
    """The RPCs of one kind of job (import or export): ``Get{noun}Job``, ``List{noun}Jobs``, ...

    The job methods of the clients are written once, for either kind.
    """

    noun: str  # "Import"
    field: str  # the job's field in responses and its list's field without the "s": "import_job"
    doing: str  # what a failed wait says it was doing: "importing"
    get: type
    listing: type
    cancel: type
    watch: type


IMPORT_JOBS = JobKind(
    "Import", "import_job", "importing",
    rpc.GetImportJobRequest, rpc.ListImportJobsRequest, rpc.CancelImportJobRequest, rpc.WatchImportJobRequest,
)
EXPORT_JOBS = JobKind(
    "Export", "export_job", "exporting",
    rpc.GetExportJobRequest, rpc.ListExportJobsRequest, rpc.CancelExportJobRequest, rpc.WatchExportJobRequest,
)
_DATASET_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")
_VERSION = re.compile(r"[1-9][0-9]{0,18}|latest")
_CODES = {code.value[0]: code for code in grpc.StatusCode}


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------


def dataset_name(dataset: str) -> str:
    """``datasets/NAME`` of ``NAME`` or ``datasets/NAME`` (``NAME@VERSION`` is refused)."""
    name = dataset[len("datasets/") :] if dataset.startswith("datasets/") else dataset
    if not _DATASET_ID.fullmatch(name):
        raise ValueError(f"{dataset!r} is not a dataset name: 1-63 characters of a-z 0-9 -, starting with a letter")
    return f"datasets/{name}"


def version_name(reference: str, *, default: str = "latest") -> str:
    """``datasets/NAME/versions/VERSION`` of ``NAME@VERSION``; plain ``NAME`` means ``NAME@default``."""
    match = re.fullmatch(r"datasets/([^/]+)/versions/([^/]+)", reference)
    name, version = match.groups() if match else (reference.partition("@")[0], reference.partition("@")[2] or default)
    if not _VERSION.fullmatch(version):
        raise ValueError(f"{version!r} is not a version: a number from 1 or 'latest' (write NAME@VERSION)")
    return f"{dataset_name(name)}/versions/{version}"


def read_name(reference: str) -> str:
    """What a read takes: a version for ``NAME@VERSION``, the working state for plain ``NAME``."""
    if "@" in reference or "/versions/" in reference:
        return version_name(reference)
    return dataset_name(reference)


# ---------------------------------------------------------------------------
# Progress and job errors
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgressEvent:
    """What a long call is doing: ``stage`` ("hashing", "uploading", "importing",
    "exporting", "downloading", "items"), ``done`` of ``total`` ``unit`` (0 = unknown)."""

    stage: str
    done: int
    total: int
    unit: str = ""
    message: str = ""


ProgressCallback = Callable[[ProgressEvent], None]


# ---------------------------------------------------------------------------
# Streamed items and their cursors
# ---------------------------------------------------------------------------

MAX_STREAM_SKIP = 1000
"""The most items a StreamItems response carries, hence the largest skip of a cursor of ``stream_items``."""


@dataclass(frozen=True)
class StreamedItem:
    """An item of ``AnnotationClient.stream_items`` and the cursor that continues after it.

    The server gives one cursor per response (after its last item). The last
    item of a response carries that cursor as is; an earlier one carries
    ``RESPONSE_CURSOR+N`` (the cursor before its response, "" at the start, and
    its 1-based place in the response): ``stream_items`` resumes from it by
    reading from RESPONSE_CURSOR and dropping N items, which is exact since a
    version's items never change order. Pass it back to ``stream_items`` only.
    """

    item: pb.Item
    cursor: str


def split_stream_cursor(cursor: str) -> tuple[str, int]:
    """``(server cursor, items to skip after it)`` of a cursor from ``stream_items`` (or of a server cursor)."""
    base, plus, skip = cursor.rpartition("+")
    if not plus:
        return cursor, 0
    if not (skip.isdigit() and skip.isascii() and 1 <= int(skip) <= MAX_STREAM_SKIP):
        raise ValueError(f"{cursor[:80]!r} is not a cursor of stream_items (SERVER_CURSOR+N, N in 1..{MAX_STREAM_SKIP})")
    return base, int(skip)
BlobSource = Union[str, os.PathLike, bytes]


class JobFailedError(SimulacraRpcError):
    """A job ended FAILED: ``code``/``reason``/``message``/``metadata`` of its JobError; ``job`` is the final job."""

    def __init__(self, job: Any) -> None:
        error = job.error
        code = _CODES.get(error.code, grpc.StatusCode.UNKNOWN)
        super().__init__(code, error.message or "the job failed", error.reason, "", dict(error.metadata))
        self.job = job


class JobCancelledError(SimulacraRpcError):
    """A job ended CANCELLED; ``job`` is the final job."""

    def __init__(self, job: Any) -> None:
        super().__init__(grpc.StatusCode.CANCELLED, f"{job.name} was cancelled", "JOB_CANCELLED", "", {"job": job.name})
        self.job = job


def _notify(progress: ProgressCallback | None, event: ProgressEvent) -> None:
    if progress is not None:
        progress(event)


# ---------------------------------------------------------------------------
# Helpers without a server
# ---------------------------------------------------------------------------


def sha256_of(source: BlobSource) -> tuple[str, int]:
    """Hex sha256 and size of bytes or of a file (read in chunks)."""
    digest = hashlib.sha256()
    if isinstance(source, bytes):
        digest.update(source)
        return digest.hexdigest(), len(source)
    size = 0
    with open(source, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file (MNIST's format) of a uint8 array: magic 00 00 08 NDIM, big-endian sizes, data."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"IDX files here hold uint8, got {array.dtype}")
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.tobytes()


def check_relative_path(path: str) -> str:
    """``path`` when it is a safe relative "/" path (no "..", no leading "/", no control characters)."""
    parts = path.split("/")
    if (
        not path
        or len(path) > 1024
        or path.startswith("/")
        or "\\" in path
        or any(ord(c) < 32 or ord(c) == 127 for c in path)
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise ValueError(f"{path[:200]!r} is not a safe relative path (no '..', no leading '/', '/' separators)")
    return path


# ---------------------------------------------------------------------------
# Requests: built here once for AnnotationClient and AsyncAnnotationClient
# ---------------------------------------------------------------------------


def create_dataset_request(
    dataset: str, *, display_name: str = "", description: str = "", labels: dict[str, str] | None = None, categories: Sequence[pb.Category] = ()
) -> rpc.CreateDatasetRequest:
    body = pb.Dataset(display_name=display_name, description=description, labels=labels or {})
    return rpc.CreateDatasetRequest(dataset_id=dataset_name(dataset).split("/")[1], dataset=body, categories=list(categories))


def jobs_parent(dataset: str) -> str:
    """The parent of a job listing: one dataset, or every one (``-``)."""
    return "datasets/-" if dataset in ("-", "datasets/-") else dataset_name(dataset)


def create_import_job_request(dataset: str, job: pb.ImportJob, request_id: str | None = None) -> rpc.CreateImportJobRequest:
    return rpc.CreateImportJobRequest(parent=dataset_name(dataset), import_job=job, request_id=request_id or str(uuid.uuid4()))


def create_export_job_request(reference: str, job: pb.ExportJob, request_id: str | None = None) -> rpc.CreateExportJobRequest:
    version = version_name(reference)
    exported = pb.ExportJob()
    exported.CopyFrom(job)
    exported.version = version
    parent = version.rsplit("/versions/", 1)[0]
    return rpc.CreateExportJobRequest(parent=parent, export_job=exported, request_id=request_id or str(uuid.uuid4()))


def stream_items_request(
    parent: str, cursor: str, filter: str, view: int, shard_index: int, shard_count: int, max_items_per_response: int
) -> rpc.StreamItemsRequest:
    return rpc.StreamItemsRequest(
        parent=parent, filter=filter, view=view, start_cursor=cursor, shard_index=shard_index,
        shard_count=shard_count, max_items_per_response=max_items_per_response,
    )


def streamed_items(response: rpc.StreamItemsResponse, cursor: str, skip: int) -> tuple[list[StreamedItem], int]:
    """The items of a StreamItems response read from ``cursor``, less the first ``skip``; the skip left."""
    items, last = response.items, len(response.items) - 1
    streamed = [
        StreamedItem(items[index], response.cursor if index == last else f"{cursor}+{index + 1}")
        for index in range(min(skip, len(items)), len(items))
    ]
    return streamed, max(0, skip - len(items))


def check_batching(batch_size: int, max_in_flight: int) -> None:
    if not 1 <= batch_size <= MAX_BATCH_ITEMS:
        raise ValueError(f"batch_size must be 1..{MAX_BATCH_ITEMS}, got {batch_size}")
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1")


def item_batches(
    dataset: str, items: Iterable[pb.Item | tuple[str, pb.Item]], batch_size: int, box_bounds_policy: int
) -> Iterator[rpc.UploadItemsRequest]:
    """UploadItems messages of ``batch_size`` items (``Item`` or ``(item_id, Item)``), each with its own request id."""
    parent = dataset_name(dataset)
    batch: list[rpc.UploadItemsRequest.ItemUpload] = []
    for entry in items:
        item_id, item = entry if isinstance(entry, tuple) else ("", entry)
        batch.append(rpc.UploadItemsRequest.ItemUpload(item_id=item_id, item=item))
        if len(batch) == batch_size:
            yield rpc.UploadItemsRequest(parent=parent, request_id=str(uuid.uuid4()), items=batch, box_bounds_policy=box_bounds_policy)
            batch = []
    if batch:
        yield rpc.UploadItemsRequest(parent=parent, request_id=str(uuid.uuid4()), items=batch, box_bounds_policy=box_bounds_policy)


def mnist_files(images: np.ndarray, labels: np.ndarray | Sequence[int]) -> tuple[bytes, bytes]:
    """The IDX image and label files of digits: ``images`` N x H x W uint8, ``labels`` N integers 0..255."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be an N x H x W uint8 array, got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError(f"labels must be {images.shape[0]} integers 0..255, got shape {labels.shape}")
    return idx_bytes(images), idx_bytes(labels.astype(np.uint8))


def mnist_import_job(image_digest: str, label_digest: str, *, split: str = "", limit: int = 0) -> pb.ImportJob:
    source = pb.MnistImportSource(
        images=pb.ManifestFile(path="images-idx3-ubyte", sha256=image_digest),
        labels=pb.ManifestFile(path="labels-idx1-ubyte", sha256=label_digest),
        split=split,
        limit=limit,
    )
    return pb.ImportJob(mnist=source)


def job_progress(job: Any, stage: str, progress: ProgressCallback | None) -> None:
    _notify(progress, ProgressEvent(stage, job.progress.done, job.progress.total, "items", job.progress.message))


def job_outcome(job: Any) -> Any:
    """The final job when it SUCCEEDED; JobFailedError or JobCancelledError otherwise."""
    if job is None:  # pragma: no cover - a watch always yields
        raise RuntimeError("the job watch ended without a snapshot")
    if job.state == common_pb2.JOB_STATE_FAILED:
        raise JobFailedError(job)
    if job.state == common_pb2.JOB_STATE_CANCELLED:
        raise JobCancelledError(job)
    return job


def _read_chunks(source: BlobSource, size: int) -> Iterator[tuple[int, bytes]]:
    if size == 0:
        yield 0, b""
        return
    stream: io.BufferedIOBase
    with (io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")) as stream:
        offset = 0
        while chunk := stream.read(CHUNK_BYTES):
            yield offset, chunk
            offset += len(chunk)
    if offset != size:
        raise ValueError(f"{source!r} changed while it was uploaded ({size} bytes hashed, {offset} read)")
