"""The friendly client of the annotation-store: datasets, uploads, imports, exports.

It speaks in resource names and protobuf messages of
``simulacra_client.api.annotation.v1`` and hides the plumbing: pagination,
content-addressed uploads (``FindMissingBlobs`` first, so bytes the server
already has never travel twice), batched item uploads with a bounded number
of batches in flight, and long-running jobs (create, watch, download).

Names: a dataset is ``NAME`` or ``datasets/NAME``; a version is ``NAME@VERSION``
(``VERSION`` a number or ``latest``) or ``datasets/NAME/versions/VERSION``.

Every failed RPC raises the typed ``SimulacraRpcError`` of ``simulacra_client.errors``
(with ``code``, ``reason``, ``metadata``); a job that ends FAILED raises
``JobFailedError`` carrying the job's ``JobError`` the same way, a cancelled
one ``JobCancelledError``. Only grpcio, protobuf and numpy are needed.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Union

import grpc
import numpy as np

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as rpc
from simulacra_client.api.annotation.v1 import annotation_service_pb2_grpc as rpc_grpc
from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.errors import SimulacraRpcError, from_rpc_error
from simulacra_client.raw import RawClient, ServiceClient
from simulacra_client.retry import Backoff

__all__ = [
    "AnnotationClient",
    "JobCancelledError",
    "JobFailedError",
    "ProgressEvent",
    "StreamedItem",
    "dataset_name",
    "version_name",
    "read_name",
]

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


# ---------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------


class AnnotationClient(ServiceClient):
    """A connection to the annotation-store. Use as a context manager, or call ``close()``.

    Arguments: ``address`` (host:port), ``token``, ``tls_ca``, ``max_message_bytes``,
    ``timeout`` (seconds per unary call) and ``retry`` (``simulacra_client.retry``; None: never).
    """

    RAW = RawClient
    STUB = rpc_grpc.AnnotationServiceStub
    SERVICES = rpc

    @property
    def _channel(self) -> grpc.Channel:
        return self._raw.channel

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AnnotationClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: str, request: Any, **kwargs: Any) -> Any:
        return self._raw.call(method, request, **kwargs)

    def _paged(self, method: str, request: Any, field: str) -> Iterator[Any]:
        """Every element of ``field`` over all pages of a List RPC, fetched as the iterator advances."""
        while True:
            page = self._call(method, request)
            yield from getattr(page, field)
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    # ---- datasets and categories -------------------------------------------
    def create_dataset(
        self,
        dataset: str,
        *,
        display_name: str = "",
        description: str = "",
        labels: dict[str, str] | None = None,
        categories: Sequence[pb.Category] = (),
    ) -> pb.Dataset:
        request = create_dataset_request(dataset, display_name=display_name, description=description, labels=labels, categories=categories)
        return self._call("CreateDataset", request).dataset

    def get_dataset(self, dataset: str) -> pb.Dataset:
        return self._call("GetDataset", rpc.GetDatasetRequest(name=dataset_name(dataset))).dataset

    def list_datasets(self, *, filter: str = "", order_by: str = "", page_size: int = 0) -> Iterator[pb.Dataset]:
        """Every dataset (pages are fetched as the iterator advances)."""
        return self._paged("ListDatasets", rpc.ListDatasetsRequest(page_size=page_size, filter=filter, order_by=order_by), "datasets")

    def delete_dataset(self, dataset: str, *, force: bool = False) -> None:
        self._call("DeleteDataset", rpc.DeleteDatasetRequest(name=dataset_name(dataset), force=force))

    def create_category(self, dataset: str, category: pb.Category) -> pb.Category:
        return self._call("CreateCategory", rpc.CreateCategoryRequest(parent=dataset_name(dataset), category=category)).category

    def list_categories(self, reference: str) -> list[pb.Category]:
        """Categories of the working state (``NAME``) or of a version (``NAME@VERSION``), by id."""
        return list(self._paged("ListCategories", rpc.ListCategoriesRequest(parent=read_name(reference), page_size=1000), "categories"))

    # ---- versions, statistics, items -----------------------------------------
    def commit(self, dataset: str, *, description: str = "") -> rpc.CommitVersionResponse:
        """Freeze the working state; the response has ``version`` and ``created``
        (False when the content equals the latest version's, which is returned).
        FAILED_PRECONDITION ``IMPORT_IN_PROGRESS`` while an import job of the dataset is unfinished."""
        return self._call("CommitVersion", rpc.CommitVersionRequest(parent=dataset_name(dataset), description=description))

    def commit_staged(
        self, dataset: str, staging_id: str, *, description: str = "", source_version: str = "", pipeline_digest: str = ""
    ) -> rpc.CommitStagedVersionResponse:
        """Commit the items uploaded with ``staging_id`` as the next version (the working state is not
        touched), recording ``derived_from`` when ``source_version`` is given; committing again returns
        the same version with ``created`` False."""
        request = rpc.CommitStagedVersionRequest(parent=dataset_name(dataset), staging_id=staging_id, description=description)
        if source_version:
            request.derived_from.CopyFrom(pb.DerivedFrom(source_version=source_version, pipeline_digest=pipeline_digest))
        return self._call("CommitStagedVersion", request)

    def discard_staging(self, dataset: str, staging_id: str) -> None:
        """Remove an uncommitted staging and its items (nothing when there is none)."""
        self._call("DiscardStaging", rpc.DiscardStagingRequest(parent=dataset_name(dataset), staging_id=staging_id))

    def get_version(self, reference: str) -> pb.DatasetVersion:
        return self._call("GetVersion", rpc.GetVersionRequest(name=version_name(reference))).version

    def statistics(self, reference: str, *, filter: str = "") -> pb.DatasetStatistics:
        """Statistics of ``NAME@VERSION`` (or of the working state for plain ``NAME``)."""
        return self._call("GetStatistics", rpc.GetStatisticsRequest(parent=read_name(reference), filter=filter)).statistics

    def list_items(self, reference: str, *, filter: str = "", order_by: str = "", page_size: int = 0, view: int = pb.ITEM_VIEW_BASIC) -> Iterator[pb.Item]:
        request = rpc.ListItemsRequest(parent=read_name(reference), page_size=page_size, filter=filter, order_by=order_by, view=view)
        return self._paged("ListItems", request, "items")

    def stream_items(
        self,
        reference: str,
        *,
        start_cursor: str = "",
        filter: str = "",
        view: int = pb.ITEM_VIEW_FULL,
        shard_index: int = 0,
        shard_count: int = 0,
        max_items_per_response: int = 0,
        resume_attempts: int = 3,
    ) -> Iterator[StreamedItem]:
        """Every item of a committed version, one at a time, each with the cursor that continues after it.

        The server sends several items per response (up to ``max_items_per_response``,
        0 = its default); this yields them one by one. When the connection breaks
        (UNAVAILABLE) the stream is reopened from the last cursor received, up to
        ``resume_attempts`` times in a row, so no item is lost or repeated.
        """
        cursor, skip = split_stream_cursor(start_cursor)
        backoff = Backoff(self.resume_policy(resume_attempts))
        parent = version_name(reference)
        while True:
            call = self.stub.StreamItems(stream_items_request(parent, cursor, filter, view, shard_index, shard_count, max_items_per_response))
            try:
                for response in call:
                    backoff.reset()
                    streamed, skip = streamed_items(response, cursor, skip)
                    yield from streamed
                    cursor = response.cursor
                return
            except grpc.RpcError as error:
                if not backoff.policy.retryable(error) or not backoff.sleep():
                    raise from_rpc_error(error) from None
            finally:
                call.cancel()  # a no-op when the stream ended; frees the server when the caller stops early

    def upload_items(
        self,
        dataset: str,
        items: Iterable[pb.Item | tuple[str, pb.Item]],
        *,
        batch_size: int = 64,
        max_in_flight: int = 4,
        box_bounds_policy: int = pb.BOX_BOUNDS_POLICY_REJECT,
        progress: ProgressCallback | None = None,
        staging_id: str = "",
    ) -> list[str]:
        """Upload items (``Item`` or ``(item_id, Item)``) in batches over one stream.

        With ``staging_id`` the items go to that staging area of the dataset,
        invisible until ``commit_staged`` (or removed by ``discard_staging``).

        At most ``max_in_flight`` batches are sent ahead of their acknowledgement,
        so memory stays bounded whatever the number of items. Returns the created
        item names in order. A rejected batch raises its error; every batch
        acknowledged before it stays written (see ``UploadItems`` in the contract).
        """
        check_batching(batch_size, max_in_flight)
        slots = threading.Semaphore(max_in_flight)
        stop = threading.Event()

        def batches() -> Iterator[rpc.UploadItemsRequest]:
            for request in item_batches(dataset, items, batch_size, box_bounds_policy):
                if not _acquire(slots, stop):
                    return
                request.staging_id = staging_id
                yield request

        names: list[str] = []
        try:
            for ack in self.stub.UploadItems(batches()):
                names.extend(ack.item_names)
                slots.release()
                _notify(progress, ProgressEvent("items", len(names), 0, "items"))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            stop.set()
        return names

    # ---- blobs ------------------------------------------------------------
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

    # ---- import jobs ------------------------------------------------------
    def create_import_job(self, dataset: str, job: pb.ImportJob, *, request_id: str | None = None) -> pb.ImportJob:
        return self._call("CreateImportJob", create_import_job_request(dataset, job, request_id)).import_job

    def get_import_job(self, name: str) -> pb.ImportJob:
        return self._get_job(IMPORT_JOBS, name)

    def list_import_jobs(self, dataset: str = "-", *, filter: str = "") -> Iterator[pb.ImportJob]:
        return self._list_jobs(IMPORT_JOBS, dataset, filter)

    def cancel_import_job(self, name: str) -> pb.ImportJob:
        return self._cancel_job(IMPORT_JOBS, name)

    def watch_import_job(self, name: str) -> Iterator[pb.ImportJob]:
        """Snapshots of the job until it ends (the last one has a terminal state)."""
        return self._watch_job(IMPORT_JOBS, name)

    def wait_import_job(self, name: str, *, progress: ProgressCallback | None = None) -> pb.ImportJob:
        """Watch the job to its end; the final job when it SUCCEEDED, else JobFailedError/JobCancelledError."""
        return _finish(self.watch_import_job(name), IMPORT_JOBS.doing, progress)

    # ---- export jobs ------------------------------------------------------
    def create_export_job(self, reference: str, job: pb.ExportJob, *, request_id: str | None = None) -> pb.ExportJob:
        return self._call("CreateExportJob", create_export_job_request(reference, job, request_id)).export_job

    def get_export_job(self, name: str) -> pb.ExportJob:
        return self._get_job(EXPORT_JOBS, name)

    def list_export_jobs(self, dataset: str = "-", *, filter: str = "") -> Iterator[pb.ExportJob]:
        return self._list_jobs(EXPORT_JOBS, dataset, filter)

    def cancel_export_job(self, name: str) -> pb.ExportJob:
        return self._cancel_job(EXPORT_JOBS, name)

    def watch_export_job(self, name: str) -> Iterator[pb.ExportJob]:
        return self._watch_job(EXPORT_JOBS, name)

    def wait_export_job(self, name: str, *, progress: ProgressCallback | None = None) -> pb.ExportJob:
        return _finish(self.watch_export_job(name), EXPORT_JOBS.doing, progress)

    # ---- either kind of job (JobKind) ----------------------------------------
    def _get_job(self, kind: JobKind, name: str) -> Any:
        return getattr(self._call(f"Get{kind.noun}Job", kind.get(name=name)), kind.field)

    def _list_jobs(self, kind: JobKind, dataset: str, filter: str) -> Iterator[Any]:
        return self._paged(f"List{kind.noun}Jobs", kind.listing(parent=jobs_parent(dataset), filter=filter), f"{kind.field}s")

    def _cancel_job(self, kind: JobKind, name: str) -> Any:
        return getattr(self._call(f"Cancel{kind.noun}Job", kind.cancel(name=name)), kind.field)

    def _watch_job(self, kind: JobKind, name: str) -> Iterator[Any]:
        return self._watch(f"Watch{kind.noun}Job", kind.watch(name=name), kind.field, lambda: self._get_job(kind, name))

    def _watch(self, method: str, request: Any, field: str, get: Callable[[], Any]) -> Iterator[Any]:
        backoff = Backoff(self.resume_policy(_WATCH_RETRIES))
        while True:
            try:
                for response in getattr(self.stub, method)(request):
                    backoff.reset()
                    job = getattr(response, field)
                    yield job
                    if job.state in TERMINAL_STATES:
                        return
                # The server ended the stream without a terminal state (draining
                # for a restart): look once more, and watch again if still running.
                job = get()
                if job.state in TERMINAL_STATES:
                    yield job
                    return
            except grpc.RpcError as error:
                if not backoff.policy.retryable(error) or not backoff.sleep():
                    raise from_rpc_error(error) from None

    # ---- imports ------------------------------------------------------------
    def import_coco(
        self,
        dataset: str,
        annotations_path: str | os.PathLike[str],
        images_dir: str | os.PathLike[str],
        *,
        split: str = "",
        box_bounds_policy: int = pb.BOX_BOUNDS_POLICY_REJECT,
        progress: ProgressCallback | None = None,
    ) -> pb.ImportJob:
        """Import a COCO JSON file and its images (``images_dir/<file_name>``).

        Uploads the JSON and the images as blobs (skipping those the server has),
        runs the import job and returns it once SUCCEEDED (``job.result``).
        """
        annotations_path = Path(annotations_path)
        file_names = _coco_file_names(annotations_path)
        images_dir = Path(images_dir)
        paths = [images_dir / name for name in file_names]
        missing = [name for name, path in zip(file_names, paths) if not path.is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise FileNotFoundError(f"{len(missing)} image(s) of {annotations_path} are not in {images_dir}: {shown}")
        digests = self.upload_blobs([annotations_path, *paths], progress=progress)
        source = pb.CocoImportSource(
            annotations=pb.ManifestFile(path=annotations_path.name, sha256=digests[0]),
            images=[pb.ManifestFile(path=name, sha256=digest) for name, digest in zip(file_names, digests[1:])],
            split=split,
        )
        job = self.create_import_job(dataset, pb.ImportJob(coco=source, box_bounds_policy=box_bounds_policy))
        return self.wait_import_job(job.name, progress=progress)

    def import_yolo(
        self,
        dataset: str,
        root: str | os.PathLike[str],
        class_names: Sequence[str],
        *,
        box_bounds_policy: int = pb.BOX_BOUNDS_POLICY_REJECT,
        progress: ProgressCallback | None = None,
    ) -> pb.ImportJob:
        """Import a YOLO directory: ``images/[SPLIT/]NAME.ext`` with ``labels/[SPLIT/]NAME.txt``.

        The first directory under ``images/`` names the split (else "train"); an
        image without a label file has no boxes.
        """
        root = Path(root)
        images = _yolo_layout(root)
        if not images:
            raise FileNotFoundError(f"no .png/.jpg/.jpeg images under {root / 'images'}")
        files: list[Path] = []
        for image, labels, _ in images:
            files.append(image)
            if labels is not None:
                files.append(labels)
        digests = dict(zip(files, self.upload_blobs(files, progress=progress)))

        def manifest(path: Path) -> pb.ManifestFile:
            return pb.ManifestFile(path=path.relative_to(root).as_posix(), sha256=digests[path])

        entries = [
            pb.YoloImportImage(image=manifest(image), labels=manifest(labels) if labels is not None else None, split=split)
            for image, labels, split in images
        ]
        source = pb.YoloImportSource(class_names=list(class_names), images=entries)
        job = self.create_import_job(dataset, pb.ImportJob(yolo=source, box_bounds_policy=box_bounds_policy))
        return self.wait_import_job(job.name, progress=progress)

    def import_mnist(
        self,
        dataset: str,
        images: np.ndarray,
        labels: np.ndarray | Sequence[int],
        *,
        split: str = "",
        limit: int = 0,
        progress: ProgressCallback | None = None,
    ) -> pb.ImportJob:
        """Import digits: ``images`` N x H x W uint8 (MNIST: 28 x 28), ``labels`` N integers 0..255.

        Writes the two IDX files in memory, uploads them and runs the MNIST import.
        """
        image_digest, label_digest = self.upload_blobs(list(mnist_files(images, labels)), progress=progress)
        job = self.create_import_job(dataset, mnist_import_job(image_digest, label_digest, split=split, limit=limit))
        return self.wait_import_job(job.name, progress=progress)

    # ---- exports ------------------------------------------------------------
    def export(
        self,
        reference: str,
        out_dir: str | os.PathLike[str],
        *,
        format: int,
        filter: str = "",
        skip_images: bool = False,
        progress: ProgressCallback | None = None,
    ) -> pb.ExportJob:
        """Export ``NAME@VERSION`` in ``format`` into ``out_dir``: COCO writes annotations.json + images/...,
        YOLO data.yaml, images/SPLIT/... and labels/SPLIT/... (``export_coco``, ``export_yolo``)."""
        job = self.create_export_job(reference, pb.ExportJob(format=format, filter=filter, skip_images=skip_images))
        job = self.wait_export_job(job.name, progress=progress)
        self.download_files(job.result.files, out_dir, progress=progress)
        return job

    export_coco = functools.partialmethod(export, format=pb.EXPORT_FORMAT_COCO)
    export_yolo = functools.partialmethod(export, format=pb.EXPORT_FORMAT_YOLO)

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


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _acquire(slots: threading.Semaphore, stop: threading.Event) -> bool:
    """Wait for a free in-flight slot; False once the call is over (so the sender thread ends)."""
    while not slots.acquire(timeout=0.1):
        if stop.is_set():
            return False
    return not stop.is_set()


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


def _finish(snapshots: Iterator[Any], stage: str, progress: ProgressCallback | None) -> Any:
    job = None
    for job in snapshots:
        job_progress(job, stage, progress)
    return job_outcome(job)


def _coco_file_names(path: Path) -> list[str]:
    """The images' ``file_name`` of a COCO file, each checked to be a safe relative path."""
    try:
        document = json.loads(path.read_bytes())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON: {error}") from None
    images = document.get("images") if isinstance(document, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{path} has no 'images' list: is it a COCO annotation file?")
    names = []
    for index, image in enumerate(images):
        name = image.get("file_name") if isinstance(image, dict) else None
        if not isinstance(name, str):
            raise ValueError(f"{path}: images[{index}].file_name must be a string")
        try:
            names.append(check_relative_path(name))
        except ValueError as error:
            raise ValueError(f"{path}: images[{index}].file_name: {error}") from None
    return names


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _yolo_layout(root: Path) -> list[tuple[Path, Path | None, str]]:
    """(image, label file or None, split) of a YOLO directory, sorted by path."""
    images_root = root / "images"
    found = []
    for image in sorted(images_root.rglob("*")):
        if not image.is_file() or image.suffix.lower() not in _IMAGE_SUFFIXES:
            continue
        relative = image.relative_to(images_root)
        split = relative.parts[0] if len(relative.parts) > 1 else ""
        labels = (root / "labels" / relative).with_suffix(".txt")
        found.append((image, labels if labels.is_file() else None, split))
    return found

